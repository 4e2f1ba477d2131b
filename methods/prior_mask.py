"""PFENet's training-free prior mask (Tian et al., TPAMI 2020, section 3.2).

For each query location: the largest cosine similarity between its high-level feature (layer4) and
any support location's feature, where support features outside the foreground are zeroed; then
min-max normalised over the query's locations. Exactly PFENet's arithmetic: epsilon 1e-7 added to the
product of the norms and to the min-max range, and background support locations (zero vectors) take
part in the max with similarity 0, as they do there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# PFENet's cosine_eps.
PRIOR_EPSILON = 1e-7


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, 1, H, W] float mask -> [B, 1, h, w], bilinear with align_corners=True (PFENet's resizing)."""
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=True)


def masked_support_vectors(support_high: Tensor, full_mask: Tensor) -> Tensor:
    """Support high-level features with the background zeroed, one column per location.

    Args:
        support_high: [B, C, h, w] layer4 features of the support images.
        full_mask: [B, 1, H, W] float foreground mask at image resolution.
    Returns:
        [B, C, h*w].
    """
    mask = resize_mask(full_mask, tuple(support_high.shape[-2:]))
    masked = support_high * mask
    return masked.reshape(masked.shape[0], masked.shape[1], -1)


def prior_mask(query_high: Tensor, support_vectors: Tensor) -> Tensor:
    """The prior of each query location.

    Args:
        query_high: [B, C, h, w] layer4 features of the queries.
        support_vectors: [B, C, S] support features (S locations), background already zeroed.
    Returns:
        [B, 1, h, w] in [0, 1]: max over S of the cosine similarity, min-max normalised per query.
    """
    batch, channels, height, width = query_high.shape
    query = query_high.reshape(batch, channels, height * width)
    query_norm = torch.norm(query, 2, 1, True)  # [B, 1, hw]
    support = support_vectors.permute(0, 2, 1)  # [B, S, C]
    support_norm = torch.norm(support, 2, 2, True)  # [B, S, 1]
    similarity = torch.bmm(support, query) / (torch.bmm(support_norm, query_norm) + PRIOR_EPSILON)
    similarity = similarity.max(1)[0]  # [B, hw]: the best-matching support location
    lowest = similarity.min(1)[0].unsqueeze(1)
    highest = similarity.max(1)[0].unsqueeze(1)
    similarity = (similarity - lowest) / (highest - lowest + PRIOR_EPSILON)
    return similarity.view(batch, 1, height, width)


def ifsl_shared_support_vectors(support_vectors: Tensor) -> Tensor:
    """iFSL's N-way support layout: [N, C, S] -> [1, C, N*S], one prior shared by all ways.

    iFSL's fs-cs PFENet batches the N ways' masked supports as N rows but reshapes them with the
    query's batch size (one): the memory of [N, C, h, w] read as [C, N*h*w]. For N = 1 that is the
    plain layout; for N > 1 each of the N*S "locations" takes every N-th channel of way 0 for its first
    C/N components, of way 1 for the next C/N, and so on, and is compared with the query's C channels
    in order. It is reproduced
    (prior_layout "ifsl") so that iFSL's N-way numbers can be reproduced; PFENet proper, and fsbench's
    default, compute one prior per way.
    """
    return support_vectors.reshape(1, support_vectors.shape[1], -1)


def shots_prior(query_high: Tensor, per_shot_support_vectors: list[Tensor], size: tuple[int, int]) -> Tensor:
    """PFENet's k-shot prior: each shot's prior resized to ``size``, averaged over shots, resized again.

    Args:
        query_high: [B, C, h, w].
        per_shot_support_vectors: K tensors [B, C, S].
        size: (height, width) of the reduced query features the prior is concatenated with.
    Returns:
        [B, 1, *size].
    """
    priors = [resize_mask(prior_mask(query_high, vectors), size) for vectors in per_shot_support_vectors]
    averaged = torch.cat(priors, 1).mean(1).unsqueeze(1)
    return resize_mask(averaged, size)
