"""EpisodeSampler: deterministic N-way K-shot episodes over a Benchmark.

Episode ``i`` is a pure function of (seed, fold, split, i): its random generator is seeded from those
numbers alone, so worker count, batch size, method and device cannot change what it contains. With
``replay`` the plans are instead those of another codebase's test loader (fsbench/replay.py),
computed once up front, so episode ``i`` is still a lookup.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fsbench.episode import IGNORE_INDEX, Episode
from fsbench.errors import FsbenchError
from fsbench.lru import ByteLRU
from fsbench.replay import CODEBASES, QUERY_DRAWS, replay_plans
from fsbench.transforms import SquashResize

TASKS = ("fss", "fscs")
# What a query mask's ignore (255) pixels become: "ignore" (scored nowhere; HSNet, PFENet) or
# "background" (iFSL's FS-CS code: its ignore test compares a 0/1 boundary map with 255, so it never
# ignores, and Pascal's boundary band is scored as background).
BOUNDARIES = ("ignore", "background")
DEFAULT_BOUNDARY = {"fss": "ignore", "fscs": "background"}


@dataclass(frozen=True)
class EpisodePlan:
    """Which images and classes episode ``index`` uses; cheap to compute, nothing loaded."""

    index: int
    class_ids: tuple[int, ...]  # one per way
    query_ids: tuple[str, ...]
    support_ids: tuple[tuple[str, ...], ...]  # [way][shot]


class EpisodeSampler(Dataset):
    """A torch Dataset of episodes.

    Args:
        benchmark: a Benchmark for one fold.
        split: "train" (base classes) or "test" (novel classes).
        way, shot, queries: N, K and Q.
        episodes: the dataset length.
        seed: with the fold and the index, determines each episode.
        task: "fss" - every query contains the first way's class (the standard FS-S protocol; other
            ways are drawn uniformly). "fscs" - iFSL's FS-CS: the query's class is one of the ways
            with weight 1/2, each other class with weight 1/(2(C-1)), so a query may contain none,
            some or all of the ways.
        transform: (image uint8 [3, H, W], label [H, W]) -> (image float [3, S, S], label [S, S]).
        keep_original: also return each query's mask at its original size (for original-size scoring).
        replay: None (fsbench's own episodes) or a codebase of fsbench.replay.CODEBASES whose test
            episodes are reproduced from the benchmark's standard lists.
        boundary: what the dataset's ignore pixels (255) in query masks become, "ignore" or
            "background"; default by task (DEFAULT_BOUNDARY). Padding a transform adds stays ignore.

    The query of each episode is drawn as the benchmark declares (``query_draw``): "pair" visits the
    (image, class) pairs in a fixed permutation; "class" draws a class uniformly, then one of its
    images (COCO-20i in HSNet and iFSL), so big classes do not dominate.
    """

    def __init__(
        self,
        benchmark,
        split: str,
        way: int = 1,
        shot: int = 1,
        queries: int = 1,
        episodes: int = 1000,
        seed: int = 0,
        task: str = "fss",
        transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        keep_original: bool = False,
        replay: str | None = None,
        boundary: str | None = None,
        image_cache_mb: float = 256,
    ):
        if task not in TASKS:
            raise FsbenchError(f"unknown task {task!r}; available: {', '.join(TASKS)}")
        boundary = boundary or DEFAULT_BOUNDARY[task]
        if boundary not in BOUNDARIES:
            raise FsbenchError(f"unknown --boundary {boundary!r}; available: {', '.join(BOUNDARIES)}")
        query_draw = getattr(benchmark, "query_draw", "pair")
        if query_draw not in QUERY_DRAWS:
            raise FsbenchError(f"benchmark {benchmark.registry_name!r} declares query draw {query_draw!r}; available: {', '.join(QUERY_DRAWS)}")
        for name, value in (("way", way), ("shot", shot), ("queries", queries), ("episodes", episodes)):
            if value < 1:
                raise FsbenchError(f"--{name} must be at least 1, got {value}")
        self.benchmark = benchmark
        self.split = split
        self.way, self.shot, self.queries, self.episodes = way, shot, queries, episodes
        self.seed = seed
        self.task = task
        self.transform = transform or SquashResize(benchmark.default_img_size)
        self.keep_original = keep_original
        self.replay = replay
        self.boundary = boundary
        # Decoded and transformed images, reused when an image recurs (a Pascal fold's ~350 images
        # fill 1000 1-shot episodes); one cache per loader worker, bounded in bytes.
        self.image_cache_mb = image_cache_mb
        self._loaded = ByteLRU(int(image_cache_mb * 2**20))
        self.query_draw = query_draw

        self.pairs = list(benchmark.pairs(split))
        self.class_ids = sorted({class_id for _, class_id in self.pairs})
        if not self.pairs:
            raise FsbenchError(f"benchmark {benchmark.registry_name!r} fold {benchmark.fold} has no {split} images")
        if way > len(self.class_ids):
            raise FsbenchError(
                f"--way {way} is larger than the {len(self.class_ids)} classes of the {split} split "
                f"of {benchmark.registry_name!r} fold {benchmark.fold}"
            )
        # Order of the queries of a "pair" draw: a fixed permutation of the pair list, so the first
        # len(pairs) episodes use every (image, class) pair once (FSS-1000's protocol) and any count
        # of episodes is a deterministic prefix of the same sequence.
        order_rng = np.random.default_rng([seed, benchmark.fold, _split_code(split), 0x5EED])
        self.query_order = order_rng.permutation(len(self.pairs))
        self._replayed: list[EpisodePlan] | None = None
        if replay is not None:
            # The codebase's own rules decide what is feasible (HSNet keeps duplicate supports).
            if replay not in CODEBASES:
                raise FsbenchError(f"unknown --replay {replay!r}; available: {', '.join(CODEBASES)}")
            if split != "test":
                raise FsbenchError(f"--replay {replay} reproduces test episodes; the {split} split has none to replay")
            plans = replay_plans(replay, benchmark.replay_lists(split), query_draw, task, way, shot, queries, episodes)
            self._replayed = [EpisodePlan(index, *plan) for index, plan in enumerate(plans)]
            return
        needed = shot + queries
        for class_id in self.class_ids:
            available = len(benchmark.images_of_class(split, class_id))
            if available < needed:
                name = benchmark.class_names.get(class_id, class_id)
                raise FsbenchError(
                    f"class {name!r} ({class_id}) of {benchmark.registry_name!r} fold {benchmark.fold} "
                    f"{split} has {available} images; {shot}-shot with {queries} query needs at least {needed}"
                )

    def __len__(self) -> int:
        return self.episodes

    # --- planning: which images and classes -----------------------------------------------------
    def plan(self, index: int) -> EpisodePlan:
        if not 0 <= index < self.episodes:
            raise IndexError(index)
        if self._replayed is not None:
            return self._replayed[index]
        rng = np.random.default_rng([self.seed, self.benchmark.fold, _split_code(self.split), index])
        if self.query_draw == "class":
            query_class = self.class_ids[int(rng.integers(len(self.class_ids)))]
            images = self.benchmark.images_of_class(self.split, query_class)
            first_query = images[int(rng.integers(len(images)))]
        else:
            first_query, query_class = self.pairs[self.query_order[index % len(self.pairs)]]
        others = [image for image in self.benchmark.images_of_class(self.split, query_class) if image != first_query]
        query_ids = [first_query] + _choose(rng, others, self.queries - 1)

        class_ids = self._draw_ways(rng, query_class)
        support_ids = []
        for class_id in class_ids:
            candidates = [
                image for image in self.benchmark.images_of_class(self.split, class_id) if image not in query_ids
            ]
            if len(candidates) < self.shot:
                # Only possible in FS-CS when several queries hold this class; the constructor
                # guarantees shot + queries images per class, so this is a real data problem.
                raise FsbenchError(f"class {class_id} has too few images for {self.shot}-shot supports")
            support_ids.append(tuple(_choose(rng, candidates, self.shot)))
        return EpisodePlan(index, tuple(class_ids), tuple(query_ids), tuple(support_ids))

    def _draw_ways(self, rng: np.random.Generator, query_class: int) -> list[int]:
        others = [class_id for class_id in self.class_ids if class_id != query_class]
        if self.task == "fss":
            ways = [query_class] + _choose(rng, others, self.way - 1)
            return [ways[position] for position in rng.permutation(self.way)]
        # FS-CS: weighted draw without replacement, the query's class carrying half the mass. As in
        # iFSL the drawn order is kept (no shuffle), so way 1 holds the query's class about half the
        # time; shuffling would change the episode distribution that published FS-CS numbers use.
        candidates = [query_class] + others
        if not others:
            return [query_class]
        weights = np.array([0.5] + [0.5 / len(others)] * len(others))
        chosen = rng.choice(len(candidates), size=self.way, replace=False, p=weights)
        return [candidates[position] for position in chosen]

    def fingerprint(self) -> str:
        """sha256 over every episode's (classes, queries, supports) and the settings that decide how
        they were drawn and scored: equal iff the episodes are equal."""
        digest = hashlib.sha256()
        digest.update(f"{self.benchmark.registry_name}|{self.benchmark.fold}|{self.split}".encode())
        # Settings that change what is drawn or scored, named only when not the original default, so
        # fingerprints of runs the change does not touch stay as they were.
        for name, value, default in (("draw", self.query_draw, "pair"), ("replay", self.replay, None), ("boundary", self.boundary, "ignore")):
            if value != default:
                digest.update(f"|{name}={value}".encode())
        for index in range(self.episodes):
            plan = self.plan(index)
            digest.update(repr((plan.class_ids, plan.query_ids, plan.support_ids)).encode())
        return digest.hexdigest()[:16]

    # --- loading ----------------------------------------------------------------------------------
    def __getitem__(self, index: int) -> Episode:
        plan = self.plan(index)
        class_tensor = torch.tensor(plan.class_ids, dtype=torch.int64)

        support_images, support_masks = [], []
        for class_id, ids in zip(plan.class_ids, plan.support_ids):
            # The episode's other classes are neither this way's foreground nor its background.
            other_ways = [other for other in plan.class_ids if other != class_id]
            images, masks = [], []
            for image_id in ids:
                image, label, _ = self._load(image_id, query=False)
                images.append(image)
                masks.append(binary_mask(label, class_id, other_ways))
            support_images.append(torch.stack(images))
            support_masks.append(torch.stack(masks))

        query_images, query_masks, presence, original_sizes, original_masks = [], [], [], [], []
        for image_id in plan.query_ids:
            image, label, original_label = self._load(image_id, query=True)
            original_sizes.append(tuple(original_label.shape))
            presence.append(torch.isin(class_tensor, original_label.unique()))
            if self.keep_original:
                # A padding transform (PFENet) scores on its own original-size canvas.
                scoring_label = getattr(self.transform, "scoring_label", None)
                target = scoring_label(original_label) if scoring_label is not None else original_label
                original_masks.append(way_mask(target, class_tensor))
            query_images.append(image)
            query_masks.append(way_mask(label, class_tensor))

        return Episode(
            support_images=torch.stack(support_images),
            support_masks=torch.stack(support_masks),
            query_images=torch.stack(query_images),
            query_masks=torch.stack(query_masks),
            class_ids=class_tensor,
            query_presence=torch.stack(presence),
            index=index,
            query_ids=list(plan.query_ids),
            support_ids=[list(ids) for ids in plan.support_ids],
            query_original_sizes=torch.tensor(original_sizes, dtype=torch.int64),
            query_original_masks=original_masks if self.keep_original else None,
        )


    def _load(self, image_id: str, query: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """(image [3, S, S], label [S, S], original-size label [H, W] or None for a support).

        A query's label has the boundary rule applied (before the transform, so that padding a
        transform adds, as PFENet's, stays ignored). Results are cached; callers never modify them.
        """
        key = (image_id, self.boundary if query else "support")
        cached = self._loaded.get(key)
        if cached is not None:
            return cached
        image, label = self.benchmark.load(image_id, self.split)
        if query and self.boundary == "background":
            label = label.masked_fill(label == IGNORE_INDEX, 0)
        transformed_image, transformed_label = self.transform(image, label)
        entry = (transformed_image, transformed_label, label if query else None)
        self._loaded.put(key, entry)
        return entry


def binary_mask(label: Tensor, class_id: int, ignored_classes: list[int] | tuple[int, ...] = ()) -> Tensor:
    """[H, W] label map -> [H, W] int64 in {0, 1, 255}: 1 where ``class_id``, 255 where ignore or
    one of ``ignored_classes`` (PANet: an episode's other classes are never background)."""
    mask = (label == class_id).long()
    mask[label == IGNORE_INDEX] = IGNORE_INDEX
    if len(ignored_classes):
        mask[torch.isin(label, torch.tensor(list(ignored_classes), dtype=label.dtype))] = IGNORE_INDEX
    return mask


def way_mask(label: Tensor, class_ids: Tensor) -> Tensor:
    """[H, W] label map -> [H, W] int64: n + 1 where class_ids[n], 0 elsewhere, 255 where ignore."""
    mask = torch.zeros_like(label)
    for way, class_id in enumerate(class_ids.tolist()):
        mask[label == class_id] = way + 1
    mask[label == IGNORE_INDEX] = IGNORE_INDEX
    return mask


def _choose(rng: np.random.Generator, items: list, count: int) -> list:
    if count <= 0:
        return []
    positions = rng.choice(len(items), size=count, replace=False)
    return [items[position] for position in positions]


def _split_code(split: str) -> int:
    # A stable integer for the split, so train and test episodes with the same index differ.
    return {"train": 1, "test": 2}.get(split, 3)
