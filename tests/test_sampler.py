"""EpisodeSampler invariants: determinism, splits, no query among its supports, bad shot counts."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from fsbench.episode import collate_episodes
from fsbench.errors import FsbenchError
from fsbench.sampler import EpisodeSampler


def _sampler(benchmark, **kwargs):
    settings = dict(split="test", way=1, shot=1, episodes=24, seed=0)
    settings.update(kwargs)
    return EpisodeSampler(benchmark, **settings)


@pytest.mark.parametrize("way,shot,task", [(1, 1, "fss"), (1, 5, "fss"), (2, 1, "fscs"), (3, 2, "fscs")])
def test_invariants(tiny_shapes, way, shot, task):
    sampler = _sampler(tiny_shapes, way=way, shot=shot, task=task, episodes=40)
    test_classes = set(tiny_shapes.classes("test"))
    for index in range(len(sampler)):
        plan = sampler.plan(index)
        assert len(set(plan.class_ids)) == way and set(plan.class_ids) <= test_classes
        for class_id, supports in zip(plan.class_ids, plan.support_ids):
            assert len(supports) == shot and len(set(supports)) == shot
            assert not set(supports) & set(plan.query_ids)
            assert all(image in tiny_shapes.images_of_class("test", class_id) for image in supports)
        if task == "fss":
            # FS-S: the query shows (at least) one of the ways' classes.
            assert any(plan.query_ids[0] in tiny_shapes.images_of_class("test", c) for c in plan.class_ids)


def test_episode_tensors(tiny_shapes):
    sampler = _sampler(tiny_shapes, way=2, shot=3, task="fscs")
    episode = sampler[5]
    assert episode.support_images.shape == (2, 3, 3, 128, 128)
    assert episode.support_masks.shape == (2, 3, 128, 128)
    assert set(episode.support_masks.unique().tolist()) <= {0, 1, 255}
    assert episode.support_masks.eq(1).flatten(1).any(dim=1).all()  # every support shows its class
    assert set(episode.query_masks.unique().tolist()) <= {0, 1, 2, 255}
    # Presence comes from the full query label map.
    _, label = tiny_shapes.load(episode.query_ids[0], "test")
    assert episode.query_presence[0].tolist() == [bool((label == c).any()) for c in episode.class_ids.tolist()]


def test_identical_across_workers_and_batch_sizes(tiny_shapes):
    sampler = _sampler(tiny_shapes, way=1, shot=2, episodes=8)

    def collect(workers, batch_size):
        loader = DataLoader(sampler, batch_size=batch_size, num_workers=workers, collate_fn=collate_episodes)
        return [episode for batch in loader for episode in batch]

    reference = collect(0, 1)
    for workers, batch_size in ((2, 1), (0, 3), (2, 4)):
        for a, b in zip(reference, collect(workers, batch_size)):
            assert a.query_ids == b.query_ids and a.support_ids == b.support_ids
            assert torch.equal(a.support_images, b.support_images) and torch.equal(a.query_masks, b.query_masks)


def test_seeds_and_fingerprints(tiny_shapes):
    first = _sampler(tiny_shapes, seed=0)
    again = _sampler(tiny_shapes, seed=0)
    other = _sampler(tiny_shapes, seed=1)
    assert first.fingerprint() == again.fingerprint()
    assert first.fingerprint() != other.fingerprint()
    assert [first.plan(i) for i in range(24)] != [other.plan(i) for i in range(24)]
    # Longer runs extend shorter ones: episode i does not depend on the episode count.
    longer = _sampler(tiny_shapes, seed=0, episodes=48)
    assert [longer.plan(i) for i in range(24)] == [first.plan(i) for i in range(24)]


def test_queries_cycle_through_every_pair(tiny_shapes):
    pairs = tiny_shapes.pairs("test")
    sampler = _sampler(tiny_shapes, episodes=len(pairs))
    seen = {(sampler.plan(i).query_ids[0], sampler.plan(i).class_ids[0]) for i in range(len(pairs))}
    assert seen == set(pairs)


def test_train_split_uses_base_classes(tiny_shapes):
    sampler = _sampler(tiny_shapes, split="train", way=2, task="fscs")
    base = set(tiny_shapes.classes("train"))
    assert all(set(sampler.plan(i).class_ids) <= base for i in range(len(sampler)))


def test_too_many_shots_is_a_clear_error(tiny_shapes):
    with pytest.raises(FsbenchError, match="needs at least"):
        _sampler(tiny_shapes, shot=500)
    with pytest.raises(FsbenchError, match="larger than the 5 classes"):
        _sampler(tiny_shapes, way=6)


def test_cached_images_and_labels_equal_fresh_loads(tiny_shapes):
    """The decoded-image cache stores labels compactly (uint8); what it hands back equals a load
    without any cache, values and dtypes, episode after episode (images recur across episodes)."""
    cached = EpisodeSampler(tiny_shapes, "test", way=2, shot=2, episodes=12, seed=3, task="fscs", keep_original=True)
    fresh = EpisodeSampler(tiny_shapes, "test", way=2, shot=2, episodes=12, seed=3, task="fscs", keep_original=True, image_cache_mb=0)
    for _ in range(2):  # the second pass is served from the cache
        for index in range(12):
            first, second = cached[index], fresh[index]
            for name in ("support_images", "support_masks", "query_images", "query_masks", "query_presence"):
                a, b = getattr(first, name), getattr(second, name)
                assert a.dtype == b.dtype and torch.equal(a, b), name
            assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(first.query_original_masks, second.query_original_masks))
    assert cached._loaded.stats()["hits"] > 0 and fresh._loaded.stats()["entries"] == 0
