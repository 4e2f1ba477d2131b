"""The authors' released checkpoints of hsnet / asnet / asnethm, as readers in
fsbench.model_files.FOREIGN_CHECKPOINTS (so ``--load``, ``--eval --load``, ``predict --load`` and
``main.py convert`` all read them).

Two formats, both read through fsbench.foreign (weights_only, admitted stand-ins only):
- "hsnet_best_model" (juhongm999/hsnet, ``best_model.pt``): the state dict of
  ``nn.DataParallel(model)``, keys ``module.backbone.*`` (the whole torchvision network, classifier
  included) and ``module.hpn_learner.*``. Evaluated with HSNet's k-shot vote.
- "ifsl_lightning" (dahyun-kang/ifsl, ``*.ckpt``): PyTorch Lightning 1.3 checkpoints: ``state_dict``
  with ``backbone.*`` and ``learner.*`` plus training state (``epoch``, ``global_step``,
  ``optimizer_states``, ``callbacks`` keyed by the class common.callbacks.CustomCheckpoint, whose
  state holds the ``dirpath`` the run saved under). Evaluated with iFSL's logit averaging, except
  VGG-16 ASNet, which only iFSL's FS-S code (HSNet's vote) has.
The method is recognised by a key only its learner has (the learner's SIGNATURE_KEY: center-pivot
``conv1`` / attentive ``attn.qhead``), the backbone by ``features.*`` (VGG-16) or the number of
layer3 blocks (6: ResNet-50, 23: ResNet-101). asnet and asnethm have the same weights: a Lightning
dirpath whose last part names one of them picks it, else asnet, with asnethm allowed (``also_fits``)
to a run that names it. Both papers train at 400x400.
Matching is strict: every key of the file must be a key of the method (same shape) or the
backbone's ImageNet classifier, which fsbench does not keep and drops by name.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import torch
import torchvision

from fsbench.foreign import find_state_dict, strict_match, strip_prefix
from fsbench.model_files import FOREIGN_CHECKPOINTS, ForeignWeights
from fsbench.registry import METHODS
from methods.correlation.backbone_taps import build_taps
from methods.correlation.family import CorrelationMethod

RESNET_DEPTH_BY_LAYER3_BLOCKS = {6: "resnet50", 23: "resnet101"}
TRAINED_SIZE = 400  # HSNet and iFSL train and test at 400x400


def _backbone_of(state: dict) -> str | None:
    if "backbone.features.0.weight" in state:
        return "vgg16"
    blocks = {int(match.group(1)) for key in state if (match := re.match(r"backbone\.layer3\.(\d+)\.", key))}
    return RESNET_DEPTH_BY_LAYER3_BLOCKS.get(len(blocks))


def _methods_with_learner_of(state: dict) -> list[str]:
    """Registered correlation methods whose learner's signature key the state has, in registry order."""
    found = []
    for name in METHODS.names():
        method_class = METHODS.get(name)
        if isinstance(method_class, type) and issubclass(method_class, CorrelationMethod):
            if f"learner.{method_class.learner_class.SIGNATURE_KEY}" in state:
                found.append(name)
    return found


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


def _weights(path: Path, state: dict, candidates: list[str], chosen: str, format_name: str, description: str,
             vote: bool) -> ForeignWeights:
    """The strict match of ``state`` against method ``chosen`` and the ForeignWeights it gives; the
    other ``candidates`` are methods the file fits as well (it cannot tell them apart)."""
    backbone = _backbone_of(state)
    head = classifier_shapes(backbone)
    expected = {**expected_state(METHODS.get(chosen), backbone), **{key: torch.empty(shape, device="meta") for key, shape in head.items()}}
    strict_match(state, expected, path, f"{chosen} with a {backbone} backbone ({format_name})")
    return ForeignWeights(
        method=chosen,
        config={"backbone": backbone, "shot_aggregation": "vote" if vote else "average"},
        state={key: value for key, value in state.items() if key not in head},
        description=f"{description}, {chosen} {backbone}",
        img_size=TRAINED_SIZE,
        also_fits=tuple(name for name in candidates if name != chosen),
    )


@FOREIGN_CHECKPOINTS.register("hsnet_best_model")
def read_hsnet_checkpoint(path: Path, content) -> ForeignWeights | None:
    """HSNet's best_model.pt (a DataParallel state dict of tensors) as hsnet weights, or None."""
    if not (isinstance(content, dict) and content and all(isinstance(value, torch.Tensor) for value in content.values())):
        return None
    state = strip_prefix(find_state_dict(content, path), "module.")
    if not any(key.startswith("hpn_learner.") for key in state):
        return None
    state = {("learner." + key[len("hpn_learner."):] if key.startswith("hpn_learner.") else key): value for key, value in state.items()}
    candidates = _methods_with_learner_of(state)
    if not candidates or _backbone_of(state) is None:
        return None
    return _weights(path, state, candidates, candidates[0], "hsnet_best_model", "juhongm999/hsnet best_model.pt", vote=True)


def _saved_under(content: dict) -> str | None:
    """The dirpath a Lightning ModelCheckpoint callback recorded, if any."""
    for state in (content.get("callbacks") or {}).values():
        if isinstance(state, dict) and isinstance(state.get("dirpath"), str):
            return state["dirpath"]
    return None


@FOREIGN_CHECKPOINTS.register("ifsl_lightning")
def read_ifsl_checkpoint(path: Path, content) -> ForeignWeights | None:
    """iFSL's PyTorch Lightning .ckpt as hsnet / asnet / asnethm weights, or None."""
    lightning = isinstance(content, dict) and "state_dict" in content and ("pytorch-lightning_version" in content or "callbacks" in content)
    if not lightning:
        return None
    state = find_state_dict(content, path, keys=("state_dict",))
    candidates = _methods_with_learner_of(state)
    backbone = _backbone_of(state)
    if not candidates or backbone is None:
        return None
    saved_under = _saved_under(content)
    named = PurePosixPath(saved_under).name if saved_under else ""
    chosen = named if named in candidates else candidates[0]
    fitting = [chosen] if named in candidates else candidates  # a dirpath that names the method settles it
    details = [f"epoch {content['epoch']}" if isinstance(content.get("epoch"), int) else "",
               f"saved under {saved_under}" if saved_under else ""]
    description = ", ".join(["dahyun-kang/ifsl Lightning checkpoint", *(detail for detail in details if detail)])
    # VGG-16 ASNet exists only in iFSL's FS-S code, which evaluates k shots with HSNet's vote.
    return _weights(path, state, fitting, chosen, "ifsl_lightning", description, vote=backbone == "vgg16")
