"""The COCO-20i index: class -> images, per-image class masks, built once from a source and cached.

A cache file holds, after an 8-byte magic and an 8-byte header length, a JSON header (the key it was
built from, image sizes, per-image visible pixels per class, byte ranges) and then a blob of per-image
records (the class unions as compressed RLE, in painting order). A warm start reads the header only;
a loader worker reads one image's record with os.pread when it loads that image.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from benchmarks.cache import file_signature, write_atomically
from fsbench.coco_annotations import check_coco, class_unions, read_json
from benchmarks.files import inside_root, read_class_png
from fsbench.errors import FsbenchError

MAGIC = b"FSBCOCO1"
CACHE_VERSION = 1


def read_header(path: Path) -> dict | None:
    """The cache's JSON header, or None when the file is absent or damaged."""
    try:
        with open(path, "rb") as stream:
            if stream.read(len(MAGIC)) != MAGIC:
                return None
            (length,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(length))
            header["blob_start"] = len(MAGIC) + 8 + length
            return header
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_record(path: Path, header: dict, image_key: str) -> list:
    """One image's [[class id, RLE counts], ...] from the blob (no seek pointer: safe in workers)."""
    offset, length = header["images"][image_key][3:5]
    descriptor = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(descriptor, length, header["blob_start"] + offset)
    finally:
        os.close(descriptor)
    return json.loads(data)


def write_cache(path: Path, key: dict, images: dict, pixels: dict, records: dict[str, bytes], class_names: dict | None = None) -> None:
    """Write header + blob atomically. ``images``: key -> [file, height, width]; ``records``: key -> bytes."""
    blob, offset = [], 0
    for image_key, record in records.items():
        images[image_key] = images[image_key][:3] + [offset, len(record)]
        blob.append(record)
        offset += len(record)
    payload = {"key": key, "images": images, "pixels": pixels, "class_names": class_names or {}}
    header = json.dumps(payload, separators=(",", ":")).encode()
    write_atomically(path, MAGIC + struct.pack("<Q", len(header)) + header + b"".join(blob))


def load_or_build(cache_path: Path, key: dict, build) -> dict:
    header = read_header(cache_path)
    if header is None or header.get("key") != key:
        build()
        header = read_header(cache_path)
        if header is None:
            raise FsbenchError(f"cache file {cache_path} could not be read back after building it")
    return header


def build_from_instances(instances_path: Path, image_folder: Path, cache_path: Path, key: dict) -> None:
    """Index a COCO instances JSON: visible pixels per (image, class) and class unions as RLE."""
    print(f"Indexing {instances_path} (once; cached in {cache_path}) ...", flush=True)
    data = check_coco(read_json(instances_path), instances_path)
    category_to_class = {category: index + 1 for index, category in enumerate(sorted(c["id"] for c in data["categories"]))}
    by_image: dict[int, list[dict]] = {}
    for annotation in data["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    images, pixels, records = {}, {}, {}
    for image in data["images"]:
        inside_root(image_folder, image["file_name"], instances_path)  # refuse escaping paths up front
        image_key = image["file_name"]
        height, width = image["height"], image["width"]
        images[image_key] = [image["file_name"], height, width]
        unions = class_unions(by_image.get(image["id"], []), category_to_class, height, width, instances_path)
        pixels[image_key] = {str(class_id): area for class_id, _, area in unions if area > 0}
        records[image_key] = json.dumps([[class_id, rle["counts"].decode("ascii")] for class_id, rle, _ in unions]).encode()
    names = {str(category_to_class[c["id"]]): c["name"] for c in data["categories"]}
    write_cache(cache_path, key, images, pixels, records, names)


def build_from_pngs(mask_folder: Path, cache_path: Path, key: dict) -> None:
    """Index HSNet's pre-rendered per-image class PNGs (pixel value = class index + 1)."""
    mask_paths = sorted(mask_folder.glob("*.png"))
    print(f"Indexing {len(mask_paths)} COCO class masks in {mask_folder} (once; cached in {cache_path}) ...", flush=True)
    images, pixels = {}, {}
    for mask_path in mask_paths:
        label = read_class_png(mask_path)
        counts = np.bincount(label.ravel(), minlength=256)
        image_key = mask_path.stem + ".jpg"
        images[image_key] = [image_key, int(label.shape[0]), int(label.shape[1])]
        pixels[image_key] = {str(class_id): int(counts[class_id]) for class_id in range(1, 81) if counts[class_id]}
    if not images:
        raise FsbenchError(f"no mask PNGs in {mask_folder} (see data/README.md for the expected layout)")
    write_cache(cache_path, key, images, pixels, {image_key: b"" for image_key in images})


def source_key(paths: list[Path], kind: str) -> dict:
    return {"version": CACHE_VERSION, "source": kind, "signature": file_signature(paths), "files": len(paths)}
