"""Backbone weights shared by methods: ImageNet weights come from a local file, never the network.

fsbench runs where nothing can be downloaded, so pretrained weights are looked up in, in order:
``$FSBENCH_WEIGHTS/<file>``, ``<project>/data/weights/<file>`` and torch's hub cache
(``$TORCH_HOME/hub/checkpoints/<file>``, default ~/.cache/torch/hub/checkpoints), with the file names
torchvision itself uses. Missing weights raise a one-line error that says where to put them.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from fsbench.errors import FsbenchError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

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
    file_name = IMAGENET_WEIGHT_FILES[architecture]
    places = weight_search_paths(file_name)
    for place in places:
        if place.is_file():
            try:
                return torch.load(place, map_location="cpu", weights_only=True)
            except Exception as error:  # a damaged or foreign file: say which one
                raise FsbenchError(f"cannot read ImageNet weights {place}: {error}") from None
    raise FsbenchError(
        f"ImageNet weights for {architecture} not found; put {file_name} (from torchvision) in "
        f"{places[-1].parent} or $FSBENCH_WEIGHTS, or pass --pretrained false"
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
