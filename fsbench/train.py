"""Training loops: episodic (over EpisodeSampler) and supervised (over base-class image batches)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fsbench.episode import IGNORE_INDEX, collate_episodes
from fsbench.sampler import EpisodeSampler


@dataclass
class TrainSettings:
    """How long and on what a method trains; the method's Config says how (lr, losses...)."""

    steps: int
    batch_size: int = 8
    seed: int = 0
    nworker: int = 0
    transform: Callable | None = None
    way: int = 1
    shot: int = 1
    task: str = "fss"
    progress: bool = True
    # Called as on_step(step, scalars) after every step; the CLI uses it for logging.
    on_step: Callable[[int, dict], None] | None = None


class BaseClassImages(Dataset):
    """The training images of a fold with dense labels over its base classes.

    Item: (image [3, S, S] float normalised, label [S, S] int64) where label 0 = background,
    c + 1 = the c-th base class (in ``classes`` order), 255 = ignore. Novel-class pixels are already
    background (Benchmark.load's train split), so novel classes are never seen in training.
    """

    def __init__(self, benchmark, transform: Callable, seed: int = 0, flip: bool = True):
        self.benchmark = benchmark
        self.transform = transform
        self.classes = benchmark.classes("train")
        self.image_ids = sorted({image_id for image_id, _ in benchmark.pairs("train")})
        lookup = torch.zeros(256, dtype=torch.int64)
        lookup[IGNORE_INDEX] = IGNORE_INDEX
        for position, class_id in enumerate(self.classes):
            lookup[class_id] = position + 1
        self._lookup = lookup
        self.seed = seed
        self.flip = flip

    @property
    def num_classes(self) -> int:
        """Base classes plus background."""
        return len(self.classes) + 1

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, label = self.benchmark.load(self.image_ids[index], "train")
        image, label = self.transform(image, label)
        label = self._lookup[label.clamp(0, 255)]
        if self.flip and torch.rand(()) < 0.5:  # worker RNG is seeded by the loader's generator
            image, label = image.flip(-1), label.flip(-1)
        return image, label


def _forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def _progress(settings: TrainSettings, description: str):
    return tqdm(range(settings.steps), desc=description, disable=not settings.progress, dynamic_ncols=True)


def _report(bar, step: int, scalars: dict, settings: TrainSettings) -> None:
    bar.set_postfix({key: f"{value:.4f}" for key, value in scalars.items()}, refresh=False)
    if settings.on_step is not None:
        settings.on_step(step, scalars)


def train_episodic(method, benchmark, settings: TrainSettings) -> None:
    """Calls method.train_step(episode) for ``settings.steps`` training episodes of the base classes."""
    if settings.steps <= 0:
        return
    sampler = EpisodeSampler(
        benchmark,
        "train",
        way=settings.way,
        shot=settings.shot,
        episodes=max(settings.steps, 1),
        seed=settings.seed,
        task=settings.task,
        transform=settings.transform,
    )
    loader = DataLoader(
        sampler,
        batch_size=1,
        shuffle=False,
        num_workers=settings.nworker,
        collate_fn=collate_episodes,
        persistent_workers=settings.nworker > 0,
    )
    method.train()
    bar = _progress(settings, f"train {method.registry_name}")
    for step, batch in zip(bar, loader):
        scalars = method.train_step(batch[0].to(method.device))
        _report(bar, step, scalars, settings)
    method.eval()


def train_supervised(method, dataset: Dataset, settings: TrainSettings, step_fn: Callable[[Tensor, Tensor], dict]) -> None:
    """Calls step_fn(images [B, 3, S, S], labels [B, S, S]) for ``settings.steps`` batches.

    Batches are shuffled by a generator seeded from settings.seed, cycling over the data.
    """
    if settings.steps <= 0:
        return
    generator = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        dataset,
        batch_size=min(settings.batch_size, len(dataset)),
        shuffle=True,
        drop_last=True,
        num_workers=settings.nworker,
        generator=generator,
        persistent_workers=settings.nworker > 0,
        worker_init_fn=_seed_worker,
    )
    method.train()
    bar = _progress(settings, f"train {method.registry_name}")
    for step, (images, labels) in zip(bar, _forever(loader)):
        scalars = step_fn(images.to(method.device, non_blocking=True), labels.to(method.device, non_blocking=True))
        _report(bar, step, scalars, settings)
    method.eval()


def _seed_worker(worker_id: int) -> None:
    # Loader workers get torch seeds from the loader's generator; numpy follows them.
    np.random.seed(torch.initial_seed() % 2**32)

