"""fss: the 128 threshold, class splits (lists or a flagged seeded split), the every-test-image-once
protocol, and bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.base import BenchmarkOptions
from fsbench.fixtures import make_fss
from benchmarks.fss import Fss1000, class_id_of
from fsbench.errors import FsbenchError
from fsbench.protocols import get_protocol
from fsbench.sampler import EpisodeSampler


@pytest.fixture(scope="module")
def fss_tree(tmp_path_factory):
    datapath = tmp_path_factory.mktemp("fss")
    return datapath, make_fss(datapath)


def test_masks_are_thresholded_at_128(fss_tree):
    datapath, names = fss_tree
    benchmark = Fss1000(datapath, 0)
    image_id, class_id = benchmark.pairs("test")[0]
    stored = np.array(Image.open(datapath / "FSS-1000" / f"{image_id}.png"))
    _, label = benchmark.load(image_id, "test")
    assert torch.equal(label, torch.from_numpy(np.where(stored >= 128, class_id, 0)))
    assert (stored == 127).any() and (stored == 128).any()


def test_class_ids_skip_the_ignore_value():
    assert [class_id_of(p) for p in (0, 253, 254, 255)] == [1, 254, 256, 257]


def test_seeded_split_is_flagged_non_standard_and_lists_are_standard(fss_tree, tmp_path):
    datapath, names = fss_tree
    seeded = Fss1000(datapath, 0)
    described = seeded.describe()
    assert described["standard_split"] is False and described["classes"] == {"train": 6, "val": 3, "test": 3}
    assert set(seeded.classes("train")).isdisjoint(seeded.classes("test"))
    assert seeded.classes("test") == Fss1000(datapath, 0).classes("test")  # seeded: the same every time
    lists = tmp_path / "splits/fss"
    lists.mkdir(parents=True)
    (lists / "trn.txt").write_text("\n".join(names[:8]) + "\n")
    (lists / "val.txt").write_text(names[8] + "\n")
    (lists / "test.txt").write_text("\n".join(names[9:]) + "\n")
    standard = Fss1000(datapath, 0, BenchmarkOptions(split_dir=tmp_path / "splits"))
    assert standard.describe()["standard_split"] is True
    assert standard.classes("test") == [class_id_of(9), class_id_of(10), class_id_of(11)]
    (lists / "test.txt").write_text("no_such_class\n")
    with pytest.raises(FsbenchError, match=r"test.txt: class 'no_such_class' has no folder"):
        Fss1000(datapath, 0, BenchmarkOptions(split_dir=tmp_path / "splits"))


def test_every_test_image_is_the_query_once(fss_tree):
    benchmark = Fss1000(fss_tree[0], 0)
    episodes = get_protocol("hsnet").episodes(benchmark)
    assert episodes == len(benchmark.pairs("test")) == 30
    sampler = EpisodeSampler(benchmark, "test", shot=5, episodes=episodes)
    queries = [sampler.plan(index).query_ids[0] for index in range(episodes)]
    assert sorted(queries) == sorted(image for image, _ in benchmark.pairs("test"))


def test_missing_tree_missing_mask_and_size_mismatch(tmp_path):
    with pytest.raises(FsbenchError, match=r"FSS-1000 tree .* not found: expected .*FSS-1000 \(see data/README.md"):
        Fss1000(tmp_path, 0)
    names = make_fss(tmp_path, classes=4, per_class=4)
    (tmp_path / "FSS-1000" / names[0] / "2.png").unlink()
    with pytest.raises(FsbenchError, match=rf"mask file is missing: .*{names[0]}/2.png"):
        Fss1000(tmp_path, 0)
    skipping = Fss1000(tmp_path, 0, BenchmarkOptions(skip_bad=True))
    assert skipping.describe()["skipped_bad_files"] == 1
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "FSS-1000" / names[1] / "1.png")
    with pytest.raises(FsbenchError, match=rf"mask .*{names[1]}/1.png is 8x8 but its image .* is 64x64"):
        skipping.load(f"{names[1]}/1", "train" if skipping.classes("train").count(class_id_of(1)) else "test")
