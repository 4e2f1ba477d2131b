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
mapping is by prefix and every key must land (strict matching is the caller's).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import Tensor

from fsbench.errors import FsbenchError
from fsbench.foreign import ForeignFile, find_state_dict, strip_prefix
from methods.dilated_resnet import architecture_of_block_counts
from methods.feature_enrichment import IFSL_BINS, PASCAL_BINS

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


def map_checkpoint(foreign: ForeignFile) -> MappedCheckpoint:
    """Detect the layout of ``foreign`` (PFENet .pth or iFSL .ckpt), read its architecture, rename its keys."""
    path = foreign.path
    state = find_state_dict(foreign.content, path)
    if any(key.startswith("backbone0.") for key in state) and any(key.startswith("learner.") for key in state):
        return _map_ifsl(state, path)
    unwrapped = strip_prefix(state, "module.")  # DataParallel
    if any(key.startswith("layer0.") for key in unwrapped) and any(key.startswith("init_merge.") for key in unwrapped):
        return _map_pfenet(unwrapped, path)
    raise FsbenchError(
        f"{path} is neither PFENet's checkpoint (layer0-4, down_query, down_supp, init_merge, ...) nor iFSL's fs-cs "
        f"PFENet (backbone0-4, down_qry, down_spt, learner.*); its keys start {', '.join(sorted(state)[:3])}"
    )


def _map_pfenet(state: dict[str, Tensor], path) -> MappedCheckpoint:
    if "layer1.0.conv1.weight" not in state:
        raise FsbenchError(f"{path} holds PFENet with its VGG-16 backbone; fsbench's pfenet builds the ResNet variants only")
    if "layer0.6.weight" not in state:
        raise FsbenchError(f"{path} holds a PFENet ResNet without the deep stem (layer0.3/layer0.6 convs); not a layout fsbench knows")
    architecture = _architecture(state, [f"layer{index}." for index in range(1, 5)], path)
    config = {
        "backbone": architecture,
        "deep_stem": True,
        "reduce_dim": int(state["down_query.0.weight"].shape[0]),
        # The keys cannot tell Pascal's bins from COCO's (COCO_BINS); Pascal's are PFENet's default.
        "pyramid_bins": PASCAL_BINS,
        "prior_layout": "per_way",
        "align_input": True,
        "train_backbone": False,
        "backbone_batch_statistics": True,
    }
    notes = [
        f"{path}: PFENet checkpoint, deep-stem {architecture} (read from its keys), reduced width {config['reduce_dim']}, "
        f"bins {'/'.join(map(str, PASCAL_BINS))} (PFENet's Pascal setting; its COCO models used 1.0/0.5/0.25/0.125)"
    ]
    return MappedCheckpoint("pfenet", rename(state, PFENET_RENAMES), config, _count(state, "init_merge."), notes)


def _map_ifsl(state: dict[str, Tensor], path) -> MappedCheckpoint:
    architecture = _architecture(state, [f"backbone{index}." for index in range(1, 5)], path)
    config = {
        "backbone": architecture,
        "deep_stem": False,
        "reduce_dim": int(state["down_qry.0.weight"].shape[0]),
        "pyramid_bins": IFSL_BINS,
        "prior_layout": "ifsl",
        "align_input": False,
        "train_backbone": False,
        "backbone_batch_statistics": False,  # iFSL's train_mode keeps the backbone in eval mode
    }
    notes = [
        f"{path}: iFSL fs-cs PFENet checkpoint; iFSL builds a torchvision {architecture} whatever its --backbone said, "
        f"so fsbench follows the keys: {architecture}, torchvision stem, bins {'/'.join(map(str, IFSL_BINS))}, "
        "iFSL's shared N-way prior, no input padding"
    ]
    return MappedCheckpoint("ifsl", rename(state, IFSL_RENAMES), config, _count(state, "learner.init_merge."), notes)
