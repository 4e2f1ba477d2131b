"""HSNet's pickled COCO-20i lists: read as plain data only, used as the pairs, refused when wrong."""
from __future__ import annotations

import pathlib
import pickle
import shutil

import pytest

from benchmarks.base import BenchmarkOptions
from benchmarks.coco import Coco
from fsbench.fixtures import make_coco2014
from fsbench.errors import FsbenchError

FOLD = 1
TEST_INDICES = [FOLD + 4 * v for v in range(20)]  # interleaved: index % 4 == fold


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A COCO2014 tree without image files (lists only need the index) and HSNet-format lists."""
    datapath = tmp_path_factory.mktemp("coco_lists")
    instances = make_coco2014(datapath, train=12, val=30, height=24, width=32, write_images=False)
    val = [image["file_name"] for image in instances["val"]["images"]]
    train = [image["file_name"] for image in instances["train"]["images"]]
    val_lists = {index: [] for index in range(80)}
    for position, index in enumerate(TEST_INDICES):
        # Unsorted, so list order is visible; one image may serve several classes.
        val_lists[index] = [f"val2014/{val[(7 * position + step) % 30]}" for step in (2, 0, 1)]
    train_lists = {index: ([] if index in TEST_INDICES else [f"train2014/{train[index % 12]}"]) for index in range(80)}
    return datapath, val_lists, train_lists


def _install(datapath, destination, val_lists, train_lists):
    """Copy the tree to ``destination`` and write the lists where data/README.md puts them."""
    shutil.copytree(datapath / "COCO2014", destination / "COCO2014")
    for folder, lists in (("val", val_lists), ("trn", train_lists)):
        (destination / "splits/coco" / folder).mkdir(parents=True, exist_ok=True)
        (destination / f"splits/coco/{folder}/fold{FOLD}.pkl").write_bytes(pickle.dumps(lists))
    return destination


def test_lists_are_the_pairs_in_list_order(coco, tmp_path):
    datapath, val_lists, train_lists = coco
    built = Coco(datapath, FOLD)
    listed = Coco(_install(datapath, tmp_path, val_lists, train_lists), FOLD)
    expected_test = [(name.split("/", 1)[1], index + 1) for index in TEST_INDICES for name in val_lists[index]]
    assert listed.pairs("test") == expected_test
    assert listed.pairs("train") == [(names[0].split("/", 1)[1], index + 1) for index, names in train_lists.items() if names]
    assert listed.images_of_class("test", TEST_INDICES[3] + 1) == [name.split("/", 1)[1] for name in val_lists[TEST_INDICES[3]]]
    described, built_described = listed.describe(), built.describe()
    assert described["lists"] == f"HSNet lists in {tmp_path / 'splits/coco'}"
    assert built_described["lists"].startswith("built from annotations")
    assert described["list_fingerprint"] != built_described["list_fingerprint"]
    assert described["pairs"] == {"train": 60, "test": 60} and described["query_draw"] == "class"
    # The contiguous split is not what the lists hold: they are not used, and --split-dir is refused.
    assert Coco(tmp_path, FOLD, BenchmarkOptions(class_split="contiguous")).describe()["lists"].startswith("built from annotations")
    with pytest.raises(FsbenchError, match="HSNet's COCO lists hold the interleaved split, not --class-split contiguous"):
        Coco(tmp_path, FOLD, BenchmarkOptions(class_split="contiguous", split_dir=tmp_path / "splits"))


class _Touch:
    """Unpickling this would create a file: a reader that runs code from the pickle would be caught."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_a_list_naming_a_global_is_refused_and_nothing_runs(coco, tmp_path):
    datapath, val_lists, train_lists = coco
    marker = tmp_path / "ran"
    poisoned = dict(val_lists)
    poisoned[TEST_INDICES[0]] = [_Touch(marker)]
    root = _install(datapath, tmp_path / "data", poisoned, train_lists)
    with pytest.raises(FsbenchError) as caught:
        Coco(root, FOLD)
    message = str(caught.value)
    assert "\n" not in message and "fold1.pkl names pathlib" in message and "refused" in message
    assert not marker.exists()


@pytest.mark.parametrize("change,message", [
    (lambda lists: lists.update({"person": []}), "key 'person' is not a class index 0..79"),
    (lambda lists: lists.update({TEST_INDICES[0]: "val2014/x.jpg"}), f"the entry of class index {TEST_INDICES[0]} is not a list"),
    (lambda lists: lists[TEST_INDICES[0]].append("train2014/COCO_train2014_000000001000.jpg"), "is not under val2014/"),
    (lambda lists: lists[TEST_INDICES[0]].append("val2014/COCO_val2014_999.jpg"), "'val2014/COCO_val2014_999.jpg' .* is not in the val2014 annotations"),
    (lambda lists: lists.update({0: ["val2014/COCO_val2014_000000002000.jpg"]}), "lists images for class index 0, which is not one of this fold's classes"),
])
def test_malformed_lists_are_refused_in_one_line(coco, tmp_path, change, message):
    datapath, val_lists, train_lists = coco
    changed = {index: list(names) for index, names in val_lists.items()}
    change(changed)
    root = _install(datapath, tmp_path, changed, train_lists)
    with pytest.raises(FsbenchError, match=message) as caught:
        Coco(root, FOLD)
    assert "\n" not in str(caught.value) and "fold1.pkl" in str(caught.value)
