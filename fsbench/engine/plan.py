"""What a method declares for training, as data: stages, parameter groups, optimiser and schedule.

A method never writes a training loop. It returns a list of TrainingStage objects (e.g. mtl_unet:
pre-training on images, then meta-training on episodes); fsbench.engine.fit runs them, owning the
optimiser, the learning-rate schedule, gradient clipping and accumulation, checkpoints and resume.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from fsbench.engine.data import training_label_count
from fsbench.errors import FsbenchError

OPTIMISERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "step", "poly")
STAGE_DATA = ("images", "episodes")


@dataclass
class ParameterGroup:
    """Parameters trained at ``lr_multiplier`` x the stage's learning rate."""

    name: str
    parameters: list[nn.Parameter]
    lr_multiplier: float = 1.0
    weight_decay: float | None = None  # None: the optimiser's
    clip: bool = True  # included in the stage's gradient-norm clipping


@dataclass(frozen=True)
class Optimiser:
    """Which torch optimiser, with its settings (lr is the base rate of every group)."""

    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only

    def build(self, groups: list[ParameterGroup]) -> torch.optim.Optimizer:
        if self.name not in OPTIMISERS:
            raise FsbenchError(f"unknown optimiser {self.name!r}; available: {', '.join(OPTIMISERS)}")
        param_groups = []
        for group in groups:
            entry = {"params": group.parameters, "lr": self.lr * group.lr_multiplier, "name": group.name}
            if group.weight_decay is not None:
                entry["weight_decay"] = group.weight_decay
            param_groups.append(entry)
        if self.name == "sgd":
            return torch.optim.SGD(param_groups, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)
        if self.name == "adam":
            return torch.optim.Adam(param_groups, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.AdamW(param_groups, lr=self.lr, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class Schedule:
    """The learning-rate factor as a pure function of the step (so a resumed run needs only the step).

    constant: 1. cosine: 0.5 (1 + cos(pi t / T)), decaying to 0 at the end. step: gamma ** (number of
    ``milestones`` (fractions of T) passed). poly: (1 - t / T) ** power (PFENet).
    """

    kind: str = "constant"
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    power: float = 0.9

    def factor(self, step: int, total: int) -> float:
        if self.kind == "constant" or total <= 0:
            return 1.0
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * step / total))
        if self.kind == "step":
            # The epsilon keeps 1/3 x 30000 at 10000 (floating point gives 9999.999...).
            passed = sum(1 for milestone in self.milestones if step >= math.floor(milestone * total + 1e-9))
            return self.gamma**passed
        if self.kind == "poly":
            return max(0.0, 1.0 - step / total) ** self.power
        raise FsbenchError(f"unknown schedule {self.kind!r}; available: {', '.join(SCHEDULES)}")


@dataclass
class StepContext:
    """Handed to a stage's loss with every batch.

    Attributes:
        step: the stage's update index (0-based).
        generator: a CPU torch.Generator seeded from (run seed, stage, step): randomness a loss draws
            (pixel sampling, ...) is a pure function of the step, so a resumed run draws the same.
    """

    step: int
    generator: torch.Generator
    weak: bool = False  # a --weak run: the batch's episodes carry class tags only


# loss(batch, context) -> {"loss": scalar tensor, other scalars to log}. batch is (images [B,3,H,W],
# labels [B,H,W]) for image stages, one Episode for episode stages.
LossFunction = Callable[[object, StepContext], dict[str, Tensor]]


@dataclass
class TrainingStage:
    """One phase of training.

    Attributes:
        name: shown in logs ("train", "pretrain", "meta").
        steps: optimiser updates.
        data: "images" (batches of base-class images, labels 0 = background, 1..C = the base classes
            in sorted id order, 255 = ignore) or "episodes" (training episodes of the base classes).
        batch_size: images per update, or episodes per update (gradients are accumulated).
        optimiser, schedule: as data; the engine builds them.
        parameter_groups: called when the stage is entered (fresh or resumed) to get the groups.
        loss: computes the loss of one batch (images) or one episode.
        initialise: called once when the stage starts fresh (never on resume: its effect is in the
            checkpointed weights), e.g. proxies from embeddings, a learner from a pre-trained head.
        enter: called every time the stage is entered, fresh or resumed, before parameter_groups:
            structural settings that are not saved weights (freezing, module modes).
        clip_grad_norm: max gradient norm over the parameters of the groups with clip=True, or None.
        eval_modules: the method's modules are in train mode during the stage except those named
            here, which stay in eval mode (e.g. a frozen network whose batch-norm statistics stay).
    """

    name: str
    steps: int
    data: str
    batch_size: int
    optimiser: Optimiser
    parameter_groups: Callable[[], list[ParameterGroup]]
    loss: LossFunction
    schedule: Schedule = field(default_factory=Schedule)
    initialise: Callable[[], None] | None = None
    enter: Callable[[], None] | None = None
    clip_grad_norm: float | None = None
    eval_modules: tuple[str, ...] = ()

    def __post_init__(self):
        if self.data not in STAGE_DATA:
            raise ValueError(f"stage {self.name!r}: data must be one of {STAGE_DATA}, got {self.data!r}")


@dataclass
class TrainingContext:
    """What a method may know when it plans its training.

    Attributes:
        steps: the whole training budget in updates (the method splits it over its stages).
        base_classes: the fold's training class ids, sorted; image labels use their positions + 1.
        way, shot, task: the episodes the run evaluates on (episodic stages train on the same).
        seed: the run's seed.
        weak: train from class tags only (``--weak``): episodes reach the loss through
            Episode.with_class_tags_only, so a stage can learn from query_presence alone.
        image_batches: image_batches(count, batch_size, seed) yields (images [B, 3, H, W], labels
            [B, H, W] training labels) of ``count`` training images drawn with ``seed``, padded to a
            size the method takes and on its device: for initialisations (e.g. dml_knn's proxies).
    """

    steps: int
    base_classes: list[int]
    way: int = 1
    shot: int = 1
    task: str = "fss"
    seed: int = 0
    weak: bool = False
    image_batches: Callable[[int, int, int], Iterator[tuple[Tensor, Tensor]]] | None = None

    @property
    def num_labels(self) -> int:
        """Training labels of image stages: background, the base classes (and the unused 255 when
        there are 255 or more of them; see fsbench.engine.data.training_label_of)."""
        return training_label_count(len(self.base_classes))
