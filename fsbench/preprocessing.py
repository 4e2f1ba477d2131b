"""How predict turns a user's image into a model input, and the model's answer back into that image's pixels.

A profile is chosen by name (a method's ``preprocessing`` setting, else ``--preprocessing``):
- ``hsnet``: squash to size x size (bilinear, antialiased), ImageNet mean/std; masks nearest;
  probabilities resized back bilinearly. What fsbench's own runs train and evaluate with.
- ``dml_original``: rootvisionai/dml_segmentation's inference: zero-pad to a square with the image
  centred (offset int((long - short) / 2)), OpenCV-bilinear resize to size x size, pixels / 255,
  no normalisation; masks padded with 0 (background) and resized nearest; the answer resized
  nearest to the padded square and the padding cut off.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsbench.errors import FsbenchError
from fsbench.opencv_resize import resize_linear, resize_nearest
from fsbench.transforms import SquashResize


@dataclass(frozen=True)
class Placement:
    """Where an image of original_size (height, width) sits in the model input: its top-left
    offset and side inside the square canvas (dml_original), or squashed (hsnet)."""

    original_size: tuple[int, int]
    offset: tuple[int, int] = (0, 0)
    canvas_side: int = 0


class Preprocessing(ABC):
    name = "base"
    default_size = 400

    @abstractmethod
    def image(self, image: Tensor, size: int) -> tuple[Tensor, Placement]:
        """[3, H, W] uint8 RGB -> ([3, size, size] float model input, placement)."""

    @abstractmethod
    def mask(self, mask: Tensor, size: int) -> Tensor:
        """[H, W] int64 (0, 1, 255 = ignore) -> [size, size] int64, placed as image() places pixels."""

    @abstractmethod
    def to_original(self, probabilities: Tensor, placement: Placement) -> Tensor:
        """[Q, N, size, size] -> [Q, N, H, W] at the image's original size."""


class SquashProfile(Preprocessing):
    name = "hsnet"
    default_size = 400

    def image(self, image: Tensor, size: int) -> tuple[Tensor, Placement]:
        resized, _ = SquashResize(size)(image, torch.zeros(image.shape[-2:], dtype=torch.int64))
        return resized, Placement(tuple(image.shape[-2:]))

    def mask(self, mask: Tensor, size: int) -> Tensor:
        return F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()

    def to_original(self, probabilities: Tensor, placement: Placement) -> Tensor:
        if tuple(probabilities.shape[-2:]) == placement.original_size:
            return probabilities
        resized = F.interpolate(probabilities.float(), size=placement.original_size, mode="bilinear", align_corners=False)
        return resized.clamp(0, 1)


class PadSquareProfile(Preprocessing):
    name = "dml_original"
    default_size = 224

    @staticmethod
    def _pad(array: np.ndarray, fill: int) -> tuple[np.ndarray, tuple[int, int]]:
        height, width = array.shape[:2]
        side = max(height, width)
        # The DML repo's PadToSquare: the shorter side is centred at int((long - short) / 2).
        top = int((side - height) / 2)
        left = int((side - width) / 2)
        canvas = np.full((side, side) + array.shape[2:], fill, dtype=array.dtype)
        canvas[top : top + height, left : left + width] = array
        return canvas, (top, left)

    def image(self, image: Tensor, size: int) -> tuple[Tensor, Placement]:
        pixels = image.permute(1, 2, 0).contiguous().numpy()
        canvas, offset = self._pad(pixels, 0)
        resized = resize_linear(canvas, size, size)
        tensor = torch.from_numpy(resized).permute(2, 0, 1) / 255  # as ToTensorV2() then / 255
        return tensor, Placement(tuple(image.shape[-2:]), offset, canvas.shape[0])

    def mask(self, mask: Tensor, size: int) -> Tensor:
        canvas, _ = self._pad(mask.numpy().astype(np.uint8), 0)
        return torch.from_numpy(resize_nearest(canvas, size, size).astype(np.int64))

    def to_original(self, probabilities: Tensor, placement: Placement) -> Tensor:
        side = placement.canvas_side
        square = F.interpolate(probabilities.float(), size=(side, side), mode="nearest")
        (top, left), (height, width) = placement.offset, placement.original_size
        return square[..., top : top + height, left : left + width]


PREPROCESSINGS: dict[str, Preprocessing] = {profile.name: profile for profile in (SquashProfile(), PadSquareProfile())}


def get_preprocessing(name: str) -> Preprocessing:
    if name not in PREPROCESSINGS:
        raise FsbenchError(f"unknown preprocessing {name!r}; available: {', '.join(sorted(PREPROCESSINGS))}")
    return PREPROCESSINGS[name]

