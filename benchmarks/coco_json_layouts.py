"""Reading custom datasets in the three layouts of rootvisionai/dml_segmentation into one index.

Under the dataset folder, each split folder (train/, val/) holds one of:
- ``separate_json``: ``<name>.<jpg|png>`` beside ``<name>.json``, a COCO-format JSON for that image;
- ``unified``: ``annotations.json``, one COCO-format JSON for the split, images by file_name;
- ``separate``: ``images/<name>.<ext>`` and ``masks/<name>.png`` (pixel value = category id, 255 =
  ignore), categories from ``<dataset>/label_map.json`` ({"name": id}).
Image file names are relative to the split folder and must stay inside the dataset folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.coco_annotations import Rle, check_coco, class_unions, read_json
from benchmarks.files import BadFiles, image_size, inside_root, read_class_png
from fsbench.errors import FsbenchError

LAYOUTS = ("separate_json", "unified", "separate")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
UNIFIED_FILE = "annotations.json"
LABEL_MAP_FILE = "label_map.json"


@dataclass
class Record:
    """One image: where it is and how to get its label map."""

    image_path: Path
    height: int
    width: int
    unions: list[tuple[int, Rle]] = field(default_factory=list)  # JSON layouts, painting order
    mask_path: Path | None = None  # separate layout
    pixels: dict[int, int] = field(default_factory=dict)  # visible pixels per class


@dataclass
class SplitIndex:
    records: dict[str, Record]
    categories: dict[int, str]
    category_source: Path


def detect_layout(root: Path) -> str:
    train = root / "train"
    if (train / "images").is_dir() and (train / "masks").is_dir():
        return "separate"
    if (train / UNIFIED_FILE).is_file():
        return "unified"
    if any(train.glob("*.json")):
        return "separate_json"
    raise FsbenchError(
        f"cannot tell the layout of {root}: expected train/{UNIFIED_FILE}, train/<image>.json files, or "
        f"train/images + train/masks (see data/README.md)"
    )


def read_split(root: Path, split: str, layout: str, bad: BadFiles) -> SplitIndex:
    folder = root / split
    if not folder.is_dir():
        raise FsbenchError(f"custom dataset split folder not found: expected {folder} (see data/README.md)")
    if layout == "unified":
        return _from_coco_files(root, folder, [folder / UNIFIED_FILE], bad)
    if layout == "separate_json":
        files = sorted(folder.glob("*.json"))
        if not files:
            raise FsbenchError(f"no per-image JSON files in {folder} (layout separate_json)")
        return _from_coco_files(root, folder, files, bad)
    return _from_masks(root, folder, bad)


def _from_coco_files(root: Path, folder: Path, files: list[Path], bad: BadFiles) -> SplitIndex:
    records: dict[str, Record] = {}
    categories: dict[int, str] = {}
    for path in files:
        data = check_coco(read_json(path), path)
        for category in data["categories"]:
            if categories.setdefault(category["id"], category["name"]) != category["name"]:
                raise FsbenchError(f"{path}: category {category['id']} is named {category['name']!r}, elsewhere {categories[category['id']]!r}")
        identity = {category["id"]: category["id"] for category in data["categories"]}
        by_image: dict[int, list[dict]] = {}
        for annotation in data["annotations"]:
            by_image.setdefault(annotation["image_id"], []).append(annotation)
        for image in data["images"]:
            relative = str(Path(folder.name) / image["file_name"])
            image_path = inside_root(root, relative, path)
            key = relative
            if key in records:
                raise FsbenchError(f"{path}: image {image['file_name']!r} is described twice")

            def check(image_path=image_path, image=image) -> None:
                if image_size(image_path) != (image["height"], image["width"]):
                    raise FsbenchError(
                        f"{path}: image {image_path} is {'x'.join(map(str, image_size(image_path)))} but the JSON says "
                        f"{image['height']}x{image['width']} (height x width)"
                    )

            if not bad.admit(check):
                continue
            unions = class_unions(by_image.get(image["id"], []), identity, image["height"], image["width"], path)
            records[key] = Record(
                image_path, image["height"], image["width"],
                unions=[(class_id, rle) for class_id, rle, _ in unions],
                pixels={class_id: area for class_id, _, area in unions if area > 0},
            )
    return SplitIndex(records, categories, files[0] if len(files) == 1 else folder)


def _from_masks(root: Path, folder: Path, bad: BadFiles) -> SplitIndex:
    label_map_path = root / LABEL_MAP_FILE
    label_map = read_json(label_map_path)
    if not isinstance(label_map, dict) or not label_map or not all(isinstance(value, int) for value in label_map.values()):
        raise FsbenchError(f"{label_map_path}: expected a non-empty object {{\"class name\": id}}")
    categories = {class_id: name for name, class_id in label_map.items() if class_id != 0}
    records: dict[str, Record] = {}
    image_paths = sorted(path for path in (folder / "images").iterdir() if path.suffix in IMAGE_SUFFIXES)
    if not image_paths:
        raise FsbenchError(f"no images in {folder / 'images'} (layout separate)")
    for image_path in image_paths:
        mask_path = folder / "masks" / f"{image_path.stem}.png"
        outcome: dict = {}

        def check(image_path=image_path, mask_path=mask_path, outcome=outcome) -> None:
            if not mask_path.is_file():
                raise FsbenchError(f"mask file is missing: {mask_path} (for image {image_path})")
            label = read_class_png(mask_path)
            if image_size(image_path) != label.shape:
                raise FsbenchError(
                    f"mask {mask_path} is {label.shape[0]}x{label.shape[1]} but its image {image_path} is "
                    f"{'x'.join(map(str, image_size(image_path)))} (height x width)"
                )
            values, counts = np.unique(label, return_counts=True)
            unknown = [int(value) for value in values if value not in (0, 255) and int(value) not in categories]
            if unknown:
                raise FsbenchError(f"mask {mask_path} holds value {unknown[0]}, which is not a category of {label_map_path}")
            outcome["shape"] = label.shape
            outcome["pixels"] = {int(value): int(count) for value, count in zip(values, counts) if value not in (0, 255)}

        if bad.admit(check):
            key = f"{folder.name}/images/{image_path.name}"
            records[key] = Record(image_path, *outcome["shape"], mask_path=mask_path, pixels=outcome["pixels"])
    return SplitIndex(records, categories, label_map_path)
