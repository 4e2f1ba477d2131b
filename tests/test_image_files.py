"""16-bit and 32-bit image files: images become 8-bit by their high byte (or are refused), masks keep
their values. The 16-bit PNGs are written byte by byte here (Pillow cannot write 48-bit RGB), so the
decoder is checked against files it did not produce."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.base import BenchmarkOptions
from benchmarks.coco_json import CocoJson
from fsbench.fixtures import make_custom, make_voc
from benchmarks.files import read_class_png
from benchmarks.pascal import Pascal
from fsbench.errors import FsbenchError
from fsbench.transforms import read_image, read_label

# PNG colour types (PNG spec, IHDR): grey, RGB, grey + alpha, RGBA.
CHANNELS_OF_COLOUR_TYPE = {0: 1, 2: 3, 4: 2, 6: 4}


def write_png16(path: Path, values: np.ndarray, colour_type: int) -> None:
    """A 16-bit-per-channel PNG from ``values`` [H, W] or [H, W, C] uint16 (no filter, one IDAT)."""
    values = values.reshape(values.shape[0], values.shape[1], -1)
    assert values.shape[2] == CHANNELS_OF_COLOUR_TYPE[colour_type]
    height, width = values.shape[:2]
    rows = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def sixteen_bit_values(seed: int, shape: tuple) -> np.ndarray:
    """Random values over the whole 16-bit range, most of them above 255 (what used to turn white)."""
    return np.random.default_rng(seed).integers(0, 65536, size=shape, dtype=np.uint16)


def test_sixteen_bit_grey_keeps_its_high_byte(tmp_path):
    values = sixteen_bit_values(0, (6, 7))
    write_png16(tmp_path / "grey.png", values, colour_type=0)
    Image.fromarray(values).save(tmp_path / "grey_by_pillow.png")  # Pillow's own 16-bit grey writer
    assert Image.open(tmp_path / "grey_by_pillow.png").mode == "I;16"
    expected = torch.from_numpy((values // 256).astype(np.uint8)).expand(3, -1, -1)
    for name in ("grey.png", "grey_by_pillow.png"):
        image = read_image(tmp_path / name)
        assert image.dtype == torch.uint8 and image.shape == (3, 6, 7)
        assert torch.equal(image, expected), name
    assert (expected < 255).float().mean() > 0.9  # the old reading made (nearly) every pixel 255


@pytest.mark.parametrize("colour_type", [2, 4, 6])
def test_sixteen_bit_colour_keeps_its_high_byte(tmp_path, colour_type):
    """48-bit RGB, 32-bit grey + alpha and 64-bit RGBA: the colour channels' high bytes, alpha dropped."""
    channels = CHANNELS_OF_COLOUR_TYPE[colour_type]
    values = sixteen_bit_values(colour_type, (5, 4, channels))
    values[..., -1] = 65535 if colour_type in (4, 6) else values[..., -1]  # opaque: alpha must not matter
    write_png16(tmp_path / "colour.png", values, colour_type)
    colour = values[..., :3] if colour_type in (2, 6) else np.repeat(values[..., :1], 3, axis=2)
    expected = torch.from_numpy((colour // 256).astype(np.uint8)).permute(2, 0, 1)
    assert torch.equal(read_image(tmp_path / "colour.png"), expected)


def test_grey_and_rgb_sixteen_bit_files_of_one_picture_read_the_same(tmp_path):
    values = sixteen_bit_values(3, (4, 4))
    write_png16(tmp_path / "grey.png", values, colour_type=0)
    write_png16(tmp_path / "rgb.png", np.stack([values] * 3, axis=2), colour_type=2)
    assert torch.equal(read_image(tmp_path / "grey.png"), read_image(tmp_path / "rgb.png"))


@pytest.mark.parametrize("values", [np.arange(12, dtype=np.int32).reshape(3, 4) * 100_000, np.ones((3, 4), dtype=np.float32)])
def test_thirty_two_bit_images_are_refused_naming_the_file(tmp_path, values):
    path = tmp_path / "wide.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(FsbenchError, match=r"image .*wide.tif has 32-bit (integer|float) pixels") as caught:
        read_image(path)
    assert "\n" not in str(caught.value)


def test_sixteen_bit_masks_keep_their_values(tmp_path):
    label = np.array([[0, 1, 7, 255], [300, 1000, 65535, 0]], dtype=np.uint16)
    write_png16(tmp_path / "mask.png", label, colour_type=0)
    assert read_label(tmp_path / "mask.png").tolist() == label.astype(np.int64).tolist()
    assert read_class_png(tmp_path / "mask.png").tolist() == label.tolist()


def test_coco_json_refuses_a_sixteen_bit_mask_value_that_is_no_category(tmp_path):
    make_custom(tmp_path, "separate", per_split=6)
    mask_path = tmp_path / "val/masks/val_0002.png"
    label = np.asarray(Image.open(mask_path)).astype(np.uint16)
    write_png16(mask_path, label, colour_type=0)  # the same categories as 16-bit: still accepted
    CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))
    label[0, 0] = 300
    write_png16(mask_path, label, colour_type=0)
    with pytest.raises(FsbenchError, match=r"mask .*val_0002.png holds value 300, which is not in label_map.json"):
        CocoJson(tmp_path, 0, BenchmarkOptions(folds=2))


def test_pascal_passes_a_sixteen_bit_value_through_unchanged(tmp_path):
    """As before 16-bit support: Pascal counts only VOC classes 1..20, so a value like 300 makes no
    pair, and load() hands it on as stored (neither a class of an episode nor ignore)."""
    labels = make_voc(tmp_path, train=4, val=4, height=64, width=64)
    image_id = "2009_000001"
    label = labels["val"][image_id].astype(np.uint16)
    label[0, :5] = 300
    write_png16(tmp_path / f"VOC2012/SegmentationClassAug/{image_id}.png", label, colour_type=0)
    benchmark = Pascal(tmp_path, 0)
    assert all(class_id <= 20 for _, class_id in benchmark.pairs("test") + benchmark.pairs("train"))
    _, loaded = benchmark.load(image_id, "test")
    assert loaded.tolist() == label.astype(np.int64).tolist()
