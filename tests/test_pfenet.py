"""pfenet's parts against direct computations: prior mask, support pooling, iFSL's way merge, input sizes,
training (PFENet's losses, groups and poly schedule; weak from class tags only, also for panet)."""
from __future__ import annotations

import math

from dataclasses import replace

import pytest
import torch

from fsbench.engine.batched import EncodingCache, predict_episodes
from fsbench.engine.fit import FitSettings, _set_modes as set_modes, fit, single_update
from fsbench.engine.padding import predict_padded
from fsbench.engine.plan import TrainingContext
from fsbench.episode import Episode
from fsbench.registry import METHODS
from fsbench.sampler import EpisodeSampler
from fsbench.transforms import SquashResize
from methods.feature_enrichment import POOLING_EPSILON, bin_size, weighted_average_pool
from methods.pfenet import PFENet, PFENetConfig, aligned_size, way_prediction
from methods.prior_mask import (
    PRIOR_EPSILON,
    ifsl_shared_support_vectors,
    masked_support_vectors,
    prior_mask,
    shots_prior,
)
from methods.way_merging import merge_ways


def loop_prior(query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The prior written out location by location: query [C, h, w], support [C, S] -> [h, w]."""
    channels, height, width = query.shape
    best = torch.zeros(height, width, dtype=torch.float64)
    for row in range(height):
        for column in range(width):
            q = query[:, row, column].double()
            scores = []
            for location in range(support.shape[1]):
                s = support[:, location].double()
                scores.append(float(q @ s) / (float(s.norm()) * float(q.norm()) + PRIOR_EPSILON))
            best[row, column] = max(scores)
    low, high = best.min(), best.max()
    return (best - low) / (high - low + PRIOR_EPSILON)


def test_prior_mask_matches_the_loops():
    generator = torch.Generator().manual_seed(0)
    query_high = torch.rand(2, 5, 4, 3, generator=generator)  # non-negative like post-ReLU features
    support_high = torch.rand(2, 5, 3, 4, generator=generator)
    mask = (torch.rand(2, 1, 3, 4, generator=generator) > 0.5).float()
    vectors = masked_support_vectors(support_high, mask)  # mask at feature size: resizing is the identity
    assert vectors.shape == (2, 5, 12)
    result = prior_mask(query_high, vectors)
    for item in range(2):
        expected = loop_prior(query_high[item], (support_high[item] * mask[item]).reshape(5, -1))
        assert torch.allclose(result[item, 0].double(), expected, atol=1e-6)
    assert result.amin() >= 0 and result.amax() <= 1


def test_prior_mask_hand_worked():
    # Query locations (1,0), (0,1), (1,1); support foreground (1,0) and one background location (zeroed).
    query_high = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]).view(1, 2, 1, 3)
    support_vectors = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 2, 2)
    cosines = torch.tensor([1.0, 0.0, 1.0 / math.sqrt(2.0)])  # the zero vector scores 0 everywhere
    expected = (cosines - 0.0) / (1.0 - 0.0 + PRIOR_EPSILON)
    assert torch.allclose(prior_mask(query_high, support_vectors).flatten(), expected, atol=1e-6)


def test_shots_prior_is_the_mean_of_the_shots():
    generator = torch.Generator().manual_seed(1)
    query_high = torch.rand(1, 4, 3, 3, generator=generator)
    shots = [torch.rand(1, 4, 9, generator=generator) for _ in range(3)]
    expected = sum(prior_mask(query_high, vectors) for vectors in shots) / 3
    assert torch.allclose(shots_prior(query_high, shots, (3, 3)), expected, atol=1e-7)


def test_ifsl_shared_layout_is_the_memory_of_all_ways():
    support = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # [N, C, S]
    shared = ifsl_shared_support_vectors(support)
    assert shared.shape == (1, 4, 6)
    # Column 0 takes way 0's channels 0 and 2 then way 1's channels 0 and 2 at location 0.
    assert shared[0, :, 0].tolist() == [support[0, 0, 0], support[0, 2, 0], support[1, 0, 0], support[1, 2, 0]]
    assert torch.equal(ifsl_shared_support_vectors(support[:1]), support[:1])  # one way: unchanged


def test_weighted_average_pool():
    features = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    mask = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).view(1, 1, 2, 2)
    expected = (1.0 * 1.0 + 3.0 * 0.5) / (1.5 + POOLING_EPSILON)
    assert torch.allclose(weighted_average_pool(features, mask).flatten(), torch.tensor([expected]))


def test_bins_absolute_and_relative():
    assert bin_size(60, 50, 50) == (60, 60)
    assert bin_size(0.125, 81, 81) == (10, 10)  # int() rounds down, as PFENet's COCO bins do
    assert bin_size(1.0, 60, 40) == (60, 40)
    assert bin_size(0.125, 5, 5) == (1, 1)  # too small a map: one bin, not a zero-sized one


def test_merge_ways_hand_worked():
    # One pixel, two ways: way 0 logits (0, log 3) -> fg 0.75; way 1 (log 3, 0) -> fg 0.25.
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]]).view(1, 2, 2, 1, 1)
    merged = merge_ways(logits)
    background = (math.log(0.25) + math.log(0.75)) / 2
    expected = torch.tensor([background, math.log(0.75), math.log(0.25)]).view(1, 3, 1, 1)
    assert torch.allclose(merged.log_probs, expected, atol=1e-6)
    assert torch.allclose(merged.presence, torch.tensor([[0.75, 0.25]]))
    prediction = way_prediction(logits, (1, 1), nodes_on_pixels=True)
    assert torch.allclose(prediction.fg_probs.flatten(), torch.tensor([0.75, 0.25]))
    assert torch.allclose(prediction.bg_probs.flatten(), torch.tensor([math.exp(background)]))
    assert prediction.labels().item() == 1 and torch.allclose(prediction.presence, torch.tensor([[0.75, 0.25]]))


def test_one_way_labels_are_pfenets_argmax_of_upsampled_logits():
    # For one way, argmax over the log-space-upsampled (background, foreground) equals PFENet's argmax
    # of bilinearly upsampled logits: the two channels differ by the logit difference everywhere.
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 1, 2, 4, 4, generator=generator)
    ours = way_prediction(logits, (25, 25), nodes_on_pixels=True).labels()
    pfenet = torch.nn.functional.interpolate(logits[:, 0], size=(25, 25), mode="bilinear", align_corners=True).argmax(1)
    assert torch.equal(ours, pfenet)


def test_n_way_labels_and_presence_are_ifsls():
    # iFSL: argmax of the upsampled merged log-probabilities; presence: a way's largest foreground
    # log-probability at feature resolution >= log 0.5.
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 2, 5, 5, generator=generator) * 3
    way_log_probs = torch.log_softmax(logits, dim=2)
    merged = torch.cat([way_log_probs[:, :, 0].mean(1, keepdim=True), way_log_probs[:, :, 1]], 1)
    expected_labels = torch.nn.functional.interpolate(merged, size=(33, 33), mode="bilinear", align_corners=True).argmax(1)
    expected_presence = way_log_probs[:, :, 1].amax(dim=(-1, -2)) >= math.log(0.5)
    prediction = way_prediction(logits, (33, 33), nodes_on_pixels=True)
    assert torch.equal(prediction.labels(), expected_labels)
    assert torch.equal(prediction.presence >= 0.5, expected_presence)
    # 33 = 8 x 4 + 1: every feature lands on a pixel, so the maps' maximum is the presence.
    assert torch.allclose(prediction.fg_probs.flatten(2).amax(2), prediction.presence, atol=1e-6)
    # Resizing for original-size scoring interpolates in log space with align_corners, as iFSL.
    resized = prediction.resized((50, 60)).labels()
    assert torch.equal(resized, torch.nn.functional.interpolate(
        torch.cat([prediction.bg_probs.unsqueeze(1), prediction.fg_probs], 1).log(), size=(50, 60), mode="bilinear", align_corners=True).argmax(1))


@pytest.mark.parametrize("size,aligned", [(473, 473), (641, 641), (400, 401), (64, 65), (1, 1)])
def test_aligned_size(size, aligned):
    assert aligned_size(size) == aligned and (aligned - 1) % 8 == 0


def test_valid_size_follows_align_input():
    assert quick_method().valid_size(400, 128) == (401, 129)
    assert quick_method(align_input=False).valid_size(400, 128) == (400, 128)


def small_episode(size: int, way: int = 1, shot: int = 1, queries: int = 1) -> Episode:
    generator = torch.Generator().manual_seed(size)
    return Episode(
        support_images=torch.randn(way, shot, 3, size, size, generator=generator),
        support_masks=torch.randint(0, 2, (way, shot, size, size), generator=generator),
        query_images=torch.randn(queries, 3, size, size, generator=generator),
        query_masks=torch.randint(0, way + 1, (queries, size, size), generator=generator),
        class_ids=torch.arange(way),
        query_presence=torch.ones(queries, way, dtype=torch.bool),
    )


def quick_method(**overrides) -> PFENet:
    torch.manual_seed(0)
    return PFENet(PFENetConfig.quick().with_overrides(overrides, "pfenet"), "cpu")


def test_engine_pads_crops_back_and_encoded_batches_agree():
    # The engine pads 30 -> 33 (8k + 1) and crops back; the batched path (each image encoded once)
    # gives the same maps as episode-by-episode prediction; queries are independent of each other.
    method = quick_method().eval()
    episode = small_episode(30, way=2, queries=2)
    episode.query_ids, episode.support_ids = ["q0", "q1"], [["s0"], ["s1"]]
    both = predict_padded(method, episode)
    assert both.fg_probs.shape == (2, 2, 30, 30) and both.bg_probs.shape == (2, 30, 30)
    (batched,) = predict_episodes(method, [episode], EncodingCache(64))
    assert torch.allclose(batched.fg_probs, both.fg_probs, atol=1e-6) and torch.allclose(batched.presence, both.presence)
    first = predict_padded(method, Episode(**{**episode.__dict__, "query_images": episode.query_images[:1],
                                              "query_masks": episode.query_masks[:1], "query_presence": episode.query_presence[:1]}))
    assert torch.allclose(both.fg_probs[:1], first.fg_probs, atol=1e-6)
    # Presence after cropping: the largest foreground probability over the kept pixels only.
    assert torch.allclose(both.presence, both.fg_probs.flatten(2).amax(2))


def test_per_way_prior_equals_one_way_runs():
    # PFENet's N-way = the 1-way network once per way; iFSL's merge only combines the results.
    method = quick_method().eval()
    episode = small_episode(33, way=2)
    logits, _ = method.way_logits(episode)
    for way in range(2):
        single = Episode(**{**episode.__dict__, "support_images": episode.support_images[way : way + 1],
                            "support_masks": episode.support_masks[way : way + 1], "class_ids": episode.class_ids[:1],
                            "query_presence": episode.query_presence[:, :1]})
        alone, _ = method.way_logits(single)
        assert torch.allclose(logits[:, way], alone[:, 0], atol=1e-5)


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """Two-class cross-entropy [P, 2, H, W] vs [P, H, W], foreground pixels weighted: sum(w nll) / sum(w)."""
    negative_log = -torch.log_softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    weights = torch.where(targets == 1, foreground_weight, 1.0)
    return (weights * negative_log).sum() / weights.sum()


@pytest.mark.parametrize("foreground_weight", [1.0, 5.0])
def test_training_losses_restate_the_cross_entropy(foreground_weight):
    method = quick_method(align_input=False, foreground_weight=foreground_weight).train()
    for module in method.enrichment.modules():  # dropout off, so that the two computations see the same net
        if isinstance(module, torch.nn.Dropout2d):
            module.p = 0.0
    for module in (method.reduce_query, method.reduce_support):
        module[2].p = 0.0
    episode = small_episode(32, way=2)
    losses = method.training_losses(episode)
    assert set(losses) == {"main", "auxiliary", "total"}
    with torch.no_grad():
        logits, auxiliary = method.way_logits(episode)
    # Way n's target: 1 where the query mask says n + 1, 0 elsewhere (no ignore pixels in this episode).
    targets = torch.stack([(episode.query_masks == way + 1).long() for way in range(2)], 1).flatten(0, 1)
    up = lambda maps: torch.nn.functional.interpolate(maps.flatten(0, 1), size=(32, 32), mode="bilinear", align_corners=True)
    main = weighted_cross_entropy(up(logits), targets, foreground_weight)
    aux = sum(weighted_cross_entropy(up(item), targets, foreground_weight) for item in auxiliary) / len(auxiliary)
    assert torch.allclose(losses["main"], main, atol=1e-5) and torch.allclose(losses["auxiliary"], aux, atol=1e-5)
    assert torch.allclose(losses["total"], main + aux, atol=1e-5)


def test_parameter_groups_and_poly_schedule(tiny_shapes):
    config = PFENetConfig(backbone="resnet18", pretrained=False, deep_stem=False, backbone_width=8, batch_size=1, reduce_dim=16)
    torch.manual_seed(0)
    method = PFENet(config, "cpu")
    (stage,) = method.training_stages(TrainingContext(steps=4, base_classes=tiny_shapes.classes("train")))
    groups = stage.parameter_groups()
    assert [group.name for group in groups] == [
        "reduce_query", "reduce_support", "merge", "interaction", "refine", "auxiliary_classifiers", "fuse", "fuse_refine", "classifier"
    ]
    assert all(group.lr_multiplier == 10.0 for group in groups)
    assert not any(parameter.requires_grad for parameter in method.backbone.parameters())
    trainable = sum(parameter.numel() for parameter in method.modules()["enrichment"].parameters())
    grouped = sum(parameter.numel() for group in groups[2:] for parameter in group.parameters)
    assert trainable == grouped
    assert stage.optimiser.name == "sgd" and stage.optimiser.momentum == 0.9 and stage.optimiser.weight_decay == 1e-4
    # The lr each update used, through the engine: 0.0025 x 10 x (1 - t / T) ** 0.9, t = 0..T-1.
    rates = []
    fit(method, tiny_shapes, FitSettings(steps=4, transform=SquashResize(33), progress=False,
                                         on_step=lambda step, row: rates.append(row["lr"])), run_dir=None)
    assert rates == pytest.approx([0.0025 * 10 * (1 - update / 4) ** 0.9 for update in range(4)], rel=1e-12)


def test_backbone_statistics_follow_the_setting():
    for batch_statistics in (False, True):
        method = quick_method(backbone_batch_statistics=batch_statistics)
        (stage,) = method.training_stages(TrainingContext(steps=1, base_classes=[1]))
        set_modes(method, stage)
        assert method.backbone.training is batch_statistics and method.enrichment.training


def poisoned(episode: Episode, seed: int) -> Episode:
    """The episode with random support and query masks (a method reading them would see noise)."""
    generator = torch.Generator().manual_seed(seed)
    return replace(
        episode,
        support_masks=torch.randint(0, 2, episode.support_masks.shape, generator=generator),
        query_masks=torch.randint(0, episode.way + 1, episode.query_masks.shape, generator=generator),
    )


@pytest.mark.parametrize("name", ["pfenet", "panet"])
def test_weak_training_never_reads_a_mask(name, tiny_shapes):
    # The engine's weak update on an episode and on copies with poisoned masks: the same loss and the
    # same weights after the update. Flipping the class tags changes the loss, so the test can fail.
    sampler = EpisodeSampler(tiny_shapes, "train", way=2, shot=1, episodes=4, seed=0, task="fscs", transform=SquashResize(33))
    episode = next(item for item in (sampler[index] for index in range(4)) if not item.query_presence.all())

    def weak_update(item: Episode):
        method_class = METHODS.get(name)
        torch.manual_seed(0)
        method = method_class(method_class.Config.quick(), "cpu")
        (stage,) = method.training_stages(TrainingContext(steps=1, base_classes=tiny_shapes.classes("train"), way=2, task="fscs", weak=True))
        set_modes(method, stage)
        optimiser = stage.optimiser.build(stage.parameter_groups())
        scalars, _ = single_update(method, stage, optimiser, [item], seed=5, weak=True)
        return scalars["loss"], method.state_dict()

    loss, state = weak_update(episode)
    poisoned_loss, poisoned_state = weak_update(poisoned(episode, 1))
    assert poisoned_loss == loss
    assert all(torch.equal(state[key], poisoned_state[key]) for key in state)
    flipped_loss, _ = weak_update(replace(episode, query_presence=~episode.query_presence))
    assert flipped_loss != loss


def test_weak_loss_is_ifsls_classification_objective():
    # iFSL: nll of the spatially averaged per-way log-softmax maps under the presence label.
    method = quick_method(align_input=False).eval()
    episode = small_episode(32, way=2).with_class_tags_only()
    episode.query_presence = torch.tensor([[True, False]])
    with torch.no_grad():
        loss = method.weak_loss(episode, None)["loss"]
        log_probs = torch.log_softmax(method.way_logits(episode)[0], dim=2).mean(dim=(-1, -2))  # [Q, N, 2]
    expected = -(log_probs[0, 0, 1] + log_probs[0, 1, 0]) / 2
    assert torch.allclose(loss, expected, atol=1e-6)


def test_deep_stem_imagenet_weights_load_from_a_local_file(tmp_path, monkeypatch):
    import torchvision

    from fsbench.errors import FsbenchError
    from methods.dilated_resnet import DilatedResNet

    monkeypatch.setenv("FSBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("fsbench.backbones.PROJECT_ROOT", tmp_path)
    with pytest.raises(FsbenchError, match="resnet50_v2.pth .*PFENet's initmodel"):
        DilatedResNet("resnet50", deep_stem=True, pretrained=True)

    # PSPNet's resnet50_v2.pth layout: three-conv stem, layer1 reading 128 channels, an fc, and (older
    # PyTorch) no num_batches_tracked entries.
    generator = torch.Generator().manual_seed(3)
    state = {key: value for key, value in torchvision.models.resnet50(weights=None).state_dict().items()
             if not key.endswith("num_batches_tracked")}
    state["conv1.weight"] = torch.randn(64, 3, 3, 3, generator=generator)
    for name, out_channels, in_channels in (("conv2", 64, 64), ("conv3", 128, 64)):
        state[f"{name}.weight"] = torch.randn(out_channels, in_channels, 3, 3, generator=generator)
    for name, channels in (("bn2", 64), ("bn3", 128)):
        state.update({f"{name}.weight": torch.rand(channels, generator=generator), f"{name}.bias": torch.randn(channels, generator=generator),
                      f"{name}.running_mean": torch.randn(channels, generator=generator), f"{name}.running_var": torch.rand(channels, generator=generator)})
    state["layer1.0.conv1.weight"] = torch.randn(64, 128, 1, 1, generator=generator)
    state["layer1.0.downsample.0.weight"] = torch.randn(256, 128, 1, 1, generator=generator)
    torch.save(state, tmp_path / "resnet50_v2.pth")
    backbone = DilatedResNet("resnet50", deep_stem=True, pretrained=True)
    loaded = backbone.state_dict()
    for key in ("conv1.weight", "conv3.weight", "bn3.running_var", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight"):
        assert torch.equal(loaded[key], state[key]), key
    # Dilation, PFENet's rule: every 3x3 conv of layer3 at 2, of layer4 at 4, all at stride 1.
    assert backbone.layer3[0].conv2.dilation == (2, 2) and backbone.layer4[0].conv2.dilation == (4, 4)
    assert backbone.layer4[0].conv2.stride == (1, 1) and backbone.layer4[0].downsample[0].stride == (1, 1)
    with torch.no_grad():
        layer2, layer3 = backbone.eval().middle_features(torch.randn(1, 3, 65, 65))
    assert layer2.shape == (1, 512, 9, 9) and layer3.shape == (1, 1024, 9, 9)
