"""OpenCV's uint8 resizes (cv2.resize INTER_LINEAR and INTER_NEAREST), without OpenCV.

rootvisionai/dml_segmentation resizes with albumentations' Resize, i.e. cv2.resize: bilinear for
images, nearest for masks. Its checkpoints see images resized that way, and predict's original
profile must give the same inputs, so these follow OpenCV 4.9's arithmetic (resize.cpp):
- coefficients in float32, source positions (d + 0.5) * scale - 0.5, borders clamped;
- bilinear on uint8 in 11-bit fixed point: a horizontal pass into int32, then a vertical pass that
  OpenCV's SIMD code rounds as ((a >> 4) * b0 >> 16 + (c >> 4) * b1 >> 16 + 2) >> 2 and its
  scalar code would round as (a * b0 + c * b1 + 2^21) >> 22, one grey level apart at times; cv2 4.9
  (the version the DML repo pins) gives the vector rounding on every element, row tails included;
- an exact halving in both directions is an average of 2x2 blocks (OpenCV switches to INTER_AREA);
- nearest: source index floor(d * (1 / (dst / src))) in double, clamped.
The comparison with cv2 itself (many sizes, channels 1 and 3) is described in tests/test_preprocessing.py.
"""
from __future__ import annotations

import numpy as np

COEFFICIENT_BITS = 11
COEFFICIENT_SCALE = 1 << COEFFICIENT_BITS


def _linear_coefficients(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output position: the first source index (unclamped) and the float32 fraction past it."""
    scale = 1.0 / (target / source)
    position = ((np.arange(target, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    index = np.floor(position).astype(np.int64)
    fraction = (position - index.astype(np.float32)).astype(np.float32)
    return index, fraction


def _weights(fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first = np.rint((np.float32(1.0) - fraction) * np.float32(COEFFICIENT_SCALE)).astype(np.int64)
    second = np.rint(fraction * np.float32(COEFFICIENT_SCALE)).astype(np.int64)
    return first, second


def resize_linear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR) for uint8 [H, W] or [H, W, C]."""
    if image.dtype != np.uint8:
        raise TypeError("resize_linear takes uint8 images")
    squeeze = image.ndim == 2
    source = image[:, :, None] if squeeze else image
    source_height, source_width, channels = source.shape
    if (source_height, source_width) == (height, width):
        return image.copy()
    if source_height == 2 * height and source_width == 2 * width:
        blocks = source.reshape(height, 2, width, 2, channels).astype(np.int64).sum(axis=(1, 3))
        result = ((blocks + 2) >> 2).astype(np.uint8)
        return result[:, :, 0] if squeeze else result

    # Horizontal pass: int64 [source rows, width, channels] in fixed point.
    columns, column_fraction = _linear_coefficients(source_width, width)
    left_border = columns < 0
    column_fraction = np.where(left_border, np.float32(0), column_fraction)
    columns = np.where(left_border, 0, columns)
    right_border = columns + 1 >= source_width
    column_fraction = np.where(columns >= source_width - 1, np.float32(0), column_fraction)
    columns = np.minimum(columns, source_width - 1)
    alpha0, alpha1 = _weights(column_fraction)
    pixels = source.astype(np.int64)
    inner = pixels[:, columns] * alpha0[None, :, None] + pixels[:, np.minimum(columns + 1, source_width - 1)] * alpha1[None, :, None]
    border = pixels[:, columns] * COEFFICIENT_SCALE
    horizontal = np.where(right_border[None, :, None], border, inner)

    # Vertical pass: rows clamped, weights from the unclamped position.
    rows, row_fraction = _linear_coefficients(source_height, height)
    beta0, beta1 = _weights(row_fraction)
    upper = horizontal[np.clip(rows, 0, source_height - 1)].reshape(height, -1)
    lower = horizontal[np.clip(rows + 1, 0, source_height - 1)].reshape(height, -1)
    # OpenCV's vector rounding: (((a >> 4) * b0) >> 16) + (((c >> 4) * b1) >> 16), then (+ 2) >> 2.
    b0, b1 = beta0[:, None], beta1[:, None]
    combined = (((((upper >> 4) * b0) >> 16) + (((lower >> 4) * b1) >> 16)) + 2) >> 2
    result = np.clip(combined, 0, 255).astype(np.uint8).reshape(height, width, channels)
    return result[:, :, 0] if squeeze else result


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """cv2.resize(array, (width, height), interpolation=cv2.INTER_NEAREST) for [H, W] or [H, W, C]."""
    source_height, source_width = array.shape[:2]
    rows = np.minimum(np.floor(np.arange(height) * (1.0 / (height / source_height))).astype(np.int64), source_height - 1)
    columns = np.minimum(np.floor(np.arange(width) * (1.0 / (width / source_width))).astype(np.int64), source_width - 1)
    return array[rows][:, columns].copy()
