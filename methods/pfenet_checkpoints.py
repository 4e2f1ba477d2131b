"""Released PFENet checkpoints of two codebases, mapped onto fsbench's pfenet keys.

- PFENet (dvlab-research/PFENet) ``train_epoch_<e>_<miou>.pth`` / ``final.pth``: ``{"epoch",
  "state_dict", "optimizer"}`` where ``state_dict`` is a DataParallel model's ("module." prefix):
  layer0 (deep stem as a Sequential: convs at 0/3/6, BatchNorms at 1/4/7), layer1-4, down_query,
  down_supp, init_merge, alpha_conv, beta_conv, inner_cls, res1, res2, cls.
- iFSL's fs-cs PFENet (dahyun-kang/ifsl), a PyTorch Lightning 1.3 ``.ckpt``: ``state_dict`` holds
  backbone0 (torchvision stem: conv at 0, BatchNorm at 1), backbone1-4, down_qry, down_spt and
  learner.{init_merge, alpha_conv, beta_conv, inner_cls, res1, res2, cls}; iFSL builds a ResNet-50
  whatever its --backbone flag said, with pyramid bins 50/25/13/7 for 400x400 inputs.
The architecture (block counts, stem, reduced width, number of bins) is read from the keys; the
mapping is by prefix and every key must land (strict). Both readers are registered in
fsbench.model_files.FOREIGN_CHECKPOINTS, so ``--eval --load``, fine-tuning ``--load`` and
``predict --load`` read them; each returns None for a file that is not its layout (HSNet's and
ASNet's iFSL checkpoints have ``backbone.*`` and ``learner.*`` but no ``learner.init_merge.*``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from pathlib import Path

import torch
from torch import Tensor

from fsbench.errors import FsbenchError
from fsbench.foreign import strict_match, strip_prefix
from fsbench.model_files import FOREIGN_CHECKPOINTS, ForeignWeights
from methods.dilated_resnet import architecture_of_block_counts
from methods.feature_enrichment import IFSL_BINS, PASCAL_BINS
from methods.pfenet import LAYOUT_SETTINGS, PFENet

_ENRICHMENT = [
    ("init_merge.", "enrichment.merge."),
    ("alpha_conv.", "enrichment.interaction."),
    ("beta_conv.", "enrichment.refine."),
    ("inner_cls.", "enrichment.auxiliary_classifiers."),
    ("res1.", "enrichment.fuse."),
    ("res2.", "enrichment.fuse_refine."),
    ("cls.", "enrichment.classifier."),
]
_LAYERS = [(f"layer{index}.", f"backbone.layer{index}.") for index in range(1, 5)]

PFENET_RENAMES = [
    ("layer0.0.", "backbone.conv1."),
    ("layer0.1.", "backbone.bn1."),
    ("layer0.3.", "backbone.conv2."),
    ("layer0.4.", "backbone.bn2."),
    ("layer0.6.", "backbone.conv3."),
    ("layer0.7.", "backbone.bn3."),
    *_LAYERS,
    ("down_query.", "reduce_query."),
    ("down_supp.", "reduce_support."),
    *_ENRICHMENT,
]
IFSL_RENAMES = [
    ("backbone0.0.", "backbone.conv1."),
    ("backbone0.1.", "backbone.bn1."),
    *[(f"backbone{index}.", f"backbone.layer{index}.") for index in range(1, 5)],
    ("down_qry.", "reduce_query."),
    ("down_spt.", "reduce_support."),
    *[(f"learner.{old}", new) for old, new in _ENRICHMENT],
]
UNMAPPED = "unmapped:"


@dataclass
class MappedCheckpoint:
    """A foreign PFENet checkpoint under fsbench keys.

    Attributes:
        layout: "pfenet" or "ifsl".
        state: fsbench keys -> tensors (keys no rule maps keep their name behind "unmapped:").
        config: settings read from the keys (backbone, deep_stem, reduce_dim, ...).
        bins: how many pyramid bins the file's enrichment module has.
        notes: lines to print and record.
    """

    layout: str
    state: dict[str, Tensor]
    config: dict
    bins: int
    notes: list[str]


def rename(state: dict[str, Tensor], renames: list[tuple[str, str]]) -> dict[str, Tensor]:
    """Each key with the first matching old prefix replaced by the new one; others marked unmapped."""
    mapped = {}
    for key, value in state.items():
        for old, new in renames:
            if key.startswith(old):
                mapped[new + key[len(old):]] = value
                break
        else:
            mapped[UNMAPPED + key] = value
    return mapped


def _block_counts(state: dict[str, Tensor], layer_prefixes: list[str]) -> tuple[int, ...]:
    return tuple(_count(state, prefix) for prefix in layer_prefixes)


def _architecture(state: dict[str, Tensor], layer_prefixes: list[str], path) -> str:
    counts = _block_counts(state, layer_prefixes)
    architecture = architecture_of_block_counts(counts)
    if architecture is None:
        raise FsbenchError(f"{path} holds a backbone with {counts} blocks per layer, not a ResNet-50/101/152 fsbench's pfenet builds")
    return architecture


def _count(state: dict[str, Tensor], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({int(found.group(1)) for key in state if (found := pattern.match(key))})


# The input size iFSL trained its fs-cs models at (its 400x400 loaders); PFENet's files do not say
# whether they were trained at Pascal's 473 or COCO's 641.
IFSL_IMAGE_SIZE = 400


def state_dict_of(content) -> dict[str, Tensor] | None:
    """The {name: tensor} mapping of a torch file's content (itself or its "state_dict"), or None."""
    for candidate in (content, content.get("state_dict") if isinstance(content, dict) else None):
        if isinstance(candidate, dict) and candidate and all(isinstance(key, str) and isinstance(value, Tensor) for key, value in candidate.items()):
            return dict(candidate)
    return None


def is_ifsl_pfenet(state: dict[str, Tensor]) -> bool:
    """iFSL's fs-cs PFENet keys: backbone0..4, down_qry / down_spt, learner.init_merge (its FEM)."""
    return "down_qry.0.weight" in state and any(key.startswith("backbone0.") for key in state) and any(
        key.startswith("learner.init_merge.") for key in state
    )


def is_pfenet(state: dict[str, Tensor]) -> bool:
    """PFENet's keys (after DataParallel's "module."): layer0, down_query / down_supp, init_merge."""
    return "down_query.0.weight" in state and "down_supp.0.weight" in state and any(key.startswith("init_merge.") for key in state) and any(
        key.startswith("layer0.") for key in state
    )


@FOREIGN_CHECKPOINTS.register("pfenet_original")
def read_pfenet_checkpoint(path: Path, content) -> ForeignWeights | None:
    """PFENet's train_epoch_*.pth / final.pth as pfenet weights, or None when not that layout."""
    state = state_dict_of(content)
    state = strip_prefix(state, "module.") if state is not None else None  # DataParallel
    if state is None or not is_pfenet(state):
        return None
    mapped = _map_pfenet(state, path)
    epoch = content.get("epoch") if isinstance(content, dict) else None
    return _foreign_weights(mapped, path, f"PFENet .pth (DataParallel state_dict), epoch {epoch}", img_size=None)


@FOREIGN_CHECKPOINTS.register("ifsl_pfenet")
def read_ifsl_pfenet_checkpoint(path: Path, content) -> ForeignWeights | None:
    """iFSL's fs-cs PFENet Lightning .ckpt as pfenet weights, or None when not that layout."""
    state = state_dict_of(content)
    if state is None or not is_ifsl_pfenet(state):
        return None
    mapped = _map_ifsl(state, path)
    epoch = content.get("epoch") if isinstance(content, dict) else None
    return _foreign_weights(mapped, path, f"iFSL fs-cs PFENet Lightning .ckpt, epoch {epoch}", img_size=IFSL_IMAGE_SIZE)


def _foreign_weights(mapped: MappedCheckpoint, path: Path, description: str, img_size: int | None) -> ForeignWeights:
    """Check ``mapped`` strictly against the network its settings build; the ForeignWeights."""
    config = PFENet.Config().with_overrides({**mapped.config, "pretrained": False}, "pfenet")
    if mapped.bins != len(config.pyramid_bins):
        raise FsbenchError(
            f"{path} has {mapped.bins} pyramid bins, pfenet is set up for {len(config.pyramid_bins)} "
            f"({'/'.join(map(str, config.pyramid_bins))})"
        )
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
        expected = PFENet(config, "meta").state_dict()
    strict_match(mapped.state, expected, path, f"pfenet ({config.backbone}, {mapped.layout} layout)")
    return ForeignWeights("pfenet", mapped.config, mapped.state, description, mapped.notes, img_size=img_size)


def _map_pfenet(state: dict[str, Tensor], path) -> MappedCheckpoint:
    if "layer1.0.conv1.weight" not in state:
        raise FsbenchError(f"{path} holds PFENet with its VGG-16 backbone; fsbench's pfenet builds the ResNet variants only")
    if "layer0.6.weight" not in state:
        raise FsbenchError(f"{path} holds a PFENet ResNet without the deep stem (layer0.3/layer0.6 convs); not a layout fsbench knows")
    architecture = _architecture(state, [f"layer{index}." for index in range(1, 5)], path)
    config = {
        "backbone": architecture,
        "reduce_dim": int(state["down_query.0.weight"].shape[0]),
        # The keys cannot tell Pascal's bins from COCO's (COCO_BINS); Pascal's are PFENet's default.
        "pyramid_bins": PASCAL_BINS,
        "train_backbone": False,
        "backbone_batch_statistics": True,
        "weights_layout": "pfenet",
        **LAYOUT_SETTINGS["pfenet"],
    }
    notes = [
        f"{path}: PFENet checkpoint, deep-stem {architecture} (read from its keys), reduced width {config['reduce_dim']}, "
        f"bins {'/'.join(map(str, PASCAL_BINS))} (PFENet's Pascal setting; for its COCO models --set pyramid_bins=1.0,0.5,0.25,0.125)"
    ]
    return MappedCheckpoint("pfenet", rename(state, PFENET_RENAMES), config, _count(state, "init_merge."), notes)


def _map_ifsl(state: dict[str, Tensor], path) -> MappedCheckpoint:
    architecture = _architecture(state, [f"backbone{index}." for index in range(1, 5)], path)
    config = {
        "backbone": architecture,
        "reduce_dim": int(state["down_qry.0.weight"].shape[0]),
        "train_backbone": False,
        "weights_layout": "ifsl",
        # iFSL's train_mode keeps the backbone in eval mode (backbone_batch_statistics False).
        **LAYOUT_SETTINGS["ifsl"],
    }
    notes = [
        f"{path}: iFSL fs-cs PFENet checkpoint; iFSL builds a torchvision {architecture} whatever its --backbone said, "
        f"so fsbench follows the keys: {architecture}, torchvision stem, bins {'/'.join(map(str, IFSL_BINS))}, "
        "iFSL's shared N-way prior, no input padding"
    ]
    return MappedCheckpoint("ifsl", rename(state, IFSL_RENAMES), config, _count(state, "learner.init_merge."), notes)
