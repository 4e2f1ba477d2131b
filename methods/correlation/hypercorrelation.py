"""Multi-layer 4D correlation (HSNet's hypercorrelation): cosine similarity of every query position
with every support position, per tapped layer, negatives set to 0 (ReLU), stacked per layer group."""
from __future__ import annotations

import torch
from torch import Tensor

# Added to feature norms before dividing, as HSNet and iFSL do.
NORM_EPSILON = 1e-5


def unit_features(taps: list[Tensor]) -> list[Tensor]:
    """[B, C, h, w] -> [B, C, h*w] divided by (L2 norm over channels + NORM_EPSILON)."""
    flat = [tap.flatten(2) for tap in taps]
    return [features / (features.norm(dim=1, p=2, keepdim=True) + NORM_EPSILON) for features in flat]


def hypercorrelation(
    query_taps: list[Tensor],
    support_taps: list[Tensor],
    query_index: Tensor,
    support_index: Tensor,
    group_sizes: tuple[int, int, int],
) -> list[Tensor]:
    """Correlations of P (query, support) pairs, grouped deepest first.

    Args:
        query_taps / support_taps: per tapped layer (shallow to deep) [Bq, C, ha, wa] / [Bs, C, hb, wb].
        query_index / support_index: [P] which query and which support image form pair p.
        group_sizes: taps per group, deepest first (e.g. ResNet-50: (3, 6, 4) for layers 4, 3, 2).
    Returns:
        [deep, middle, shallow], each [P, taps in group, ha, wa, hb, wb], values in [0, 1].
    """
    correlations = []
    for query, support, query_tap, support_tap in zip(
        unit_features(query_taps), unit_features(support_taps), query_taps, support_taps
    ):
        pairs = query.index_select(0, query_index).transpose(1, 2)  # [P, ha*wa, C]
        values = torch.bmm(pairs, support.index_select(0, support_index))  # [P, ha*wa, hb*wb]
        values = values.view(len(query_index), *query_tap.shape[-2:], *support_tap.shape[-2:])
        correlations.append(values.clamp(min=0))
    deep, middle, shallow = group_sizes
    total = len(correlations)
    if deep + middle + shallow != total:
        raise ValueError(f"group sizes {group_sizes} do not add up to {total} taps")
    groups = (correlations[total - deep :], correlations[total - deep - middle : total - deep], correlations[: shallow])
    return [torch.stack(group, dim=1) for group in groups]
