"""The correlation methods' building blocks against independent, literal computations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from methods.correlation.asnet_learner import MIXING_SIDE, ASNetLearner
from methods.correlation.backbone_taps import mask_taps, pool_wide_taps
from methods.correlation.center_pivot_conv import CenterPivotConv4d
from methods.correlation.hypercorrelation import NORM_EPSILON, hypercorrelation
from methods.correlation.way_maps import WayMaps


def brute_force_conv4d(volume, weight4d, bias, stride):
    """out[b,o,i,j,k,l] = bias[o] + sum over c and the 4 kernel offsets of
    weight4d[o,c,di,dj,dk,dl] * padded[b,c,i+di,j+dj,s*k+dk,s*l+dl] (query dims stride 1)."""
    kernel = weight4d.shape[-1]
    pad = kernel // 2
    padded = F.pad(volume, (pad,) * 8)
    batch, _, query_height, query_width, support_height, support_width = volume.shape
    out_height = (support_height + 2 * pad - kernel) // stride + 1
    out_width = (support_width + 2 * pad - kernel) // stride + 1
    out = torch.zeros(batch, weight4d.shape[0], query_height, query_width, out_height, out_width, dtype=volume.dtype)
    for b in range(batch):
        for i in range(query_height):
            for j in range(query_width):
                for k in range(out_height):
                    for l in range(out_width):
                        window = padded[b, :, i : i + kernel, j : j + kernel, stride * k : stride * k + kernel, stride * l : stride * l + kernel]
                        out[b, :, i, j, k, l] = (weight4d * window).sum(dim=(1, 2, 3, 4, 5)) + bias
    return out


@pytest.mark.parametrize("kernel,stride", [(3, 1), (3, 2), (5, 2)])
def test_center_pivot_conv_is_a_4d_conv_with_a_cross_shaped_kernel(kernel, stride):
    torch.manual_seed(0)
    conv = CenterPivotConv4d(2, 3, kernel, stride).double()
    volume = torch.randn(2, 2, 3, 4, 5, 6, dtype=torch.float64)
    centre = kernel // 2
    # The 4D kernel: conv1's 2D kernel on the query plane through the support centre, plus conv2's
    # on the support plane through the query centre.
    weight4d = torch.zeros(3, 2, kernel, kernel, kernel, kernel, dtype=torch.float64)
    weight4d[:, :, :, :, centre, centre] += conv.conv1.weight
    weight4d[:, :, centre, centre, :, :] += conv.conv2.weight
    expected = brute_force_conv4d(volume, weight4d, conv.conv1.bias + conv.conv2.bias, stride)
    actual = conv(volume)
    assert actual.shape == expected.shape
    assert torch.allclose(actual, expected, atol=1e-12)


def test_hypercorrelation_is_the_clamped_cosine_of_every_pair_grouped_deepest_first():
    torch.manual_seed(1)
    # three taps (shallow to deep) of 2 query images and 3 support images
    shapes = [(4, 5, 6), (3, 4, 3), (5, 2, 2)]
    query_taps = [torch.randn(2, c, h, w, dtype=torch.float64) for c, h, w in shapes]
    support_taps = [torch.randn(3, c, h + 1, w, dtype=torch.float64) for c, h, w in shapes]
    query_index, support_index = torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])
    groups = hypercorrelation(query_taps, support_taps, query_index, support_index, group_sizes=(1, 1, 1))
    for group, layer in zip(groups, (2, 1, 0)):  # deepest tap first
        for pair, (q, s) in enumerate(zip(query_index.tolist(), support_index.tolist())):
            query, support = query_taps[layer][q], support_taps[layer][s]
            for i in range(query.shape[1]):
                for j in range(query.shape[2]):
                    for k in range(support.shape[1]):
                        for l in range(support.shape[2]):
                            a, b = query[:, i, j], support[:, k, l]
                            cosine = (a @ b) / ((a.norm() + NORM_EPSILON) * (b.norm() + NORM_EPSILON))
                            assert math.isclose(group[pair, 0, i, j, k, l].item(), max(cosine.item(), 0.0), abs_tol=1e-12)


def test_group_sizes_split_the_taps_from_the_deep_end():
    taps = [torch.full((1, 1, 1, 1), float(index + 1)) for index in range(6)]  # norms make every value 1
    groups = hypercorrelation(taps, taps, torch.tensor([0]), torch.tensor([0]), group_sizes=(1, 3, 2))
    assert [group.shape[1] for group in groups] == [1, 3, 2]


def test_support_masks_are_resized_bilinearly_with_aligned_corners():
    tap = torch.ones(1, 1, 3, 3)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    (masked,) = mask_taps([tap], mask)
    assert torch.allclose(masked[0, 0], torch.tensor([[1.0, 0.5, 0.0], [0.5, 0.25, 0.0], [0.0, 0.0, 0.0]]))


def test_only_wide_support_taps_are_pooled():
    wide, narrow = torch.arange(50.0).repeat(50, 1).view(1, 1, 50, 50), torch.ones(1, 1, 49, 49)
    pooled_wide, kept_narrow = pool_wide_taps([wide, narrow])
    assert pooled_wide.shape[-2:] == (25, 25) and kept_narrow is narrow
    # 3x3 average, stride 2, zero padding counted: output column 1 averages input columns 1, 2, 3
    assert pooled_wide[0, 0, 1, 1].item() == pytest.approx(2.0)


def _asnet_planes(support_sides):
    """The support planes entering ASNet's two mixing blocks for correlations with these sides."""
    torch.manual_seed(0)
    learner = ASNetLearner((1, 1, 1)).eval()
    seen = []
    for block in (learner.encoder_layer4to3, learner.encoder_layer3to2):
        block.register_forward_pre_hook(lambda module, inputs: seen.append(tuple(inputs[0].shape[-2:])))
    query_sides = (2, 3, 4)
    correlations = [torch.rand(1, 1, q, q, s, s) for q, s in zip(query_sides, support_sides)]
    masks = torch.ones(1, 64, 64)
    with torch.no_grad():
        logits = learner(correlations, masks)
    return seen, logits.shape


def test_asnet_mixing_planes_are_2x2_at_400px_without_pooling_and_pooled_elsewhere():
    # ResNet taps at 400 px: layer4 13, layer3 25, layer2 50 pooled to 25: the squeeze gives 2x2.
    seen, shape = _asnet_planes((13, 25, 25))
    assert seen == [(MIXING_SIDE, MIXING_SIDE)] * 2 and shape == (1, 2, 8, 8)
    # 128 px (layer4 4, layer3 8, layer2 16): the squeeze leaves 1x1, which iFSL's mixing cannot take.
    seen, shape = _asnet_planes((4, 8, 16))
    assert seen == [(MIXING_SIDE, MIXING_SIDE)] * 2 and shape == (1, 2, 8, 8)


def _maps(log_probs, aggregation):
    return WayMaps(log_probs=torch.as_tensor(log_probs, dtype=torch.float64), aggregation=aggregation)


def _two_channel(fg_probabilities):
    """[..., h, w] foreground probabilities -> [..., 2, h, w] log-probabilities."""
    fg = torch.as_tensor(fg_probabilities, dtype=torch.float64)
    return torch.stack([(1 - fg).log(), fg.log()], dim=-3)


def test_fscs_merged_background_labels_and_presence():
    # 1 shot, 1 query, 2 ways, a 1x3 map: way 1's fg probabilities, way 2's fg probabilities
    way1, way2 = [[0.6, 0.2, 0.1]], [[0.3, 0.9, 0.4]]
    maps = _maps(_two_channel([[[way1, way2]]]), "average")
    fields = maps.prediction_fields()
    # merged background: the mean of the ways' background log-probabilities (a geometric mean)
    background = [math.sqrt(0.4 * 0.7), math.sqrt(0.8 * 0.1), math.sqrt(0.9 * 0.6)]
    scores = torch.tensor([background, way1[0], way2[0]], dtype=torch.float64)
    assert torch.allclose(fields["bg_probs"][0, 0], scores[0] / scores.sum(dim=0))
    labels = torch.cat([fields["bg_probs"].unsqueeze(1), fields["fg_probs"]], dim=1).argmax(dim=1)
    assert labels[0, 0].tolist() == [1, 2, 0]  # 0.6 > 0.53 and 0.3; 0.9 wins; 0.73 beats 0.1 and 0.4
    # presence: any pixel's per-way fg probability >= 0.5 (way 2 reaches 0.9, way 1 reaches 0.6)
    assert torch.allclose(fields["presence"][0], torch.tensor([0.6, 0.9], dtype=torch.float64))
    absent = _maps(_two_channel([[[[[0.49, 0.1]]]]]), "average")
    assert (absent.presence()[0] >= 0.5).tolist() == [False]


def test_ifsl_shot_average_and_presence_vote():
    # 2 shots, 1 query, 1 way, 1x2 map
    shot1, shot2 = [[0.9, 0.45]], [[0.2, 0.45]]
    maps = _maps(_two_channel([[[shot1]], [[shot2]]]), "average")
    fields = maps.prediction_fields()
    # averaged log-probabilities: pixel 0 fg log(0.9*0.2)/2 vs bg log(0.1*0.8)/2 -> fg (0.18 > 0.08)
    assert (fields["fg_probs"][0, 0] >= 0.5).tolist() == [[True, False]]
    # shot 1 says present (0.9), shot 2 does not (0.45): the share of shots is 0.5 -> present
    assert fields["presence"][0].tolist() == [0.5] and fields["presence"][0, 0] >= 0.5


def test_hsnet_vote_over_shots():
    # 3 shots, 1 query, 1 way, 1x4 map; foreground where p > 0.5 -> votes per pixel [0, 1, 2, 3]
    shots = [[[[[0.1, 0.9, 0.9, 0.9]]]], [[[[0.1, 0.1, 0.9, 0.9]]]], [[[[0.1, 0.1, 0.1, 0.9]]]]]  # [K, Q, N, h, w]
    maps = _maps(_two_channel(shots), "vote")
    fields = maps.prediction_fields(size=(1, 4))
    assert torch.allclose(fields["fg_probs"][0, 0, 0], torch.tensor([0, 1, 2, 3]) / 3)
    labels = torch.cat([fields["bg_probs"].unsqueeze(1), fields["fg_probs"]], dim=1).argmax(dim=1)
    assert labels[0, 0].tolist() == [0, 0, 1, 1]  # votes / max vote >= 0.5
    # no shot finds anything: the max vote counts as 1, nothing is foreground
    nothing = _maps(_two_channel([[[[[0.1, 0.2]]]]] * 2), "vote").prediction_fields(size=(1, 2))
    assert nothing["fg_probs"].sum() == 0 and nothing["bg_probs"].min() == 1
