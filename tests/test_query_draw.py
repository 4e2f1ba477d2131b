"""The query draw a benchmark declares: "class" (a class uniformly, then an image; COCO) or "pair"."""
from __future__ import annotations

import hashlib
import math

import pytest
import torch

from benchmarks.base import Benchmark
from benchmarks.coco import Coco
from benchmarks.coco_json import CocoJson
from benchmarks.pascal import Pascal
from fsbench.sampler import EpisodeSampler

# Class -> image count: as unbalanced as COCO (one class with most of the pairs).
SIZES = {3: 60, 5: 4, 7: 12, 9: 6}
EPISODES = 4000


class Unbalanced(Benchmark):
    """Image "c<class>_<i>" shows only its class."""

    registry_name = "unbalanced"

    @property
    def class_names(self) -> dict[int, str]:
        return {class_id: f"class{class_id}" for class_id in SIZES}

    def classes(self, split: str) -> list[int]:
        return sorted(SIZES)

    def pairs(self, split: str) -> list[tuple[str, int]]:
        return [(f"c{class_id}_{index}", class_id) for class_id, count in SIZES.items() for index in range(count)]

    def load(self, image_id: str, split: str):
        class_id = int(image_id[1:].split("_")[0])
        return torch.zeros(3, 8, 8, dtype=torch.uint8), torch.full((8, 8), class_id, dtype=torch.int64)


class ClassDrawn(Unbalanced):
    query_draw = "class"


def _within(observed: int, trials: int, probability: float) -> bool:
    """Within 5 binomial standard deviations (the draws are seeded, so this never flickers)."""
    return abs(observed / trials - probability) <= 5 * math.sqrt(probability * (1 - probability) / trials)


@pytest.mark.parametrize("benchmark_class,share", [(ClassDrawn, lambda c: 1 / len(SIZES)), (Unbalanced, lambda c: SIZES[c] / sum(SIZES.values()))])
def test_query_class_frequencies(benchmark_class, share):
    sampler = EpisodeSampler(benchmark_class("unused", 0), "test", shot=1, episodes=EPISODES)
    plans = [sampler.plan(index) for index in range(EPISODES)]
    for class_id in SIZES:
        drawn = sum(plan.class_ids[0] == class_id for plan in plans)
        assert _within(drawn, EPISODES, share(class_id)), (class_id, drawn)
    if benchmark_class is ClassDrawn:
        # Within a class the image is uniform: each of class 5's 4 images is a quarter of its queries.
        queries_of_five = [plan.query_ids[0] for plan in plans if plan.class_ids[0] == 5]
        for index in range(SIZES[5]):
            assert _within(queries_of_five.count(f"c5_{index}"), len(queries_of_five), 1 / SIZES[5])


def test_class_draw_is_a_pure_function_of_the_index_and_is_fingerprinted():
    sampler = EpisodeSampler(ClassDrawn("unused", 0), "test", shot=2, episodes=200)
    backwards = [sampler.plan(index) for index in reversed(range(200))][::-1]
    again = EpisodeSampler(ClassDrawn("unused", 0), "test", shot=2, episodes=400)
    assert backwards == [again.plan(index) for index in range(200)]
    other_seed = EpisodeSampler(ClassDrawn("unused", 0), "test", shot=2, episodes=200, seed=1)
    assert [other_seed.plan(index) for index in range(20)] != backwards[:20]

    def digest(sampler, tag):
        # The fingerprint, re-stated: benchmark, fold, split, then the settings tag, then every plan.
        hashed = hashlib.sha256(f"unbalanced|0|test{tag}".encode())
        for index in range(len(sampler)):
            plan = sampler.plan(index)
            hashed.update(repr((plan.class_ids, plan.query_ids, plan.support_ids)).encode())
        return hashed.hexdigest()[:16]

    assert sampler.fingerprint() == digest(sampler, "|draw=class") != digest(sampler, "")
    paired = EpisodeSampler(Unbalanced("unused", 0), "test", shot=2, episodes=200)
    assert paired.fingerprint() == digest(paired, "")  # runs the change does not touch keep their fingerprint


def test_the_benchmarks_declare_their_draw():
    assert Coco.query_draw == "class" and CocoJson.query_draw == "class" and Pascal.query_draw == "pair"
