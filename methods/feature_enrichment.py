"""PFENet's feature enrichment module (FEM; Tian et al., TPAMI 2020, section 3.3) and its support pooling.

The FEM segments a query from its reduced mid-level features, the support prototype and the prior
mask, at several spatial scales ("bins"): at each scale the three are merged by a 1x1 conv; from the
second scale on, the previous scale's merged feature (resized) is mixed in by the inter-scale
interaction (a 1x1 conv on the concatenation, added residually); two 3x3 convs refine it (residual)
and an auxiliary classifier predicts from it. All scales are resized to the query size, concatenated,
fused and classified. Every resize is bilinear with align_corners=True, as in PFENet.

Module and key names (PFENet's in brackets): merge [init_merge], interaction [alpha_conv],
refine [beta_conv], auxiliary_classifiers [inner_cls], fuse [res1], fuse_refine [res2],
classifier [cls]; layer indices inside each are PFENet's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# PFENet's Weighted_GAP adds this to the mask area.
POOLING_EPSILON = 0.0005
# Foreground and background: PFENet's classifiers are two-way (classes=2).
CLASSES = 2
# The pyramid bins of PFENet's Pascal config (sides), its COCO config (shares of the feature size),
# and iFSL's fs-cs PFENetLearner (sides, made for 400x400 inputs: 50x50 features).
PASCAL_BINS = (60, 30, 15, 8)
COCO_BINS = (1.0, 0.5, 0.25, 0.125)
IFSL_BINS = (50, 25, 13, 7)


def weighted_average_pool(features: Tensor, mask: Tensor) -> Tensor:
    """PFENet's Weighted_GAP: [B, C, h, w] features, [B, 1, h, w] mask -> [B, C, 1, 1] prototype."""
    features = features * mask
    height, width = features.shape[-2:]
    area = F.avg_pool2d(mask, (height, width)) * height * width + POOLING_EPSILON
    return F.avg_pool2d(input=features, kernel_size=(height, width)) * height * width / area


def bin_size(bin_setting: float, height: int, width: int) -> tuple[int, int]:
    """A bin of at most 1.0 is a share of the feature size (PFENet's COCO setting, int() rounds down);
    a larger one is an absolute side (its Pascal setting 60/30/15/8). A share of a map too small for it
    gives 1, where PFENet would fail on a zero-sized bin."""
    if bin_setting <= 1.0:
        return max(int(height * bin_setting), 1), max(int(width * bin_setting), 1)
    return int(bin_setting), int(bin_setting)


def _resize(features: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(features, size=size, mode="bilinear", align_corners=True)


class FeatureEnrichment(nn.Module):
    """Inputs: query [B, R, h, w] reduced features, prototype [B, R, 1, 1], prior [B, 1, h, w].

    Returns (logits [B, 2, h, w], auxiliary logits: one [B, 2, bin_h, bin_w] per bin).
    """

    def __init__(self, reduce_dim: int, bins: tuple[float, ...]):
        super().__init__()
        self.bins = tuple(bins)
        prior_channels = 1
        self.merge = nn.ModuleList(
            nn.Sequential(nn.Conv2d(reduce_dim * 2 + prior_channels, reduce_dim, kernel_size=1, padding=0, bias=False), nn.ReLU(inplace=True))
            for _ in self.bins
        )
        self.refine = nn.ModuleList(_two_convs(reduce_dim) for _ in self.bins)
        self.auxiliary_classifiers = nn.ModuleList(_classifier(reduce_dim) for _ in self.bins)
        self.fuse = nn.Sequential(nn.Conv2d(reduce_dim * len(self.bins), reduce_dim, kernel_size=1, padding=0, bias=False), nn.ReLU(inplace=True))
        self.fuse_refine = _two_convs(reduce_dim)
        # PFENet's alpha_conv ends in a non-inplace ReLU; the numbers are the same either way.
        self.interaction = nn.ModuleList(
            nn.Sequential(nn.Conv2d(reduce_dim * 2, reduce_dim, kernel_size=1, stride=1, padding=0, bias=False), nn.ReLU())
            for _ in range(len(self.bins) - 1)
        )
        self.classifier = _classifier(reduce_dim)

    def forward(self, query: Tensor, prototype: Tensor, prior: Tensor) -> tuple[Tensor, list[Tensor]]:
        height, width = query.shape[-2:]
        scales: list[Tensor] = []
        auxiliary: list[Tensor] = []
        for index, bin_setting in enumerate(self.bins):
            size = bin_size(bin_setting, height, width)
            query_bin = F.adaptive_avg_pool2d(query, size)
            prototype_bin = prototype.expand(-1, -1, *size)
            prior_bin = _resize(prior, size)
            merged = self.merge[index](torch.cat([query_bin, prototype_bin, prior_bin], 1))
            if index >= 1:
                # Inter-scale interaction: the previous scale, already at query size, resized to this one.
                previous = _resize(scales[index - 1], size)
                merged = self.interaction[index - 1](torch.cat([merged, previous], 1)) + merged
            merged = self.refine[index](merged) + merged
            auxiliary.append(self.auxiliary_classifiers[index](merged))
            scales.append(_resize(merged, (height, width)))
        fused = self.fuse(torch.cat(scales, 1))
        fused = self.fuse_refine(fused) + fused
        return self.classifier(fused), auxiliary


def _two_convs(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
    )


def _classifier(channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Dropout2d(p=0.1),
        nn.Conv2d(channels, CLASSES, kernel_size=1),
    )


def reduction_layer(in_channels: int, reduce_dim: int) -> nn.Sequential:
    """PFENet's down_query / down_supp: 1x1 conv (no bias), ReLU, Dropout2d(0.5)."""
    return nn.Sequential(nn.Conv2d(in_channels, reduce_dim, kernel_size=1, padding=0, bias=False), nn.ReLU(inplace=True), nn.Dropout2d(p=0.5))
