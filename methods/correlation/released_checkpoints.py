"""The authors' released checkpoints of hsnet / asnet / asnethm, mapped onto fsbench's modules.

Two formats, both read through fsbench.foreign (weights_only, admitted stand-ins only):
- HSNet (juhongm999/hsnet, ``best_model.pt``): the state dict of ``nn.DataParallel(model)``, keys
  ``module.backbone.*`` (the whole torchvision network, classifier included) and
  ``module.hpn_learner.*``. Evaluated with HSNet's k-shot vote.
- iFSL (dahyun-kang/ifsl, ``*.ckpt``): PyTorch Lightning 1.3 checkpoints: ``state_dict`` with
  ``backbone.*`` and ``learner.*`` plus training state (``epoch``, ``global_step``,
  ``optimizer_states``, ``callbacks`` keyed by the class common.callbacks.CustomCheckpoint, whose
  state holds the ``dirpath`` the run saved under). Evaluated with iFSL's logit averaging, except
  VGG-16 ASNet, which only iFSL's FS-S code (HSNet's vote) has.
The learner is recognised by a key only it has (its SIGNATURE_KEY: center-pivot ``conv1`` / attentive
``attn.qhead``), the backbone by ``features.*`` (VGG-16) or the number of layer3 blocks (6: ResNet-50,
23: ResNet-101). asnet and asnethm have the same weights; a Lightning dirpath ending in one of the two
names picks it.
Matching is strict: every key of the file must be a key of the method (same shape) or the
backbone's ImageNet classifier, which fsbench does not keep and drops by name.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import torch
import torchvision

from fsbench.checkpoint_import import ForeignState
from fsbench.foreign import ForeignFile, find_state_dict, strict_match, strip_prefix
from fsbench.registry import METHODS
from methods.correlation.backbone_taps import build_taps

HSNET_FORMAT = "hsnet-dataparallel"
IFSL_FORMAT = "ifsl-lightning"
RESNET_DEPTH_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}


def _is_lightning(content) -> bool:
    return isinstance(content, dict) and "state_dict" in content and ("pytorch-lightning_version" in content or "callbacks" in content)


def _backbone_of(state: dict) -> str | None:
    if "backbone.features.0.weight" in state:
        return "vgg16"
    blocks = {int(match.group(1)) for key in state if (match := re.match(r"backbone\.layer3\.(\d+)\.", key))}
    return RESNET_DEPTH_BY_LAYER3_BLOCKS.get(len(blocks))


def _saved_under(content) -> str | None:
    """The dirpath a Lightning ModelCheckpoint callback recorded, if any."""
    for state in (content.get("callbacks") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("dirpath"), str):
            return state["dirpath"]
    return None


def classifier_shapes(architecture: str) -> dict[str, torch.Size]:
    """Shapes of the torchvision classifier keys (``fc.*`` / ``classifier.*``) fsbench's backbone drops."""
    with torch.device("meta"):
        network = getattr(torchvision.models, architecture)(weights=None)
    head = "classifier." if architecture.startswith("vgg") else "fc."
    return {f"backbone.{key}": value.shape for key, value in network.state_dict().items() if key.startswith(head)}


def expected_state(method_class, architecture: str) -> dict[str, torch.Tensor]:
    """The method's state dict (shapes only, on the meta device) for a backbone."""
    with torch.device("meta"):
        backbone = build_taps(architecture, pretrained=False)
        learner = method_class.learner_class(backbone.group_sizes)
    state = {f"backbone.{key}": value for key, value in backbone.state_dict().items()}
    state.update({f"learner.{key}": value for key, value in learner.state_dict().items()})
    return state


def foreign_state_for(method_class, foreign: ForeignFile) -> ForeignState | None:
    """A ForeignState if ``foreign`` is an HSNet or iFSL checkpoint that ``method_class`` can load."""
    content, path = foreign.content, Path(foreign.path)
    details: dict = {}
    if _is_lightning(content):
        source_format = IFSL_FORMAT
        state = find_state_dict(content, path, keys=("state_dict",))
        details = {key: content[key] for key in ("epoch", "global_step", "pytorch-lightning_version") if isinstance(content.get(key), (int, str))}
        saved_under = _saved_under(content)
        if saved_under is not None:
            details["saved_under"] = saved_under
    elif isinstance(content, dict) and content and all(isinstance(value, torch.Tensor) for value in content.values()):
        source_format = HSNET_FORMAT
        state = strip_prefix(find_state_dict(content, path), "module.")
        state = {("learner." + key[len("hpn_learner."):] if key.startswith("hpn_learner.") else key): value for key, value in state.items()}
    else:
        return None

    backbone = _backbone_of(state)
    if f"learner.{method_class.learner_class.SIGNATURE_KEY}" not in state or backbone is None:
        return None
    named = PurePosixPath(details.get("saved_under", "")).name
    if named != method_class.registry_name and named in METHODS and METHODS.get(named).learner_class is method_class.learner_class:
        return None  # iFSL saved it under the name of the other method with these weights

    head = classifier_shapes(backbone)
    expected = {**expected_state(method_class, backbone), **{key: torch.empty(shape, device="meta") for key, shape in head.items()}}
    strict_match(state, expected, path, f"{method_class.registry_name} with a {backbone} backbone ({source_format})")
    vote = source_format == HSNET_FORMAT or backbone == "vgg16"
    return ForeignState(
        config={"backbone": backbone, "shot_aggregation": "vote" if vote else "average"},
        state={key: value for key, value in state.items() if key not in head},
        source_format=source_format,
        details=details,
    )
