"""pascal: fold classes, lists (HSNet files or built from masks with the size filter), caching, loading,
and every bad input it must refuse in one line."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from benchmarks.base import BenchmarkOptions
from fsbench.fixtures import make_voc
from benchmarks.pascal import Pascal
from fsbench.cli import main
from fsbench.errors import FsbenchError
from fsbench.sampler import EpisodeSampler


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    datapath = tmp_path_factory.mktemp("voc")
    return datapath, make_voc(datapath)


def _expected_pairs(labels: dict, classes: set[int]) -> list[tuple[str, int]]:
    return sorted(
        (image_id, class_id)
        for image_id, label in labels.items()
        for class_id in classes
        if int((label == class_id).sum()) >= 2 * 32 * 32
    )


@pytest.mark.parametrize("fold", range(4))
def test_fold_classes_are_contiguous_blocks_of_five(voc, fold):
    benchmark = Pascal(voc[0], fold)
    assert benchmark.classes("test") == list(range(5 * fold + 1, 5 * fold + 6))
    assert benchmark.classes("train") == [c for c in range(1, 21) if not 5 * fold < c <= 5 * fold + 5]
    assert benchmark.class_names[15] == "person"


def test_lists_built_from_masks_keep_classes_of_at_least_2x32x32_pixels(voc):
    datapath, labels = voc
    benchmark = Pascal(datapath, 1)
    assert sorted(benchmark.pairs("test")) == _expected_pairs(labels["val"], set(range(6, 11)))
    assert sorted(benchmark.pairs("train")) == _expected_pairs(labels["train"], set(range(1, 21)) - set(range(6, 11)))
    # The generator draws small (30x30 = 900 px) objects on every third image: some pairs were filtered.
    present = {(i, c) for i, label in labels["val"].items() for c in range(6, 11) if (label == c).any()}
    assert len(present) > len(benchmark.pairs("test"))


def test_size_threshold_is_inclusive(tmp_path):
    # class 3: 2047 px (filtered), class 4: 2048 px (kept); boundaries off so counts are exact.
    objects = {"train": [[(1, 0, 0, 64, 64)]] * 2, "val": [[(3, 0, 0, 23, 89), (4, 30, 0, 32, 64)]]}
    objects["val"][0][0] = (3, 0, 0, 1, 1)
    labels = make_voc(tmp_path, objects=objects, height=100, width=100)
    label = labels["val"]["2009_000000"]
    label[:] = 0
    label[:2047 // 100, :] = 3
    label[2047 // 100, : 2047 % 100] = 3
    label[50:82, :64] = 4
    from PIL import Image

    Image.fromarray(label).save(tmp_path / "VOC2012/SegmentationClassAug/2009_000000.png")
    assert int((label == 3).sum()) == 2047 and int((label == 4).sum()) == 2048
    assert Pascal(tmp_path, 0).pairs("test") == [("2009_000000", 4)]


def test_training_labels_hide_novel_classes_and_keep_ignore(voc):
    datapath, labels = voc
    benchmark = Pascal(datapath, 0)
    image_id = next(i for i, label in labels["train"].items() if np.isin(label, [1, 2, 3, 4, 5]).any())
    image, label = benchmark.load(image_id, "train")
    expected = labels["train"][image_id].astype(np.int64)
    expected[np.isin(expected, [1, 2, 3, 4, 5])] = 0
    assert torch.equal(label, torch.from_numpy(expected))
    assert image.shape == (3, *expected.shape) and image.dtype == torch.uint8
    _, test_label = benchmark.load(image_id, "test")
    assert torch.equal(test_label, torch.from_numpy(labels["train"][image_id].astype(np.int64)))


def test_episodes_through_the_sampler(voc):
    benchmark = Pascal(voc[0], 0)
    sampler = EpisodeSampler(benchmark, "test", shot=1, episodes=4, seed=3)
    for index in range(2):
        episode = sampler[index]
        assert episode.support_images.shape == (1, 1, 3, 400, 400)
        assert set(episode.query_masks.unique().tolist()) <= {0, 1, 255} and (episode.query_masks == 1).any()
        assert episode.class_ids.item() in benchmark.classes("test")


def test_a_class_with_fewer_images_than_shot_plus_one_is_refused(voc):
    benchmark = Pascal(voc[0], 0)
    smallest = min(benchmark.classes("test"), key=lambda c: len(benchmark.images_of_class("test", c)))
    shot = len(benchmark.images_of_class("test", smallest))
    with pytest.raises(FsbenchError, match=f"class '{benchmark.class_names[smallest]}' .* has {shot} images; {shot}-shot"):
        EpisodeSampler(benchmark, "test", shot=shot, episodes=1)


def test_hsnet_lists_are_read_when_present(voc, tmp_path):
    datapath, _ = voc
    split_dir = tmp_path / "splits"
    for k in range(4):
        (split_dir / "pascal/trn").mkdir(parents=True, exist_ok=True)
        (split_dir / "pascal/val").mkdir(parents=True, exist_ok=True)
        (split_dir / f"pascal/trn/fold{k}.txt").write_text(f"2008_000000__{5 * k + 1}\n2008_000001__{5 * k + 2}\n")
        (split_dir / f"pascal/val/fold{k}.txt").write_text(f"2009_000003__{5 * k + 3}\n2009_000004__{5 * k + 4}\n")
    benchmark = Pascal(datapath, 2, BenchmarkOptions(split_dir=split_dir))
    assert benchmark.pairs("test") == [("2009_000003", 13), ("2009_000004", 14)]
    assert sorted(benchmark.pairs("train")) == sorted(
        [("2008_000000", c) for c in (1, 6, 16)] + [("2008_000001", c) for c in (2, 7, 17)]
    )
    described = benchmark.describe()
    assert described["lists"].startswith("HSNet lists") and described["list_fingerprint"] != Pascal(datapath, 2).describe()["list_fingerprint"]
    (split_dir / "pascal/val/fold2.txt").write_text("2009_000003_13\n")
    with pytest.raises(FsbenchError, match=r"fold2.txt:1: expected '<image id>__<class>'"):
        Pascal(datapath, 2, BenchmarkOptions(split_dir=split_dir))
    (split_dir / "pascal/val/fold2.txt").write_text("2009_000003__1\n")
    with pytest.raises(FsbenchError, match="outside fold 2's test classes"):
        Pascal(datapath, 2, BenchmarkOptions(split_dir=split_dir))


def test_cache_is_reused_rebuilt_when_stale_and_never_left_half_written(tmp_path, monkeypatch):
    make_voc(tmp_path, train=4, val=4)
    Pascal(tmp_path, 0)
    cache = tmp_path / "cache/pascal/pixel_counts.json"
    assert cache.is_file()

    def fail(self, mask_path):
        raise KeyboardInterrupt

    monkeypatch.setattr(Pascal, "_count_classes", fail)
    Pascal(tmp_path, 3)  # warm: reads the cache, never decodes a mask
    mask = tmp_path / "VOC2012/SegmentationClassAug/2008_000000.png"
    os.utime(mask, ns=(mask.stat().st_atime_ns, mask.stat().st_mtime_ns + 10**9))
    before = cache.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        Pascal(tmp_path, 0)  # stale: rebuilds, and the interrupted rebuild leaves the old file intact
    assert cache.read_bytes() == before
    assert [p.name for p in cache.parent.iterdir()] == ["pixel_counts.json"]
    monkeypatch.undo()
    Pascal(tmp_path, 0)
    assert json.loads(cache.read_text())["key"] != json.loads(before)["key"]


def test_missing_tree_names_the_expected_folder(tmp_path):
    with pytest.raises(FsbenchError, match=r"VOC2012.*not found: expected .*VOC2012 \(see data/README.md"):
        Pascal(tmp_path, 0)


def test_bad_pairs_are_refused_or_skipped_and_counted(tmp_path):
    make_voc(tmp_path, train=12, val=12)
    from PIL import Image

    Image.fromarray(np.zeros((10, 10), dtype=np.uint8)).save(tmp_path / "VOC2012/SegmentationClassAug/2009_000002.png")
    with pytest.raises(FsbenchError, match=r"mask .*2009_000002.png is 10x10 but its image .*2009_000002.jpg is 120x160"):
        Pascal(tmp_path, 0)
    (tmp_path / "VOC2012/SegmentationClassAug/2009_000005.png").unlink()
    benchmark = Pascal(tmp_path, 0, BenchmarkOptions(skip_bad=True))
    assert benchmark.describe()["skipped_bad_files"] == 2
    assert not {"2009_000002", "2009_000005"} & {image for image, _ in benchmark.pairs("test")}


def test_corrupt_image_is_a_one_line_error_at_load(tmp_path):
    make_voc(tmp_path, train=4, val=4)
    benchmark = Pascal(tmp_path, 0)
    image_path = tmp_path / "VOC2012/JPEGImages/2009_000000.jpg"
    image_path.write_bytes(image_path.read_bytes()[:300])
    with pytest.raises(FsbenchError, match=r"cannot decode image .*2009_000000.jpg: corrupt or truncated") as caught:
        benchmark.load("2009_000000", "test")
    assert "\n" not in str(caught.value)


def test_cli_end_to_end_and_bad_input(voc, tmp_path, capsys):
    datapath, _ = voc
    code = main(["--benchmark", "pascal", "--protocol", "pfenet", "--datapath", str(datapath), "--fold", "0", "--backbone", "resnet18",
                 "--pretrained", "false", "--train-steps", "0", "--episodes", "2", "--img-size", "64", "--nworker", "0",
                 "--no-progress", "--logpath", str(tmp_path / "run")])
    assert code == 0
    results = json.loads((tmp_path / "run/results.json").read_text())
    info = results["benchmark_info"]
    assert results["protocol"] == "pfenet" and results["eval_resolution"] == "original"
    assert info["protocol"] == "pfenet" and results["episodes"] == 2
    assert info["lists"].startswith("built from masks") and len(info["list_fingerprint"]) == 16
    capsys.readouterr()
    assert main(["--benchmark", "pascal", "--datapath", str(tmp_path / "nowhere"), "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "data/README.md" in error and "Traceback" not in error
