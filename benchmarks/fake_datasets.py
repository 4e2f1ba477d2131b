"""Small datasets written in the real on-disk layouts: VOC2012, COCO2014, FSS-1000, custom COCO-JSON.

For the tests (tiny trees, seconds) and for fsbench.perf_data (a VOC tree at real image sizes, an
instances JSON of COCO's real size). Each generator is deterministic from its seed and returns what
it drew, so tests can compare a loader's output with an independent computation.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

# COCO's 80 category ids (sorted; 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused) - the gaps matter.
COCO_CATEGORY_IDS = (
    [*range(1, 12)] + [*range(13, 26)] + [27, 28] + [*range(31, 45)] + [*range(46, 66)] + [67, 70]
    + [*range(72, 83)] + [*range(84, 91)]
)

# An object: (class id, top, left, height, width) rectangle, drawn in order (later ones on top).
Box = tuple[int, int, int, int, int]


def _photo(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """[H, W, 3] uint8: a smooth gradient with noise, so JPEG sizes and decode times are photo-like."""
    rows = np.linspace(0, 1, height)[:, None, None]
    columns = np.linspace(0, 1, width)[None, :, None]
    colours = rng.uniform(0, 255, size=(2, 1, 1, 3))
    image = colours[0] * rows + colours[1] * columns
    image += rng.normal(0, 25, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_boxes(height: int, width: int, boxes: list[Box], boundary: int) -> np.ndarray:
    """[H, W] uint8 label: boxes in order, each ringed by a ``boundary``-pixel 255 band (VOC-like)."""
    label = np.zeros((height, width), dtype=np.uint8)
    for class_id, top, left, box_height, box_width in boxes:
        if boundary:
            label[max(top - boundary, 0) : top + box_height + boundary, max(left - boundary, 0) : left + box_width + boundary] = 255
        label[top : top + box_height, left : left + box_width] = class_id
    return label


# --- Pascal VOC2012 ---------------------------------------------------------------------------------
def default_voc_objects(count: int, split_code: int, height: int, width: int) -> list[list[Box]]:
    """Two objects per image cycling through the 20 classes (each class every 10 images), the second
    one small (under 2x32x32 pixels) on every third image so the size filter has work to do."""
    images = []
    for index in range(count):
        first = (2 * index + split_code) % 20 + 1
        second = (2 * index + split_code + 1) % 20 + 1
        big = (first, 4, 4, height // 2 + 4, width // 2)
        small_side = 30 if index % 3 == 0 else 0
        other = (second, height // 2 + 12, width // 2 + 8, small_side or height // 2 - 16, small_side or width // 2 - 12)
        images.append([big, other])
    return images


def make_voc(
    root: Path,
    train: int = 30,
    val: int = 30,
    height: int = 120,
    width: int = 160,
    seed: int = 0,
    objects: dict[str, list[list[Box]]] | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Write <root>/VOC2012/{JPEGImages, SegmentationClassAug, ImageSets/Segmentation/val.txt}.

    Returns {"train"|"val": {image id: label [H, W] uint8}}.
    """
    voc = Path(root) / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    objects = objects or {
        "train": default_voc_objects(train, 0, height, width),
        "val": default_voc_objects(val, 1, height, width),
    }
    labels: dict[str, dict[str, np.ndarray]] = {}
    for split_code, split in enumerate(("train", "val")):
        labels[split] = {}
        for index, boxes in enumerate(objects[split]):
            image_id = f"{2008 + split_code}_{index:06d}"
            rng = np.random.default_rng([seed, split_code, index])
            label = _draw_boxes(height, width, boxes, boundary=2)
            Image.fromarray(_photo(rng, height, width)).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=90)
            Image.fromarray(label).save(voc / "SegmentationClassAug" / f"{image_id}.png")
            labels[split][image_id] = label
    (voc / "ImageSets/Segmentation/val.txt").write_text("".join(f"{image_id}\n" for image_id in labels["val"]))
    return labels


# --- COCO2014 ------------------------------------------------------------------------------------------
def _polygon(top: float, left: float, height: float, width: float) -> list[float]:
    return [left, top, left + width, top, left + width, top + height, left, top + height]


def coco_annotations_for_image(image_id: int, index: int, height: int, width: int, first_annotation_id: int) -> list[dict]:
    """Annotations of one generated image: a big polygon of one class, a big compressed-RLE object of
    another, on every 4th image a two-part polygon, on every 5th a small crowd (uncompressed RLE)
    region overlapping the first object, on every 3rd a small polygon (< 2x32x32 px) of a third class."""
    categories = COCO_CATEGORY_IDS
    first = categories[(2 * index) % 80]
    second = categories[(2 * index + 1) % 80]
    third = categories[(3 * index + 7) % 80]
    annotations = []

    def add(category: int, segmentation, iscrowd: int = 0) -> None:
        annotations.append({
            "id": first_annotation_id + len(annotations), "image_id": image_id, "category_id": category,
            "segmentation": segmentation, "iscrowd": iscrowd, "area": 0.0, "bbox": [0, 0, 1, 1],
        })

    if index % 4 == 0:
        add(first, [_polygon(2, 2, height - 4, width / 4), _polygon(2, width / 4 + 4, height - 4, width / 4 - 6)])
    else:
        add(first, [_polygon(2.5, 2.5, height - 5, width / 2 - 4)])
    ellipse = np.zeros((height, width), dtype=np.uint8, order="F")
    rows, columns = np.ogrid[:height, :width]
    ellipse[((rows - height / 2) / (height / 2 - 2)) ** 2 + ((columns - 3 * width / 4) / (width / 4 - 2)) ** 2 <= 1] = 1
    encoded = mask_utils.encode(ellipse)
    add(second, {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")})
    if index % 5 == 0:
        crowd = np.zeros((height, width), dtype=np.uint8)
        crowd[height // 4 : height // 2, width // 4 : width // 2 + 10] = 1
        add(first if index % 2 else third, _uncompressed_rle(crowd), iscrowd=1)
    if index % 3 == 0:
        add(third, [_polygon(height - 20, width / 2 - 10, 16, 20)])
    return annotations


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd format: column-major run lengths starting with a run of zeros."""
    flat = mask.ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    boundaries = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(boundaries).tolist()
    if flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def coco_categories() -> list[dict]:
    return [{"id": category, "name": f"category {category}", "supercategory": "thing"} for category in COCO_CATEGORY_IDS]


def make_coco2014(root: Path, train: int = 80, val: int = 80, height: int = 72, width: int = 96, seed: int = 0, write_images: bool = True) -> dict[str, dict]:
    """Write <root>/COCO2014/{train2014, val2014, annotations/instances_{train,val}2014.json}.

    Returns {"train"|"val": the instances dict}. Each class appears in two images per 80.
    """
    coco = Path(root) / "COCO2014"
    (coco / "annotations").mkdir(parents=True, exist_ok=True)
    instances_by_split = {}
    for split_code, (split, count) in enumerate((("train", train), ("val", val))):
        folder = coco / f"{split}2014"
        folder.mkdir(exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = 1000 * (split_code + 1) + index
            file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
            images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
            annotations += coco_annotations_for_image(image_id, index + split_code, height, width, len(annotations) + 1)
            if write_images:
                rng = np.random.default_rng([seed, split_code, index])
                Image.fromarray(_photo(rng, height, width)).save(folder / file_name, quality=90)
        instances = {"images": images, "annotations": annotations, "categories": coco_categories()}
        (coco / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(instances))
        instances_by_split[split] = instances
    return instances_by_split


def coco_sized_instances(path: Path, images: int = 82_000, annotations_per_image: float = 7.3, points: int = 24, seed: int = 0) -> None:
    """An instances JSON of COCO train2014's real size (82k images, ~600k annotations, ~24-point
    polygons, 1% crowd RLE), without image files: for index build time and memory."""
    rng = np.random.default_rng(seed)
    image_records, annotation_records = [], []
    for image_index in range(images):
        height, width = int(rng.integers(240, 641)), int(rng.integers(240, 641))
        image_records.append({"id": image_index + 1, "file_name": f"COCO_train2014_{image_index + 1:012d}.jpg", "height": height, "width": width})
        for _ in range(int(rng.poisson(annotations_per_image))):
            category = COCO_CATEGORY_IDS[int(rng.integers(80))]
            centre_y, centre_x = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
            radius = rng.uniform(5, min(height, width) / 4)
            if rng.random() < 0.01:
                mask = np.zeros((height, width), dtype=np.uint8)
                mask[int(centre_y - radius) : int(centre_y + radius), int(centre_x - radius) : int(centre_x + radius)] = 1
                segmentation, crowd = _uncompressed_rle(mask), 1
            else:
                angles = np.sort(rng.uniform(0, 2 * np.pi, points))
                radii = radius * rng.uniform(0.6, 1.0, points)
                polygon = np.stack([centre_x + radii * np.cos(angles), centre_y + radii * np.sin(angles)], axis=1)
                segmentation, crowd = [np.round(polygon.ravel(), 2).tolist()], 0
            annotation_records.append({
                "id": len(annotation_records) + 1, "image_id": image_index + 1, "category_id": category,
                "segmentation": segmentation, "iscrowd": crowd, "area": float(np.pi * radius**2),
                "bbox": [round(centre_x - radius, 2), round(centre_y - radius, 2), round(2 * radius, 2), round(2 * radius, 2)],
            })
    payload = {"images": image_records, "annotations": annotation_records, "categories": coco_categories()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(payload))


# --- FSS-1000 ------------------------------------------------------------------------------------------
def make_fss(root: Path, classes: int = 12, per_class: int = 10, size: int = 64, seed: int = 0) -> list[str]:
    """Write <root>/FSS-1000/<class>/<n>.jpg + <n>.png (masks 0/255 with grey anti-aliased edges)."""
    names = [f"class_{index:03d}" for index in range(classes)]
    for class_index, name in enumerate(names):
        folder = Path(root) / "FSS-1000" / name
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, per_class + 1):
            rng = np.random.default_rng([seed, class_index, number])
            mask = np.zeros((size, size), dtype=np.uint8)
            top, left = rng.integers(0, size // 3, size=2)
            mask[top : top + size // 2, left : left + size // 2] = 255
            mask[top, left : left + size // 2] = 127  # just under the 128 threshold: background
            mask[top + 1, left : left + size // 2] = 128  # exactly the threshold: foreground
            Image.fromarray(_photo(rng, size, size)).save(folder / f"{number}.jpg", quality=90)
            Image.fromarray(mask).save(folder / f"{number}.png")
    return names


# --- custom COCO-JSON data (rootvisionai/dml_segmentation layouts) -----------------------------------
def make_custom(root: Path, layout: str, categories: int = 6, per_split: int = 12, height: int = 48, width: int = 64, seed: int = 0) -> dict[str, dict]:
    """Write a dataset in ``layout`` under ``root`` ({train,val}/...); returns per split the COCO dict
    (images with their file names, annotations, categories) that the layout encodes."""
    category_records = [{"id": index, "name": f"thing {index}"} for index in range(1, categories + 1)]
    if layout == "separate":
        (Path(root) / "label_map.json").parent.mkdir(parents=True, exist_ok=True)
        (Path(root) / "label_map.json").write_text(json.dumps({record["name"]: record["id"] for record in category_records}))
    result = {}
    for split_code, split in enumerate(("train", "val")):
        folder = Path(root) / split
        images, annotations = [], []
        for index in range(per_split):
            rng = np.random.default_rng([seed, split_code, index])
            stem = f"{split}_{index:04d}"
            file_name = f"images/{stem}.jpg" if layout == "separate" else f"{stem}.jpg"
            (folder / file_name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_photo(rng, height, width)).save(folder / file_name, quality=90)
            image_record = {"id": index + 1, "file_name": file_name, "height": height, "width": width}
            first = index % categories + 1
            second = (index + 1) % categories + 1
            own = [
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": first, "iscrowd": 0,
                 "segmentation": [_polygon(2, 2, height - 4, width / 2 - 2)], "area": 0.0, "bbox": [0, 0, 1, 1]},
            ]
            blob = np.zeros((height, width), dtype=np.uint8, order="F")
            blob[4 : height - 6, width // 2 + 2 : width - 3] = 1
            encoded = mask_utils.encode(blob)
            own.append({"id": len(annotations) + 2, "image_id": index + 1, "category_id": second, "iscrowd": 0,
                        "segmentation": {"size": encoded["size"], "counts": encoded["counts"].decode("ascii")}, "area": 0.0, "bbox": [0, 0, 1, 1]})
            images.append(image_record)
            annotations += own
            if layout == "separate_json":
                (folder / f"{stem}.json").write_text(json.dumps({"images": [image_record], "annotations": own, "categories": category_records}))
            elif layout == "separate":
                label = np.zeros((height, width), dtype=np.uint8)
                for annotation in own:
                    label[_annotation_mask(annotation, height, width) > 0] = annotation["category_id"]
                (folder / "masks").mkdir(exist_ok=True)
                Image.fromarray(label).save(folder / "masks" / f"{stem}.png")
        if layout == "unified":
            (folder / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations, "categories": category_records}))
        result[split] = {"images": images, "annotations": annotations, "categories": category_records}
    return result


def _annotation_mask(annotation: dict, height: int, width: int) -> np.ndarray:
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return mask_utils.decode(rle)


# --- LabelMe per-image layout (what rootvisionai/dml_segmentation's separate_json really reads) -----
def make_labelme(root: Path, labels: tuple[str, ...] = ("cat", "dog", "bird"), per_split: int = 8, height: int = 48, width: int = 64,
                 seed: int = 0, val_folder: str = "val") -> dict[str, dict[str, np.ndarray]]:
    """Write <root>/{train,<val_folder>}/<stem>.jpg + <stem>.json (LabelMe: polygons, one rectangle shape
    per image). Objects are axis-aligned boxes with integer corners, which OpenCV's fillPoly fills
    inclusively, so the returned label maps ({split: {stem: [H, W] class index by sorted label}})
    are independent of the rasteriser."""
    names = sorted(labels)
    result: dict[str, dict[str, np.ndarray]] = {}
    for split_code, split in enumerate(("train", val_folder)):
        folder = Path(root) / split
        folder.mkdir(parents=True, exist_ok=True)
        result[split] = {}
        for index in range(per_split):
            rng = np.random.default_rng([seed, split_code, index])
            stem = f"{split}_{index:04d}"
            Image.fromarray(_photo(rng, height, width)).save(folder / f"{stem}.jpg", quality=90)
            label_map = np.zeros((height, width), dtype=np.int64)
            shapes = []
            first, second = labels[index % len(labels)], labels[(index + 1) % len(labels)]
            boxes = [(first, 2, 2, width // 2 - 3, height - 5), (second, width // 2 + 2, 6, width - 4, height - 8)]
            for number, (label, left, top, right, bottom) in enumerate(boxes):
                if number == 1:  # a LabelMe rectangle: two corners
                    shapes.append({"label": label, "points": [[left, top], [right, bottom]], "shape_type": "rectangle", "group_id": None, "flags": {}})
                else:  # a polygon with fractional coordinates: the DML repo truncates them to int32
                    points = [[left + 0.6, top + 0.3], [right + 0.9, top + 0.2], [right + 0.4, bottom + 0.7], [left + 0.1, bottom + 0.99]]
                    shapes.append({"label": label, "points": points, "shape_type": "polygon", "group_id": None, "flags": {}})
                label_map[top : bottom + 1, left : right + 1] = names.index(label) + 1
            record = {"version": "5.2.1", "flags": {}, "shapes": shapes, "imagePath": f"{stem}.jpg", "imageData": None,
                      "imageHeight": height, "imageWidth": width}
            (folder / f"{stem}.json").write_text(json.dumps(record))
            result[split][stem] = label_map
    return result
