"""panet against a literal re-implementation of PANet's code (full-size features), PAR, N-way output."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from fsbench.episode import Episode
from methods.panet import PANet, PANetConfig
from methods.prototypes import cosine_logits, masked_average_pool

SIZE = 32


def _episode(way: int = 2, shot: int = 2, queries: int = 2, seed: int = 0) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    support_masks = (torch.rand(way, shot, SIZE, SIZE, generator=generator) < 0.3).long()
    support_masks[:, :, :2] = 255  # an ignored band, in neither prototype
    query_masks = torch.randint(0, way + 1, (queries, SIZE, SIZE), generator=generator)
    return Episode(
        support_images=torch.randn(way, shot, 3, SIZE, SIZE, generator=generator),
        support_masks=support_masks,
        query_images=torch.randn(queries, 3, SIZE, SIZE, generator=generator),
        query_masks=query_masks,
        class_ids=torch.arange(1, way + 1),
        query_presence=torch.ones(queries, way, dtype=torch.bool),
    )


def _method(**overrides) -> PANet:
    torch.manual_seed(0)
    return PANet(dataclasses.replace(PANetConfig.quick(), **overrides), "cpu")


def _pool_full_size(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PANet's getFeatures: upsample [C, h, w] to the mask's size, then masked mean ([C])."""
    upsampled = F.interpolate(features[None], size=mask.shape[-2:], mode="bilinear", align_corners=False)[0]
    return (upsampled * mask).sum(dim=(1, 2)) / (mask.sum() + 1e-5)


def test_masked_average_pool_equals_pooling_upsampled_features():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 4, 5, 7, generator=generator, dtype=torch.float64)
    masks = (torch.rand(3, 2, 37, 23, generator=generator) < 0.4).double()
    masks[1, 1] = 0  # an empty mask gives a zero prototype
    pooled = masked_average_pool(features, masks)
    for image in range(3):
        for index in range(2):
            assert torch.allclose(pooled[image, index], _pool_full_size(features[image], masks[image, index]), atol=1e-10)
    assert pooled[1, 1].abs().max() == 0


def test_cosine_logits_are_20_times_cosine_then_upsampled():
    generator = torch.Generator().manual_seed(1)
    features = torch.randn(2, 6, 4, 4, generator=generator)
    prototypes = torch.randn(3, 6, generator=generator)
    expected = torch.stack([F.cosine_similarity(features, prototype[None, :, None, None], dim=1) for prototype in prototypes], dim=1) * 20
    expected = F.interpolate(expected, size=(9, 9), mode="bilinear", align_corners=False)
    assert torch.allclose(cosine_logits(features, prototypes, 20.0, (9, 9)), expected, atol=1e-5)


def test_losses_match_a_literal_reimplementation_of_panet():
    method = _method().eval()  # eval: batch norm statistics do not depend on the batch
    episode = _episode()
    with torch.no_grad():
        losses = method.training_losses(episode)
        way, shot = episode.way, episode.shot
        support_features = method.encoder(episode.support_images.flatten(0, 1)).unflatten(0, (way, shot))
        query_features = method.encoder(episode.query_images)
        # PANet's forward: prototypes, query logits, cross-entropy.
        fg = torch.stack([torch.stack([_pool_full_size(support_features[n, k], (episode.support_masks[n, k] == 1).float()) for k in range(shot)]).mean(0) for n in range(way)])
        bg = torch.stack([_pool_full_size(support_features[n, k], (episode.support_masks[n, k] == 0).float()) for n in range(way) for k in range(shot)]).mean(0)
        prototypes = torch.cat([bg[None], fg])
        logits = torch.stack([F.cosine_similarity(query_features, p[None, :, None, None], dim=1) * 20 for p in prototypes], dim=1)
        logits = F.interpolate(logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        assert torch.allclose(losses["segmentation"], F.cross_entropy(logits, episode.query_masks, ignore_index=255), atol=1e-4)
        # PAR: query prototypes under the predicted labels (all queries pooled together).
        predicted = logits.argmax(1)
        upsampled = F.interpolate(query_features, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        expected = 0.0
        for n in range(way):
            if (predicted == n + 1).sum() == 0:
                continue
            pair = []
            for label in (0, n + 1):
                mask = (predicted == label).float().unsqueeze(1)
                pair.append((upsampled * mask).sum(dim=(0, 2, 3)) / (mask.sum() + 1e-5))
            for k in range(shot):
                support_logits = torch.stack([F.cosine_similarity(support_features[n, k][None], p[None, :, None, None], dim=1) * 20 for p in pair], dim=1)
                support_logits = F.interpolate(support_logits, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
                expected += F.cross_entropy(support_logits, episode.support_masks[n, k][None], ignore_index=255) / shot
        expected /= way
        assert torch.allclose(losses["alignment"], torch.as_tensor(expected), atol=1e-4)
        assert torch.allclose(losses["total"], losses["segmentation"] + losses["alignment"])


def test_alignment_changes_the_loss_and_the_gradients():
    episode = _episode(way=1, shot=1, queries=1)
    gradients = {}
    for weight in (0.0, 1.0):
        method = _method(alignment_weight=weight).train()
        losses = method.training_losses(episode)
        losses["total"].backward()
        gradients[weight] = torch.cat([p.grad.flatten() for p in method.encoder.parameters()])
        if weight:
            assert losses["alignment"] > 0 and losses["total"] > losses["segmentation"]
        else:
            assert torch.equal(losses["total"], losses["segmentation"])
    assert not torch.allclose(gradients[0.0], gradients[1.0])


def test_n_way_probabilities_are_softmax_shares_and_presence_their_max():
    method = _method().eval()
    episode = _episode(way=3, shot=1, queries=2)
    prediction = method.predict(episode)
    assert prediction.fg_probs.shape == (2, 3, SIZE, SIZE)
    assert (prediction.fg_probs.sum(dim=1) <= 1 + 1e-5).all()  # background holds the rest
    assert torch.equal(prediction.presence, prediction.fg_probs.flatten(2).amax(2))


def test_an_update_accumulates_the_mean_gradient_of_its_episodes():
    # batch_size episodes per update: the engine accumulates loss / batch_size, i.e. the gradient of
    # the batch's mean loss (PANet's episodes are independent; no batch statistics tie them).
    from fsbench.engine.fit import single_update
    from fsbench.engine.plan import Optimiser, TrainingContext

    episodes = [_episode(way=1, shot=1, queries=1, seed=1), _episode(way=1, shot=1, queries=1, seed=2)]
    method = _method(batch_size=2).train()
    stage = method.training_stages(TrainingContext(steps=3, base_classes=[1]))[0]
    assert stage.batch_size == 2 and stage.data == "episodes"
    expected = []
    for episode in episodes:
        method.encoder.zero_grad()
        torch.manual_seed(0)
        stage.loss(episode, None)["loss"].backward()
        expected.append([parameter.grad.clone() for parameter in method.encoder.parameters()])
    stage = dataclasses.replace(stage, optimiser=Optimiser("sgd", lr=0.0, momentum=0.0))
    optimiser = stage.optimiser.build(stage.parameter_groups())
    single_update(method, stage, optimiser, episodes, seed=0)
    for parameter, first, second in zip(method.encoder.parameters(), *expected):
        assert torch.allclose(parameter.grad, (first + second) / 2, atol=1e-6)
