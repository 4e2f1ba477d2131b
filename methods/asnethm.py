"""asnethm: ASNet with hybrid masking.

Kang and Cho, CVPR 2022 (iFSL's "HM" row): ASNet, except that every support tap is the masked
tap (ASNet's pooled tap times the bilinearly resized mask) where that is positive, and elsewhere
the tap of the support image multiplied by its mask before the backbone (input masking). The
learner, heads and training are ASNet's; so is --weak, where there is no mask to hybridise (iFSL's
asnethm.py cannot run its weak setting: it multiplies the image by the absent mask).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fsbench.registry import METHODS
from methods.asnet import ASNet, ASNetConfig
from methods.correlation.backbone_taps import mask_taps, pool_wide_taps


@dataclass
class ASNetHMConfig(ASNetConfig):
    pass


@METHODS.register("asnethm")
class ASNetHM(ASNet):
    Config = ASNetHMConfig

    def support_taps(self, taps: list[Tensor], images: Tensor, masks: Tensor | None) -> list[Tensor]:
        if masks is None:  # no pixel labels (--weak): both maskings are the identity, as with masks of ones
            return pool_wide_taps(taps)
        masked_taps = mask_taps(pool_wide_taps(taps), masks)
        input_masked_taps = pool_wide_taps(self.tap_backbone(images * masks.unsqueeze(1)))
        return [torch.where(masked > 0, masked, fallback) for masked, fallback in zip(masked_taps, input_masked_taps)]
