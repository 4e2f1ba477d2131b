"""Generalized FSS: the scores against independent computations, the combination rule against
hand-worked numbers, the alignment of two vocabularies, the task's queries and supports, and
end-to-end runs on a fake Cityscapes tree and on shapes that write results.json and make a table."""
from __future__ import annotations

import csv
import io
import json
import math

import numpy as np
import pytest
import torch

from fsbench.cli import main
from fsbench.errors import FsbenchError
from fsbench.fixtures.cityscapes import make_cityscapes
from fsbench.gfss.evaluate import GFSSEvaluationSettings, evaluate_gfss
from fsbench.gfss.scores import GFSSCounts, summarise
from fsbench.gfss.task import GFSSTask
from fsbench.gfss.vocabulary import VocabularyPrediction
from fsbench.transforms import SquashResize
from methods.combination_rules import combine, confidence_weight, lift

TINY = ["--img-size", "32", "--nworker", "0", "--no-progress", "--bsz", "2", "--val-every", "0", "--checkpoint-every", "0"]
SMALL_NETWORK = ["--backbone", "resnet18", "--pretrained", "false"]


# --- scores ------------------------------------------------------------------------------------------
def test_scores_against_an_independent_computation():
    """Random predictions and targets over background, 3 base and 2 novel classes: per-class IoU from
    plain loops over pixels, then the means, against GFSSCounts + summarise."""
    rng = np.random.default_rng(7)
    classes = (0, 3, 5, 8, 11, 12)  # background, base 3 5 8, novel 11 12
    in_classes, out_classes = (0, 3, 5, 8), (11, 12)
    counts = GFSSCounts(classes)
    intersection, union = {c: 0 for c in classes}, {c: 0 for c in classes}
    for _ in range(4):
        target = rng.integers(0, len(classes) + 1, size=(2, 9, 7))  # column + 1; len + 1 -> ignore below
        target[target == len(classes) + 1] = 255
        target[:, 0, 0] = 255
        pred = rng.integers(0, len(classes) + 1, size=(2, 9, 7))
        pred[pred == len(classes) + 1] = 0  # 0: a pixel given to no class
        counts.update(torch.from_numpy(pred), torch.from_numpy(target))
        for query in range(2):
            for row in range(9):
                for column in range(7):
                    truth, guess = target[query, row, column], pred[query, row, column]
                    if truth == 255:
                        continue
                    for index, class_id in enumerate(classes):
                        hit_truth, hit_guess = truth == index + 1, guess == index + 1
                        intersection[class_id] += int(hit_truth and hit_guess)
                        union[class_id] += int(hit_truth or hit_guess)
    ious = {c: 100.0 * intersection[c] / union[c] for c in classes}
    expected_in = sum(ious[c] for c in in_classes) / 4
    expected_out = sum(ious[c] for c in out_classes) / 2
    scores = summarise(counts, in_classes, out_classes, {3: "c", 5: "d", 8: "e", 11: "f", 12: "g"})
    assert scores["miou_all"] == pytest.approx(sum(ious.values()) / 6)
    assert scores["miou_in"] == pytest.approx(expected_in) and scores["miou_out"] == pytest.approx(expected_out)
    assert scores["hmean"] == pytest.approx(2 * expected_in * expected_out / (expected_in + expected_out))
    assert scores["mean"] == pytest.approx((expected_in + expected_out) / 2)
    assert scores["class_iou"]["background"] == pytest.approx(ious[0]) and scores["class_iou"]["f"] == pytest.approx(ious[11])


def test_harmonic_mean_and_classes_without_an_iou():
    """Class 1: I 3, U 5 -> 60; class 3: I 3, U 7 -> 42.86 (the ignored pixel counts for neither);
    hm = 2 x 60 x 42.86 / 102.86 = 50; class 2, never present nor predicted, is left out of the means."""
    counts = GFSSCounts((1, 2, 3))
    # Values are score columns + 1: 1 = class 1, 3 = class 3, 0 = no class, 255 = ignore.
    target = torch.tensor([[[1, 1, 1, 1, 3, 3, 3, 255, 3, 3, 3, 3]]])
    pred = torch.tensor([[[1, 1, 1, 0, 3, 3, 3, 3, 1, 0, 0, 0]]])
    counts.update(pred.view(1, 1, -1), target.view(1, 1, -1))
    scores = summarise(counts, (1, 2), (3,), {1: "a", 2: "b", 3: "c"})
    assert scores["class_iou"]["a"] == pytest.approx(60.0) and scores["class_iou"]["b"] is None
    assert scores["class_iou"]["c"] == pytest.approx(100 * 3 / 7) and scores["unscored_classes"] == ["b"]
    assert scores["miou_in"] == pytest.approx(60.0)  # class 2 has no IoU: not counted as 0
    out = 100 * 3 / 7
    assert scores["hmean"] == pytest.approx(2 * 60 * out / (60 + out)) == pytest.approx(50.0)
    empty = summarise(GFSSCounts((1,)), (1,), (), {1: "a"})
    assert empty["miou_out"] is None and empty["hmean"] is None
    zero = GFSSCounts((1, 2))
    zero.update(torch.tensor([[[2, 1]]]), torch.tensor([[[1, 2]]]))
    assert summarise(zero, (1,), (2,), {})["hmean"] == 0.0


# --- the combination rule -------------------------------------------------------------------------
def _pixel(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(1, -1, 1, 1)


def test_entropy_rule_against_a_hand_worked_pixel():
    """s1 = (0.7, 0.2, 0.1), s2 = (0.1, 0.1, 0.8).
    H(s1) = -(0.7 ln 0.7 + 0.2 ln 0.2 + 0.1 ln 0.1) = 0.24967 + 0.32189 + 0.23026 = 0.80182 nats,
    H(s2) = -(2 x 0.1 ln 0.1 + 0.8 ln 0.8) = 0.46052 + 0.17851 = 0.63903 nats.
    Raw: w1 = 0.19818, w2 = 0.36097; combined = (0.17482, 0.07573, 0.30860).
    Normalised by ln 3 = 1.09861: w1 = 0.27015, w2 = 0.41833; combined = (0.23094, 0.09586, 0.36168)."""
    first, second = _pixel([0.7, 0.2, 0.1]), _pixel([0.1, 0.1, 0.8])
    raw = combine(first, second, "entropy", confidence_weight(first, False), confidence_weight(second, False))
    assert raw.flatten().tolist() == pytest.approx([0.17482, 0.07573, 0.30860], abs=1e-5)
    normalised = combine(first, second, "entropy", confidence_weight(first, True), confidence_weight(second, True))
    assert confidence_weight(first, True).item() == pytest.approx(0.27015, abs=1e-5)
    assert normalised.flatten().tolist() == pytest.approx([0.23094, 0.09586, 0.36168], abs=1e-5)
    assert combine(first, second, "max").flatten().tolist() == pytest.approx([0.7, 0.2, 0.8])
    assert combine(first, second, "mean").flatten().tolist() == pytest.approx([0.4, 0.15, 0.45])
    assert combine(first, second, "weighted", weights=(0.25, 0.75)).flatten().tolist() == pytest.approx([0.25, 0.125, 0.625])
    assert combine(first, second, "intersection").flatten().tolist() == pytest.approx([0.1, 0.1, 0.1])
    # A one-hot answer has weight 1 and a uniform one weight 0 once normalised; raw, uniform over 4 goes negative.
    assert confidence_weight(_pixel([1.0, 0.0, 0.0]), True).item() == pytest.approx(1.0, abs=1e-6)
    assert confidence_weight(_pixel([1 / 3] * 3), True).item() == pytest.approx(0.0, abs=1e-6)
    assert confidence_weight(_pixel([0.25] * 4), False).item() == pytest.approx(1 - math.log(4), abs=1e-6)


def test_two_vocabularies_are_aligned_through_each_others_background():
    """In-model over [bg, class 1] = (0.3, 0.7), out-model over [bg, class 2] = (0.6, 0.4), union [bg, 1, 2]:
    lifted in-model = (0.3 x 0.6, 0.7, 0.3 x 0.4) = (0.18, 0.7, 0.12);
    lifted out-model = (0.6 x 0.3, 0.6 x 0.7, 0.4) = (0.18, 0.42, 0.4)."""
    in_model, out_model = _pixel([0.3, 0.7]), _pixel([0.6, 0.4])
    assert lift(in_model, (1,), out_model, (2,), (1, 2)).flatten().tolist() == pytest.approx([0.18, 0.7, 0.12])
    assert lift(out_model, (2,), in_model, (1,), (1, 2)).flatten().tolist() == pytest.approx([0.18, 0.42, 0.4])
    # Members that know the same classes are unchanged; a class neither knows is an error.
    assert lift(in_model, (1,), _pixel([0.5, 0.5]), (1,), (1,)).flatten().tolist() == pytest.approx([0.3, 0.7])
    with pytest.raises(ValueError):
        lift(in_model, (1,), out_model, (2,), (1, 2, 3))


# --- the task and the loop -------------------------------------------------------------------------
def test_queries_and_supports(tiny_shapes):
    task = GFSSTask(tiny_shapes, shot=2, seed=3, limit=None, transform=SquashResize(32))
    expected_queries = sorted({image_id for image_id, _ in tiny_shapes.labelled_pairs("test")})
    assert sorted(task.query_ids) == expected_queries and all(image_id.startswith("val/") for image_id in task.query_ids)
    assert task.classes.novel == (1, 2, 3, 4, 5) and task.classes.in_classes == (0, *range(6, 21))
    classes_of: dict[str, set] = {}
    for image_id, class_id in tiny_shapes.labelled_pairs("train"):
        classes_of.setdefault(image_id, set()).add(class_id)
    for class_id, ids in zip(task.classes.novel, task.support_ids):
        assert len(set(ids)) == 2 and all(image_id.startswith("train/") and class_id in classes_of[image_id] for image_id in ids)
    supports = task.support_set()
    assert supports.images.shape == (5, 2, 3, 32, 32) and (supports.masks == 1).flatten(1).any(dim=1).all()
    again = GFSSTask(tiny_shapes, shot=2, seed=3, limit=None, transform=SquashResize(32))
    other = GFSSTask(tiny_shapes, shot=2, seed=4, limit=None, transform=SquashResize(32))
    assert again.fingerprint() == task.fingerprint() != other.fingerprint()
    assert GFSSTask(tiny_shapes, shot=2, seed=3, limit=5, transform=SquashResize(32)).query_ids == task.query_ids[:5]


class _Constant:
    """A dense model that labels every pixel with one class (its vocabulary: that class)."""

    registry_name = "constant"

    def __init__(self, class_id: int):
        self.class_id = class_id

    def eval(self):
        return self

    def valid_size(self, height, width):
        return height, width

    def predict_vocabulary(self, images):
        probabilities = torch.zeros(images.shape[0], 2, *images.shape[-2:])
        probabilities[:, 1] = 1.0
        return VocabularyPrediction(probabilities, (self.class_id,))


def test_the_loop_scores_as_counted_directly(tiny_shapes):
    """A model that says "class 7" everywhere: IoU_7 = pixels of 7 / valid pixels over the queries, every
    other class 0; background (a class in shapes) 0 too."""
    transform = SquashResize(32)
    task = GFSSTask(tiny_shapes, shot=1, seed=0, limit=12, transform=transform)
    scores = evaluate_gfss(_Constant(7), task, GFSSEvaluationSettings(batch_size=5, progress=False), tiny_shapes.class_names)
    sevens = valid = 0
    for image_id in task.query_ids:
        _, label = transform(*tiny_shapes.load_labelled(image_id, "test"))
        sevens += int((label == 7).sum())
        valid += int((label != 255).sum())
    result = scores["approaches"][""]
    names = tiny_shapes.class_names
    assert result["class_iou"][names[7]] == pytest.approx(100.0 * sevens / valid)
    scored_in = [c for c in task.classes.in_classes if result["class_iou"]["background" if c == 0 else names[c]] is not None]
    assert result["miou_in"] == pytest.approx(100.0 * sevens / valid / len(scored_in)) and result["miou_out"] == 0.0
    assert scores["queries"] == 12


# --- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cityscapes_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    make_cityscapes(root, train=16, val=6, height=256, width=512)
    return root


def test_a_combination_run_on_cityscapes_writes_every_approach_and_a_table(cityscapes_path, tmp_path, capsys):
    run_dir = tmp_path / "combine"
    code = main(["--task", "gfss", "--benchmark", "cityscapes", "--datapath", str(cityscapes_path), "--vocab-config", "004",
                 "--method", "combine", "--members", "supervised,panet", "--train-steps", "1", "--eval-bsz", "3",
                 "--logpath", str(run_dir), *SMALL_NETWORK, *TINY])
    assert code == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["task"] == "gfss" and results["configuration"] == "config 004" and results["episodes"] == 6
    assert results["classes"]["out"] == [24, 25, 26, 27] and results["classes"]["background"] is False
    assert set(results["approaches"]) == {"member:first", "member:second", *(f"rule:{rule}" for rule in ("entropy", "max", "mean", "weighted", "intersection"))}
    roles = {key: approach["role"] for key, approach in results["approaches"].items()}
    assert roles["member:first"] == "in-classes" and roles["member:second"] == "novel-only" and roles["rule:max"] == "combination"
    assert results["miou_all"] == results["approaches"]["rule:entropy"]["miou_all"]
    assert results["combination"]["entropy"].startswith("normalised")
    assert results["approaches"]["member:first"]["miou_out"] == 0.0  # the in-model never names a novel class
    table = capsys.readouterr().out
    assert "combination minus member" in table and "entropy: supervised + panet" in table
    capsys.readouterr()
    assert main(["--table", str(run_dir), "--format", "csv"]) == 0
    csv_text = capsys.readouterr().out
    assert "config 004" in csv_text and csv_text.count("\n") == 1 + 7 * 4
    # Queries are resampled as a whole (no class strata, which would leave each gfss query alone in
    # its stratum): an interval is a point only where every query's score is the same.
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    spread = [row for row in rows if row["ci_low"] and float(row["ci_low"]) < float(row["ci_high"])]
    assert spread and all(float(row["ci_low"]) <= float(row["value"]) <= float(row["ci_high"]) for row in spread)
    assert main(["--table", str(run_dir), "--format", "latex"]) == 0
    assert "\\multicolumn{4}{c}{config 004}" in capsys.readouterr().out


def test_configuration_000_has_no_out_classes(cityscapes_path, tmp_path, capsys):
    run_dir = tmp_path / "none"
    code = main(["--task", "gfss", "--benchmark", "cityscapes", "--datapath", str(cityscapes_path), "--vocab-config", "000",
                 "--method", "supervised", "--train-steps", "1", "--logpath", str(run_dir), *SMALL_NETWORK, *TINY])
    assert code == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["classes"]["out"] == [] and results["miou_out"] is None and results["hmean"] is None
    assert results["miou_all"] == pytest.approx(results["miou_in"])


def test_shapes_base_model_and_upper_bound_share_a_table(tiny_datapath, tmp_path, capsys):
    for name, extra in (("base", []), ("upper", ["--train-classes", "all"]), ("novel", ["--method", "panet"])):
        arguments = ["--task", "gfss", "--datapath", str(tiny_datapath), "--method", "supervised", "--train-steps", "1",
                     "--episodes", "8", "--logpath", str(tmp_path / name), *TINY, *extra]
        assert main(arguments) == 0, capsys.readouterr().err
    upper = json.loads((tmp_path / "upper" / "results.json").read_text())
    assert upper["train_classes"] == "all" and upper["approaches"][""]["role"] == "upper bound"
    assert upper["trained_on"][0]["class_ids"] == list(range(1, 21))
    capsys.readouterr()
    assert main(["--table", str(tmp_path / "*")]) == 0
    table = capsys.readouterr().out
    assert "| novel-only  | panet" in table and "| in-classes  | supervised" in table and "| upper bound | supervised" in table


def test_bf16_gfss_runs_and_stays_close(tiny_datapath, tmp_path, capsys):
    """--amp bf16 reaches the gfss loop (the rules get float32 probabilities) and moves scores little."""
    scores = {}
    for amp in ("off", "bf16"):
        arguments = ["--task", "gfss", "--datapath", str(tiny_datapath), "--method", "combine", "--train-steps", "0",
                     "--episodes", "6", "--amp", amp, "--logpath", str(tmp_path / amp), *TINY]
        assert main(arguments) == 0, capsys.readouterr().err
        scores[amp] = json.loads((tmp_path / amp / "results.json").read_text())
    assert scores["bf16"]["amp"] == "bf16" and scores["bf16"]["approaches"].keys() == scores["off"]["approaches"].keys()
    assert abs(scores["bf16"]["miou_all"] - scores["off"]["miou_all"]) < 10


def test_a_foreign_checkpoint_loads_for_a_gfss_run(tiny_datapath, tmp_path, capsys):
    """--load reads the DML repo's ckpt.pth as dml_knn (fsbench.model_files), as ordinary runs do."""
    from tests.test_dml_original import write_original_checkpoint

    write_original_checkpoint(tmp_path / "original")
    arguments = ["--task", "gfss", "--datapath", str(tiny_datapath), "--method", "dml_knn", "--eval", "--load",
                 str(tmp_path / "original" / "ckpt.pth"), "--episodes", "4", "--logpath", str(tmp_path / "run"), *TINY]
    assert main(arguments) == 0, capsys.readouterr().err
    assert "does not record what it was trained on" in capsys.readouterr().out
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["started_from"]["format"] == "dml_segmentation" and results["episodes"] == 4
    assert results["approaches"][""]["role"] == "novel-only"  # a few-shot method names only the novel classes


@pytest.mark.parametrize("arguments,message", [
    (["--train-classes", "all"], "applies to --task gfss only"),
    (["--task", "gfss", "--method", "combine", "--members", "supervised,nothing"], "neither a registered method"),
    (["--task", "gfss", "--replay", "hsnet"], "--replay does not apply"),
    (["--method", "panet", "--members", "supervised,panet"], "has no setting members"),
    (["--task", "gfss", "--method", "panet", "--weak"], "--weak does not apply to --task gfss"),
])
def test_wrong_settings_are_one_line(arguments, message, tiny_datapath, tmp_path, capsys):
    assert main(["--datapath", str(tiny_datapath), "--logpath", str(tmp_path / "x"), *TINY, *arguments]) == 1
    error = capsys.readouterr().err.strip()
    assert message in error and "\n" not in error and not (tmp_path / "x").exists()


def test_gfss_needs_a_benchmark_that_labels_every_class(tmp_path):
    from benchmarks.fss import Fss1000
    from fsbench.fixtures import make_fss

    make_fss(tmp_path, classes=6, per_class=3, size=16)
    with pytest.raises(FsbenchError, match="does not support --task gfss"):
        GFSSTask(Fss1000(tmp_path, 0), shot=1, seed=0, limit=None, transform=SquashResize(16))
