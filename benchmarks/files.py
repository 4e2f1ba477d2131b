"""File checks shared by the real-data benchmarks: dataset trees, paths from JSON, image/mask pairs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from fsbench.errors import FsbenchError
from fsbench.transforms import read_image, read_label

README_HINT = "see data/README.md for the expected layout"


def require_tree(path: Path, description: str) -> Path:
    """``path`` when it exists, else a one-line error that says which tree was expected."""
    if not Path(path).exists():
        raise FsbenchError(f"{description} not found: expected {path} ({README_HINT})")
    return Path(path)


def inside_root(root: Path, relative: str, source: Path | str) -> Path:
    """``root / relative`` when it stays inside ``root``; paths from data files must not escape it.

    A string check (absolute paths and ``..`` that climb out are refused), so it costs nothing per
    image of an 80k-image JSON; links inside the tree are the user's own choice.
    """
    if not isinstance(relative, str) or not relative:
        raise FsbenchError(f"{source}: file name {relative!r} is not a non-empty string")
    normal = os.path.normpath(relative)
    if os.path.isabs(relative) or normal == ".." or normal.startswith(".." + os.sep) or "\0" in relative:
        raise FsbenchError(f"{source}: file name {relative!r} points outside the dataset root {root}; refused")
    return Path(root) / normal


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError:
        raise FsbenchError(f"file is missing: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise FsbenchError(f"cannot read {path}: corrupt or not an image ({error})") from None
    return height, width


def check_same_size(image: Tensor, label: Tensor, image_path: Path, mask_path: Path | str) -> None:
    """A mask must cover its image pixel for pixel; anything else is a broken pair."""
    if tuple(image.shape[-2:]) != tuple(label.shape[-2:]):
        raise FsbenchError(
            f"mask {mask_path} is {label.shape[-2]}x{label.shape[-1]} but its image {image_path} is "
            f"{image.shape[-2]}x{image.shape[-1]} (height x width)"
        )


def read_pair(image_path: Path, mask_path: Path) -> tuple[Tensor, Tensor]:
    """(image [3, H, W] uint8, mask [H, W] int64 as stored), checked to be the same size."""
    image = read_image(image_path)
    label = read_label(mask_path)
    check_same_size(image, label, image_path, mask_path)
    return image, label


class BadFiles:
    """Either refuses a broken file (the default) or, when the user asked to skip, counts it.

    Used while indexes are built: ``admit(check)`` runs ``check()`` and returns True when it passed.
    """

    def __init__(self, skip: bool):
        self.skip = skip
        self.skipped: list[str] = []

    def admit(self, check) -> bool:
        try:
            check()
        except FsbenchError as error:
            if not self.skip:
                raise
            self.skipped.append(str(error))
            return False
        return True

    def report(self, what: str) -> None:
        if self.skipped:
            print(f"fsbench: skipped {len(self.skipped)} bad {what} (--skip-bad); first: {self.skipped[0]}", flush=True)


def read_class_png(mask_path: Path) -> np.ndarray:
    """[H, W] array of a single-channel class-index PNG; a bad file is a one-line FsbenchError."""
    try:
        with Image.open(mask_path) as mask:
            label = np.asarray(mask)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise FsbenchError(f"cannot decode mask {mask_path}: corrupt or truncated ({error})") from None
    if label.ndim != 2:
        raise FsbenchError(f"mask {mask_path} has {label.shape[-1]} channels; expected a single-channel class-index PNG")
    return label
