"""asnet: Attentive Squeeze Network.

Kang and Cho, "Integrative Few-Shot Learning for Classification and Segmentation", CVPR 2022
(iFSL). HSNet's backbone taps and 4D correlations, but support features are not masked: wide
support taps (at least 50 positions) are average-pooled (3x3, stride 2) and the support mask
enters as attention masking in attentive squeeze layers (global self-attention over the support
dimensions, then a feed-forward block) that reduce the support to one position; HSNet's decoder.
FS-CS heads for any N: per-way 2-channel maps, merged background, class presence where some pixel's
foreground probability is >= 0.5. k shots: iFSL's logit averaging by default. Training: Adam,
lr 1e-3, 1-shot episodes at 400x400, NLL of the merged log-probabilities; frozen backbone.
Learnable parameters: 1.3M. --weak (iFSL's class tags): the learner gets no support mask (no
attention masking) and the loss is fsbench.losses.class_tag_loss on the per-way maps. iFSL's layers only fit inputs of 393-512 px a side; at other sizes
fsbench pools the planes entering the mixing layers to the 2x2 they have at 400 px
(methods/correlation/asnet_learner.py).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from fsbench.registry import METHODS
from methods.correlation.asnet_learner import ASNetLearner
from methods.correlation.backbone_taps import pool_wide_taps
from methods.correlation.family import CorrelationConfig, CorrelationMethod


@dataclass
class ASNetConfig(CorrelationConfig):
    shot_aggregation: str = "average"
    loss: str = "ifsl"

    # Measured on shapes fold 0 1-way 1-shot, 300 test episodes: unweighted loss, all background
    # (mIoU 0.0); foreground pixels weighted 20: mIoU 22.9 / FB-IoU 52.8.
    QUICK = {**CorrelationConfig.QUICK_COMMON, "train_steps": 100}


@METHODS.register("asnet")
class ASNet(CorrelationMethod):
    Config = ASNetConfig
    learner_class = ASNetLearner
    learner_sees_masks = True
    supports_weak = True
    cpu_bf16 = False  # torch 2.14's CPU bf16 backward of the attentive squeeze layers aborts (double free)

    def support_taps(self, taps: list[Tensor], images: Tensor, masks: Tensor | None) -> list[Tensor]:
        return pool_wide_taps(taps)
