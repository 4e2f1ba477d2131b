"""PFENet's backbone: a ResNet whose layer3 and layer4 are dilated (2, 4) so that they stay at stride 8.

Two stems, as the two codebases build them:
- deep (PFENet's model/resnet.py, PSPNet's "v2" ResNet): three 3x3 convs (3->64 stride 2, 64->64,
  64->128), each followed by BatchNorm and ReLU, then a 3x3 max pool; layer1 starts from 128 channels.
- torchvision (iFSL's fs-cs PFENet): the 7x7 conv, BatchNorm, ReLU and max pool.
Both use the stride-on-3x3 bottleneck (torchvision's ``Bottleneck``, which is what PFENet's is).

Dilation follows PFENet's rule, not torchvision's ``replace_stride_with_dilation``: every 3x3 conv of
layer3 gets dilation 2 and every one of layer4 dilation 4 (torchvision leaves the first block of each
at the previous dilation), strides and downsample strides become 1.

Parameter names are the weight files' own (``conv1``, ``bn1``, ..., ``layer4``), so ImageNet files load
by name: ``resnet50_v2.pth`` for the deep stem, torchvision's files for the other.
"""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from fsbench.backbones import deep_stem_imagenet_state_dict, imagenet_state_dict
from fsbench.errors import FsbenchError

BLOCKS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}
# Dilation of layer3 and layer4 (their strides become 1): features stay at 1/8 of the input.
LAYER_DILATIONS = {"layer3": 2, "layer4": 4}


def architecture_of_block_counts(counts: tuple[int, ...]) -> str | None:
    """The architecture name whose layer1..4 hold ``counts`` bottleneck blocks, or None."""
    for name, (block, blocks) in BLOCKS.items():
        if block is Bottleneck and blocks == tuple(counts):
            return name
    return None


class DilatedResNet(nn.Module):
    """Input [B, 3, H, W]; layer2, layer3 and layer4 outputs are all [B, C, ceil(H/8), ceil(W/8)].

    ``channels`` gives the output widths of layer2, layer3 and layer4 (512, 1024, 2048 for ResNet-50).
    ``base_width`` scales every layer (64: the ResNet; smaller only for tests and demos at real image
    sizes, from scratch: ImageNet weights exist for 64 alone).
    """

    def __init__(self, architecture: str, deep_stem: bool, pretrained: bool, base_width: int = 64):
        super().__init__()
        if architecture not in BLOCKS:
            raise FsbenchError(f"unknown backbone {architecture!r} for pfenet; available: {', '.join(BLOCKS)}")
        if base_width < 1 or (pretrained and base_width != 64):
            raise FsbenchError(f"backbone_width {base_width}: ImageNet weights need 64 (pass --pretrained false for another width)")
        block, counts = BLOCKS[architecture]
        self.architecture, self.deep_stem = architecture, deep_stem
        stem = base_width
        if deep_stem:
            self.conv1 = nn.Conv2d(3, stem, kernel_size=3, stride=2, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            self.conv2 = nn.Conv2d(stem, stem, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(stem)
            self.conv3 = nn.Conv2d(stem, 2 * stem, kernel_size=3, stride=1, padding=1, bias=False)
            self.bn3 = nn.BatchNorm2d(2 * stem)
            width = 2 * stem
        else:
            self.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem)
            width = stem
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        layers = []
        planes_of_layers = tuple(base_width * factor for factor in (1, 2, 4, 8))
        for index, (planes, count) in enumerate(zip(planes_of_layers, counts)):
            layer, width = _make_layer(block, width, planes, count, stride=1 if index == 0 else 2)
            layers.append(layer)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self._initialise()
        for name, dilation in LAYER_DILATIONS.items():
            _dilate(getattr(self, name), dilation)
        self.channels = tuple(_output_channels(layer) for layer in (self.layer2, self.layer3, self.layer4))
        if pretrained:
            self.load_imagenet_weights()

    def _initialise(self) -> None:
        # PFENet's and torchvision's ResNet initialisation: Kaiming-normal convs (fan out), BN at 1 / 0.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def load_imagenet_weights(self) -> None:
        """Copy the ImageNet file of this stem and architecture in by name; the classifier is dropped.

        A file without ``num_batches_tracked`` entries (older PyTorch) is accepted: those counters only
        matter for BatchNorm with momentum None. Any other missing key is an error.
        """
        state = deep_stem_imagenet_state_dict(self.architecture) if self.deep_stem else imagenet_state_dict(self.architecture)
        own = self.state_dict()
        usable = {key: value for key, value in state.items() if key in own}
        missing = sorted(key for key in set(own) - set(usable) if not key.endswith("num_batches_tracked"))
        wrong = sorted(key for key in usable if tuple(usable[key].shape) != tuple(own[key].shape))
        if missing or wrong:
            problem = f"missing {missing[:3]}" if missing else f"wrong shape {wrong[:3]}"
            raise FsbenchError(f"ImageNet weights for {self.architecture} do not fit pfenet's backbone ({problem})")
        self.load_state_dict(usable, strict=False)

    def stem(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, 64 or 128, H/4, W/4] (PFENet's layer0, iFSL's backbone0)."""
        features = self.relu(self.bn1(self.conv1(images)))
        if self.deep_stem:
            features = self.relu(self.bn2(self.conv2(features)))
            features = self.relu(self.bn3(self.conv3(features)))
        return self.maxpool(features)

    def middle_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(layer2 output, layer3 output) of ``images``: the mid-level features PFENet reduces."""
        layer2 = self.layer2(self.layer1(self.stem(images)))
        return layer2, self.layer3(layer2)


def _make_layer(block: type, width: int, planes: int, count: int, stride: int) -> tuple[nn.Sequential, int]:
    downsample = None
    if stride != 1 or width != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv2d(width, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * block.expansion),
        )
    blocks = [block(width, planes, stride, downsample)]
    width = planes * block.expansion
    blocks.extend(block(width, planes) for _ in range(1, count))
    return nn.Sequential(*blocks), width


def _dilate(layer: nn.Sequential, dilation: int) -> None:
    """PFENet's rule: every 3x3 conv of the layer at ``dilation`` (padding alike) and stride 1, and the
    downsample at stride 1. In a bottleneck the 3x3 conv is ``conv2`` (what PFENet's loop matches); a
    basic block has two, and both are dilated so that the layer really stays at stride 8."""
    for name, module in layer.named_modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            module.dilation, module.padding, module.stride = (dilation, dilation), (dilation, dilation), (1, 1)
        elif name.endswith("downsample.0"):
            module.stride = (1, 1)


def _output_channels(layer: nn.Sequential) -> int:
    last = layer[-1]
    return last.bn3.num_features if isinstance(last, Bottleneck) else last.bn2.num_features


def freeze(module: nn.Module) -> None:
    for parameter in module.parameters():
        parameter.requires_grad_(False)

