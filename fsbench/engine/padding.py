"""The one padding rule: images a network cannot take are padded to the next size it can, and its
output is cropped back - here, for every method, in training and in evaluation.

A method states what it takes through ``Method.valid_size(height, width)`` (e.g. a U-Net with five
poolings: multiples of 32; PFENet: 8k + 1). Padding goes at the bottom and right, so cropping is a
plain slice. Images are padded with 0 after ImageNet normalisation, i.e. with the mean colour, as
PFENet pads; masks are padded with 255, so padded pixels are neither foreground nor background in a
support, and never scored or learned from in a query or a label map.
"""
from __future__ import annotations

from dataclasses import replace

import torch.nn.functional as F
from torch import Tensor

from fsbench.episode import IGNORE_INDEX, Episode, Prediction


def pad_amount(size: tuple[int, int], valid: tuple[int, int]) -> tuple[int, int]:
    """(rows, columns) to add at the bottom and right to go from ``size`` to ``valid``."""
    rows, columns = valid[0] - size[0], valid[1] - size[1]
    if rows < 0 or columns < 0:
        raise ValueError(f"valid size {valid} is smaller than the input {size}")
    return rows, columns


def pad_images(images: Tensor, rows: int, columns: int) -> Tensor:
    """[..., 3, H, W] -> [..., 3, H + rows, W + columns], zeros (the normalised mean colour)."""
    if not rows and not columns:
        return images
    return F.pad(images, (0, columns, 0, rows))


def pad_masks(masks: Tensor, rows: int, columns: int) -> Tensor:
    """[..., H, W] int64 -> [..., H + rows, W + columns], 255 (ignore) in the padding."""
    if not rows and not columns:
        return masks
    return F.pad(masks, (0, columns, 0, rows), value=IGNORE_INDEX)


def pad_episode(episode: Episode, valid: tuple[int, int]) -> Episode:
    """The episode with support and query images and masks padded to ``valid`` (height, width).

    Supports and queries share one size in fsbench's episodes (the protocol's transform makes it so).
    """
    rows, columns = pad_amount(tuple(episode.query_images.shape[-2:]), valid)
    if not rows and not columns:
        return episode
    return replace(
        episode,
        support_images=pad_images(episode.support_images, rows, columns),
        support_masks=pad_masks(episode.support_masks, rows, columns),
        query_images=pad_images(episode.query_images, rows, columns),
        query_masks=pad_masks(episode.query_masks, rows, columns),
    )


def pad_batch(images: Tensor, labels: Tensor, valid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Image batch [B, 3, H, W] and labels [B, H, W] padded to ``valid``."""
    rows, columns = pad_amount(tuple(images.shape[-2:]), valid)
    return pad_images(images, rows, columns), pad_masks(labels, rows, columns)


def predict_padded(method, episode: Episode) -> Prediction:
    """method.predict on the episode padded to a size the method takes, cropped back to the input's.

    Returns a Prediction whose maps are [Q, N, H, W] at the episode's own H x W.
    """
    height, width = episode.query_images.shape[-2:]
    valid = tuple(method.valid_size(height, width))
    if valid == (height, width):
        return method.predict(episode)
    return method.predict(pad_episode(episode, valid)).cropped(height, width)
