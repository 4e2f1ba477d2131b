"""Polygon rasterisation with OpenCV's pixel rule, without OpenCV.

rootvisionai/dml_segmentation turns a LabelMe shape into a mask with
``cv2.fillPoly(canvas, [points.astype(np.int32)], 255)``: integer vertices (truncated toward zero),
8-connected lines, no sub-pixel shift. Masks made here must be the same pixels, so this is that
rule: every edge is drawn as an 8-connected Bresenham line (OpenCV's LineIterator, after its
clipLine), then each row is filled between consecutive edge crossings (even-odd), the crossings
kept in 16.16 fixed point as OpenCV's FillEdgeCollection keeps them. tests/test_labelme.py checks a
hand-drawn case; the comparison with cv2 itself on random polygons is described in its docstring.
"""
from __future__ import annotations

import numpy as np

XY_SHIFT = 16
XY_ONE = 1 << XY_SHIFT


def fill_polygon(mask: np.ndarray, points: np.ndarray, value: int = 1) -> None:
    """Set the pixels OpenCV's fillPoly would set for one polygon to ``value``, in place.

    Args:
        mask: [H, W] array.
        points: [P, 2] integer (x, y) vertices, already truncated as the caller wants them.
    """
    points = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    height, width = mask.shape
    if len(points) == 0:
        return
    edges = []  # (y0, y1, x at y0 in 16.16 fixed point, dx per row in 16.16)
    previous = points[-1]
    for current in points:
        x0, y0 = int(previous[0]), int(previous[1])
        x1, y1 = int(current[0]), int(current[1])
        _draw_line(mask, (x0, y0), (x1, y1), value)
        # The edge runs through pixel centres (half a pixel added to x) when both ends are inside
        # the image; an edge that leaves it runs between its clipped end points (unless clipping
        # makes it horizontal), its rows staying the unclipped ones, x extrapolated back to them.
        (cx0, cy0), (cx1, cy1) = (x0 << XY_SHIFT, y0), (x1 << XY_SHIFT, y1)
        if 0 <= x0 < width and 0 <= x1 < width and 0 <= y0 < height and 0 <= y1 < height:
            cx0, cx1 = cx0 + (XY_ONE >> 1), cx1 + (XY_ONE >> 1)
        else:
            _, (clipped_x0, clipped_y0), (clipped_x1, clipped_y1) = _clip_line(width, height, (x0, y0), (x1, y1))
            if clipped_y0 != clipped_y1:
                (cx0, cy0), (cx1, cy1) = (clipped_x0 << XY_SHIFT, clipped_y0), (clipped_x1 << XY_SHIFT, clipped_y1)
        previous = current
        if y0 == y1:
            continue
        dx = _truncating_division(cx1 - cx0, cy1 - cy0)
        if y0 < y1:
            edges.append((y0, y1, cx0 + (y0 - cy0) * dx, dx))
        else:
            edges.append((y1, y0, cx1 + (y1 - cy1) * dx, dx))
    _fill_edges(mask, edges, value)


def _truncating_division(numerator: int, denominator: int) -> int:
    """C's integer division (toward zero), which OpenCV's edge slopes use."""
    quotient = abs(numerator) // abs(denominator)
    return quotient if (numerator >= 0) == (denominator >= 0) else -quotient


def _fill_edges(mask: np.ndarray, edges: list[tuple[int, int, int, int]], value: int) -> None:
    """Even-odd fill: on row y the active edges (y0 <= y < y1) sorted by x are paired, and each pair
    fills from its left to its right crossing, both rounded down, inclusive."""
    height, width = mask.shape
    if len(edges) < 2:
        return
    first_row = max(min(edge[0] for edge in edges), 0)
    last_row = min(max(edge[1] for edge in edges), height)
    for y in range(first_row, last_row):
        crossings = sorted(x + (y - y0) * dx for y0, y1, x, dx in edges if y0 <= y < y1)
        for left, right in zip(crossings[0::2], crossings[1::2]):
            start, end = left >> XY_SHIFT, right >> XY_SHIFT
            if start < width and end >= 0:
                mask[y, max(start, 0) : min(end, width - 1) + 1] = value


def _clip_line(width: int, height: int, point0: tuple[int, int], point1: tuple[int, int]):
    """OpenCV's clipLine: (visible, clipped point0, clipped point1)."""
    right, bottom = width - 1, height - 1
    x1, y1 = point0
    x2, y2 = point1

    def code(x: int, y: int) -> int:
        return (x < 0) + (x > right) * 2 + (y < 0) * 4 + (y > bottom) * 8

    c1, c2 = code(x1, y1), code(x2, y2)
    if (c1 & c2) == 0 and (c1 | c2) != 0:
        if c1 & 12:
            a = 0 if c1 < 8 else bottom
            x1 += int((a - y1) * (x2 - x1) / (y2 - y1))
            y1 = a
            c1 = (x1 < 0) + (x1 > right) * 2
        if c2 & 12:
            a = 0 if c2 < 8 else bottom
            x2 += int((a - y2) * (x2 - x1) / (y2 - y1))
            y2 = a
            c2 = (x2 < 0) + (x2 > right) * 2
        if (c1 & c2) == 0 and (c1 | c2) != 0:
            if c1:
                a = 0 if c1 == 1 else right
                y1 += int((a - x1) * (y2 - y1) / (x2 - x1))
                x1 = a
                c1 = 0
            if c2:
                a = 0 if c2 == 1 else right
                y2 += int((a - x2) * (y2 - y1) / (x2 - x1))
                x2 = a
                c2 = 0
    return (c1 | c2) == 0, (x1, y1), (x2, y2)


def _draw_line(mask: np.ndarray, point0: tuple[int, int], point1: tuple[int, int], value: int) -> None:
    """OpenCV's 8-connected LineIterator from point0 to point1 (drawn left to right), clipped."""
    height, width = mask.shape
    if not all(0 <= x < width and 0 <= y < height for x, y in (point0, point1)):
        visible, point0, point1 = _clip_line(width, height, point0, point1)
        if not visible:
            return
    (x0, y0), (x1, y1) = point0, point1
    if x1 < x0:  # left to right
        (x0, y0), (x1, y1) = (x1, y1), (x0, y0)
    major, minor = x1 - x0, abs(y1 - y0)
    step_x, step_y = 1, (1 if y1 >= y0 else -1)
    vertical = minor > major
    if vertical:
        major, minor = minor, major
    error = major - 2 * minor
    x, y = x0, y0
    for _ in range(major + 1):
        mask[y, x] = value
        diagonal = error < 0
        error += -2 * minor + (2 * major if diagonal else 0)
        if vertical:
            y += step_y
            x += step_x if diagonal else 0
        else:
            x += step_x
            y += step_y if diagonal else 0
