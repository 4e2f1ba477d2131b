"""Augmentation of training images for image-batch training (dml_knn, supervised).

`flip` (the default): a horizontal flip with probability 0.5 (BaseClassImageStream does it).
`dml`: rootvisionai/dml_segmentation's training augmentations, from its config.yml. It is meant for
fine-tuning on small custom data, where flips alone let the network memorise the training images.
The augmentations, in the original's order:
- shift-scale-rotate with probability 0.8: shift up to 0.4 of each side, scale 1 +- 0.4, any angle
  (+-360 degrees), mirrored borders, bilinear for the image and nearest for the label;
- RGB shift with probability 0.3: up to +-100 of 255, per channel;
- brightness and contrast with probability 0.3: x * (1 + c) + b, with c and b each in +-0.3.
Pixel values are clipped to [0, 1]. The work is done on fsbench's ImageNet-normalised tensors: the
image is denormalised first and normalised again after. Each draw comes from a generator seeded by
the stream position, so a resumed run sees the same batches as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fsbench.transforms import denormalise, normalise

AUGMENTATIONS = ("flip", "dml")


def shift_scale_rotate(image: Tensor, label: Tensor, angle_degrees: float, scale: float, shift: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """Rotate about the centre, scale and shift (x, y as fractions of width and height).

    The image [C, H, W] float is resampled bilinearly and the label [H, W] int64 by nearest
    neighbour, so that class ids and 255 stay exact. Borders are mirrored. Pixel centres are on
    align_corners=True's grid, so a 90-degree turn of a square image gives exactly torch.rot90.
    """
    height, width = label.shape
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij")
    centre_x, centre_y = (width - 1) / 2, (height - 1) / 2
    # Each output pixel takes the input at the inverse map: undo the shift, then the rotation and scale.
    u = xs - centre_x - shift[0] * width
    v = ys - centre_y - shift[1] * height
    radians = math.radians(angle_degrees)
    cosine, sine = math.cos(radians), math.sin(radians)
    source_x = (cosine * u + sine * v) / scale + centre_x
    source_y = (-sine * u + cosine * v) / scale + centre_y
    grid = torch.stack([source_x / max(width - 1, 1) * 2 - 1, source_y / max(height - 1, 1) * 2 - 1], dim=-1)[None]
    warped_image = F.grid_sample(image[None].double(), grid, mode="bilinear", padding_mode="reflection", align_corners=True)[0]
    warped_label = F.grid_sample(label[None, None].double(), grid, mode="nearest", padding_mode="reflection", align_corners=True)[0, 0]
    return warped_image.to(image.dtype), warped_label.round().to(label.dtype)


@dataclass(frozen=True)
class DMLAugmentation:
    """rootvisionai/dml_segmentation's training augmentations (see the module docstring)."""

    shift: float = 0.4
    scale: float = 0.4
    rotate_degrees: float = 360.0
    geometric_probability: float = 0.8
    rgb_shift: float = 100 / 255
    rgb_probability: float = 0.3
    brightness: float = 0.3
    contrast: float = 0.3
    brightness_contrast_probability: float = 0.3

    def __call__(self, image: Tensor, label: Tensor, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """image [3, H, W] normalised, label [H, W] int64 -> the same, augmented."""
        if rng.random() < self.geometric_probability:
            angle = rng.uniform(-self.rotate_degrees, self.rotate_degrees)
            scale = 1 + rng.uniform(-self.scale, self.scale)
            shift = (rng.uniform(-self.shift, self.shift), rng.uniform(-self.shift, self.shift))
            image, label = shift_scale_rotate(image, label, angle, scale, shift)
        pixels = denormalise(image)
        if rng.random() < self.rgb_probability:
            offsets = torch.tensor(rng.uniform(-self.rgb_shift, self.rgb_shift, size=3), dtype=pixels.dtype)
            pixels = (pixels + offsets.view(3, 1, 1)).clamp(0, 1)
        if rng.random() < self.brightness_contrast_probability:
            gain = 1 + rng.uniform(-self.contrast, self.contrast)
            offset = rng.uniform(-self.brightness, self.brightness)
            pixels = (pixels * gain + offset).clamp(0, 1)
        return normalise(pixels), label
