"""HSNet's learner: center-pivot 4D convolutions squeeze each correlation group, coarse-to-fine
mixing, then a 2D decoder to 2-channel (background, foreground) logits.

Layer order, kernel sizes, strides, GroupNorm(4) and the state-dict keys are HSNet's
(model/learner.py): squeezing blocks ``encoder_layer4/3/2`` (16, 64, 128 channels), mixing blocks
``encoder_layer4to3`` / ``encoder_layer3to2``, decoders ``decoder1`` / ``decoder2``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from methods.correlation.center_pivot_conv import CenterPivotConv4d

GROUPS = 4
SQUEEZE_CHANNELS = (16, 64, 128)
# (kernel sizes, support strides) of the three layers of each squeezing block.
SQUEEZE_LAYOUT = {
    "encoder_layer4": ((3, 3, 3), (2, 2, 2)),
    "encoder_layer3": ((5, 3, 3), (4, 2, 2)),
    "encoder_layer2": ((5, 5, 3), (4, 4, 2)),
}


def _conv4d_block(in_channels: int, out_channels: tuple[int, ...], kernels: tuple[int, ...], strides: tuple[int, ...]) -> nn.Sequential:
    """(CenterPivotConv4d, GroupNorm, ReLU) x len(out_channels)."""
    layers: list[nn.Module] = []
    for out, kernel, stride in zip(out_channels, kernels, strides):
        layers += [CenterPivotConv4d(in_channels, out, kernel, stride), nn.GroupNorm(GROUPS, out), nn.ReLU(inplace=True)]
        in_channels = out
    return nn.Sequential(*layers)


def resize_query_dims(correlation: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, C, ha, wa, hb, wb] with its query dims (ha, wa) resized bilinearly (align_corners=True)."""
    batch, channels, _, _, support_height, support_width = correlation.shape
    planes = correlation.permute(0, 4, 5, 1, 2, 3).reshape(-1, channels, *correlation.shape[2:4])
    planes = F.interpolate(planes, size, mode="bilinear", align_corners=True)
    planes = planes.view(batch, support_height, support_width, channels, *size)
    return planes.permute(0, 3, 4, 5, 1, 2)


class Decoder(nn.Module):
    """[B, 128, h, w] -> [B, 2, 2h, 2w]: two 3x3 convs, bilinear x2 (align_corners=True), two 3x3 convs."""

    def __init__(self, channels: tuple[int, int] = (128, 64)):
        super().__init__()
        wide, narrow = channels
        self.decoder1 = nn.Sequential(nn.Conv2d(wide, wide, 3, padding=1), nn.ReLU(), nn.Conv2d(wide, narrow, 3, padding=1), nn.ReLU())
        self.decoder2 = nn.Sequential(nn.Conv2d(narrow, narrow, 3, padding=1), nn.ReLU(), nn.Conv2d(narrow, 2, 3, padding=1))

    def decode(self, encoded: Tensor) -> Tensor:
        decoded = self.decoder1(encoded)
        # HSNet writes (2w, 2w): inputs are square there; 2h x 2w is the same map for them.
        size = (decoded.shape[-2] * 2, decoded.shape[-1] * 2)
        decoded = F.interpolate(decoded, size, mode="bilinear", align_corners=True)
        return self.decoder2(decoded)


class HSNetLearner(Decoder):
    """Correlation groups [deep, middle, shallow] ([P, L_g, ha, wa, hb, wb]) -> logits [P, 2, 2*ha2, 2*wa2],
    where ha2 x wa2 is the query size of the shallow group (H/8 for ResNet)."""

    # A state-dict key only this learner has (recognises released checkpoints).
    SIGNATURE_KEY = "encoder_layer4.0.conv1.weight"

    def __init__(self, group_sizes: tuple[int, int, int]):
        super().__init__()
        out1, out2, out3 = SQUEEZE_CHANNELS
        for (name, (kernels, strides)), in_channels in zip(SQUEEZE_LAYOUT.items(), group_sizes):
            setattr(self, name, _conv4d_block(in_channels, (out1, out2, out3), kernels, strides))
        self.encoder_layer4to3 = _conv4d_block(out3, (out3,) * 3, (3, 3, 3), (1, 1, 1))
        self.encoder_layer3to2 = _conv4d_block(out3, (out3,) * 3, (3, 3, 3), (1, 1, 1))

    def forward(self, correlations: list[Tensor], support_masks: Tensor | None = None) -> Tensor:
        deep, middle, shallow = correlations
        squeezed4 = self.encoder_layer4(deep)
        squeezed3 = self.encoder_layer3(middle)
        squeezed2 = self.encoder_layer2(shallow)

        mixed = resize_query_dims(squeezed4, squeezed3.shape[2:4]) + squeezed3
        mixed = self.encoder_layer4to3(mixed)
        mixed = resize_query_dims(mixed, squeezed2.shape[2:4]) + squeezed2
        mixed = self.encoder_layer3to2(mixed)

        encoded = mixed.flatten(4).mean(dim=-1)  # average over the remaining support positions
        return self.decode(encoded)

    def accepts_support_sides(self, sides: tuple[int, int, int]) -> bool:
        """Whether correlations with these support sides (deep, middle, shallow) go through."""
        return self.output_support_sides(sides) is not None

    def output_support_sides(self, sides: tuple[int, int, int]) -> int | None:
        """Support side left after the squeezing blocks for group sides (deep, middle, shallow), or
        None where the blocks' outputs cannot be added (their support sides differ and neither is 1)."""
        squeezed = []
        for name, side in zip(SQUEEZE_LAYOUT, sides):
            for layer in getattr(self, name):
                if isinstance(layer, CenterPivotConv4d):
                    side = layer.output_support_size(side)
            squeezed.append(side)
        first = broadcast_side(squeezed[0], squeezed[1])
        return None if first is None else broadcast_side(first, squeezed[2])


def broadcast_side(first: int, second: int) -> int | None:
    """The side of a sum of two tensors with these sides (torch broadcasting), or None."""
    if first == second or second == 1:
        return first
    return second if first == 1 else None
