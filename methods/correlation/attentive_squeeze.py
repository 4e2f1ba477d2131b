"""The attentive squeeze layer of ASNet (Kang and Cho, CVPR 2022): global self-attention over the
support dimensions of a 4D correlation, queries strided by a convolution, then a feed-forward block.

A correlation [B, C, ha, wa, hb, wb] is treated as a 3D volume [B, C, ha*wa, hb, wb]: every query
position is an independent "time" slice, and Conv3d kernels (1, k, k) act on the support plane.
Module names and Sequential indices are iFSL's (model/base/aslayer.py) so released checkpoints map
onto them: ``attn.{short_cut, qhead, khead, vhead, agg, out_norm}``, ``ff.{ff, out_norm}``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS = 8
GROUPS = 4
# Attention logits of support positions outside the support mask.
MASKED_LOGIT = -1e9


def support_plane_conv(in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, bias: bool) -> nn.Conv3d:
    """A Conv3d acting on the support plane only: kernel (1, k, k), stride (1, s, s), padding (0, p, p)."""
    return nn.Conv3d(in_channels, out_channels, (1, kernel, kernel), stride=(1, stride, stride), padding=(0, padding, padding), bias=bias)


class SupportAttention(nn.Module):
    """Multi-head attention from strided support positions (queries) to all support positions (keys).

    [B, C, T, hb, wb] -> [B, O, T, hb', wb'] with hb' the strided side. Keys and values use the
    same strided convolution as the queries when ``pool_keys`` (iFSL's pool_kv), else 1x1x1 convs.
    No 1/sqrt(d) scaling (as iFSL). The residual path is identity when the layer keeps channels and
    size (iFSL's retain_dim rule), else a strided conv + GroupNorm + ReLU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, padding: int, pool_keys: bool):
        super().__init__()
        hidden = out_channels // 2
        if hidden % HEADS:
            raise ValueError(f"{out_channels} output channels do not split into {HEADS} heads")
        keeps_shape = in_channels == out_channels and (2 * padding - kernel) // stride == -1
        self.short_cut = nn.Identity() if keeps_shape else nn.Sequential(
            support_plane_conv(in_channels, out_channels, kernel, stride, padding, bias=False),
            nn.GroupNorm(GROUPS, out_channels),
            nn.ReLU(inplace=True),
        )
        self.qhead = support_plane_conv(in_channels, hidden, kernel, stride, padding, bias=True)
        key_kernel, key_stride, key_padding = (kernel, stride, padding) if pool_keys else (1, 1, 0)
        self.khead = support_plane_conv(in_channels, hidden, key_kernel, key_stride, key_padding, bias=True)
        self.vhead = support_plane_conv(in_channels, hidden, key_kernel, key_stride, key_padding, bias=True)
        self.agg = nn.Sequential(
            nn.GroupNorm(GROUPS, hidden),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, out_channels, kernel_size=1, bias=False),
            nn.GroupNorm(GROUPS, out_channels),
            nn.ReLU(inplace=True),
        )
        self.out_norm = nn.GroupNorm(GROUPS, out_channels)

    def forward(self, volume: Tensor, support_masks: Tensor | None) -> Tensor:
        residual = self.short_cut(volume)
        queries, keys, values = self.qhead(volume), self.khead(volume), self.vhead(volume)
        batch, hidden, slices, query_height, query_width = queries.shape
        key_height, key_width = keys.shape[-2:]
        per_head = hidden // HEADS
        # channel g * per_head + c belongs to head g
        queries = queries.reshape(batch, HEADS, per_head, slices, query_height * query_width)
        keys = keys.reshape(batch, HEADS, per_head, slices, key_height * key_width)
        values = values.reshape(batch, HEADS, per_head, slices, key_height * key_width)

        logits = torch.einsum("bgctl,bgctm->bgtlm", queries, keys)
        if support_masks is not None:
            masks = F.interpolate(support_masks.float().unsqueeze(1), (key_height, key_width), mode="bilinear", align_corners=True)
            logits = logits.masked_fill(masks.reshape(batch, 1, 1, 1, -1) == 0, MASKED_LOGIT)
        weights = F.softmax(logits, dim=-1)
        attended = torch.einsum("bgtlm,bgctm->bgctl", weights, values)
        attended = attended.reshape(batch, hidden, slices, query_height, query_width)
        return self.out_norm(self.agg(attended) + residual)


class FeedForward(nn.Module):
    """1x1x1 conv to half the channels, GroupNorm, ReLU, 1x1x1 conv back; residual; GroupNorm."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = channels // 2
        self.ff = nn.Sequential(
            nn.Conv3d(channels, hidden, kernel_size=1, bias=False),
            nn.GroupNorm(GROUPS, hidden),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, channels, kernel_size=1, bias=False),
        )
        self.out_norm = nn.GroupNorm(GROUPS, channels)

    def forward(self, volume: Tensor) -> Tensor:
        return self.out_norm(self.ff(volume) + volume)


class AttentiveSqueezeLayer(nn.Module):
    """[B, C, ha, wa, hb, wb] (+ support masks [B, H, W] or None) -> [B, O, ha, wa, hb', wb']."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, pool_keys: bool):
        super().__init__()
        # iFSL pads odd kernels to keep centres aligned and leaves kernels of 1 and 2 unpadded.
        padding = kernel // 2 if kernel > 2 else 0
        self.attn = SupportAttention(in_channels, out_channels, kernel, stride, padding, pool_keys)
        self.ff = FeedForward(out_channels)

    def forward(self, correlation: Tensor, support_masks: Tensor | None) -> Tensor:
        batch, channels, query_height, query_width = correlation.shape[:4]
        volume = correlation.reshape(batch, channels, query_height * query_width, *correlation.shape[-2:])
        volume = self.ff(self.attn(volume, support_masks))
        return volume.reshape(batch, volume.shape[1], query_height, query_width, *volume.shape[-2:])
