"""ASNet's learner (iFSL, model/module/asnet.py): attentive squeeze layers reduce each correlation
group's support dimensions, coarse-to-fine mixing with attentive layers, HSNet's decoder.

Blocks, kernel sizes, strides and state-dict keys are iFSL's: ``encoder_layer4`` (32, 128 channels;
kernels 5, 3; strides 4, 2), ``encoder_layer3`` / ``encoder_layer2`` (kernels 5, 5; strides 4, 4;
strided keys), mixing ``encoder_layer4to3`` / ``encoder_layer3to2`` (kernels 1, 2; stride 1), then
``decoder1`` / ``decoder2``.

The mixing layers (kernels 1 then 2, no padding) turn a 2x2 support plane into one position, and
2x2 is what the squeezing blocks of the middle and shallow groups give for inputs of 393-512 px a
side (ResNet taps; 400 px is the papers' size). iFSL's code fails at every other size. fsbench
adaptively average-pools those two blocks' support planes to 2x2 before mixing: a no-op at those
sizes (so the authors' numbers stand), and a defined model at the rest (a 1x1 plane is repeated,
a 3x3 one averaged), e.g. 128 px on the demo benchmark or PFENet's 641 px.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from methods.correlation.attentive_squeeze import AttentiveSqueezeLayer
from methods.correlation.hsnet_learner import Decoder, resize_query_dims

# Support side of the planes the mixing layers take (what the squeezing blocks give at 400 px).
MIXING_SIDE = 2
# block name -> (output channels, kernel sizes, strides, strided keys and values)
BLOCK_LAYOUT = {
    "encoder_layer4": ((32, 128), (5, 3), (4, 2), False),
    "encoder_layer3": ((32, 128), (5, 5), (4, 4), True),
    "encoder_layer2": ((32, 128), (5, 5), (4, 4), True),
    "encoder_layer4to3": ((128, 128), (1, 2), (1, 1), False),
    "encoder_layer3to2": ((128, 128), (1, 2), (1, 1), False),
}


class AttentiveBlock(nn.Sequential):
    """Attentive squeeze layers in sequence; every layer sees the same support masks."""

    def forward(self, correlation: Tensor, support_masks: Tensor | None) -> Tensor:  # type: ignore[override]
        for layer in self:
            correlation = layer(correlation, support_masks)
        return correlation


class ASNetLearner(Decoder):
    """Correlation groups [deep, middle, shallow] ([P, L_g, ha, wa, hb, wb]) and support masks
    [P, H, W] (None: no attention masking) -> logits [P, 2, 2*ha2, 2*wa2]."""

    # A state-dict key only this learner has (recognises released checkpoints).
    SIGNATURE_KEY = "encoder_layer4.0.attn.qhead.weight"

    def __init__(self, group_sizes: tuple[int, int, int]):
        super().__init__()
        in_channels = dict(zip(("encoder_layer4", "encoder_layer3", "encoder_layer2"), group_sizes))
        for name, (channels, kernels, strides, pool_keys) in BLOCK_LAYOUT.items():
            previous = in_channels.get(name, 128)
            layers = []
            for out, kernel, stride in zip(channels, kernels, strides):
                layers.append(AttentiveSqueezeLayer(previous, out, kernel, stride, pool_keys))
                previous = out
            setattr(self, name, AttentiveBlock(*layers))

    def forward(self, correlations: list[Tensor], support_masks: Tensor | None = None) -> Tensor:
        deep, middle, shallow = correlations
        squeezed4 = self.encoder_layer4(deep, support_masks)
        squeezed3 = self.encoder_layer3(middle, support_masks)
        squeezed2 = self.encoder_layer2(shallow, support_masks)

        squeezed4 = squeezed4.mean(dim=(-1, -2), keepdim=True)  # the deepest group keeps no support position
        mixed = resize_query_dims(squeezed4, squeezed3.shape[2:4]) + mixing_plane(squeezed3)
        mixed = self.encoder_layer4to3(mixed, support_masks)
        mixed = resize_query_dims(mixed, squeezed2.shape[2:4]) + mixing_plane(squeezed2)
        mixed = self.encoder_layer3to2(mixed, support_masks)
        return self.decode(mixed[..., 0, 0])  # [P, 128, ha, wa, 1, 1] -> [P, 128, ha, wa]

    def accepts_support_sides(self, sides: tuple[int, int, int]) -> bool:
        """Any support sides go through (the planes entering the mixing layers are pooled to 2x2)."""
        return min(sides) >= 1


def mixing_plane(squeezed: Tensor) -> Tensor:
    """[B, C, ha, wa, hb, wb] with its support plane adaptively average-pooled to MIXING_SIDE^2
    (unchanged when it is that size already, as at the papers' 400 px)."""
    if squeezed.shape[-2:] == (MIXING_SIDE, MIXING_SIDE):
        return squeezed
    pooled = F.adaptive_avg_pool2d(squeezed.flatten(1, 3), MIXING_SIDE)
    return pooled.view(*squeezed.shape[:4], MIXING_SIDE, MIXING_SIDE)
