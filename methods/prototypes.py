"""Masked average pooling and cosine-similarity segmentation: the prototype arithmetic of PANet.

PANet upsamples the feature maps to the mask's size before pooling. Bilinear upsampling is a linear
map U, so sum_p m(p) (U f)(p) = sum_q f(q) (U^T m)(q): pooling the full-size mask down through U^T
gives the same prototype without ever materialising full-size features (5-shot 400x400 ResNet-101
features would take 6.5 GB). U is separable, U^T m = A_h^T m A_w, with A the 1-D interpolation matrices.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# PANet's guard against empty masks in the pooling denominator.
POOLING_EPSILON = 1e-5


def interpolation_matrix(source: int, target: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """[target, source]: row i holds the weights F.interpolate(bilinear, align_corners=False) gives
    output position i over the ``source`` input positions along one axis."""
    basis = torch.eye(source, device=device, dtype=dtype).view(source, 1, source, 1)
    resized = F.interpolate(basis, size=(target, 1), mode="bilinear", align_corners=False)
    return resized[:, 0, :, 0].t()


def pooling_weights(masks: Tensor, feature_size: tuple[int, int]) -> Tensor:
    """Full-size masks [..., H, W] (float, 1 = pool this pixel) -> feature-size weights [..., h, w]
    such that sum_q f(q) w(q) = sum_p m(p) (upsampled f)(p) for any feature map f [h, w]."""
    height, width = masks.shape[-2:]
    rows = interpolation_matrix(feature_size[0], height, masks.device, masks.dtype)  # [H, h]
    columns = interpolation_matrix(feature_size[1], width, masks.device, masks.dtype)  # [W, w]
    return rows.t() @ masks @ columns


def masked_average_pool(features: Tensor, masks: Tensor) -> Tensor:
    """Masked average pooling over full-size masks.

    Args:
        features: [B, C, h, w].
        masks: [B, M, H, W] float, M masks per feature map (e.g. background and foreground).
    Returns:
        [B, M, C]: sum_p m(p) f_up(p) / (sum_p m(p) + 1e-5), f_up = features bilinearly upsampled to
        H x W; a zero vector for an empty mask.
    """
    weights = pooling_weights(masks, features.shape[-2:])  # [B, M, h, w]
    sums = torch.einsum("bchw,bmhw->bmc", features, weights)
    return sums / (masks.sum(dim=(-2, -1)).unsqueeze(-1) + POOLING_EPSILON)


def cosine_logits(features: Tensor, prototypes: Tensor, scale: float, size: tuple[int, int]) -> Tensor:
    """Scaled cosine similarity of every feature to every prototype, upsampled to ``size``.

    Args:
        features: [B, C, h, w]; prototypes: [P, C] shared by the batch, or [B, P, C].
    Returns:
        [B, P, H, W] = scale x cos(f(q), prototype), computed at h x w, then bilinearly upsampled.
    """
    if prototypes.dim() == 2:
        prototypes = prototypes.unsqueeze(0).expand(features.shape[0], -1, -1)
    # F.cosine_similarity's epsilon: an all-zero prototype (empty mask) scores 0, not NaN.
    normalised_features = F.normalize(features, dim=1, eps=1e-8)
    normalised_prototypes = F.normalize(prototypes, dim=2, eps=1e-8)
    logits = torch.einsum("bchw,bpc->bphw", normalised_features, normalised_prototypes) * scale
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
