"""LabelMe JSON (one file per image): ``shapes[]`` with ``label``, ``points``, ``shape_type``, plus
``imageHeight``, ``imageWidth`` and ``imagePath``; what rootvisionai/dml_segmentation's separate_json
layout and its inference read.

Rasterising follows that repo: a shape's points are truncated to int32 and filled with
cv2.fillPoly's pixel rule (fsbench.polygon_fill), whatever the shape type. The repo ignores
``shape_type``, so a LabelMe rectangle or circle (two points each) becomes a thin line there; by
default fsbench fills them as LabelMe draws them instead (``shapes="as_drawn"``: a rectangle's four
corners through the same polygon rule; a circle = pixels whose integer (x, y) lie within the
radius of the centre). ``shapes="original"`` takes every shape's points as a polygon, as the repo does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fsbench.errors import FsbenchError
from fsbench.polygon_fill import fill_polygon

SHAPE_RULES = ("as_drawn", "original")
# Shape types whose points are the outline (or a path) and go through the polygon rule as they are.
POINT_SHAPES = (None, "", "polygon", "line", "linestrip", "point", "points")


@dataclass
class LabelMeFile:
    """One parsed LabelMe file: the image it names and one mask per shape, in file order."""

    image_path: str
    height: int
    width: int
    shapes: list[tuple[str, np.ndarray]]  # (label, [H, W] bool)


def is_labelme(data: object) -> bool:
    return isinstance(data, dict) and isinstance(data.get("shapes"), list) and "imageHeight" in data


def _points(shape: dict, where: str) -> np.ndarray:
    points = shape.get("points")
    valid = isinstance(points, list) and points and all(
        isinstance(point, (list, tuple)) and len(point) == 2 and all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in point)
        for point in points
    )
    if not valid:
        raise FsbenchError(f"{where}: points must be a non-empty list of [x, y] numbers")
    array = np.asarray(points, dtype=np.float64)
    if not np.isfinite(array).all() or np.abs(array).max() > 1e9:
        raise FsbenchError(f"{where}: points must be finite image coordinates")
    return array


def shape_mask(shape: dict, height: int, width: int, where: str, rule: str = "as_drawn") -> np.ndarray:
    """[H, W] bool pixels of one LabelMe shape."""
    shape_type = shape.get("shape_type")
    points = _points(shape, where)
    mask = np.zeros((height, width), dtype=np.uint8)
    if rule == "original" or shape_type in POINT_SHAPES:
        fill_polygon(mask, points.astype(np.int32), 1)  # the repo: np.array(points).astype(np.int32)
    elif shape_type == "rectangle":
        if len(points) != 2:
            raise FsbenchError(f"{where}: a rectangle has 2 points, found {len(points)}")
        (x1, y1), (x2, y2) = points
        corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
        fill_polygon(mask, corners.astype(np.int32), 1)
    elif shape_type == "circle":
        if len(points) != 2:
            raise FsbenchError(f"{where}: a circle has 2 points (centre, a point on it), found {len(points)}")
        (centre_x, centre_y), (edge_x, edge_y) = points
        radius_squared = (edge_x - centre_x) ** 2 + (edge_y - centre_y) ** 2
        rows, columns = np.ogrid[:height, :width]
        mask[(columns - centre_x) ** 2 + (rows - centre_y) ** 2 <= radius_squared] = 1
    else:
        raise FsbenchError(f"{where}: shape_type {shape_type!r} is not supported (polygon, rectangle, circle, line, linestrip, point)")
    return mask.astype(bool)


def read_labelme(data: dict, source: Path | str, rule: str = "as_drawn") -> LabelMeFile:
    """Parse and rasterise a LabelMe dict; any malformed part is a one-line error naming ``source``."""
    if rule not in SHAPE_RULES:
        raise FsbenchError(f"unknown LabelMe shape rule {rule!r}; available: {', '.join(SHAPE_RULES)}")
    height, width = data.get("imageHeight"), data.get("imageWidth")
    if not all(isinstance(value, int) and not isinstance(value, bool) and value > 0 for value in (height, width)):
        raise FsbenchError(f"{source}: imageHeight and imageWidth must be positive integers, got {height!r} x {width!r}")
    image_path = data.get("imagePath")
    if image_path is not None and not isinstance(image_path, str):
        raise FsbenchError(f"{source}: imagePath must be a string")
    shapes = []
    for number, shape in enumerate(data["shapes"]):
        where = f"{source}: shape {number}"
        if not isinstance(shape, dict):
            raise FsbenchError(f"{where} is not an object")
        label = shape.get("label")
        if not isinstance(label, str) or not label.strip():
            raise FsbenchError(f"{where} has no label")
        shapes.append((label, shape_mask(shape, height, width, where, rule)))
    return LabelMeFile(image_path or "", height, width, shapes)
