"""Frozen ImageNet backbones with HSNet's intermediate features ("taps") for 4D correlations.

HSNet correlates every bottleneck of a ResNet's layers 2-4 (features taken after the residual sum,
before the block's last ReLU; ResNet-50: 4 + 6 + 3 = 13 taps, ResNet-101: 4 + 23 + 3 = 30), and
for VGG-16 the outputs of conv4_1..3 and conv5_1..3 before their ReLUs plus pool5 (torchvision
indices 17, 19, 21, 24, 26, 28, 30). The taps form three groups, deepest first: layer4 / layer3 /
layer2 (VGG: pool5 / conv5 / conv4). The networks are torchvision's, at their usual strides (not
dilated), and keep torchvision's state-dict keys so that released checkpoints map onto them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.vgg import cfgs, make_layers

from fsbench.backbones import load_imagenet_weights
from fsbench.errors import FsbenchError

RESNET_LAYOUTS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv_resnet.Bottleneck, [3, 4, 23, 3]),
}
# torchvision VGG-16 feature indices HSNet taps: conv4_1-3 and conv5_1-3 (before ReLU), pool5.
VGG_TAP_INDICES = (17, 19, 21, 24, 26, 28, 30)
VGG_GROUP_SIZES = (1, 3, 3)  # pool5 | conv5_1-3 | conv4_1-3
TAP_BACKBONES = tuple(RESNET_LAYOUTS) + ("vgg16",)
# ASNet average-pools (3x3, stride 2, padding 1) support taps at least this wide (its pool_thr).
POOL_MIN_WIDTH = 50


class ResNetTaps(tv_resnet.ResNet):
    """torchvision's ResNet without its classifier; forward returns the taps of layers 2-4."""

    def __init__(self, architecture: str):
        block, layers = RESNET_LAYOUTS[architecture]
        super().__init__(block, layers)
        del self.fc, self.avgpool
        self.architecture = architecture
        self.group_sizes = (layers[3], layers[2], layers[1])

    def forward(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> taps shallow to deep, each [B, C_l, h_l, w_l] (layer2 at H/8 ... layer4 at H/32)."""
        features = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        taps = []
        for layer_number, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            for block in layer:
                summed = _residual_sum(block, features)
                if layer_number >= 2:
                    taps.append(summed)
                features = torch.relu(summed)  # not in place: the tap keeps the pre-ReLU sum
        return taps

    def tap_sizes(self, side: int) -> tuple[int, int, int]:
        """Side of the (layer4, layer3, layer2) taps for an input side (each stride-2 stage rounds up)."""
        return tuple(-(-side // stride) for stride in (32, 16, 8))


def _residual_sum(block: nn.Module, features: Tensor) -> Tensor:
    out = block.relu(block.bn1(block.conv1(features)))
    if isinstance(block, tv_resnet.Bottleneck):
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.bn2(block.conv2(out))
    identity = block.downsample(features) if block.downsample is not None else features
    return out + identity


class VGGTaps(nn.Module):
    """torchvision's VGG-16 convolutional part (keys ``features.<i>``); forward returns HSNet's 7 taps."""

    def __init__(self):
        super().__init__()
        self.architecture = "vgg16"
        self.features = make_layers(cfgs["D"], batch_norm=False)
        self.group_sizes = VGG_GROUP_SIZES

    def forward(self, images: Tensor) -> list[Tensor]:
        taps = []
        features = images
        for index, module in enumerate(self.features):
            features = module(features)
            if index in VGG_TAP_INDICES:
                taps.append(features.clone())  # the next module is an in-place ReLU
            if index == VGG_TAP_INDICES[-1]:
                break
        return taps

    def tap_sizes(self, side: int) -> tuple[int, int, int]:
        """Side of the (pool5, conv5, conv4) taps: max pooling rounds down."""
        return tuple(side // stride for stride in (32, 16, 8))


def build_taps(architecture: str, pretrained: bool) -> nn.Module:
    """A ResNetTaps / VGGTaps with ImageNet weights (from a local file) or random ones."""
    if architecture not in TAP_BACKBONES:
        raise FsbenchError(f"unknown backbone {architecture!r} for the correlation methods; available: {', '.join(TAP_BACKBONES)}")
    network = VGGTaps() if architecture == "vgg16" else ResNetTaps(architecture)
    if pretrained:
        load_imagenet_weights(network, architecture)
    return network


def mask_taps(taps: list[Tensor], masks: Tensor) -> list[Tensor]:
    """Each tap [B, C, h, w] times its mask [B, H, W] resized bilinearly (align_corners=True) to h x w."""
    masks = masks.unsqueeze(1).float()
    return [tap * F.interpolate(masks, tap.shape[-2:], mode="bilinear", align_corners=True) for tap in taps]


def pool_wide_taps(taps: list[Tensor]) -> list[Tensor]:
    """ASNet's support taps: those at least POOL_MIN_WIDTH wide are average-pooled 3x3, stride 2."""
    return [F.avg_pool2d(tap, kernel_size=3, stride=2, padding=1) if tap.shape[-1] >= POOL_MIN_WIDTH else tap for tap in taps]
