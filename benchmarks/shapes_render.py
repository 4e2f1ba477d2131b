"""Deterministic renderer for the embedded synthetic benchmark `shapes` (see benchmarks/shapes.py).

A class is a (shape family, texture) combination. Every family and every texture occurs in several
classes, so a novel class is recognisable only from its support: "the striped star" cannot be
memorised from base classes that show stars (differently textured) and stripes (on other shapes).
"""
from __future__ import annotations

import numpy as np

IMAGE_SIZE = 128
SHAPES = ("circle", "square", "triangle", "star", "cross")
TEXTURES = ("striped", "checkered", "dotted", "ringed")
NUM_FOLDS = 4
CLASSES_PER_FOLD = len(SHAPES)
IGNORE = 255


def class_of(fold: int, shape: int) -> int:
    """Dataset class id (1..20) of shape family ``shape`` in fold ``fold``; fold f holds ids 5f+1..5f+5."""
    return fold * CLASSES_PER_FOLD + shape + 1


def shape_and_texture(class_id: int) -> tuple[int, int]:
    """Inverse of the class table: fold f pairs shape s with texture (s + f) mod 4 - a Latin square,
    so the 20 classes are the 20 (shape, texture) combinations and each fold holds every shape."""
    fold, shape = divmod(class_id - 1, CLASSES_PER_FOLD)
    return shape, (shape + fold) % len(TEXTURES)


def class_name(class_id: int) -> str:
    shape, texture = shape_and_texture(class_id)
    return f"{TEXTURES[texture]} {SHAPES[shape]}"


def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape family in object coordinates scaled so the shape spans about [-1, 1]."""
    if shape == 0:  # circle
        return u * u + v * v <= 1.0
    if shape == 1:  # square
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8
    if shape == 2:  # equilateral triangle, circumradius 1: three half-planes at inradius 0.5
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            angle = np.pi / 2 + 2 * np.pi * k / 3
            inside &= u * np.cos(angle) + v * np.sin(angle) <= 0.5
        return inside
    if shape == 3:  # five-pointed star, as a lobed polar curve
        radius = np.sqrt(u * u + v * v)
        angle = np.arctan2(v, u)
        return radius <= 0.65 + 0.35 * np.cos(5 * angle)
    # cross
    return ((np.abs(u) <= 0.3) & (np.abs(v) <= 0.9)) | ((np.abs(v) <= 0.3) & (np.abs(u) <= 0.9))


def _texture(texture: int, u: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
    """Boolean pattern in pixel-scaled object coordinates: True picks the first colour."""
    if texture == 0:  # stripes
        return np.sin(2 * np.pi * u / period) > 0
    if texture == 1:  # checkerboard
        return (np.floor(u / period) + np.floor(v / period)) % 2 == 0
    if texture == 2:  # dots on a grid
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return du * du + dv * dv < (0.32 * period) ** 2
    return np.sin(2 * np.pi * np.sqrt(u * u + v * v) / period) > 0  # concentric rings


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, size=3)


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """[H, W, 3] float clutter: a smooth colour field, a faint texture, lines and plain blobs."""
    size = IMAGE_SIZE
    coarse = rng.uniform(40, 215, size=(4, 4, 3))
    # Bilinear upsampling of a 4x4 colour grid gives a smooth field.
    grid = np.linspace(0, 3, size)
    low = np.floor(grid).astype(int).clip(0, 2)
    frac = grid - low
    rows = coarse[low] * (1 - frac)[:, None, None] + coarse[low + 1] * frac[:, None, None]
    field = rows[:, low] * (1 - frac)[None, :, None] + rows[:, low + 1] * frac[None, :, None]
    angle = rng.uniform(0, np.pi)
    faint = np.sin(2 * np.pi * (np.cos(angle) * xx + np.sin(angle) * yy) / rng.uniform(5, 12))
    image = field + rng.uniform(8, 20) * faint[..., None] + rng.normal(0, 6, size=(size, size, 3))
    for _ in range(rng.integers(2, 6)):  # thin line segments
        x0, y0, x1, y1 = rng.uniform(0, size, size=4)
        length = np.hypot(x1 - x0, y1 - y0) + 1e-6
        distance = np.abs((y1 - y0) * xx - (x1 - x0) * yy + x1 * y0 - y1 * x0) / length
        along = ((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0)) / length**2
        image[(distance < rng.uniform(0.6, 1.6)) & (along >= 0) & (along <= 1)] = _random_colour(rng)
    for _ in range(rng.integers(1, 4)):  # untextured ellipses: object-like distractors of no class
        cx, cy = rng.uniform(0, size, size=2)
        ax, ay = rng.uniform(4, 12, size=2)
        image[((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1] = _random_colour(rng)
    return image


def _ignore_band(label: np.ndarray) -> np.ndarray:
    """Mark pixels whose 3x3 neighbourhood holds another label as ignore, like VOC's boundary band."""
    padded = np.pad(label, 1, mode="edge")
    boundary = np.zeros(label.shape, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = padded[1 + dy : 1 + dy + label.shape[0], 1 + dx : 1 + dx + label.shape[1]]
            boundary |= shifted != label
    banded = label.copy()
    banded[boundary] = IGNORE
    return banded


def render(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One image: ([H, W, 3] uint8 RGB, [H, W] uint8 label with class ids, 0 background, 255 ignore)."""
    size = IMAGE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = _background(rng, yy, xx)
    label = np.zeros((size, size), dtype=np.uint8)
    num_classes = NUM_FOLDS * CLASSES_PER_FOLD
    for _ in range(rng.integers(1, 4)):
        class_id = int(rng.integers(1, num_classes + 1))
        shape, texture = shape_and_texture(class_id)
        radius = rng.uniform(14, 30)
        cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
        angle = rng.uniform(0, 2 * np.pi)
        cos, sin = np.cos(angle), np.sin(angle)
        u = cos * (xx - cx) + sin * (yy - cy)
        v = -sin * (xx - cx) + cos * (yy - cy)
        inside = _shape_mask(shape, u / radius, v / radius)
        pattern = _texture(texture, u, v, period=rng.uniform(5, 9))
        first, second = _random_colour(rng), _random_colour(rng)
        while np.abs(first - second).sum() < 150:  # keep the texture visible
            second = _random_colour(rng)
        image[inside] = np.where(pattern[inside][:, None], first, second)
        label[inside] = class_id  # later objects occlude earlier ones, in pixels and in labels
    return np.clip(image, 0, 255).astype(np.uint8), _ignore_band(label)
