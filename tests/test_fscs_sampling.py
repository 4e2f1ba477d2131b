"""FS-CS (iFSL) episodes: how often each class becomes a way matches the stated probabilities.

The query's class is drawn with weight 1/2 and each of the other C - 1 classes with 1/(2(C - 1)),
without replacement. With C = 5: 1-way -> the query's class 1/2, each other 1/8; 2-way -> the query's
class is among the ways with probability 1/2 + 4 * 1/8 * (1/2) / (7/8) = 11/14 and each other class
with 1/8 + 1/2 * (1/8) / (1/2) + 3/8 * (1/8) / (7/8) = 17/56.
"""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.base import Benchmark
from fsbench.sampler import EpisodeSampler
from fsbench.transforms import SquashResize

CLASSES = [3, 5, 7, 11, 13]
IMAGES_PER_CLASS = 12
EPISODES = 6000


class OneClassPerImage(Benchmark):
    """Image "c<class>_<i>" shows class <class> only: plans alone decide presence."""

    registry_name = "one_class_per_image"

    @property
    def class_names(self) -> dict[int, str]:
        return {class_id: f"class{class_id}" for class_id in CLASSES}

    def classes(self, split: str) -> list[int]:
        return list(CLASSES)

    def pairs(self, split: str) -> list[tuple[str, int]]:
        return [(f"c{class_id}_{index}", class_id) for class_id in CLASSES for index in range(IMAGES_PER_CLASS)]

    def load(self, image_id: str, split: str):
        class_id = int(image_id[1:].split("_")[0])
        return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.full((8, 8), class_id, dtype=torch.int64)


def _query_class(image_id: str) -> int:
    return int(image_id[1:].split("_")[0])


def _within(observed: int, trials: int, probability: float) -> bool:
    """Within 5 binomial standard deviations (the draws are seeded, so this never flickers)."""
    return abs(observed / trials - probability) <= 5 * math.sqrt(probability * (1 - probability) / trials)


@pytest.mark.parametrize("way,query_class_probability,other_class_probability", [(1, 1 / 2, 1 / 8), (2, 11 / 14, 17 / 56)])
def test_way_frequencies_match_ifsl(way, query_class_probability, other_class_probability):
    sampler = EpisodeSampler(OneClassPerImage("unused", 0), "test", way=way, shot=1, episodes=EPISODES, task="fscs")
    query_class_drawn = 0
    other_drawn = {class_id: 0 for class_id in CLASSES}
    other_trials = {class_id: 0 for class_id in CLASSES}
    for index in range(EPISODES):
        plan = sampler.plan(index)
        query_class = _query_class(plan.query_ids[0])
        assert len(set(plan.class_ids)) == way  # without replacement
        query_class_drawn += query_class in plan.class_ids
        for class_id in CLASSES:
            if class_id != query_class:
                other_trials[class_id] += 1
                other_drawn[class_id] += class_id in plan.class_ids
    assert _within(query_class_drawn, EPISODES, query_class_probability), query_class_drawn / EPISODES
    for class_id in CLASSES:
        assert _within(other_drawn[class_id], other_trials[class_id], other_class_probability), (class_id, other_drawn[class_id] / other_trials[class_id])


def test_fss_always_contains_the_query_class():
    sampler = EpisodeSampler(OneClassPerImage("unused", 0), "test", way=2, shot=1, episodes=500, task="fss")
    assert all(_query_class(sampler.plan(index).query_ids[0]) in sampler.plan(index).class_ids for index in range(500))


def test_fscs_queries_hold_none_some_or_all_ways_with_relabelled_masks(tiny_shapes):
    sampler = EpisodeSampler(tiny_shapes, "test", way=2, shot=1, episodes=60, task="fscs", transform=SquashResize(32), keep_original=True)
    present_counts = set()
    for index in range(len(sampler)):
        episode = sampler[index]
        _, label = tiny_shapes.load(episode.query_ids[0], "test")
        for way, class_id in enumerate(episode.class_ids.tolist()):
            # presence from the full mask, whatever the object's size; labels relabelled to way + 1
            assert bool(episode.query_presence[0, way]) == bool((label == class_id).any())
            original = episode.query_original_masks[0]
            assert torch.equal(original == way + 1, label == class_id)
        assert set(episode.query_masks.unique().tolist()) <= {0, 1, 2, 255}
        present_counts.add(int(episode.query_presence[0].sum()))
    assert present_counts == {0, 1, 2}
