"""Reading custom datasets in the layouts of rootvisionai/dml_segmentation into one index.

Under the dataset folder, each split folder (train/, and val/ or eval/) holds one of:
- ``separate_json``: ``<name>.<jpg|png>`` beside ``<name>.json``, each JSON detected by its content:
  LabelMe (``shapes`` with ``label`` / ``points``, ``imageHeight``, ``imageWidth``, ``imagePath``;
  what that repo really reads) or a COCO-format JSON for that image;
- ``unified``: ``annotations.json``, one COCO-format JSON for the split, images by file_name;
- ``separate``: ``images/<name>.<ext>`` and ``masks/<name>.png``, categories from
  ``<dataset>/label_map.json``: {"name": value} for class-index masks (255 = ignore), or
  {"name": [r, g, b]} for colour masks as that repo stores them (black = background; a colour not
  in the map = ignore).
Categories are named; the benchmark numbers them 1..C (COCO ids in increasing order, then LabelMe
labels by name), so COCO files with gaps in their ids are remapped with their names kept.
Image file names are relative to the split folder and must stay inside the dataset folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from benchmarks.files import BadFiles, image_size, inside_root
from fsbench.coco_annotations import Rle, check_coco, class_unions, read_json
from fsbench.errors import FsbenchError
from fsbench.labelme import is_labelme, read_labelme

LAYOUTS = ("separate_json", "unified", "separate")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
UNIFIED_FILE = "annotations.json"
LABEL_MAP_FILE = "label_map.json"
# The DML repo's README names the validation split eval/, its code val/: both are accepted.
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "eval")}


@dataclass
class Record:
    """One image: where it is and how to get its label map (class keys are names until numbered)."""

    image_path: Path
    height: int
    width: int
    unions: list[tuple] = field(default_factory=list)  # JSON layouts: (class, RLE) in painting order
    mask_path: Path | None = None  # separate layout
    pixels: dict = field(default_factory=dict)  # visible pixels per class


@dataclass
class SplitIndex:
    records: dict[str, Record]
    categories: dict[str, tuple]  # name -> sort key: (0, COCO id or mask value), (1, LabelMe label)
    category_source: Path
    mask_values: dict = field(default_factory=dict)  # separate layout: value or (r, g, b) -> name


def split_folder(root: Path, split: str) -> Path:
    for name in SPLIT_FOLDERS.get(split, (split,)):
        if (root / name).is_dir():
            return root / name
    expected = " or ".join(str(root / name) for name in SPLIT_FOLDERS.get(split, (split,)))
    raise FsbenchError(f"custom dataset split folder not found: expected {expected} (see data/README.md)")


def detect_layout(root: Path) -> str:
    train = root / "train"
    if (train / "images").is_dir() or (train / "masks").is_dir():
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
    folder = split_folder(root, split)
    if layout == "unified":
        return _from_json_files(root, folder, [folder / UNIFIED_FILE], bad)
    if layout == "separate_json":
        files = sorted(folder.glob("*.json"))
        if not files:
            raise FsbenchError(f"no per-image JSON files in {folder} (layout separate_json)")
        return _from_json_files(root, folder, files, bad)
    return _from_masks(root, folder, bad)


def _merge_category(categories: dict[str, tuple], coco_ids: dict[int, str], name: str, key: tuple, path: Path) -> None:
    if key[0] == 0:
        if coco_ids.setdefault(key[1], name) != name:
            raise FsbenchError(f"{path}: category {key[1]} is named {name!r}, elsewhere {coco_ids[key[1]]!r}")
        if name in categories and categories[name][0] == 0 and categories[name] != key:
            raise FsbenchError(f"{path}: category {name!r} has id {key[1]}, elsewhere {categories[name][1]}")
    categories[name] = min(categories.get(name, key), key)


def _labelme_as_coco(data: dict, path: Path, folder: Path) -> tuple[dict, dict[str, tuple]]:
    """A LabelMe file as a one-image COCO dict (RLE segmentations, category ids by label), + its labels."""
    parsed = read_labelme(data, path)
    image_name = _labelme_image(parsed.image_path, path, folder)
    labels = sorted({label for label, _ in parsed.shapes})
    ids = {label: number + 1 for number, label in enumerate(labels)}
    annotations = []
    for number, (label, mask) in enumerate(parsed.shapes):
        encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({"id": number + 1, "image_id": 1, "category_id": ids[label], "iscrowd": 0,
                            "segmentation": {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}})
    coco = {
        "images": [{"id": 1, "file_name": image_name, "height": parsed.height, "width": parsed.width}],
        "annotations": annotations,
        "categories": [{"id": ids[label], "name": label} for label in labels],
    }
    return coco, {label: (1, label) for label in labels}


def _labelme_image(image_path: str, json_path: Path, folder: Path) -> str:
    """The image a LabelMe file describes, relative to the split folder: its imagePath when that file
    is there, else the image beside the JSON with the same stem (LabelMe may store another machine's path)."""
    if image_path:
        relative = image_path.replace("\\", "/")
        candidate = (json_path.parent / relative)
        if not Path(relative).is_absolute() and ".." not in Path(relative).parts and candidate.is_file():
            return str(candidate.relative_to(folder))
    for suffix in IMAGE_SUFFIXES:
        if json_path.with_suffix(suffix).is_file():
            return json_path.with_suffix(suffix).name
    raise FsbenchError(f"{json_path}: its image {image_path!r} is not in {folder}, nor an image named {json_path.stem}.<jpg|png>")


def _from_json_files(root: Path, folder: Path, files: list[Path], bad: BadFiles) -> SplitIndex:
    records: dict[str, Record] = {}
    categories: dict[str, tuple] = {}
    coco_ids: dict[int, str] = {}
    for path in files:
        data = read_json(path)
        if is_labelme(data):
            data, labels = _labelme_as_coco(data, path, folder)
            for name, key in labels.items():
                _merge_category(categories, coco_ids, name, key, path)
        else:
            data = check_coco(data, path)
            for category in data["categories"]:
                _merge_category(categories, coco_ids, category["name"], (0, category["id"]), path)
        to_name = {category["id"]: category["name"] for category in data["categories"]}
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
            unions = class_unions(by_image.get(image["id"], []), to_name, image["height"], image["width"], path)
            records[key] = Record(
                image_path, image["height"], image["width"],
                unions=[(name, rle) for name, rle, _ in unions],
                pixels={name: area for name, _, area in unions if area > 0},
            )
    return SplitIndex(records, categories, files[0] if len(files) == 1 else folder)


def _read_label_map(root: Path) -> tuple[dict, dict[str, tuple], Path]:
    """(mask value or colour -> name, name -> sort key, path) from label_map.json."""
    path = root / LABEL_MAP_FILE
    label_map = read_json(path)
    if not isinstance(label_map, dict) or not label_map:
        raise FsbenchError(f"{path}: expected a non-empty object {{\"class name\": value}} or {{\"class name\": [r, g, b]}}")
    values: dict = {}
    categories: dict[str, tuple] = {}
    for position, (name, value) in enumerate(label_map.items()):
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 254:
            key = value
        elif isinstance(value, list) and len(value) == 3 and all(isinstance(channel, int) and 0 <= channel <= 255 for channel in value):
            key = tuple(value)
        else:
            raise FsbenchError(f"{path}: {name!r} maps to {value!r}; expected a mask value 0..254 or an [r, g, b] colour")
        if key in values:
            raise FsbenchError(f"{path}: {name!r} and {values[key]!r} share the value {value!r}")
        values[key] = name
        if key not in (0, (0, 0, 0)):  # 0 / black is background, whatever it is called
            categories[name] = (0, key) if isinstance(key, int) else (0, position)
    kinds = {type(key) for key in values}
    if len(kinds) > 1:
        raise FsbenchError(f"{path}: mixes mask values and colours; use one kind")
    return values, categories, path


def mask_classes(array: np.ndarray, values: dict, class_of: dict[str, int], mask_path: Path) -> np.ndarray:
    """A stored mask -> [H, W] class ids (0 background, 255 ignore) through the label map."""
    label = np.full(array.shape[:2], 255, dtype=np.int64)
    if array.ndim == 3:  # colour masks: unknown colours are ignore
        colours = array[..., :3]
        label[np.all(colours == 0, axis=-1)] = 0
        for colour, name in values.items():
            if isinstance(colour, tuple) and name in class_of:
                label[np.all(colours == np.array(colour), axis=-1)] = class_of[name]
        return label
    label[array == 0] = 0
    for value, name in values.items():
        if isinstance(value, int) and name in class_of:
            label[array == value] = class_of[name]
    unknown = ~np.isin(array, [0, 255] + [value for value in values if isinstance(value, int)])
    if unknown.any():
        raise FsbenchError(f"mask {mask_path} holds value {int(array[unknown][0])}, which is not in {LABEL_MAP_FILE}")
    return label


def read_mask_png(mask_path: Path) -> np.ndarray:
    """[H, W] (class values) or [H, W, 3] (colours) array of a mask PNG; one-line errors."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(mask_path) as mask:
            if mask.mode in ("RGB", "RGBA"):
                return np.asarray(mask.convert("RGB"))
            if mask.mode not in ("L", "P", "I", "I;16", "1"):
                mask = mask.convert("L")
            return np.asarray(mask)
    except FileNotFoundError:
        raise FsbenchError(f"mask file is missing: {mask_path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise FsbenchError(f"cannot decode mask {mask_path}: corrupt or truncated ({error})") from None


def _from_masks(root: Path, folder: Path, bad: BadFiles) -> SplitIndex:
    for sub in ("images", "masks"):
        if not (folder / sub).is_dir():
            raise FsbenchError(f"layout separate needs {folder / sub}/ (images/<name>.jpg with masks/<name>.png); see data/README.md")
    values, categories, label_map_path = _read_label_map(root)
    provisional = {name: number + 1 for number, name in enumerate(sorted(categories, key=categories.get))}
    records: dict[str, Record] = {}
    image_paths = sorted(path for path in (folder / "images").iterdir() if path.suffix in IMAGE_SUFFIXES)
    if not image_paths:
        raise FsbenchError(f"no images in {folder / 'images'} (layout separate)")
    names_by_id = {number: name for name, number in provisional.items()}
    for image_path in image_paths:
        mask_path = folder / "masks" / f"{image_path.stem}.png"
        outcome: dict = {}

        def check(image_path=image_path, mask_path=mask_path, outcome=outcome) -> None:
            if not mask_path.is_file():
                raise FsbenchError(f"mask file is missing: {mask_path} (for image {image_path})")
            label = mask_classes(read_mask_png(mask_path), values, provisional, mask_path)
            if image_size(image_path) != label.shape:
                raise FsbenchError(
                    f"mask {mask_path} is {label.shape[0]}x{label.shape[1]} but its image {image_path} is "
                    f"{'x'.join(map(str, image_size(image_path)))} (height x width)"
                )
            ids, counts = np.unique(label, return_counts=True)
            outcome["shape"] = label.shape
            outcome["pixels"] = {names_by_id[int(i)]: int(count) for i, count in zip(ids, counts) if i not in (0, 255)}

        if bad.admit(check):
            key = f"{folder.name}/images/{image_path.name}"
            records[key] = Record(image_path, *outcome["shape"], mask_path=mask_path, pixels=outcome["pixels"])
    return SplitIndex(records, categories, label_map_path, mask_values=values)
