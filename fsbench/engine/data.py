"""Training data for the engine: base-class image batches and training episodes, both pure functions of
(seed, position), so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fsbench.engine.augment import AUGMENTATIONS, DMLAugmentation
from fsbench.episode import IGNORE_INDEX, collate_episodes
from fsbench.errors import FsbenchError


def resolve_nworker(nworker: int | None, device: torch.device) -> int:
    """Loader worker processes: as asked, else 0 on the CPU and 2 with an accelerator.

    On the CPU the network's threads already use every core; workers then compete with them and
    each keeps its own image cache (measured on 2 cores: fsbench's Pascal loader 130 episodes/s with
    none against 46 with two). With an accelerator they prepare the next batch while it computes.
    """
    if nworker is not None:
        return nworker
    return 0 if device.type == "cpu" else 2


def training_label_of(position: int) -> int:
    """The training label of the base class at ``position`` (0-based, sorted ids): position + 1, except
    that 255 is skipped, because 255 stays the ignore label (FSS-1000 has 520 base classes)."""
    label = position + 1
    return label + 1 if label >= IGNORE_INDEX else label


def training_label_count(base_classes: int) -> int:
    """Number of training labels (the size of a classifier over them): background, the base classes
    and, with 255 or more base classes, the unused label 255."""
    return training_label_of(base_classes - 1) + 1 if base_classes else 1


def label_lookup(base_classes: list[int]) -> Tensor:
    """[V] int64 table: dataset class id -> training label; 0 (background) for any other id, 255 stays."""
    size = max([*base_classes, IGNORE_INDEX]) + 1
    lookup = torch.zeros(size, dtype=torch.int64)
    lookup[IGNORE_INDEX] = IGNORE_INDEX
    for position, class_id in enumerate(base_classes):
        lookup[class_id] = training_label_of(position)
    return lookup


def to_training_labels(label: Tensor, lookup: Tensor) -> Tensor:
    """[H, W] dataset class ids -> [H, W] training labels (ids beyond the table are background)."""
    inside = label < len(lookup)
    return torch.where(inside, lookup[label.clamp(0, len(lookup) - 1)], torch.zeros_like(label))


def _epoch_order(count: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 0xB47C, epoch]).generate_state(1)[0]))
    return torch.randperm(count, generator=generator)


class BaseClassImageStream(Dataset):
    """An endless stream of a fold's training images with training labels.

    Item ``position`` is image ``order(epoch)[position % n]`` with epoch = position // n, flipped
    horizontally or not by a draw seeded with (seed, position), then, with ``augment="dml"``,
    augmented as fsbench.engine.augment says by draws seeded the same way: a pure function of the
    position.
    Returns (image [3, S, S] float normalised, labels [S, S] int64: 0 background, training_label_of
    (base class position), 255 ignore), or None when the file is bad and ``skip_bad`` is set.
    Novel-class pixels are already background (Benchmark.load's train split).
    """

    def __init__(self, benchmark, transform: Callable, seed: int = 0, flip: bool = True, skip_bad: bool = False,
                 augment: str = "flip"):
        if augment not in AUGMENTATIONS:
            raise FsbenchError(f"unknown augmentation {augment!r}; available: {', '.join(AUGMENTATIONS)}")
        self.benchmark = benchmark
        self.transform = transform
        self.classes = benchmark.classes("train")
        self.image_ids = sorted({image_id for image_id, _ in benchmark.pairs("train")})
        if not self.image_ids:
            raise FsbenchError(f"benchmark {benchmark.registry_name!r} fold {benchmark.fold} has no training images")
        self.lookup = label_lookup(self.classes)
        self.seed, self.flip, self.skip_bad = seed, flip, skip_bad
        self.augmentation = DMLAugmentation() if augment == "dml" else None
        self._order: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_at(self, position: int) -> str:
        epoch, offset = divmod(position, len(self.image_ids))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(len(self.image_ids), self.seed, epoch))
        return self.image_ids[int(self._order[1][offset])]

    def __getitem__(self, position: int) -> tuple[Tensor, Tensor] | None:
        image_id = self.image_at(position)
        try:
            image, label = self.benchmark.load(image_id, "train")
        except FsbenchError:
            if not self.skip_bad:
                raise
            return None
        image, label = self.transform(image, label)
        label = to_training_labels(label, self.lookup)
        if self.flip and np.random.default_rng([self.seed, 0xF11B, position]).random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        if self.augmentation is not None:
            image, label = self.augmentation(image, label, np.random.default_rng([self.seed, 0xA06E, position]))
        return image, label


class SkippingEpisodes(Dataset):
    """A sampler whose items are None instead of an error for episodes with a bad file (--skip-bad)."""

    def __init__(self, sampler, skip_bad: bool):
        self.sampler, self.skip_bad = sampler, skip_bad

    def __len__(self) -> int:
        return len(self.sampler)

    def __getitem__(self, index: int):
        try:
            return self.sampler[index]
        except FsbenchError as error:
            if not self.skip_bad:
                raise
            return SkippedItem(index, str(error).splitlines()[-1])


@dataclass
class SkippedItem:
    """Stands in for an item that could not be loaded: which one, and why."""

    index: int
    reason: str


class _Positions:
    """Batch sampler of the stream positions of updates start..stop-1: update s takes ``size``
    positions per process, process r of w the r-th share: (s w + r) size, ..., (s w + r + 1) size - 1."""

    def __init__(self, start: int, stop: int, size: int, rank: int = 0, world: int = 1):
        self.start, self.stop, self.size, self.rank, self.world = start, stop, size, rank, world

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.stop):
            first = (step * self.world + self.rank) * self.size
            yield list(range(first, first + self.size))

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def _collate_images(items: list) -> tuple[Tensor, Tensor, int] | None:
    good = [item for item in items if item is not None]
    if not good:
        return None
    images = torch.stack([image for image, _ in good])
    labels = torch.stack([label for _, label in good])
    return images, labels, len(items) - len(good)


def image_batches(stream: BaseClassImageStream, batch_size: int, start: int, stop: int, nworker: int, pin_memory: bool,
                  processes=None) -> DataLoader:
    """Batches (images [B, 3, S, S], labels [B, S, S], skipped count) for updates start..stop-1
    (this process's share under torchrun). A batch whose every image was skipped arrives as None.
    """
    rank, world = (processes.rank, processes.world) if processes is not None else (0, 1)
    return DataLoader(
        stream,
        batch_sampler=_Positions(start, stop, batch_size, rank, world),
        num_workers=nworker,
        collate_fn=_collate_images,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def episode_batches(sampler, batch_size: int, start: int, stop: int, nworker: int, skip_bad: bool, processes=None) -> DataLoader:
    """Lists of ``batch_size`` training episodes (SkippedItem for a bad one) for updates start..stop-1
    (this process's share under torchrun)."""
    rank, world = (processes.rank, processes.world) if processes is not None else (0, 1)
    return DataLoader(
        SkippingEpisodes(sampler, skip_bad),
        batch_sampler=_Positions(start, stop, batch_size, rank, world),
        num_workers=nworker,
        collate_fn=collate_episodes,
    )
