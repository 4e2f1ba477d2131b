"""iFSL's N-way merge of per-way two-channel maps (Kang and Cho, CVPR 2022; fs-cs/model/ifsl.py).

A 1-way model (PFENet, PANet-style learners) run once per way gives each way n a map of two logits,
(background of n, foreground of n). iFSL turns N of them into one (1 + N)-channel map:
- log-softmax over each way's two channels;
- background = the mean over ways of the per-way background log-probabilities (merge_bg_masks);
- channel n = way n's foreground log-probability;
- labels = argmax over the (1 + N) channels after bilinear upsampling *of the log-probabilities*
  with align_corners=True (a Prediction with upsampling "log_probabilities" resizes the same way);
- presence of way n: its largest foreground probability at feature resolution is >= 0.5
  (collect_class_presence compares log-probabilities with log 0.5).
For one way the argmax equals PFENet's argmax of bilinearly upsampled logits: the two channels'
log-probabilities differ by the logit difference at every location, and interpolation is linear.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class MergedWays:
    """A query's merged map at feature resolution.

    Attributes:
        log_probs: [Q, 1 + N, h, w]; channel 0 = background (mean of the ways' background log-probs).
        presence: [Q, N] in [0, 1]: each way's largest foreground probability over the map.
    """

    log_probs: Tensor
    presence: Tensor


def merge_ways(way_logits: Tensor) -> MergedWays:
    """way_logits [Q, N, 2, h, w] (channel 0 background, 1 foreground) -> MergedWays."""
    way_log_probs = torch.log_softmax(way_logits, dim=2)
    background = way_log_probs[:, :, 0].mean(dim=1, keepdim=True)
    foreground = way_log_probs[:, :, 1]
    return MergedWays(log_probs=torch.cat([background, foreground], dim=1), presence=way_presence(foreground))


def way_presence(foreground_log_probs: Tensor) -> Tensor:
    """[Q, N, h, w] foreground log-probabilities -> [Q, N] largest foreground probability per way.

    Compared with 0.5 it is iFSL's collect_class_presence (max log-probability >= log 0.5).
    """
    return foreground_log_probs.flatten(2).amax(dim=2).exp()


def upsample_log_probs(log_probs: Tensor, size: tuple[int, int]) -> Tensor:
    """[Q, C, h, w] -> [Q, C, *size]: bilinear with align_corners=True, in log-probability space."""
    if tuple(log_probs.shape[-2:]) == tuple(size):
        return log_probs
    return F.interpolate(log_probs, size=size, mode="bilinear", align_corners=True)
