"""Segmentation losses against values worked out by hand on 2-3 pixel examples."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsbench.errors import FsbenchError
from fsbench.losses import SEGMENTATION_LOSSES, ce_dice, cross_entropy, dice, focal, lovasz_softmax, segmentation_loss


def _two_pixels_and_an_ignored_one():
    """Three pixels, two classes: A logits (0, 0) label 0 -> p = (1/2, 1/2); B logits (ln 3, 0)
    label 0 -> p = (3/4, 1/4); C label 255 with extreme logits that would dominate if counted."""
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [-50.0, 50.0]]).t().reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 0, 255]]])
    return logits, labels


def test_cross_entropy():
    logits, labels = _two_pixels_and_an_ignored_one()
    expected = (math.log(2.0) + math.log(4.0 / 3.0)) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_dice():
    logits, labels = _two_pixels_and_an_ignored_one()
    # class 0: 2 * (1/2 + 3/4) + 1 over (1/2 + 3/4) + 2 + 1 = 3.5 / 4.25; class 1: 1 / (1/2 + 1/4 + 1)
    expected = 1 - (3.5 / 4.25 + 1 / 1.75) / 2
    assert dice(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert ce_dice(logits, labels).item() == pytest.approx(expected + (math.log(2.0) + math.log(4.0 / 3.0)) / 2, rel=1e-6)


def test_focal_gamma_2():
    logits, labels = _two_pixels_and_an_ignored_one()
    expected = ((1 / 2) ** 2 * math.log(2.0) + (1 / 4) ** 2 * math.log(4.0 / 3.0)) / 2
    assert focal(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    # gamma 0 is plain cross-entropy
    assert focal(logits, labels, gamma=0.0).item() == pytest.approx(cross_entropy(logits, labels).item(), rel=1e-6)


def test_lovasz_softmax_soft_case():
    # Two pixels, labels (1, 0); p(class 1) = (0.8, 0.4).
    # class 1: errors (0.2, 0.4) -> sorted (0.4, 0.2) with truth (0, 1): gradient (1/2, 1/2) -> 0.3
    # class 0: errors (0.2, 0.4) -> sorted (0.4, 0.2) with truth (1, 0): gradient (1, 0)     -> 0.4
    logits = torch.tensor([[0.0, math.log(4.0)], [0.0, math.log(0.4 / 0.6)]]).t().reshape(1, 2, 1, 2)
    labels = torch.tensor([[[1, 0]]])
    assert lovasz_softmax(logits, labels).item() == pytest.approx(0.35, rel=1e-5)


def test_lovasz_softmax_with_hard_probabilities_is_one_minus_iou():
    # labels (1, 1, 0, 0), hard prediction (1, 0, 1, 0): IoU 1/3 for both classes -> loss 2/3.
    predicted = torch.tensor([1, 0, 1, 0])
    logits = torch.stack([(predicted == 0).float(), (predicted == 1).float()]).mul(100.0).reshape(1, 2, 1, 4)
    labels = torch.tensor([[[1, 1, 0, 0]]])
    assert lovasz_softmax(logits, labels).item() == pytest.approx(2 / 3, rel=1e-5)


@pytest.mark.parametrize("name", sorted(SEGMENTATION_LOSSES))
def test_every_loss_ignores_255_and_survives_an_all_ignore_batch(name):
    loss_function = segmentation_loss(name)
    logits = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.randint(0, 3, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    changed_logits = logits.detach().clone()
    labels[0, 0, 0] = 255
    changed_logits[0, :, 0, 0] = torch.tensor([9.0, -9.0, 3.0])  # only at the ignored pixel
    assert loss_function(logits, labels).item() == pytest.approx(loss_function(changed_logits, labels).item(), abs=1e-6)
    loss_function(logits, labels).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    nothing = loss_function(logits, torch.full_like(labels, 255))
    assert torch.isfinite(nothing)


def test_unknown_loss_lists_the_options():
    with pytest.raises(FsbenchError, match="ce, dice, ce_dice, focal, lovasz"):
        segmentation_loss("hinge")


def test_class_tag_loss_is_ifsl_nll_of_spatial_mean():
    from fsbench.losses import class_tag_loss

    generator = torch.Generator().manual_seed(0)
    maps = torch.log_softmax(torch.randn(3, 1, 2, 5, 4, generator=generator), dim=2)
    presence = torch.tensor([[True], [False], [True]])
    # iFSL, literally: nll_loss(mean over space of [B, 2] log-probabilities, presence)
    expected = F.nll_loss(maps.mean(dim=(-1, -2)).squeeze(1), presence.long().squeeze(-1))
    assert torch.allclose(class_tag_loss(maps, presence), expected)
    # hand-worked: uniform maps give log 2 whatever the label
    flat = torch.full((2, 2, 2, 3, 3), math.log(0.5))
    assert class_tag_loss(flat, torch.tensor([[True, False], [False, False]])).item() == pytest.approx(math.log(2))


def test_foreground_weight_weights_the_cross_entropy_mean():
    # Pixel A: logits (0, 0), label 0 (background, weight 1) -> loss ln 2; pixel B: logits (ln 3, 0),
    # label 1 (foreground, weight 3) -> p = 1/4, loss ln 4; pixel C ignored. Weighted mean:
    # (1 ln 2 + 3 ln 4) / (1 + 3).
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0], [-50.0, 50.0]]).t().reshape(1, 2, 1, 3)
    labels = torch.tensor([[[0, 1, 255]]])
    expected = (math.log(2.0) + 3 * math.log(4.0)) / 4
    assert segmentation_loss("ce", foreground_weight=3.0)(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    assert segmentation_loss("ce_dice", foreground_weight=3.0)(logits, labels).item() == pytest.approx(
        expected + dice(logits, labels).item(), rel=1e-6)
    assert segmentation_loss("ce", foreground_weight=1.0) is cross_entropy


def test_foreground_weight_is_refused_by_losses_without_a_cross_entropy_term():
    with pytest.raises(FsbenchError, match="foreground_weight applies to the losses ce, ce_dice, not 'dice'"):
        segmentation_loss("dice", foreground_weight=10.0)
