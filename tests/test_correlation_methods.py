"""hsnet / asnet / asnethm as methods: N-way presence, k-shot settings, input sizes, training state."""
from __future__ import annotations

import math

import pytest
import torch

from fsbench.episode import Episode
from fsbench.errors import FsbenchError
from fsbench.registry import METHODS


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
        assert hsnet_vgg.valid_input_size(side, side) == (expected, expected)
    assert hsnet_vgg.valid_input_size(528, 400) != (528, 400)  # 528: blocks of 2 and 3 positions
    asnet = _quick("asnet")
    assert asnet.valid_input_size(64, 641) == (64, 641)


def test_training_keeps_a_frozen_backbone_in_eval_mode_and_untouched():
    method = _quick("hsnet", train_backbone=False, batch_size=1)
    before = {key: value.clone() for key, value in method.backbone.state_dict().items()}
    method.train()
    assert not method.backbone.training and method.learner.training
    assert all(parameter in set(method.learner.parameters()) for parameter in method.trainable_parameters())
    losses = method.training_losses(_episode(2, 1))
    assert set(losses) == {"segmentation", "total"} and losses["total"].requires_grad
    method.train_step(_episode(1, 1))
    assert all(torch.equal(before[key], value) for key, value in method.backbone.state_dict().items())
