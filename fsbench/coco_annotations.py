"""COCO-format annotations: reading and checking a JSON, segmentations to RLE, RLEs to a label map.

Every segmentation (polygons, compressed RLE, the uncompressed RLE of crowd regions) is turned into
pycocotools' compressed RLE exactly as ``COCO.annToRLE`` does, so decoded masks equal pycocotools'.
Instances of one class in one image are merged; a label map paints the class unions largest first,
so that small objects lying on larger ones (a cup on a table) stay visible.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from fsbench.errors import FsbenchError

Rle = dict  # {"size": [H, W], "counts": bytes}


def read_json(path: Path) -> object:
    """A parsed JSON file; missing, unreadable, malformed or empty files are one-line errors."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise FsbenchError(f"annotation file is missing: {path}") from None
    except OSError as error:
        raise FsbenchError(f"cannot read annotation file {path}: {error.strerror or error}") from None
    if not text.strip():
        raise FsbenchError(f"annotation file {path} is empty")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise FsbenchError(f"annotation file {path} is not valid JSON ({error})") from None


def check_coco(data: object, path: Path, need_annotations: bool = True) -> dict:
    """``data`` when it is a COCO instances dict with images, categories (and annotations) whose
    references hold together; otherwise an error naming the file and the first problem."""
    if not isinstance(data, dict):
        raise FsbenchError(f"{path}: expected a COCO JSON object with images, annotations and categories")
    for key in ("images", "categories") + (("annotations",) if need_annotations else ()):
        if not isinstance(data.get(key), list):
            raise FsbenchError(f"{path}: missing the COCO list {key!r}")
    if not data["images"]:
        raise FsbenchError(f"{path}: holds no images")
    if not data["categories"]:
        raise FsbenchError(f"{path}: holds no categories")
    for category in data["categories"]:
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or not isinstance(category.get("name"), str):
            raise FsbenchError(f"{path}: category {category!r} needs an integer id and a name")
    image_ids = set()
    for image in data["images"]:
        if not isinstance(image, dict) or any(not isinstance(image.get(key), int) for key in ("id", "height", "width")):
            raise FsbenchError(f"{path}: image {str(image)[:80]} needs integer id, height and width")
        if not isinstance(image.get("file_name"), str):
            raise FsbenchError(f"{path}: image {image['id']} has no file_name")
        if image["height"] < 1 or image["width"] < 1:
            raise FsbenchError(f"{path}: image {image['id']} has size {image['height']}x{image['width']}")
        image_ids.add(image["id"])
    category_ids = {category["id"] for category in data["categories"]}
    for annotation in data.get("annotations", []):
        if not isinstance(annotation, dict) or "segmentation" not in annotation:
            raise FsbenchError(f"{path}: annotation {str(annotation)[:80]} has no segmentation")
        if annotation.get("image_id") not in image_ids:
            raise FsbenchError(f"{path}: annotation {annotation.get('id')} refers to unknown image {annotation.get('image_id')!r}")
        if annotation.get("category_id") not in category_ids:
            raise FsbenchError(f"{path}: annotation {annotation.get('id')} has unknown category {annotation.get('category_id')!r}")
    return data


def annotation_rle(annotation: dict, height: int, width: int, source: Path | str) -> Rle:
    """The annotation's mask as compressed RLE ([H, W] when decoded), as pycocotools' annToRLE."""
    segmentation = annotation["segmentation"]
    where = f"{source}: annotation {annotation.get('id')}"
    if isinstance(segmentation, list):
        if not segmentation or not all(
            isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0
            and all(isinstance(value, (int, float)) for value in polygon)
            for polygon in segmentation
        ):
            raise FsbenchError(f"{where}: polygons must be lists of at least 3 (x, y) numbers")
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if not isinstance(segmentation, dict) or "counts" not in segmentation or "size" not in segmentation:
        raise FsbenchError(f"{where}: segmentation is neither polygons nor RLE")
    if list(segmentation["size"]) != [height, width]:
        raise FsbenchError(f"{where}: RLE size {segmentation['size']} differs from its image's {height}x{width}")
    counts = segmentation["counts"]
    if isinstance(counts, list):  # uncompressed (crowd) RLE
        if not all(isinstance(value, int) and value >= 0 for value in counts) or sum(counts) != height * width:
            raise FsbenchError(f"{where}: uncompressed RLE counts must be non-negative and sum to {height * width}")
        return mask_utils.frPyObjects(segmentation, height, width)
    if isinstance(counts, str):
        counts = counts.encode("ascii")
    if not isinstance(counts, bytes):
        raise FsbenchError(f"{where}: RLE counts must be a string or a list")
    rle = {"size": [height, width], "counts": counts}
    try:
        total = int(mask_utils.area(rle))
    except Exception as error:  # pycocotools raises plain Exceptions on garbage strings
        raise FsbenchError(f"{where}: cannot decode RLE counts ({error})") from None
    if total > height * width:
        raise FsbenchError(f"{where}: RLE counts cover more pixels than the {height}x{width} image")
    return rle


def class_unions(annotations: list[dict], category_to_class: dict[int, int], height: int, width: int, source) -> list[tuple[int, Rle, int]]:
    """One image's annotations -> [(class id, union RLE, visible pixels)] in painting order.

    Painting order: larger unions first (ties by class id), so a later, smaller class covers an
    earlier one. Visible pixels = the union's area minus what later classes cover (computed on RLEs,
    no decoding), i.e. the pixel count of the class in the painted label map.
    """
    by_class: dict[int, list[Rle]] = {}
    for annotation in annotations:
        by_class.setdefault(category_to_class[annotation["category_id"]], []).append(annotation_rle(annotation, height, width, source))
    unions = []
    for class_id, rles in by_class.items():
        union = mask_utils.merge(rles) if len(rles) > 1 else rles[0]
        unions.append((class_id, union, int(mask_utils.area(union))))
    unions.sort(key=lambda item: (-item[2], item[0]))
    painted = []
    for position, (class_id, union, area) in enumerate(unions):
        later = [other for _, other, _ in unions[position + 1 :]]
        if later:
            cover = mask_utils.merge(later) if len(later) > 1 else later[0]
            area -= int(mask_utils.area(mask_utils.merge([union, cover], intersect=True)))
        painted.append((class_id, union, area))
    return painted


def paint(unions: list[tuple[int, Rle]], height: int, width: int) -> np.ndarray:
    """[H, W] int64 label map: 0 background, each class's union painted in the given order."""
    label = np.zeros((height, width), dtype=np.int64)
    for class_id, rle in unions:
        label[mask_utils.decode(rle).astype(bool)] = class_id
    return label
