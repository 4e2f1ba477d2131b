"""The embedded synthetic benchmark: class table, determinism, ignore band, novel pixels in training."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from benchmarks import shapes_render as render
from benchmarks.shapes import Shapes, generate
from fsbench.errors import FsbenchError


def test_classes_are_all_shape_texture_combinations_and_folds_share_parts():
    combos = {render.shape_and_texture(class_id) for class_id in range(1, 21)}
    assert len(combos) == 20  # every (shape, texture) exactly once
    for fold in range(4):
        novel = [render.class_of(fold, shape) for shape in range(5)]
        assert novel == list(range(5 * fold + 1, 5 * fold + 6))
        base = [class_id for class_id in range(1, 21) if class_id not in novel]
        base_shapes = {render.shape_and_texture(c)[0] for c in base}
        base_textures = {render.shape_and_texture(c)[1] for c in base}
        # A novel class's shape and texture both occur among the base classes (only the pair is new).
        for class_id in novel:
            shape, texture = render.shape_and_texture(class_id)
            assert shape in base_shapes and texture in base_textures


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def test_generation_is_deterministic(tmp_path):
    generate(tmp_path / "a", images_per_split={"train": 6, "val": 4})
    generate(tmp_path / "b", images_per_split={"train": 6, "val": 4})
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    generate(tmp_path / "c", seed=7, images_per_split={"train": 6, "val": 4})
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_images_have_objects_ignore_band_and_clutter():
    image, label = render.render(np.random.default_rng(3))
    assert image.shape == (128, 128, 3) and label.shape == (128, 128)
    values = set(np.unique(label).tolist())
    assert 0 in values and 255 in values and values - {0, 255}
    # The band separates objects from background: no object pixel touches a background pixel.
    inside = (label > 0) & (label < 255)
    touches = np.zeros_like(inside)
    touches[1:] |= label[:-1] == 0
    touches[:-1] |= label[1:] == 0
    assert not (inside & touches).any()
    assert image[label == 0].std() > 10  # a cluttered, not flat, background


def test_novel_pixels_are_background_in_training(tiny_shapes):
    novel = set(tiny_shapes.classes("test"))
    for image_id in sorted({image for image, _ in tiny_shapes.pairs("train")})[:40]:
        _, label = tiny_shapes.load(image_id, "train")
        assert not set(label.unique().tolist()) & novel
    image_id = tiny_shapes.pairs("test")[0][0]
    _, label = tiny_shapes.load(image_id, "test")
    assert set(label.unique().tolist()) & novel


def test_pairs_honour_min_pixels_and_split(tiny_shapes):
    for image_id, class_id in tiny_shapes.pairs("test")[:30]:
        _, label = tiny_shapes.load(image_id, "test")
        assert int((label == class_id).sum()) >= 200
        assert image_id.startswith("val/")
    assert all(image.startswith("train/") for image, _ in tiny_shapes.pairs("train"))


def test_fold_out_of_range(tiny_datapath):
    with pytest.raises(FsbenchError, match="fold 4 is out of range"):
        Shapes(tiny_datapath, fold=4)
