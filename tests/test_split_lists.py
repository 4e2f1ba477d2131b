"""Where standard split lists are found (data/README.md's place and --split-dir), and the honest fallback."""
from __future__ import annotations

import shutil

import pytest

from benchmarks.base import BenchmarkOptions
from fsbench.fixtures import make_fss, make_voc
from benchmarks.fss import Fss1000
from benchmarks.pascal import Pascal
from fsbench.errors import FsbenchError


def _write_pascal_lists(folder, val_ids, train_ids):
    """HSNet-format lists: fold k's files hold fold k's classes (5k+1..5k+5)."""
    (folder / "trn").mkdir(parents=True)
    (folder / "val").mkdir()
    for fold in range(4):
        (folder / f"trn/fold{fold}.txt").write_text("".join(f"{image}__{5 * fold + 1 + i % 5:02d}\n" for i, image in enumerate(train_ids)))
        (folder / f"val/fold{fold}.txt").write_text("".join(f"{image}__{5 * fold + 1 + i % 5:02d}\n" for i, image in enumerate(val_ids)))
    return [(image, 1 + i % 5) for i, image in enumerate(val_ids)]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    datapath = tmp_path_factory.mktemp("voc")
    labels = make_voc(datapath, train=10, val=10)
    return datapath, list(labels["val"]), list(labels["train"])


@pytest.mark.parametrize("placement", ["datapath", "split-dir holding pascal/", "split-dir is pascal/"])
def test_pascal_lists_are_found_in_each_documented_place(voc, tmp_path, placement):
    source, val_ids, train_ids = voc
    datapath = tmp_path / "data"
    shutil.copytree(source / "VOC2012", datapath / "VOC2012")
    lists_root = datapath / "splits" if placement == "datapath" else tmp_path / "hsnet_splits"
    expected = _write_pascal_lists(lists_root / "pascal", val_ids[:7], train_ids)
    split_dir = {"datapath": None, "split-dir holding pascal/": lists_root, "split-dir is pascal/": lists_root / "pascal"}[placement]
    benchmark = Pascal(datapath, 0, BenchmarkOptions(split_dir=split_dir))
    assert benchmark.pairs("test") == expected
    described = benchmark.describe()
    assert described["standard_split"] is True
    assert described["lists"] == f"HSNet lists in {lists_root / 'pascal'}"
    assert described["pairs"]["test"] == 7


def test_pascal_without_lists_says_it_built_them(voc, tmp_path):
    source, _, _ = voc
    shutil.copytree(source / "VOC2012", tmp_path / "VOC2012")
    (tmp_path / "splits" / "trn").mkdir(parents=True)  # lists in the old, wrong place are not read
    (tmp_path / "splits/trn/fold0.txt").write_text("2009_000000__01\n")
    described = Pascal(tmp_path, 0).describe()
    assert described["standard_split"] is False
    assert described["lists"].startswith("built from masks") and str(tmp_path / "splits" / "pascal") in described["lists"]


def test_an_incomplete_lists_folder_is_an_error_not_a_silent_fallback(voc, tmp_path):
    source, val_ids, train_ids = voc
    shutil.copytree(source / "VOC2012", tmp_path / "VOC2012")
    _write_pascal_lists(tmp_path / "splits/pascal", val_ids, train_ids)
    (tmp_path / "splits/pascal/trn/fold3.txt").unlink()
    with pytest.raises(FsbenchError, match=r"split lists folder .*splits/pascal: split list .*trn/fold3.txt is missing"):
        Pascal(tmp_path, 0)
    with pytest.raises(FsbenchError, match=r"--split-dir .*: split list .*trn/fold3.txt is missing"):
        Pascal(tmp_path, 0, BenchmarkOptions(split_dir=tmp_path / "splits"))


def test_fss_lists_are_found_under_the_datapath(tmp_path):
    names = make_fss(tmp_path, classes=6, per_class=3, size=16)
    assert Fss1000(tmp_path, 0).describe()["standard_split"] is False
    (tmp_path / "splits/fss").mkdir(parents=True)
    (tmp_path / "splits/fss/trn.txt").write_text("\n".join(names[:3]) + "\n")
    (tmp_path / "splits/fss/val.txt").write_text(names[3] + "\n")
    (tmp_path / "splits/fss/test.txt").write_text("\n".join(names[4:]) + "\n")
    benchmark = Fss1000(tmp_path, 0)
    described = benchmark.describe()
    assert described["standard_split"] is True and described["class_split"] == f"lists in {tmp_path / 'splits/fss'}"
    assert [benchmark.class_names[class_id] for class_id in benchmark.classes("test")] == names[4:]
