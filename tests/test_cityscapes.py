"""The cityscapes benchmark: the official label table, the vocabulary configurations, and a fake tree in
the real layout read back against the generator's own label maps."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.base import BenchmarkOptions
from benchmarks.cityscapes import Cityscapes
from benchmarks.cityscapes_labels import CONFIGURATIONS, EVALUATED_CLASSES, class_id_lookup, out_of_vocabulary, train_id_of
from fsbench.errors import FsbenchError
from fsbench.fixtures.cityscapes import make_cityscapes

# cityscapesScripts' helpers/labels.py, restated: label id -> train id, for all 34 ids and the license plate.
OFFICIAL_TRAIN_IDS = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2, 12: 3, 13: 4, 14: 255,
    15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15,
    29: 255, 30: 255, 31: 16, 32: 17, 33: 18, -1: -1,
}
# The configurations: 000 removes none, then person, rider, car, truck, bus, train, motorcycle, bicycle.
REMOVED = {
    "000": set(), "001": {24}, "002": {24, 25}, "003": {24, 25, 26}, "004": {24, 25, 26, 27}, "005": {24, 25, 26, 27, 28},
    "006": {24, 25, 26, 27, 28, 31}, "007": {24, 25, 26, 27, 28, 31, 32}, "008": {24, 25, 26, 27, 28, 31, 32, 33},
}


def test_label_ids_map_to_train_ids_as_cityscapes_defines():
    assert {label_id: train_id_of(label_id) for label_id in OFFICIAL_TRAIN_IDS} == OFFICIAL_TRAIN_IDS
    evaluated = sorted(label_id for label_id, train_id in OFFICIAL_TRAIN_IDS.items() if 0 <= train_id < 255)
    assert list(EVALUATED_CLASSES) == evaluated and len(evaluated) == 19
    # Class ids in sorted order are the train ids 0..18 in order.
    assert [OFFICIAL_TRAIN_IDS[label_id] for label_id in EVALUATED_CLASSES] == list(range(19))
    lookup = class_id_lookup()
    for label_id, train_id in OFFICIAL_TRAIN_IDS.items():
        if label_id >= 0:
            assert lookup[label_id] == (label_id if train_id != 255 else 255)
    assert (lookup[34:] == 255).all()


def test_configurations_remove_exactly_the_listed_classes():
    assert CONFIGURATIONS == tuple(REMOVED)
    for configuration, removed in REMOVED.items():
        assert set(out_of_vocabulary(configuration)) == removed
    for bad in ("009", "4", "abc"):
        with pytest.raises(FsbenchError, match="--vocab-config"):
            out_of_vocabulary(bad)


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return root, make_cityscapes(root, train=8, val=12, height=256, width=512)


def _expected_pairs(labels: dict[str, np.ndarray], allowed: set[int]) -> list[tuple[str, int]]:
    pairs = []
    for image_id, label in sorted(labels.items()):
        for class_id in sorted(allowed):
            if int((label == class_id).sum()) >= 2 * 32 * 32:
                pairs.append((image_id, class_id))
    return pairs


@pytest.mark.parametrize("configuration", ["000", "004", "008"])
def test_the_tree_is_read_as_generated(fake_tree, configuration):
    root, labels = fake_tree
    benchmark = Cityscapes(root, 0, BenchmarkOptions(vocab_config=configuration))
    out = REMOVED[configuration]
    assert benchmark.classes("test") == sorted(out)
    assert set(benchmark.classes("train")) == set(EVALUATED_CLASSES) - out
    assert benchmark.pairs("train") == _expected_pairs(labels["train"], set(EVALUATED_CLASSES) - out)
    if out:
        assert benchmark.pairs("test") == _expected_pairs(labels["val"], out)
    else:
        with pytest.raises(FsbenchError, match="no novel class to test"):
            benchmark.pairs("test")
    assert benchmark.labelled_pairs("train") == _expected_pairs(labels["train"], set(EVALUATED_CLASSES))
    assert benchmark.describe()["images"] == {"train": 8, "val": 12} and benchmark.describe()["vocab_config"] == configuration


@pytest.mark.parametrize("out_as,value", [("void", 255), ("background", 0)])
def test_out_of_vocabulary_classes_become_void_or_background_in_training_only(fake_tree, out_as, value):
    root, labels = fake_tree
    benchmark = Cityscapes(root, 0, BenchmarkOptions(vocab_config="008", out_as=out_as))
    image_id, raw = next((image_id, label) for image_id, label in labels["train"].items() if np.isin(label, list(REMOVED["008"])).any())
    raw = torch.from_numpy(raw.astype(np.int64))
    evaluated = torch.tensor(list(EVALUATED_CLASSES))
    expected_full = torch.where(torch.isin(raw, evaluated), raw, torch.full_like(raw, 255))
    image, full = benchmark.load_labelled(image_id, "train")
    assert image.shape == (3, 256, 512) and torch.equal(full, expected_full)
    _, training = benchmark.load(image_id, "train")
    removed = torch.isin(raw, torch.tensor(sorted(REMOVED["008"])))
    assert (training[removed] == value).all() and torch.equal(training[~removed], expected_full[~removed])
    _, test = benchmark.load(image_id, "test")
    assert torch.equal(test, expected_full)


def test_a_missing_label_file_is_one_line_naming_it(tmp_path):
    make_cityscapes(tmp_path, train=2, val=2, height=64, width=128)
    victim = next((tmp_path / "cityscapes" / "gtFine" / "val").rglob("*_gtFine_labelIds.png"))
    victim.unlink()
    with pytest.raises(FsbenchError, match="label file is missing") as error:
        Cityscapes(tmp_path, 0, BenchmarkOptions())
    assert str(victim) in str(error.value) and "\n" not in str(error.value)


def test_ordinary_fss_episodes_test_the_out_of_vocabulary_classes(fake_tree, tmp_path, capsys):
    from fsbench.cli import main

    root, _ = fake_tree
    arguments = ["--benchmark", "cityscapes", "--datapath", str(root), "--vocab-config", "008", "--method", "supervised",
                 "--backbone", "resnet18", "--pretrained", "false", "--train-steps", "1", "--episodes", "3", "--img-size", "32",
                 "--bsz", "2", "--nworker", "0", "--no-progress", "--val-every", "0", "--logpath", str(tmp_path / "fss")]
    assert main(arguments) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "fss" / "results.json").read_text())
    assert set(results["class_iou"]) == {EVALUATED_CLASSES[class_id] for class_id in REMOVED["008"]}
    assert results["benchmark_info"]["vocab_config"] == "008" and results["trained_on"][0]["class_ids"] == sorted(set(EVALUATED_CLASSES) - REMOVED["008"])
