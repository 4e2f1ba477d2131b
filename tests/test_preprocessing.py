"""OpenCV-rule resizes and the dml_original profile's geometry, on hand-worked cases.

fsbench.opencv_resize was compared with cv2 4.9.0 outside the repo: 158 (source, target, channels)
cases from 2 to 500 px, 1 and 3 channels, up- and downscaling: bilinear and nearest identical.
"""
from __future__ import annotations

import numpy as np
import torch

from fsbench.opencv_resize import resize_linear, resize_nearest
from fsbench.preprocessing import get_preprocessing


def test_bilinear_upscale_in_fixed_point():
    # Source positions -0.25 (clamped), 0.25, 0.75, 1.25 (border): 0, 255 * 512 / 2048, 255 * 1536 / 2048, 255,
    # rounded by OpenCV's vector arithmetic to 0, 64, 191, 255.
    assert resize_linear(np.array([[0, 255]], dtype=np.uint8), 1, 4).tolist() == [[0, 64, 191, 255]]


def test_exact_halving_is_a_block_average():
    image = np.array([[0, 1, 8, 8], [1, 1, 8, 9]], dtype=np.uint8)
    assert resize_linear(image, 1, 2).tolist() == [[(3 + 2) >> 2, (33 + 2) >> 2]]


def test_nearest_source_index():
    # floor(d * 3 / 7) for d = 0..6
    assert resize_nearest(np.arange(3, dtype=np.uint8)[None], 1, 7).tolist() == [[0, 0, 0, 1, 1, 2, 2]]


def test_pad_square_profile_places_and_restores():
    profile = get_preprocessing("dml_original")
    image = torch.full((3, 2, 4), 255, dtype=torch.uint8)
    model_input, placement = profile.image(image, 4)
    # A 2x4 image is centred in a 4x4 square at row int((4 - 2) / 2) = 1; black above and below; / 255.
    assert placement.offset == (1, 0) and placement.canvas_side == 4
    assert model_input[0, :, 0].tolist() == [0.0, 1.0, 1.0, 0.0]
    mask = profile.mask(torch.ones(2, 4, dtype=torch.int64), 4)
    assert mask[:, 0].tolist() == [0, 1, 1, 0]
    probabilities = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4)
    restored = profile.to_original(probabilities, placement)
    assert torch.equal(restored, probabilities[..., 1:3, :])


def test_squash_profile_restores_original_size():
    profile = get_preprocessing("hsnet")
    _, placement = profile.image(torch.zeros(3, 5, 7, dtype=torch.uint8), 8)
    assert profile.to_original(torch.rand(2, 3, 8, 8), placement).shape == (2, 3, 5, 7)
