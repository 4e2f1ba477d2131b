"""The command line end to end on tiny settings, and every bad input it must refuse cleanly."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsbench.checkpoint import save_checkpoint
from fsbench.cli import main
from fsbench.errors import FsbenchError
from fsbench.perf.discrimination import evaluated_checkpoint, load_run_method

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-steps", "2", "--episodes", "6", "--img-size", "64", "--nworker", "0", "--no-progress", "--bsz", "2"]


@pytest.fixture(scope="module")
def trained_run(tiny_datapath, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "trained"
    assert main(["--datapath", str(tiny_datapath), "--logpath", str(run_dir), "--shot", "2", *TINY]) == 0
    return run_dir


def test_run_writes_every_output(trained_run):
    names = {path.name for path in trained_run.iterdir()}
    assert {"config.json", "model.safetensors", "results.json", "episodes.csv"} <= names
    results = json.loads((trained_run / "results.json").read_text())
    for key in ("method", "benchmark", "fold", "way", "shot", "episodes", "seed", "episode_fingerprint", "miou", "fbiou",
                "er", "class_iou", "eval_resolution", "checkpoint", "elapsed_s"):
        assert key in results
    assert results["episodes"] == 6 and results["eval_resolution"] == "64x64"
    assert set(results["class_iou"]) == {"striped circle", "checkered square", "dotted triangle", "ringed star", "striped cross"}

    # Recompute the scores from episodes.csv: class-accumulated mIoU, FB-IoU and ER.
    rows = list(csv.DictReader(open(trained_run / "episodes.csv")))
    assert len(rows) == 6
    intersection, union = {}, {}
    for row in rows:
        name = row["class_names"]
        intersection[name] = intersection.get(name, 0) + int(row["intersection_1"])
        union[name] = union.get(name, 0) + int(row["union_1"])
    per_class = {name: 100 * intersection.get(name, 0) / union[name] if union.get(name) else 0.0 for name in results["class_iou"]}
    assert results["miou"] == pytest.approx(sum(per_class.values()) / 5)
    fb = [sum(int(r[f"{side}_intersection"]) for r in rows) / sum(int(r[f"{side}_union"]) for r in rows) for side in ("bg", "fg")]
    assert results["fbiou"] == pytest.approx(100 * sum(fb) / 2)
    exact = sum(row["present_1"] == row["predicted_present_1"] for row in rows)
    assert results["er"] == pytest.approx(100 * exact / 6)


def test_eval_of_saved_checkpoint_reproduces_the_run(trained_run, tiny_datapath, tmp_path):
    again = tmp_path / "again"
    code = main(["--datapath", str(tiny_datapath), "--logpath", str(again), "--shot", "2", "--eval", "--load",
                 str(trained_run / "model.safetensors"), *TINY])
    assert code == 0
    first = json.loads((trained_run / "results.json").read_text())
    second = json.loads((again / "results.json").read_text())
    assert second["miou"] == first["miou"] and second["episode_fingerprint"] == first["episode_fingerprint"]
    assert not (again / "model.safetensors").exists()
    # The discrimination diagnostic rebuilds such a run with the weights it loaded, not fresh ones.
    loaded, _ = load_run_method(again)
    trained, _ = load_run_method(trained_run)
    assert evaluated_checkpoint(again) == trained_run / "model.safetensors"
    assert all(torch.equal(value, trained.state_dict()[key]) for key, value in loaded.state_dict().items())


def test_discrimination_refuses_a_run_whose_loaded_checkpoint_is_gone(trained_run, tiny_datapath, tmp_path):
    moved = tmp_path / "moved.safetensors"
    moved.write_bytes((trained_run / "model.safetensors").read_bytes())
    again = tmp_path / "again"
    assert main(["--datapath", str(tiny_datapath), "--logpath", str(again), "--shot", "2", "--eval", "--load", str(moved), *TINY]) == 0
    moved.unlink()
    with pytest.raises(FsbenchError, match="moved.safetensors, which is not there"):
        load_run_method(again)


def _error(capsys, argv):
    code = main(argv)
    message = capsys.readouterr().err.strip()
    assert code != 0 and len(message.splitlines()) == 1 and "Traceback" not in message
    return message


def test_bad_inputs_get_one_line_errors(tiny_datapath, trained_run, tmp_path, capsys):
    base = ["--datapath", str(tiny_datapath), *TINY]
    assert "dml_knn" in _error(capsys, ["--method", "nope", *base])
    assert "shapes" in _error(capsys, ["--benchmark", "nope", *base])
    assert "fold 7 is out of range" in _error(capsys, ["--fold", "7", *base])
    assert "needs at least" in _error(capsys, ["--shot", "400", *base])
    assert "checkpoint not found" in _error(capsys, ["--eval", "--load", str(tmp_path / "missing.safetensors"), *base])
    assert "--eval needs --load" in _error(capsys, ["--eval", *base])

    pickled = tmp_path / "model.pth"
    torch.save({"weight": torch.zeros(1)}, pickled)
    # A pickle is read only through the weights-only reader, and only in a format fsbench knows.
    assert "is a torch pickle in no format fsbench reads" in _error(capsys, ["--eval", "--load", str(pickled), *base])

    foreign = tmp_path / "foreign.safetensors"
    save_checkpoint(foreign, {"network.x": torch.zeros(1)}, {"method": "panet_like", "config": {}})
    assert "made for method 'panet_like'" in _error(capsys, ["--eval", "--load", str(foreign), *base])
    checkpoint = str(trained_run / "model.safetensors")
    assert "made for backbone 'resnet18'" in _error(capsys, ["--eval", "--load", checkpoint, "--backbone", "resnet34", *base])
    assert "no setting loss" in _error(capsys, ["--loss", "dice", *base])


def test_existing_run_folder_is_never_touched(tiny_datapath, trained_run, capsys):
    before = {path.name: path.stat().st_mtime_ns for path in trained_run.iterdir()}
    assert "already holds a finished run" in _error(capsys, ["--datapath", str(tiny_datapath), "--logpath", str(trained_run), *TINY])
    assert {path.name: path.stat().st_mtime_ns for path in trained_run.iterdir()} == before


def test_command_line_process_exit_codes(tiny_datapath):
    bad_flag = subprocess.run([sys.executable, "main.py", "--no-such-flag"], cwd=ROOT, capture_output=True, text=True)
    assert bad_flag.returncode == 2 and len(bad_flag.stderr.strip().splitlines()) == 1
    bad_fold = subprocess.run([sys.executable, "main.py", "--datapath", str(tiny_datapath), "--fold", "-1"], cwd=ROOT,
                              capture_output=True, text=True)
    assert bad_fold.returncode == 1 and "Traceback" not in bad_fold.stderr and "out of range" in bad_fold.stderr
