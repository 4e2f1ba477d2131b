"""Center-pivot 4D convolution (HSNet, Min et al., ICCV 2021).

A 4D kernel over (query height, query width, support height, support width) that is non-zero only
on the two 2D planes through its centre: one 2D convolution over the query dimensions (at every
kept support position) plus one over the support dimensions (at every query position). The support
dimensions can be strided; the query dimensions never are.
"""
from __future__ import annotations

from torch import Tensor, nn


class CenterPivotConv4d(nn.Module):
    """[B, C, Ha, Wa, Hb, Wb] -> [B, O, Ha, Wa, Hb', Wb'].

    ``conv1`` convolves the query plane (stride 1), ``conv2`` the support plane with
    ``support_stride``; both have a bias, so the output carries the sum of the two (as in HSNet,
    whose state-dict keys ``conv1`` / ``conv2`` this keeps). Padding is kernel_size // 2 on all four
    dimensions, so with an odd kernel the strided support plane keeps positions 0, s, 2s, ... which
    is where conv1 is evaluated.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, support_stride: int):
        super().__init__()
        padding = kernel_size // 2
        self.support_stride = support_stride
        self.kernel_size = kernel_size
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=padding, bias=True)
        self.conv2 = nn.Conv2d(in_channels, out_channels, kernel_size, stride=support_stride, padding=padding, bias=True)

    def output_support_size(self, size: int) -> int:
        """Support side after this layer (the usual convolution arithmetic)."""
        padding = self.kernel_size // 2
        return (size + 2 * padding - self.kernel_size) // self.support_stride + 1

    def forward(self, correlation: Tensor) -> Tensor:
        batch, channels, query_height, query_width, support_height, support_width = correlation.shape
        stride = self.support_stride
        # The query-plane convolution runs only at the support positions the strided plane keeps.
        kept = correlation[..., ::stride, ::stride] if stride > 1 else correlation
        kept_height, kept_width = kept.shape[-2:]
        planes = kept.permute(0, 4, 5, 1, 2, 3).reshape(-1, channels, query_height, query_width)
        query_plane = self.conv1(planes)
        out_channels = query_plane.shape[1]
        query_plane = query_plane.view(batch, kept_height, kept_width, out_channels, query_height, query_width)
        query_plane = query_plane.permute(0, 3, 4, 5, 1, 2)

        planes = correlation.permute(0, 2, 3, 1, 4, 5).reshape(-1, channels, support_height, support_width)
        support_plane = self.conv2(planes)
        out_height, out_width = support_plane.shape[-2:]
        support_plane = support_plane.view(batch, query_height, query_width, out_channels, out_height, out_width)
        support_plane = support_plane.permute(0, 3, 1, 2, 4, 5)
        return query_plane + support_plane
