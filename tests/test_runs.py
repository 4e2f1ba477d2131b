"""Runs as a user meets them: checkpoints that know their split, cross-domain records, unfinished run
folders, one-line errors for anything unexpected, and bad files found while loading episodes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fsbench.cli import main
from fsbench.fixtures import make_fss, make_voc
from fsbench.run_folder import read_status

TINY = ["--episodes", "3", "--img-size", "32", "--nworker", "0", "--no-progress", "--bsz", "2", "--val-every", "0"]


def _error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def fold0_checkpoint(tiny_datapath, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "fold0"
    assert main(["--datapath", str(tiny_datapath), "--method", "panet", "--train-steps", "1", "--logpath", str(run_dir), *TINY]) == 0
    return run_dir / "model.safetensors"


def test_a_checkpoint_is_refused_on_classes_it_was_trained_on(fold0_checkpoint, tiny_datapath, tmp_path, capsys):
    # Fold 0's training classes are folds 1-3's test classes: testing there would score seen classes.
    code = main(["--datapath", str(tiny_datapath), "--method", "panet", "--eval", "--load", str(fold0_checkpoint), "--fold", "1",
                 "--logpath", str(tmp_path / "fold1"), *TINY])
    message = _error(capsys)
    assert code == 1 and "trained on shapes fold 0" in message and "fold 1's test classes" in message
    assert not (tmp_path / "fold1").exists()  # refused before anything was written

    assert main(["--datapath", str(tiny_datapath), "--method", "panet", "--eval", "--load", str(fold0_checkpoint),
                 "--logpath", str(tmp_path / "fold0"), *TINY]) == 0
    results = json.loads((tmp_path / "fold0" / "results.json").read_text())
    (record,) = results["trained_on"]
    assert record["benchmark"] == "shapes" and record["fold"] == 0 and record["class_ids"] == list(range(6, 21))
    assert results["cross_domain"] == [] and results["started_from"]["path"] == str(fold0_checkpoint)


def test_cross_domain_evaluation_is_allowed_and_recorded(fold0_checkpoint, tmp_path):
    make_fss(tmp_path, classes=6, per_class=3, size=32)
    assert main(["--datapath", str(tmp_path), "--benchmark", "fss", "--method", "panet", "--eval", "--load", str(fold0_checkpoint),
                 "--logpath", str(tmp_path / "cross"), *TINY]) == 0
    results = json.loads((tmp_path / "cross" / "results.json").read_text())
    assert [record["benchmark"] for record in results["cross_domain"]] == ["shapes"]
    assert results["trained_on"] == results["cross_domain"]


def test_fine_tuning_records_its_start_and_both_trainings(fold0_checkpoint, tiny_datapath, tmp_path):
    assert main(["--datapath", str(tiny_datapath), "--method", "panet", "--load", str(fold0_checkpoint), "--train-steps", "1",
                 "--logpath", str(tmp_path / "tuned"), *TINY]) == 0
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert results["started_from"]["path"] == str(fold0_checkpoint) and len(results["started_from"]["sha256"]) == 64
    assert [record["fold"] for record in results["trained_on"]] == [0, 0] and results["train_steps"] == 2


def test_an_unexpected_error_is_one_line_and_marks_the_run_failed(tiny_datapath, tmp_path, capsys, monkeypatch):
    from methods.panet import PANet

    def broken(self, episode, support_features, query_features):
        raise ValueError("a bug deep inside a method")

    monkeypatch.setattr(PANet, "predict_encoded", broken)
    run_dir = tmp_path / "broken"
    code = main(["--datapath", str(tiny_datapath), "--method", "panet", "--train-steps", "0", "--logpath", str(run_dir), *TINY])
    message = _error(capsys)
    assert code == 1 and "ValueError: a bug deep inside a method" in message and "--debug" in message
    status = read_status(run_dir)
    assert status["state"] == "failed" and "a bug deep inside a method" in status["error"]
    assert not (run_dir / "results.json").exists()
    with pytest.raises(ValueError):
        main(["--datapath", str(tiny_datapath), "--method", "panet", "--train-steps", "0", "--logpath", str(tmp_path / "debug"),
              "--debug", *TINY])

    # The same --logpath again: the unfinished run is kept aside, the new one starts fresh.
    monkeypatch.undo()
    assert main(["--datapath", str(tiny_datapath), "--method", "panet", "--train-steps", "0", "--logpath", str(run_dir), *TINY]) == 0
    aside = tmp_path / "broken.unfinished-1"
    assert read_status(aside)["state"] == "failed" and read_status(run_dir)["state"] == "finished"


def test_a_truncated_image_found_while_loading_is_skipped_and_counted(tmp_path, capsys):
    labels = make_voc(tmp_path, train=20, val=40, height=150, width=200)
    # Indexing reads only headers, so a truncated JPEG is found when an episode loads it.
    victim = tmp_path / "VOC2012" / "JPEGImages" / f"{sorted(labels['val'])[0]}.jpg"
    victim.write_bytes(victim.read_bytes()[: len(victim.read_bytes()) // 3])
    common = ["--datapath", str(tmp_path), "--benchmark", "pascal", "--method", "panet", "--train-steps", "0",
              "--episodes", "40", "--img-size", "32", "--nworker", "0", "--no-progress", "--backbone", "resnet18", "--pretrained", "false"]
    assert main([*common, "--logpath", str(tmp_path / "strict")]) == 1
    message = _error(capsys)
    assert str(victim) in message and "truncated" in message
    assert main([*common, "--logpath", str(tmp_path / "skipping"), "--skip-bad"]) == 0
    results = json.loads((tmp_path / "skipping" / "results.json").read_text())
    assert results["skipped_episodes"] and all(str(victim) in item["reason"] for item in results["skipped_episodes"])
    assert results["episodes"] == 40 - len(results["skipped_episodes"])


def test_fine_tuning_on_custom_data_and_training_on_every_category(tmp_path):
    """The DML repo's workflow: start from a checkpoint (here the repo's own ckpt.pth + proxies.pth),
    fine-tune on a 3-class custom dataset (proxies re-made for its classes), evaluate its novel
    class; then train on every category (--all-classes) for deployment."""
    from test_dml_original import write_original_checkpoint

    from fsbench.checkpoint import load_checkpoint
    from fsbench.fixtures import make_custom

    write_original_checkpoint(tmp_path / "original")
    make_custom(tmp_path / "custom", "unified", categories=3, per_split=9, height=64, width=64)
    common = ["--method", "dml_knn", "--benchmark", "coco_json", "--datapath", str(tmp_path / "custom"), "--folds", "3",
              "--episodes", "3", "--img-size", "64", "--nworker", "0", "--no-progress", "--bsz", "2", "--val-every", "0"]
    assert main([*common, "--load", str(tmp_path / "original" / "ckpt.pth"), "--train-steps", "1", "--logpath", str(tmp_path / "tuned")]) == 0
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())
    assert results["started_from"]["format"] == "dml_segmentation" and len(results["started_from"]["sha256"]) == 64
    state, metadata = load_checkpoint(tmp_path / "tuned" / "model.safetensors")
    assert state["proxies.weight"].shape[0] == 3  # background + the fold's 2 base classes, re-made
    assert metadata["config"]["architecture"] == "original"

    assert main([*common, "--all-classes", "--train-steps", "1", "--backbone", "resnet18", "--pretrained", "false",
                 "--set", "embedding_dim=8", "--logpath", str(tmp_path / "all")]) == 0
    results = json.loads((tmp_path / "all" / "results.json").read_text())
    assert results["trained_on"][0]["class_ids"] == [1, 2, 3] and set(results["class_iou"]) == {"thing 1", "thing 2", "thing 3"}
    assert load_checkpoint(tmp_path / "all" / "model.safetensors")[0]["proxies.weight"].shape[0] == 4
    # That checkpoint has seen every class: a few-shot fold of the same data is refused.
    assert main([*common, "--eval", "--load", str(tmp_path / "all" / "model.safetensors"), "--logpath", str(tmp_path / "refused")]) == 1
