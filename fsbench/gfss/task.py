"""What a generalized FSS run evaluates: its classes, its queries and its one support set.

Queries are the evaluation images that show at least one class (any image of the benchmark's
``labelled_pairs("test")``), in a seeded order; ``limit`` keeps the first ones. Supports: for each
novel class, K training images of that class drawn with (seed, class), preferring images that show
no other novel class (GFS-Seg's rule); where fewer than K such images exist the rest are drawn from
the others, whose other novel classes are then ignore (255) in the support mask. The support set is
fixed for the whole run and shared by every query, as in GFS-Seg and DIaM.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fsbench.episode import IGNORE_INDEX, Episode
from fsbench.errors import FsbenchError
from fsbench.sampler import binary_mask


@dataclass(frozen=True)
class GFSSClasses:
    """The scored classes of a run.

    Attributes:
        background: 0 is a class of its own and counts among the base (in) classes (Pascal, COCO,
            shapes, as in GFS-Seg); False where the dataset has no background (Cityscapes).
        base: the base (in-vocabulary) class ids, sorted.
        novel: the novel (out-of-vocabulary) class ids, sorted.
    """

    background: bool
    base: tuple[int, ...]
    novel: tuple[int, ...]

    @property
    def in_classes(self) -> tuple[int, ...]:
        return ((0,) if self.background else ()) + self.base

    @property
    def all(self) -> tuple[int, ...]:
        """Every scored class: background (when scored), base, novel; the order of score columns."""
        return self.in_classes + self.novel

    def index_lookup(self) -> Tensor:
        """[256] int64 dataset class id -> score column + 1 (0 for ids that are not scored; 255 stays)."""
        size = max([*self.all, IGNORE_INDEX]) + 1
        lookup = torch.zeros(size, dtype=torch.int64)
        lookup[IGNORE_INDEX] = IGNORE_INDEX
        for column, class_id in enumerate(self.all):
            lookup[class_id] = column + 1
        return lookup

    def as_dict(self) -> dict:
        return {"background": self.background, "in": list(self.in_classes), "out": list(self.novel)}


@dataclass
class SupportSet:
    """K examples of each novel class, shared by every query of a run.

    Attributes:
        images: [N, K, 3, H, W] float, normalised.
        masks: [N, K, H, W] int64 in {0, 1, 255}: 1 = the novel class of row n.
        class_ids: [N] int64 novel class ids (sorted).
        image_ids: N lists of K image ids.
    """

    images: Tensor
    masks: Tensor
    class_ids: Tensor
    image_ids: list[list[str]] = field(default_factory=list)

    @property
    def way(self) -> int:
        return int(self.class_ids.numel())

    def to(self, device: torch.device | str) -> "SupportSet":
        return SupportSet(self.images.to(device), self.masks.to(device), self.class_ids.to(device), self.image_ids)

    def episode(self, query_images: Tensor, index: int = 0, query_ids: list[str] | None = None) -> Episode:
        """An Episode of the novel classes (ways in sorted class order) for queries [Q, 3, H, W]; its
        query masks and presence are blank, as the evaluator hands them to predict."""
        queries = query_images.shape[0]
        return Episode(
            support_images=self.images,
            support_masks=self.masks,
            query_images=query_images,
            query_masks=torch.full((queries, *query_images.shape[-2:]), IGNORE_INDEX, dtype=torch.int64, device=query_images.device),
            class_ids=self.class_ids,
            query_presence=torch.zeros(queries, self.way, dtype=torch.bool, device=query_images.device),
            index=index,
            query_ids=list(query_ids or []),
            support_ids=[list(ids) for ids in self.image_ids],
        )


@dataclass
class QueryItem:
    """One query: image [3, S, S], target [S, S] int64 dataset class ids (255 ignore), the target at
    original size (or None), and the image id."""

    image: Tensor
    target: Tensor
    original_target: Tensor | None
    image_id: str


class GFSSTask:
    """Classes, queries and the support set of one generalized FSS run over ``benchmark``'s fold.

    Args:
        benchmark: a Benchmark with supports_gfss (its training classes are the base classes, its
            test classes the novel ones).
        shot: K support images per novel class.
        seed: decides the query order and the support set.
        limit: evaluate only the first ``limit`` queries of the seeded order (None: all).
        transform: the protocol's (image, label) transform.
        keep_original: also keep each query's target at original size (original-size scoring).
    """

    def __init__(self, benchmark, shot: int, seed: int, limit: int | None, transform: Callable, keep_original: bool = False):
        if not getattr(benchmark, "supports_gfss", False):
            raise FsbenchError(f"benchmark {benchmark.registry_name!r} does not support --task gfss (cityscapes, pascal, coco and shapes do)")
        if shot < 1:
            raise FsbenchError(f"--shot must be at least 1, got {shot}")
        self.benchmark, self.shot, self.seed = benchmark, shot, seed
        self.transform, self.keep_original = transform, keep_original
        self.classes = GFSSClasses(bool(getattr(benchmark, "background_class", True)), tuple(benchmark.classes("train")), tuple(benchmark.classes("test")))
        test_images = sorted({image_id for image_id, _ in benchmark.labelled_pairs("test")})
        if not test_images:
            raise FsbenchError(f"benchmark {benchmark.registry_name!r} has no evaluation images with a class")
        order = np.random.default_rng([seed, benchmark.fold, 0x6F55]).permutation(len(test_images))
        chosen = order if limit is None else order[:limit]
        self.query_ids = [test_images[position] for position in chosen]
        self.support_ids, self.mixed_supports = self._draw_supports()

    def _draw_supports(self) -> tuple[list[list[str]], int]:
        """K training image ids per novel class; also how many show another novel class too."""
        training_pairs = self.benchmark.labelled_pairs("train")
        classes_of: dict[str, set[int]] = {}
        for image_id, class_id in training_pairs:
            classes_of.setdefault(image_id, set()).add(class_id)
        novel = set(self.classes.novel)
        chosen, mixed = [], 0
        for class_id in self.classes.novel:
            images = sorted(image_id for image_id, classes in classes_of.items() if class_id in classes)
            clean = [image_id for image_id in images if not (classes_of[image_id] & novel) - {class_id}]
            clean_set = set(clean)
            others = [image_id for image_id in images if image_id not in clean_set]
            if len(images) < self.shot:
                name = self.benchmark.class_names.get(class_id, class_id)
                raise FsbenchError(
                    f"novel class {name!r} ({class_id}) of {self.benchmark.registry_name!r} has {len(images)} training "
                    f"image(s); {self.shot}-shot generalized FSS needs {self.shot}"
                )
            rng = np.random.default_rng([self.seed, class_id, 0x5099])
            picked = [clean[position] for position in rng.permutation(len(clean))[: self.shot]]
            if len(picked) < self.shot:
                extra = self.shot - len(picked)
                picked += [others[position] for position in rng.permutation(len(others))[:extra]]
                mixed += extra
            chosen.append(picked)
        return chosen, mixed

    def __len__(self) -> int:
        return len(self.query_ids)

    def support_set(self) -> SupportSet:
        """Load and transform the support images once (masks: the row's class 1, other novel classes
        255, everything else 0)."""
        novel = list(self.classes.novel)
        images, masks = [], []
        for class_id, ids in zip(novel, self.support_ids):
            others = [other for other in novel if other != class_id]
            row_images, row_masks = [], []
            for image_id in ids:
                image, label = self.benchmark.load_labelled(image_id, "train")
                image, label = self.transform(image, label)
                row_images.append(image)
                row_masks.append(binary_mask(label, class_id, others))
            images.append(torch.stack(row_images))
            masks.append(torch.stack(row_masks))
        if not novel:  # configuration 000: nothing is out of the vocabulary
            return SupportSet(torch.zeros(0, self.shot, 3, 1, 1), torch.zeros(0, self.shot, 1, 1, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
        return SupportSet(torch.stack(images), torch.stack(masks), torch.tensor(novel, dtype=torch.int64), [list(ids) for ids in self.support_ids])

    def query_dataset(self) -> "QueryDataset":
        return QueryDataset(self)

    def fingerprint(self) -> str:
        """sha256 of the benchmark, fold, classes, queries and supports: equal iff the runs saw the same task."""
        digest = hashlib.sha256()
        digest.update(f"gfss|{self.benchmark.registry_name}|{self.benchmark.fold}|{self.classes.as_dict()}".encode())
        digest.update(repr((self.query_ids, self.support_ids)).encode())
        return digest.hexdigest()[:16]

    def describe(self) -> dict:
        return {
            "classes": self.classes.as_dict(),
            "queries": len(self.query_ids),
            "support_ids": {str(class_id): ids for class_id, ids in zip(self.classes.novel, self.support_ids)},
            "supports_with_another_novel_class": self.mixed_supports,
        }


class QueryDataset(Dataset):
    """The task's queries as a torch Dataset of QueryItem (loaded with every class labelled)."""

    def __init__(self, task: GFSSTask):
        self.task = task

    def __len__(self) -> int:
        return len(self.task.query_ids)

    def __getitem__(self, index: int) -> QueryItem:
        task = self.task
        image_id = task.query_ids[index]
        image, label = task.benchmark.load_labelled(image_id, "test")
        original = None
        if task.keep_original:
            scoring_label = getattr(task.transform, "scoring_label", None)
            original = scoring_label(label) if scoring_label is not None else label
        image, label = task.transform(image, label)
        return QueryItem(image, label, original, image_id)


def collate_queries(items: list[QueryItem]) -> list[QueryItem]:
    return list(items)
