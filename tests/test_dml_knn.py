"""dml_knn pieces against independent computations: kNN, Proxy-Anchor, pixel sampling, proxies train."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsbench.losses import proxy_anchor_loss
from fsbench.train import TrainSettings
from fsbench.transforms import SquashResize
from methods.dml_knn import DMLKNN, DMLKNNConfig, knn_foreground_probability, sample_pixels


def test_knn_matches_brute_force_and_is_chunk_invariant():
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(300, 16, generator=generator), dim=1)
    references = F.normalize(torch.randn(120, 16, generator=generator), dim=1)
    labels = (torch.rand(120, generator=generator) < 0.3).float()
    expected = []
    for query in queries:  # brute force: sort all similarities
        order = sorted(range(120), key=lambda r: -float(query @ references[r]))
        expected.append(sum(float(labels[r]) for r in order[:7]) / 7)
    for chunk in (1, 17, 300, 1000):
        result = knn_foreground_probability(queries, references, labels, k=7, chunk_size=chunk)
        assert torch.allclose(result, torch.tensor(expected), atol=1e-6)
    # k larger than the reference set: the share of positives among all references.
    everything = knn_foreground_probability(queries, references, labels, k=1000, chunk_size=64)
    assert torch.allclose(everything, labels.mean().expand(300))


def test_proxy_anchor_matches_the_formula():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(10, 4, generator=generator)
    proxies = torch.randn(3, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])  # class 2 has no positives
    alpha, delta = 32.0, 0.1
    cos = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).t()
    positive_terms, negative_terms = [], []
    for p in range(3):
        pos = [math.exp(-alpha * (cos[i, p] - delta)) for i in range(10) if labels[i] == p]
        neg = [math.exp(alpha * (cos[i, p] + delta)) for i in range(10) if labels[i] != p]
        if pos:
            positive_terms.append(math.log(1 + sum(pos)))
        negative_terms.append(math.log(1 + sum(neg)))
    expected = sum(positive_terms) / len(positive_terms) + sum(negative_terms) / 3
    assert proxy_anchor_loss(embeddings, labels, proxies, alpha, delta).item() == pytest.approx(expected, rel=1e-5)


def test_sample_pixels_is_class_balanced_and_skips_ignore():
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :2, :2] = 3  # 4 pixels of class 3, 396 background
    labels[0, 10:, :] = 255
    embeddings = torch.arange(400, dtype=torch.float).view(1, 1, 20, 20)
    _, sampled_labels = sample_pixels(embeddings, labels, 40, torch.Generator().manual_seed(0))
    assert 255 not in sampled_labels.tolist()
    assert (sampled_labels == 3).sum() == 4  # every class-3 pixel, despite being 1% of the image


def tiny_config(**changes):
    config = DMLKNNConfig.quick()
    return DMLKNNConfig(**{**config.__dict__, **changes})


def test_proxies_are_trained(tiny_shapes):
    # The original implementation's proxies never reached the optimiser; here they must move
    # between optimisation steps (snapshots after step 0 and after step 1).
    method = DMLKNN(tiny_config(), "cpu")
    snapshots = []
    settings = TrainSettings(
        steps=2, batch_size=2, transform=SquashResize(64), progress=False,
        on_step=lambda step, scalars: snapshots.append(method.proxies.weight.detach().clone()),
    )
    method.fit(tiny_shapes, settings)
    assert method.proxies.weight.shape == (len(tiny_shapes.classes("train")) + 1, 64)
    assert len(snapshots) == 2 and not torch.allclose(snapshots[0], snapshots[1])


def test_empty_support_mask_predicts_nothing(tiny_shapes):
    from fsbench.sampler import EpisodeSampler

    method = DMLKNN(tiny_config(), "cpu").eval()
    episode = EpisodeSampler(tiny_shapes, "test", episodes=2, transform=SquashResize(64))[0]
    episode.support_masks.zero_()
    prediction = method.predict(episode)
    assert prediction.fg_probs.max() == 0 and prediction.presence.max() == 0


def test_training_ignores_way_shot_and_task(tiny_shapes):
    # trains_on_episodes = False lets one dml_knn checkpoint serve every setting (fsbench.perf_methods
    # relies on it): training for 2-way FS-CS must give bit-identical weights to 1-way 1-shot FS-S.
    assert not DMLKNN.trains_on_episodes
    states = []
    for way, shot, task in ((1, 1, "fss"), (2, 5, "fscs")):
        torch.manual_seed(0)
        method = DMLKNN(tiny_config(), "cpu")
        method.fit(tiny_shapes, TrainSettings(steps=2, batch_size=2, transform=SquashResize(64), progress=False,
                                              way=way, shot=shot, task=task))
        states.append(method.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])
