"""coco: masks equal pycocotools' decoding, fold class sets, the size filter, the cached index, the
pre-rendered PNG variant, and bad inputs."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from benchmarks import coco_index
from benchmarks.base import BenchmarkOptions
from benchmarks.coco import Coco
from fsbench.coco_annotations import annotation_rle
from fsbench.fixtures import COCO_CATEGORY_IDS, make_coco2014
from fsbench.errors import FsbenchError
from fsbench.sampler import EpisodeSampler
from pycocotools import mask as mask_utils


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory):
    datapath = tmp_path_factory.mktemp("coco")
    instances = make_coco2014(datapath)
    return datapath, instances


def _reference_labels(instances_path) -> dict[str, np.ndarray]:
    """Independent label maps: pycocotools' annToMask per annotation, class unions painted largest
    first (ties by class), class = sorted-category index + 1."""
    api = COCO(str(instances_path))
    to_class = {category: index + 1 for index, category in enumerate(sorted(api.getCatIds()))}
    labels = {}
    for image in api.loadImgs(api.getImgIds()):
        unions: dict[int, np.ndarray] = {}
        for annotation in api.loadAnns(api.getAnnIds(imgIds=image["id"], iscrowd=None)):
            mask = api.annToMask(annotation).astype(bool)
            class_id = to_class[annotation["category_id"]]
            unions[class_id] = unions.get(class_id, np.zeros_like(mask)) | mask
        label = np.zeros((image["height"], image["width"]), dtype=np.int64)
        for class_id, mask in sorted(unions.items(), key=lambda item: (-int(item[1].sum()), item[0])):
            label[mask] = class_id
        labels[image["file_name"]] = label
    return labels


def test_every_annotation_decodes_as_pycocotools_does(coco_tree):
    datapath, instances = coco_tree
    api = COCO(str(datapath / "COCO2014/annotations/instances_val2014.json"))
    kinds = set()
    for annotation in instances["val"]["annotations"]:
        image = api.imgs[annotation["image_id"]]
        ours = mask_utils.decode(annotation_rle(annotation, image["height"], image["width"], "test"))
        assert np.array_equal(ours, api.annToMask(annotation))
        segmentation = annotation["segmentation"]
        kinds.add("polygons" if isinstance(segmentation, list) else "crowd" if annotation["iscrowd"] else "rle")
    assert kinds == {"polygons", "crowd", "rle"}


@pytest.mark.parametrize("split,folder", [("test", "val2014"), ("train", "train2014")])
def test_label_maps_and_pairs_match_an_independent_rendering(coco_tree, split, folder):
    datapath, _ = coco_tree
    benchmark = Coco(datapath, 2)
    reference = _reference_labels(datapath / f"COCO2014/annotations/instances_{folder}.json")
    novel = set(benchmark.classes("test"))
    allowed = set(benchmark.classes(split))
    expected_pairs = sorted((name, c) for name, label in reference.items() for c in allowed if (label == c).sum() >= 2048)
    assert sorted(benchmark.pairs(split)) == expected_pairs
    filtered = {(name, c) for name, label in reference.items() for c in allowed if 0 < (label == c).sum() < 2048}
    assert filtered, "the generator draws small objects, so the filter must have removed some pairs"
    for name in list(reference)[:12]:
        _, label = benchmark.load(name, split)
        expected = reference[name].copy()
        if split == "train":
            expected[np.isin(expected, sorted(novel))] = 0
        assert torch.equal(label, torch.from_numpy(expected))


def test_fold_class_sets(coco_tree):
    datapath, _ = coco_tree
    for fold in range(4):
        interleaved = Coco(datapath, fold)
        assert interleaved.classes("test") == [index + 1 for index in range(80) if index % 4 == fold]
        assert set(interleaved.classes("train")) == set(range(1, 81)) - set(interleaved.classes("test"))
        contiguous = Coco(datapath, fold, BenchmarkOptions(class_split="contiguous"))
        assert contiguous.classes("test") == list(range(20 * fold + 1, 20 * fold + 21))
    # Category ids have gaps (no 12): class 12 is category 13.
    assert Coco(datapath, 0).class_names[12] == f"category {COCO_CATEGORY_IDS[11]}" == "category 13"
    with pytest.raises(FsbenchError, match="unknown --class-split 'random'"):
        Coco(datapath, 0, BenchmarkOptions(class_split="random"))


def test_episodes_through_the_sampler(coco_tree):
    benchmark = Coco(coco_tree[0], 0)
    episode = EpisodeSampler(benchmark, "test", shot=1, episodes=2, seed=1)[1]
    assert episode.query_images.shape == (1, 3, 400, 400) and (episode.query_masks == 1).any()


def test_index_is_cached_warm_start_builds_nothing_and_stale_caches_rebuild(tmp_path, monkeypatch):
    make_coco2014(tmp_path, train=8, val=8, write_images=False)
    Coco(tmp_path, 0)
    cache = tmp_path / "cache/coco/val2014_instances.index"
    assert cache.is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(coco_index, "build_from_instances", interrupted)
    Coco(tmp_path, 1)  # warm start: header only, nothing built
    instances = tmp_path / "COCO2014/annotations/instances_val2014.json"
    data = json.loads(instances.read_text())
    data["annotations"] = data["annotations"][:-1]
    instances.write_text(json.dumps(data))
    before = cache.read_bytes()
    with pytest.raises(KeyboardInterrupt):
        Coco(tmp_path, 0)  # stale key -> rebuild, interrupted: the old cache is untouched, no partial file
    assert cache.read_bytes() == before and not [p for p in cache.parent.iterdir() if p.name.endswith(".partial")]


def test_pre_rendered_class_pngs_are_accepted(coco_tree, tmp_path):
    datapath, _ = coco_tree
    root = tmp_path / "COCO2014"
    root.mkdir()
    for folder in ("train2014", "val2014"):
        (root / folder).symlink_to(datapath / "COCO2014" / folder)
        (root / "annotations" / folder).mkdir(parents=True)
        for name, label in _reference_labels(datapath / f"COCO2014/annotations/instances_{folder}.json").items():
            Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / folder / name.replace(".jpg", ".png"))
    from_pngs, from_json = Coco(tmp_path, 1), Coco(datapath, 1)
    assert from_pngs.describe()["masks"].startswith("pre-rendered") and from_pngs.pairs("test") == from_json.pairs("test")
    name = from_json.pairs("test")[3][0]
    assert torch.equal(from_pngs.load(name, "test")[1], from_json.load(name, "test")[1])


def _write_tree(tmp_path, mutate) -> None:
    make_coco2014(tmp_path, train=4, val=4)
    path = tmp_path / "COCO2014/annotations/instances_val2014.json"
    data = json.loads(path.read_text())
    result = mutate(data)
    path.write_text(result if isinstance(result, str) else json.dumps(data))


@pytest.mark.parametrize("mutate,message", [
    (lambda data: "{\"images\": [", r"instances_val2014.json is not valid JSON"),
    (lambda data: "", r"instances_val2014.json is empty"),
    (lambda data: data["images"][0].update(file_name="../../../etc/passwd"), r"points outside the dataset root .*; refused"),
    (lambda data: data["images"][0].update(file_name="/etc/passwd"), r"'/etc/passwd' points outside the dataset root"),
    (lambda data: data["annotations"][0].update(category_id=12), r"annotation 1 has unknown category 12"),
    (lambda data: data["annotations"][0].update(image_id=99), r"annotation 1 refers to unknown image 99"),
    (lambda data: data["annotations"][0].update(segmentation=[[1, 2, 3]]), r"annotation 1: polygons must be"),
    (lambda data: data["categories"].pop(), r"COCO-20i needs COCO's 80 categories, found 79"),
])
def test_bad_annotation_files(tmp_path, mutate, message):
    _write_tree(tmp_path, mutate)
    with pytest.raises(FsbenchError, match=message) as caught:
        Coco(tmp_path, 0)
    assert "\n" not in str(caught.value) and "instances_val2014.json" in str(caught.value)


def test_missing_trees_and_images(tmp_path):
    with pytest.raises(FsbenchError, match=r"COCO2014 tree .* not found: expected .*COCO2014 \(see data/README.md"):
        Coco(tmp_path, 0)
    (tmp_path / "COCO2014").mkdir()
    with pytest.raises(FsbenchError, match=r"instances_train2014.json or the class PNG folder .*annotations/train2014"):
        Coco(tmp_path, 0)
    make_coco2014(tmp_path, train=4, val=4)
    benchmark = Coco(tmp_path, 0)
    name = benchmark.pairs("test")[0][0]
    os.remove(tmp_path / "COCO2014/val2014" / name)
    with pytest.raises(FsbenchError, match=f"image file is missing: .*{name}"):
        benchmark.load(name, "test")
    Image.fromarray(np.zeros((10, 12, 3), dtype=np.uint8)).save(tmp_path / "COCO2014/val2014" / name)
    with pytest.raises(FsbenchError, match=r"is 72x96 but its image .* is 10x12"):
        benchmark.load(name, "test")
