"""hsnet / asnet / asnethm as methods: N-way presence, k-shot settings, input sizes, predictions
in log space, batched encoding, training stages (frozen backbone, losses, --weak)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from fsbench.engine.batched import EncodingCache, predict_episodes
from fsbench.engine.fit import FitSettings, fit
from fsbench.engine.plan import StepContext, TrainingContext
from fsbench.episode import Episode
from fsbench.errors import FsbenchError
from fsbench.losses import class_tag_loss
from fsbench.registry import METHODS
from fsbench.transforms import SquashResize


def _episode(way: int, shot: int, size: int = 48, seed: int = 0) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    masks = (torch.rand(way, shot, size, size, generator=generator) > 0.6).long()
    masks[..., :3, :] = 255  # an ignore band: neither foreground nor (for the loss) ignored
    return Episode(
        support_images=torch.randn(way, shot, 3, size, size, generator=generator),
        support_masks=masks,
        query_images=torch.randn(1, 3, size, size, generator=generator),
        query_masks=torch.randint(0, way + 1, (1, size, size), generator=generator),
        class_ids=torch.arange(way),
        query_presence=torch.zeros(1, way, dtype=torch.bool),
    )


def _quick(name: str, **overrides):
    method_class = METHODS.get(name)
    torch.manual_seed(0)
    return method_class(method_class.Config.quick().with_overrides(overrides, name)).eval()


@pytest.mark.parametrize("name", ["hsnet", "asnet", "asnethm"])
def test_nway_presence_is_ifsl_rule(name):
    """iFSL's collect_class_presence: way n is present when max over pixels of its log-softmaxed
    foreground channel >= log(0.5); and with 3 shots, when at least 2 of the shots say so."""
    method = _quick(name, shot_aggregation="average")
    episode = _episode(way=2, shot=3)
    with torch.no_grad():
        logits = method.shot_logits(episode)  # [K, Q, N, 2, h, w]
        prediction = method.predict(episode)
    per_shot = logits.log_softmax(dim=3)[:, :, :, 1].amax(dim=(-1, -2)) >= math.log(0.5)  # [K, Q, N]
    expected = per_shot.float().sum(dim=0) / 3 >= 0.5
    assert torch.equal(prediction.presence >= 0.5, expected)


def test_support_ignore_pixels_are_background_and_way_values_follow_ifsl():
    method = _quick("asnethm", way_valued_support_masks=True)
    masks = method.support_masks(_episode(way=2, shot=1))
    assert masks[..., :3, :].abs().sum() == 0  # 255 -> 0
    assert set(masks[0].unique().tolist()) <= {0.0, 1.0} and set(masks[1].unique().tolist()) <= {0.0, 2.0}


def test_shot_aggregation_setting_changes_k_shot_labels_only():
    vote, average = _quick("hsnet", shot_aggregation="vote"), _quick("hsnet", shot_aggregation="average")
    average.load_state_dict(vote.state_dict())
    one_shot, five_shot = _episode(1, 1), _episode(1, 5)
    with torch.no_grad():
        assert torch.equal(vote.predict(one_shot).labels(), average.predict(one_shot).labels())
        shares = vote.predict(five_shot).fg_probs
    # HSNet's vote: counts of 5 shots over the largest count, so multiples of 1/largest
    largest = torch.round(1 / shares[shares > 0].min()).item()
    assert torch.allclose(shares * largest, torch.round(shares * largest), atol=1e-6)


def test_unknown_settings_are_refused_in_one_line():
    with pytest.raises(FsbenchError, match="unknown shot_aggregation 'majority'; available: vote, average"):
        _quick("hsnet", shot_aggregation="majority")
    with pytest.raises(FsbenchError, match="unknown backbone 'resnet152'"):
        _quick("asnet", backbone="resnet152")


def _vgg_hsnet_side_fits(side: int) -> bool:
    """HSNet with VGG-16, restated: pool5 / conv5 / conv4 taps have sides floor(H/32), floor(H/16),
    floor(H/8); the squeezing blocks divide them (rounding up) by 8, 16 and 32; the three results are
    added, so they must be equal or 1."""
    squeezed = {math.ceil((side // 32) / 8), math.ceil((side // 16) / 16), math.ceil((side // 8) / 32)}
    return len(squeezed - {1}) <= 1


def test_valid_input_sizes():
    hsnet_vgg = _quick("hsnet", backbone="vgg16")
    for side in (400, 473, 528, 641):
        expected = next(value for value in range(side, side + 100) if _vgg_hsnet_side_fits(value))
        assert hsnet_vgg.valid_size(side, side) == (expected, expected)
    assert hsnet_vgg.valid_size(528, 400) != (528, 400)  # 528: blocks of 2 and 3 positions
    asnet = _quick("asnet")
    assert asnet.valid_size(64, 641) == (64, 641)


@pytest.mark.parametrize("name", ["hsnet", "asnet"])
def test_one_shot_prediction_is_the_upsampled_merged_log_softmax(name):
    """Restated from iFSL: per-way log-softmax, background = mean of the ways' background channels,
    upsampled bilinearly (align_corners=True) to the image; the prediction's argmax over [bg, ways]
    is that map's argmax, its bg_probs / fg_probs its softmax, and it resizes in log space."""
    method = _quick(name, shot_aggregation="average")
    episode = _episode(way=2, shot=1)
    with torch.no_grad():
        log_probs = method.shot_logits(episode)[0].log_softmax(dim=2)  # [Q, N, 2, h, w]
        prediction = method.predict(episode)
    merged = torch.cat([log_probs[:, :, 0].mean(dim=1, keepdim=True), log_probs[:, :, 1]], dim=1)
    upsampled = F.interpolate(merged, (48, 48), mode="bilinear", align_corners=True)
    assert torch.equal(prediction.labels(), upsampled.argmax(dim=1))
    assert torch.allclose(prediction.bg_probs.float(), upsampled.softmax(dim=1)[:, 0], atol=1e-6)
    assert prediction.upsampling == "log_probabilities" and prediction.align_corners
    assert torch.equal(prediction.presence, log_probs[:, :, 1].flatten(2).amax(dim=2).exp())
    # Original-size scoring: one interpolation from the learner's maps straight to the original
    # size (iFSL's upsample_logit_mask with org_query_imsize), never 48 px first, then original.
    original = F.interpolate(merged, (37, 61), mode="bilinear", align_corners=True)
    assert torch.equal(prediction.query(0).to("cpu").resized((37, 61)).labels(), original.argmax(dim=1))
    twice = F.interpolate(upsampled, (37, 61), mode="bilinear", align_corners=True)
    assert not torch.allclose(prediction.resized((37, 61)).bg_probs.float(), twice.softmax(dim=1)[:, 0], atol=1e-4)
    assert torch.allclose(prediction.resized((37, 61)).bg_probs.float(), original.softmax(dim=1)[:, 0], atol=1e-6)


def test_batched_encoding_gives_the_same_prediction_as_one_by_one(tiny_shapes):
    """predict_episodes encodes every image once (per-image backbone taps) and must agree with predict."""
    from fsbench.sampler import EpisodeSampler

    method = _quick("asnethm")
    sampler = EpisodeSampler(tiny_shapes, "test", way=2, shot=2, episodes=3, seed=0, task="fscs", transform=SquashResize(64))
    episodes = [sampler[index] for index in range(3)]
    with torch.no_grad():
        batched = predict_episodes(method, episodes, EncodingCache(64))
        single = [method.predict(episode) for episode in episodes]
    for first, second in zip(batched, single):
        assert torch.allclose(first.fg_probs, second.fg_probs, atol=1e-6) and torch.equal(first.presence, second.presence)


def _context(weak: bool = False) -> StepContext:
    return StepContext(step=0, generator=torch.Generator().manual_seed(0), weak=weak)


def test_segmentation_losses_restated():
    """hsnet loss: per-way cross-entropy of the upsampled 2-channel logits, 255 ignored; ifsl loss:
    NLL of the upsampled merged log-probabilities, 255 ignored."""
    episode = _episode(way=2, shot=1)
    episode.query_masks[0, :5] = 255
    target = episode.query_masks
    for loss_name in ("hsnet", "ifsl"):
        method = _quick("asnet", loss=loss_name, foreground_weight=1.0)  # the papers' loss
        loss = method.episode_loss(episode, _context())["loss"]
        with torch.no_grad():
            logits = method.shot_logits(episode)[0, 0]  # [N, 2, h, w]
        upsampled = F.interpolate(logits, (48, 48), mode="bilinear", align_corners=True)
        if loss_name == "hsnet":
            per_way = torch.stack([(target[0] == way + 1).long() for way in range(2)]).masked_fill(target == 255, 255)
            expected = F.cross_entropy(upsampled, per_way, ignore_index=255)
        else:
            log_probs = logits.log_softmax(dim=1)
            merged = torch.cat([log_probs[:, 0].mean(dim=0, keepdim=True), log_probs[:, 1]])
            merged = F.interpolate(merged.unsqueeze(0), (48, 48), mode="bilinear", align_corners=True)
            expected = F.nll_loss(merged, target, ignore_index=255)
        assert torch.allclose(loss, expected, atol=1e-5), loss_name


def test_foreground_weight_is_a_weighted_mean_over_pixels():
    """foreground_weight w: each valid pixel's loss counts w where its target is a foreground class
    (per-way 1 for "hsnet", classes 1..N for "ifsl") and 1 where background; divided by the weight sum."""
    episode = _episode(way=2, shot=1)
    episode.query_masks[0, :5] = 255
    target = episode.query_masks
    weight = 3.0
    for loss_name in ("hsnet", "ifsl"):
        method = _quick("asnet", loss=loss_name, foreground_weight=weight)
        loss = method.episode_loss(episode, _context())["loss"]
        with torch.no_grad():
            logits = method.shot_logits(episode)[0, 0]  # [N, 2, h, w]
        if loss_name == "hsnet":
            upsampled = F.interpolate(logits, (48, 48), mode="bilinear", align_corners=True)
            labels = torch.stack([(target[0] == way + 1).long() for way in range(2)])  # [N, H, W]
            pixel_losses = -upsampled.log_softmax(dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
            valid = (target != 255).expand_as(labels)
        else:
            log_probs = logits.log_softmax(dim=1)
            merged = torch.cat([log_probs[:, 0].mean(dim=0, keepdim=True), log_probs[:, 1]])
            merged = F.interpolate(merged.unsqueeze(0), (48, 48), mode="bilinear", align_corners=True)[0]
            labels = target[0].clamp(max=2)  # 255 -> any class; those pixels are masked out below
            pixel_losses = -merged.gather(0, labels.unsqueeze(0)).squeeze(0)
            valid = target[0] != 255
        pixel_weights = torch.where(labels > 0, weight, 1.0) * valid
        expected = (pixel_losses * pixel_weights).sum() / pixel_weights.sum()
        assert torch.allclose(loss, expected, atol=1e-5), loss_name


@pytest.mark.parametrize("name", ["asnet", "asnethm"])
def test_weak_loss_is_the_class_tag_loss_and_ignores_support_masks(name):
    method = _quick(name)
    assert method.supports_weak
    episode = _episode(way=2, shot=1).with_class_tags_only()
    episode = dataclasses.replace(episode, query_presence=torch.tensor([[True, False]]))
    loss = method.episode_loss(episode, _context(weak=True))["loss"]
    with torch.no_grad():
        learner_input_masks = method.shot_logits(episode, use_masks=False)
    assert torch.allclose(loss, class_tag_loss(learner_input_masks[0].log_softmax(dim=2), episode.query_presence), atol=1e-6)
    # Masks of ones (what weak evaluation hands over) give what no mask gives, as in iFSL's weak test.
    with torch.no_grad():
        assert torch.allclose(method.shot_logits(episode), learner_input_masks, atol=1e-5)
    # Other support masks change nothing in weak training.
    scrambled = dataclasses.replace(episode, support_masks=torch.randint(0, 2, episode.support_masks.shape))
    assert torch.equal(method.episode_loss(scrambled, _context(weak=True))["loss"], loss)


def test_hsnet_does_not_claim_weak_supervision():
    assert not METHODS.get("hsnet").supports_weak


def test_training_stage_is_adam_on_the_learner_with_a_frozen_backbone(tiny_shapes):
    method = _quick("hsnet", train_backbone=False, batch_size=2, lr=1e-3)
    (stage,) = method.training_stages(TrainingContext(steps=3, base_classes=[1, 2]))
    assert stage.optimiser.name == "adam" and stage.optimiser.lr == 1e-3 and stage.batch_size == 2 and stage.data == "episodes"
    assert stage.eval_modules == ("backbone",)
    (group,) = stage.parameter_groups()
    assert {id(parameter) for parameter in group.parameters} == {id(parameter) for parameter in method.learner.parameters()}
    before = {key: value.clone() for key, value in method.state_dict().items()}
    fit(method, tiny_shapes, FitSettings(steps=1, transform=SquashResize(64), progress=False), run_dir=None)
    after = method.state_dict()
    assert all(torch.equal(before[key], after[key]) for key in before if key.startswith("backbone."))
    assert any(not torch.equal(before[key], after[key]) for key in before if key.startswith("learner."))
