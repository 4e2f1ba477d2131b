"""coco_json: the three layouts decode to the same label maps (pycocotools' masks), folds over
categories, and bad inputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from benchmarks.base import BenchmarkOptions
from benchmarks.coco_json import CocoJson
from fsbench.fixtures import make_custom, make_labelme
from fsbench.errors import FsbenchError
from fsbench.sampler import EpisodeSampler

LAYOUTS = ("separate_json", "unified", "separate")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("custom")
    return {layout: (root / layout, make_custom(root / layout, layout)) for layout in LAYOUTS}


def _reference(annotations: list[dict], height: int, width: int) -> np.ndarray:
    """Per class the union of pycocotools' decoded masks, painted largest first."""
    unions = {}
    for annotation in annotations:
        segmentation = annotation["segmentation"]
        if isinstance(segmentation, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation["counts"], list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:  # compressed RLE is used as it is, as COCO.annToRLE does
            rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode()}
        mask = mask_utils.decode(rle).astype(bool)
        unions[annotation["category_id"]] = unions.get(annotation["category_id"], np.zeros_like(mask)) | mask
    label = np.zeros((height, width), dtype=np.int64)
    for class_id, mask in sorted(unions.items(), key=lambda item: (-int(item[1].sum()), item[0])):
        label[mask] = class_id
    return label


@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_decode_to_pycocotools_masks(datasets, layout):
    root, coco = datasets[layout]
    benchmark = CocoJson(root, 0, BenchmarkOptions(folds=2))
    assert benchmark.describe()["layout"] == layout
    val = coco["val"]
    keys = sorted(key for key, _ in benchmark.pairs("test"))
    assert keys
    for image in val["images"][:4]:
        key = next(key for key in benchmark.splits["test"].records if key.endswith(image["file_name"]))
        _, label = benchmark.load(key, "test")
        own = [a for a in val["annotations"] if a["image_id"] == image["id"]]
        assert torch.equal(label, torch.from_numpy(_reference(own, image["height"], image["width"])))


def test_folds_over_categories(datasets):
    root, _ = datasets["unified"]
    assert CocoJson(root, 1, BenchmarkOptions(folds=3)).classes("test") == [2, 5]
    contiguous = CocoJson(root, 1, BenchmarkOptions(folds=3, class_split="contiguous"))
    assert contiguous.classes("test") == [3, 4] and contiguous.classes("train") == [1, 2, 5, 6]
    explicit = CocoJson(root, 1, BenchmarkOptions(fold_classes=[[1], [4, 6]]))
    assert explicit.num_folds == 2 and explicit.classes("test") == [4, 6]
    with pytest.raises(FsbenchError, match="fold 2 is out of range"):
        CocoJson(root, 2, BenchmarkOptions(fold_classes=[[1], [4, 6]]))
    with pytest.raises(FsbenchError, match="class 9 of fold 0 is not a category"):
        CocoJson(root, 0, BenchmarkOptions(fold_classes=[[9]]))
    benchmark = CocoJson(root, 0, BenchmarkOptions(folds=2))
    _, label = benchmark.load(benchmark.pairs("train")[0][0], "train")
    assert not torch.isin(label, torch.tensor(benchmark.classes("test"))).any()
    episode = EpisodeSampler(benchmark, "test", way=2, shot=1, episodes=1, task="fscs")[0]
    assert episode.support_images.shape[:2] == (2, 1)


def _rewrite(path, mutate):
    data = json.loads(path.read_text())
    result = mutate(data)
    path.write_text(result if isinstance(result, str) else json.dumps(data))


@pytest.mark.parametrize("layout,file,mutate,message", [
    ("unified", "val/annotations.json", lambda d: "[", r"annotations.json is not valid JSON"),
    ("unified", "val/annotations.json", lambda d: "  ", r"annotations.json is empty"),
    ("unified", "val/annotations.json", lambda d: d.update(images=[]), r"annotations.json: holds no images"),
    ("unified", "val/annotations.json", lambda d: d["images"][0].update(file_name="../../../secret.jpg"), r"points outside the dataset root"),
    ("separate_json", "train/train_0003.json", lambda d: d["images"][0].update(file_name="/etc/hostname"), r"train_0003.json: file name '/etc/hostname' points outside"),
    ("separate_json", "train/train_0003.json", lambda d: d["images"][0].update(height=40), r"train_0003.json: image .* is 48x64 but the JSON says 40x64"),
    ("separate", "label_map.json", lambda d: d.update({"thing 1": 7}), r"label_map.json: category ids must be 1..6 without gaps|mask .* holds value 1"),
])
def test_bad_json_inputs(tmp_path, layout, file, mutate, message):
    make_custom(tmp_path, layout, per_split=4)
    _rewrite(tmp_path / file, mutate)
    with pytest.raises(FsbenchError, match=message) as caught:
        CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))
    assert "\n" not in str(caught.value)


def test_category_ids_with_gaps_are_remapped_with_names(tmp_path):
    coco = make_custom(tmp_path, "unified", per_split=4)
    for split in ("train", "val"):
        def double(data):
            for record in data["categories"]:
                record["id"] *= 2
            for record in data["annotations"]:
                record["category_id"] *= 2
        _rewrite(tmp_path / split / "annotations.json", double)
    benchmark = CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))
    # ids 2, 4, .., 12 become 1..6 in order; the names stay with their categories
    assert benchmark.class_names == {number: f"thing {number}" for number in range(1, 7)}
    image = coco["val"]["images"][0]
    key = next(key for key in benchmark.splits["test"].records if key.endswith(image["file_name"]))
    _, label = benchmark.load(key, "test")
    own = [a for a in coco["val"]["annotations"] if a["image_id"] == image["id"]]
    assert torch.equal(label, torch.from_numpy(_reference(own, image["height"], image["width"])))


def test_labelme_files_in_the_per_image_layout_with_eval_folder(tmp_path):
    expected = make_labelme(tmp_path, val_folder="eval")
    benchmark = CocoJson(tmp_path, 0, BenchmarkOptions(folds=3))
    assert benchmark.describe()["layout"] == "separate_json"
    assert benchmark.class_names == {1: "bird", 2: "cat", 3: "dog"}  # LabelMe labels numbered by name
    for stem, label_map in expected["eval"].items():
        _, label = benchmark.load(f"eval/{stem}.jpg", "test")
        assert torch.equal(label, torch.from_numpy(label_map)), stem
    # A COCO file beside LabelMe files is read by its own format, and a label named as a COCO
    # category joins it.
    coco_dir = tmp_path / "mixed"
    make_labelme(coco_dir, per_split=3)
    (coco_dir / "train" / "train_0000.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "train_0000.jpg", "height": 48, "width": 64}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[2, 2, 20, 2, 20, 20, 2, 20]], "iscrowd": 0}],
        "categories": [{"id": 7, "name": "dog"}],
    }))
    mixed = CocoJson(coco_dir, 0, BenchmarkOptions(folds=3))
    assert mixed.class_names == {1: "dog", 2: "bird", 3: "cat"}


def test_colour_masks_of_the_separate_layout(tmp_path):
    make_custom(tmp_path, "separate", categories=2, per_split=4)
    colours = {1: (255, 0, 0), 2: (0, 255, 0)}
    for mask_path in tmp_path.glob("*/masks/*.png"):
        values = np.array(Image.open(mask_path))
        rgb = np.zeros(values.shape + (3,), dtype=np.uint8)
        for value, colour in colours.items():
            rgb[values == value] = colour
        rgb[0, 0] = (9, 9, 9)  # an anti-aliased stray colour: ignore
        Image.fromarray(rgb).save(mask_path)
    (tmp_path / "label_map.json").write_text(json.dumps({"background": [0, 0, 0], "thing 1": [255, 0, 0], "thing 2": [0, 255, 0]}))
    benchmark = CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))
    assert benchmark.class_names == {1: "thing 1", 2: "thing 2"}
    mask_path = sorted(tmp_path.glob("val/masks/*.png"))[0]
    _, label = benchmark.load(f"val/images/{mask_path.stem}.jpg", "test")
    rgb = np.array(Image.open(mask_path))
    expected = np.where((rgb == (255, 0, 0)).all(-1), 1, np.where((rgb == (0, 255, 0)).all(-1), 2, 0))
    expected[0, 0] = 255
    assert torch.equal(label, torch.from_numpy(expected))


def test_separate_layout_without_images_folder_is_one_line(tmp_path):
    make_custom(tmp_path, "separate", per_split=2)
    (tmp_path / "val" / "images").rename(tmp_path / "val" / "pictures")
    with pytest.raises(FsbenchError, match=r"layout separate needs .*val/images/") as caught:
        CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))
    assert "\n" not in str(caught.value)


def test_separate_layout_mask_problems_and_skipping(tmp_path):
    make_custom(tmp_path, "separate", per_split=6)
    (tmp_path / "val/masks/val_0001.png").unlink()
    with pytest.raises(FsbenchError, match=r"mask file is missing: .*val_0001.png"):
        CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8)).save(tmp_path / "val/masks/val_0002.png")
    benchmark = CocoJson(tmp_path, 0, BenchmarkOptions(folds=2, skip_bad=True))
    assert benchmark.describe()["skipped_bad_files"] == 2
    (tmp_path / "val/masks/val_0001.png").write_bytes(b"")
    with pytest.raises(FsbenchError, match=r"cannot decode mask .*val_0001.png"):
        CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))


def test_missing_dataset_and_unknown_layout(tmp_path):
    with pytest.raises(FsbenchError, match=r"custom dataset folder .* not found: expected .*nothing \(see data/README.md"):
        CocoJson(tmp_path / "nothing", 0)
    (tmp_path / "train").mkdir()
    with pytest.raises(FsbenchError, match=r"cannot tell the layout"):
        CocoJson(tmp_path, 0)
