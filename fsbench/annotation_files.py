"""A support image's annotation as users have it -> one boolean mask per label name.

Detected per file: a LabelMe JSON (``shapes``), a COCO JSON (``images`` / ``annotations`` /
``categories``; the entry whose file name matches the image, or its only image), or a mask PNG:
- single-channel: holding 0 and one other value -> one label, "foreground"; otherwise each value
  1..254 is a label named by its value ("1", "2", ...), 255 is ignore;
- colour (RGB): each colour but black is a label named by its hex code ("#ff0000").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from pycocotools import mask as mask_utils

from fsbench.coco_annotations import annotation_rle, check_coco, read_json
from fsbench.errors import FsbenchError
from fsbench.labelme import is_labelme, read_labelme

IGNORE_VALUE = 255


@dataclass
class SupportLabels:
    """masks: label name -> [H, W] bool (labels may overlap); ignore: [H, W] bool or None."""

    masks: dict[str, np.ndarray]
    ignore: np.ndarray | None = None


def read_support_labels(path: Path, image_path: Path, image_size: tuple[int, int], labelme_shapes: str = "as_drawn") -> SupportLabels:
    """The labels of ``image_path`` (size (H, W)) stored in ``path``; one-line errors name the file."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path)
        if is_labelme(data):
            labels = _from_labelme(data, path, labelme_shapes)
        else:
            labels = _from_coco(data, path, image_path)
    else:
        labels = _from_mask_png(path)
    for mask in list(labels.masks.values()) + ([labels.ignore] if labels.ignore is not None else []):
        if mask.shape != tuple(image_size):
            raise FsbenchError(
                f"annotation {path} is {mask.shape[0]}x{mask.shape[1]} but its image {image_path} is "
                f"{image_size[0]}x{image_size[1]} (height x width)"
            )
    if not any(mask.any() for mask in labels.masks.values()):
        raise FsbenchError(f"annotation {path} marks no pixel of any label")
    return labels


def _from_labelme(data: dict, path: Path, rule: str) -> SupportLabels:
    parsed = read_labelme(data, path, rule)
    masks: dict[str, np.ndarray] = {}
    for label, mask in parsed.shapes:
        masks[label] = masks[label] | mask if label in masks else mask
    return SupportLabels(masks)


def _from_coco(data: object, path: Path, image_path: Path) -> SupportLabels:
    data = check_coco(data, path)
    images = data["images"]
    matching = [image for image in images if Path(image["file_name"]).name == Path(image_path).name]
    if len(images) == 1:
        entry = images[0]
    elif len(matching) == 1:
        entry = matching[0]
    else:
        raise FsbenchError(f"{path}: {len(matching)} of its {len(images)} images are named {Path(image_path).name!r}; expected exactly one")
    names = {category["id"]: category["name"] for category in data["categories"]}
    height, width = entry["height"], entry["width"]
    masks: dict[str, np.ndarray] = {}
    for annotation in data["annotations"]:
        if annotation["image_id"] != entry["id"]:
            continue
        mask = mask_utils.decode(annotation_rle(annotation, height, width, path)).astype(bool)
        name = names[annotation["category_id"]]
        masks[name] = masks[name] | mask if name in masks else mask
    return SupportLabels(masks)


def _from_mask_png(path: Path) -> SupportLabels:
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB") if image.mode in ("RGBA", "LA", "CMYK", "YCbCr") else image)
    except FileNotFoundError:
        raise FsbenchError(f"annotation file is missing: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise FsbenchError(f"cannot read annotation {path}: not an image or a JSON ({error})") from None
    if array.ndim == 3 and array.shape[2] >= 3 and not (np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])):
        colours = array[..., :3].reshape(-1, 3)
        unique = np.unique(colours, axis=0)
        masks = {}
        for colour in unique:
            if not colour.any():
                continue
            masks["#{:02x}{:02x}{:02x}".format(*colour)] = np.all(array[..., :3] == colour, axis=-1)
        return SupportLabels(masks)
    values = array[..., 0] if array.ndim == 3 else array
    present = [int(value) for value in np.unique(values) if value != 0]
    if len(present) == 1:
        return SupportLabels({"foreground": values == present[0]})
    masks = {str(value): values == value for value in present if value != IGNORE_VALUE}
    ignore = values == IGNORE_VALUE if IGNORE_VALUE in present else None
    return SupportLabels(masks, ignore)
