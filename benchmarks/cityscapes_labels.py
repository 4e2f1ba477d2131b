"""Cityscapes' label table (cityscapesScripts, helpers/labels.py) and the vocabulary configurations.

The facts are those of Cordts et al.'s official table: 34 label ids (0..33) plus "license plate"
(-1), of which 19 have a train id (0..18) and are evaluated; every other id has train id 255 (-1 for
the license plate) and is void. fsbench uses the label ids themselves as the dataset's class ids
(the 19 evaluated ones; void becomes 255), so "person" is class 24 everywhere, as in the vocabulary
configurations, and sorted class ids are in train-id order.

Vocabulary configurations (out-of-vocabulary classes removed from the training labels): "000"
removes none, "001" removes person (24), "002" person and rider (24, 25), ... "008" all eight thing
classes 24 person, 25 rider, 26 car, 27 truck, 28 bus, 31 train, 32 motorcycle, 33 bicycle.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fsbench.errors import FsbenchError

IGNORE = 255


class CityscapesLabel(NamedTuple):
    name: str
    label_id: int
    train_id: int  # 255: void (not trained, not evaluated); -1: the license plate, which has no id either
    category: str
    ignore_in_eval: bool


LABELS: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, "void", True),
    CityscapesLabel("ego vehicle", 1, 255, "void", True),
    CityscapesLabel("rectification border", 2, 255, "void", True),
    CityscapesLabel("out of roi", 3, 255, "void", True),
    CityscapesLabel("static", 4, 255, "void", True),
    CityscapesLabel("dynamic", 5, 255, "void", True),
    CityscapesLabel("ground", 6, 255, "void", True),
    CityscapesLabel("road", 7, 0, "flat", False),
    CityscapesLabel("sidewalk", 8, 1, "flat", False),
    CityscapesLabel("parking", 9, 255, "flat", True),
    CityscapesLabel("rail track", 10, 255, "flat", True),
    CityscapesLabel("building", 11, 2, "construction", False),
    CityscapesLabel("wall", 12, 3, "construction", False),
    CityscapesLabel("fence", 13, 4, "construction", False),
    CityscapesLabel("guard rail", 14, 255, "construction", True),
    CityscapesLabel("bridge", 15, 255, "construction", True),
    CityscapesLabel("tunnel", 16, 255, "construction", True),
    CityscapesLabel("pole", 17, 5, "object", False),
    CityscapesLabel("polegroup", 18, 255, "object", True),
    CityscapesLabel("traffic light", 19, 6, "object", False),
    CityscapesLabel("traffic sign", 20, 7, "object", False),
    CityscapesLabel("vegetation", 21, 8, "nature", False),
    CityscapesLabel("terrain", 22, 9, "nature", False),
    CityscapesLabel("sky", 23, 10, "sky", False),
    CityscapesLabel("person", 24, 11, "human", False),
    CityscapesLabel("rider", 25, 12, "human", False),
    CityscapesLabel("car", 26, 13, "vehicle", False),
    CityscapesLabel("truck", 27, 14, "vehicle", False),
    CityscapesLabel("bus", 28, 15, "vehicle", False),
    CityscapesLabel("caravan", 29, 255, "vehicle", True),
    CityscapesLabel("trailer", 30, 255, "vehicle", True),
    CityscapesLabel("train", 31, 16, "vehicle", False),
    CityscapesLabel("motorcycle", 32, 17, "vehicle", False),
    CityscapesLabel("bicycle", 33, 18, "vehicle", False),
    CityscapesLabel("license plate", -1, -1, "vehicle", True),
)

# The 19 evaluated classes by label id, in train-id order (which is also label-id order).
EVALUATED_CLASSES: dict[int, str] = {
    label.label_id: label.name for label in sorted(LABELS, key=lambda label: label.train_id) if 0 <= label.train_id < IGNORE
}

# The thing classes removed one by one, in this order, by configurations 001..008.
OUT_OF_VOCABULARY_ORDER = (24, 25, 26, 27, 28, 31, 32, 33)
CONFIGURATIONS = tuple(f"{count:03d}" for count in range(len(OUT_OF_VOCABULARY_ORDER) + 1))


def train_id_of(label_id: int) -> int:
    """Cityscapes' train id of a label id (-1 for the license plate; an unknown id is an error)."""
    for label in LABELS:
        if label.label_id == label_id:
            return label.train_id
    raise KeyError(label_id)


def out_of_vocabulary(configuration: str) -> tuple[int, ...]:
    """The label ids a configuration removes: "000" none, "00k" the first k of OUT_OF_VOCABULARY_ORDER."""
    if configuration not in CONFIGURATIONS:
        raise FsbenchError(f"unknown --vocab-config {configuration!r}; available: {', '.join(CONFIGURATIONS)}")
    return OUT_OF_VOCABULARY_ORDER[: int(configuration)]


def class_id_lookup() -> Tensor:
    """[256] int64: a label-id PNG value -> fsbench class id (the label id of an evaluated class, 255
    for void and for any value that is no label id)."""
    lookup = torch.full((256,), IGNORE, dtype=torch.int64)
    for label_id in EVALUATED_CLASSES:
        lookup[label_id] = label_id
    return lookup
