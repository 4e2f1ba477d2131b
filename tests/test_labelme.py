"""LabelMe shapes rasterise as rootvisionai/dml_segmentation's cv2.fillPoly(points.astype(int32)) does.

The rule (fsbench.polygon_fill) was compared with cv2 4.9.0 itself, outside the repo: 3000 random
polygons of 1-8 vertices on 5-60 px canvases, a third of them reaching outside the image, gave 0
differing masks. Here: hand-worked cases, each also checked once against cv2.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from fsbench.annotation_files import read_support_labels
from fsbench.errors import FsbenchError
from fsbench.labelme import read_labelme
from fsbench.polygon_fill import fill_polygon


def _filled(points, height=8, width=8) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    fill_polygon(mask, np.asarray(points, dtype=np.float64).astype(np.int32), 1)
    return mask.astype(bool)


def test_hand_drawn_triangle_truncated_vertices():
    # Vertices truncate to (1, 1), (6, 1), (1, 6): the filled pixels are x >= 1, y >= 1, x + y <= 7,
    # both the hypotenuse's Bresenham pixels and the left/top edges included.
    rows, columns = np.mgrid[:8, :8]
    expected = (columns >= 1) & (rows >= 1) & (columns + rows <= 7)
    assert np.array_equal(_filled([[1.9, 1.2], [6.7, 1.0], [1.0, 6.5]]), expected)


def test_two_point_shape_is_a_bresenham_line():
    # What the repo makes of a LabelMe rectangle: its two corners as a "polygon", i.e. the line
    # (2, 2) -> (5, 4): error starts at 3 - 2*2 = -1, so x and y step, then x, then both.
    expected = np.zeros((8, 8), dtype=bool)
    for x, y in [(2, 2), (3, 3), (4, 3), (5, 4)]:
        expected[y, x] = True
    assert np.array_equal(_filled([[2, 2], [5, 4]]), expected)


def test_polygon_reaching_outside_the_image_is_clipped():
    expected = np.zeros((6, 6), dtype=bool)
    expected[:4] = True  # rows -2..3 of the rectangle, inside the image: 0..3
    assert np.array_equal(_filled([[-3, -2], [5, -2], [5, 3], [-3, 3]], 6, 6), expected)


def _labelme(shapes, height=8, width=10):
    return {"shapes": shapes, "imageHeight": height, "imageWidth": width, "imagePath": "a.png"}


def test_shape_types_as_drawn_and_as_the_repo_does():
    rectangle = {"label": "box", "points": [[2, 2], [5, 4]], "shape_type": "rectangle"}
    drawn = read_labelme(_labelme([rectangle]), "a.json").shapes[0][1]
    expected = np.zeros((8, 10), dtype=bool)
    expected[2:5, 2:6] = True
    assert np.array_equal(drawn, expected)
    original = read_labelme(_labelme([rectangle]), "a.json", rule="original").shapes[0][1]
    assert np.array_equal(original, _filled([[2, 2], [5, 4]], 8, 10))
    circle = {"label": "ball", "points": [[4, 4], [6, 4]], "shape_type": "circle"}
    disc = read_labelme(_labelme([circle]), "a.json").shapes[0][1]
    rows, columns = np.mgrid[:8, :10]
    assert np.array_equal(disc, (columns - 4) ** 2 + (rows - 4) ** 2 <= 4)


@pytest.mark.parametrize("shape,message", [
    ({"label": "x", "points": [[1, 1]], "shape_type": "mask"}, "shape_type 'mask' is not supported"),
    ({"label": "", "points": [[1, 1], [2, 2], [1, 2]]}, "shape 0 has no label"),
    ({"label": "x", "points": [[1, "a"]]}, "points must be a non-empty list"),
    ({"label": "x", "points": [[1, 1], [2, 2], [3, 3]], "shape_type": "rectangle"}, "a rectangle has 2 points"),
])
def test_bad_shapes_are_one_line_errors(shape, message):
    with pytest.raises(FsbenchError, match=message) as caught:
        read_labelme(_labelme([shape]), "a.json")
    assert "\n" not in str(caught.value)


def test_support_labels_union_per_label_and_size_check(tmp_path):
    shapes = [
        {"label": "a", "points": [[0, 0], [2, 0], [2, 2], [0, 2]]},
        {"label": "b", "points": [[5, 5], [7, 5], [7, 7], [5, 7]]},
        {"label": "a", "points": [[8, 0], [9, 0], [9, 1], [8, 1]]},
    ]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(_labelme(shapes)))
    labels = read_support_labels(path, tmp_path / "a.png", (8, 10))
    assert list(labels.masks) == ["a", "b"]
    assert labels.masks["a"].sum() == 9 + 4 and labels.masks["b"].sum() == 9
    with pytest.raises(FsbenchError, match=r"annotation .*a.json is 8x10 but its image .*a.png is 9x10"):
        read_support_labels(path, tmp_path / "a.png", (9, 10))
