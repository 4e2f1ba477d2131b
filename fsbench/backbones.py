"""Backbone weights shared by methods: ImageNet weights come from a local file, never the network.

fsbench runs where nothing can be downloaded, so pretrained weights are looked up in, in order:
``$FSBENCH_WEIGHTS/<file>``, ``<project>/data/weights/<file>`` and torch's hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, default ~/.cache/torch/hub/checkpoints), with the file names
torchvision itself uses. Missing weights raise a one-line error that says where to put them.
PFENet's deep-stem ResNets (three 3x3 convs instead of the 7x7 stem) have their own ImageNet files,
``resnet50_v2.pth`` / ``resnet101_v2.pth`` (PSPNet's, which PFENet's README links), searched the same way.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from fsbench import PROJECT_ROOT
from fsbench.errors import FsbenchError

# torchvision's ImageNet weight files (the names its download URLs end in).
IMAGENET_WEIGHT_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "resnet101": "resnet101-63fe2227.pth",
    "resnet152": "resnet152-394f9c45.pth",
    "vgg16": "vgg16-397923af.pth",
    "vgg16_bn": "vgg16_bn-6c64b313.pth",
}


def weight_search_paths(file_name: str) -> list[Path]:
    """Where ``file_name`` is looked for, in order: $FSBENCH_WEIGHTS (when set), data/weights/, the hub cache."""
    places = []
    if os.environ.get("FSBENCH_WEIGHTS"):
        places.append(Path(os.environ["FSBENCH_WEIGHTS"]) / file_name)
    places.append(PROJECT_ROOT / "data" / "weights" / file_name)
    places.append(Path(torch.hub.get_dir()) / "checkpoints" / file_name)
    return places


def imagenet_state_dict(architecture: str) -> dict[str, Tensor]:
    """The torchvision ImageNet state dict of ``architecture``, loaded with weights_only=True."""
    if architecture not in IMAGENET_WEIGHT_FILES:
        raise FsbenchError(
            f"no ImageNet weights known for backbone {architecture!r} (known: {', '.join(IMAGENET_WEIGHT_FILES)}); "
            "pass --pretrained false to train from scratch"
        )
    return _read_weight_file(IMAGENET_WEIGHT_FILES[architecture], f"ImageNet weights for {architecture}", "from torchvision")


# PFENet's deep-stem ResNet ImageNet weights (its model/resnet.py reads initmodel/<file>).
DEEP_STEM_WEIGHT_FILES = {
    "resnet50": "resnet50_v2.pth",
    "resnet101": "resnet101_v2.pth",
    "resnet152": "resnet152_v2.pth",
}


def deep_stem_imagenet_state_dict(architecture: str) -> dict[str, Tensor]:
    """PFENet's deep-stem ImageNet state dict of ``architecture`` (conv1-3/bn1-3 stem, layer1-4, fc)."""
    if architecture not in DEEP_STEM_WEIGHT_FILES:
        raise FsbenchError(
            f"no deep-stem ImageNet weights known for backbone {architecture!r} (known: {', '.join(DEEP_STEM_WEIGHT_FILES)}); "
            "pass --pretrained false to train from scratch"
        )
    return _read_weight_file(
        DEEP_STEM_WEIGHT_FILES[architecture], f"deep-stem ImageNet weights for {architecture}", "PFENet's initmodel/ file"
    )


def _read_weight_file(file_name: str, what: str, source: str) -> dict[str, Tensor]:
    places = weight_search_paths(file_name)
    for place in places:
        if place.is_file():
            try:
                return torch.load(place, map_location="cpu", weights_only=True)
            except Exception as error:  # a damaged or foreign file: say which one
                raise FsbenchError(f"cannot read {what} {place}: {error}") from None
    searched = ", ".join(str(place.parent) for place in places)
    hint = "" if os.environ.get("FSBENCH_WEIGHTS") else " (or in a folder named by $FSBENCH_WEIGHTS)"
    raise FsbenchError(
        f"{what} not found: looked for {file_name} in {searched}; put that file "
        f"({source}) in one of them{hint}, or pass --pretrained false"
    )


def load_imagenet_weights(module: nn.Module, architecture: str) -> None:
    """Copy ImageNet weights into ``module`` (a torchvision-layout network, e.g. an smp ResNet encoder).

    Keys the module lacks (the classifier ``fc.*`` / ``classifier.*``) are dropped; any other
    mismatch is an error, so weights can never silently stay random.
    """
    state = imagenet_state_dict(architecture)
    own = module.state_dict()
    usable = {key: value for key, value in state.items() if key in own}
    missing = sorted(set(own) - set(usable))
    if missing:
        raise FsbenchError(f"ImageNet weights for {architecture} do not fit the backbone (missing {missing[:3]})")
    module.load_state_dict(usable)


# --- dilated feature extractors (prototype methods: PANet) -----------------------------------------
FEATURE_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "vgg16")
OUTPUT_STRIDE = 8


class FeatureExtractor(nn.Module):
    """A dilated ImageNet backbone that maps images to features at 1/8 of their size.

    - vgg16 (PANet's): conv1-conv5 with pool4 at stride 1, conv5 dilated by 2, no pool5 and no ReLU
      after conv5_3 (PANet's encoder: features may be negative, which suits cosine similarity).
    - resnet50 / resnet101: layer4 output, layer3 and layer4 dilated (2, 4) instead of strided - the
      DeepLab layout PANet-ResNet, PFENet and HSNet use.
    - resnet18 / resnet34: their basic blocks stop at layer3 (dilated by 2): layer4 at stride 8 would
      cost more than the rest of the network, and these small backbones are for CPU demos.

    Input [B, 3, H, W] normalised images; output [B, channels, ceil(H/8), ceil(W/8)].
    """

    def __init__(self, architecture: str, pretrained: bool):
        super().__init__()
        if architecture not in FEATURE_BACKBONES:
            raise FsbenchError(f"unknown backbone {architecture!r}; available: {', '.join(FEATURE_BACKBONES)}")
        self.architecture = architecture
        if architecture == "vgg16":
            self.body, self.channels = _vgg16_body(pretrained), 512
        else:
            self.body, self.channels = _resnet_body(architecture, pretrained)

    def forward(self, images: Tensor) -> Tensor:
        if self.architecture == "vgg16":
            return self.body(images)
        body = self.body
        features = body.maxpool(body.relu(body.bn1(body.conv1(images))))
        features = body.layer3(body.layer2(body.layer1(features)))
        return body.layer4(features) if hasattr(body, "layer4") else features


class _VGGFeatures(nn.Module):
    """Holds torchvision's VGG-16 conv layers under the key prefix its weight file uses ("features.")."""

    def __init__(self):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        self.features = make_layers(cfgs["D"], batch_norm=False)


def _vgg16_body(pretrained: bool) -> nn.Sequential:
    holder = _VGGFeatures()  # the conv layers only: the 120M-parameter classifier is never built
    if pretrained:
        load_imagenet_weights(holder, "vgg16")
    layers = list(holder.features.children())
    # torchvision's indices: max pools at 4, 9, 16, 23, 30; conv5_1..3 at 24, 26, 28 (ReLUs after).
    layers[23] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    for index in (24, 26, 28):
        layers[index].dilation, layers[index].padding = (2, 2), (2, 2)
    return nn.Sequential(*layers[:29])  # drops the ReLU after conv5_3 and pool5


def _resnet_body(architecture: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision

    builder = getattr(torchvision.models, architecture)
    bottleneck = architecture not in ("resnet18", "resnet34")
    # Dilation does not change any weight's shape, so ImageNet weights load into either layout.
    body = builder(weights=None, replace_stride_with_dilation=[False, True, True]) if bottleneck else builder(weights=None)
    if pretrained:
        load_imagenet_weights(body, architecture)
    del body.fc, body.avgpool
    if bottleneck:
        return body, body.layer4[-1].conv3.out_channels
    del body.layer4
    _dilate_basic_layer(body.layer3, dilation=2)
    return body, body.layer3[-1].conv2.out_channels


def _dilate_basic_layer(layer: nn.Sequential, dilation: int) -> None:
    """Turn a strided layer of BasicBlocks into a dilated one, as torchvision does for Bottlenecks:
    the first conv keeps dilation 1 at stride 1, every later 3x3 conv gets ``dilation``."""
    first = layer[0]
    first.conv1.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)
    for block_index, block in enumerate(layer):
        for conv in (block.conv1, block.conv2):
            if block_index == 0 and conv is block.conv1:
                continue
            conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
