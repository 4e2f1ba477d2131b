"""Training-image augmentation (`--augment dml`): the geometry against exact references, the colour
jitter against a hand computation, and the stream's draws as pure functions of the position."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fsbench.cli import main
from fsbench.engine.augment import DMLAugmentation, shift_scale_rotate
from fsbench.engine.data import BaseClassImageStream
from fsbench.errors import FsbenchError
from fsbench.transforms import IMAGENET_MEAN, IMAGENET_STD, SquashResize


@pytest.fixture
def image_and_label():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 8, 8, generator=generator)
    label = torch.randint(0, 4, (8, 8), generator=generator)
    label[0, 0] = 255
    return image, label


def test_identity_parameters_change_nothing(image_and_label):
    image, label = image_and_label
    warped_image, warped_label = shift_scale_rotate(image, label, 0.0, 1.0, (0.0, 0.0))
    assert torch.allclose(warped_image, image, atol=1e-6) and torch.equal(warped_label, label)


def test_a_quarter_turn_is_rot90(image_and_label):
    image, label = image_and_label
    warped_image, warped_label = shift_scale_rotate(image, label, 90.0, 1.0, (0.0, 0.0))
    assert torch.allclose(warped_image, torch.rot90(image, -1, (1, 2)), atol=1e-6)
    assert torch.equal(warped_label, torch.rot90(label, -1, (0, 1)))


def test_a_shift_moves_whole_pixels_and_mirrors_the_border(image_and_label):
    image, label = image_and_label
    warped_image, warped_label = shift_scale_rotate(image, label, 0.0, 1.0, (2 / 8, 0.0))
    assert torch.allclose(warped_image[:, :, 2:], image[:, :, :-2], atol=1e-6)
    assert torch.equal(warped_label[:, 2:], label[:, :-2])
    # Source columns -2 and -1 mirror about column 0's centre to 2 and 1: OpenCV's BORDER_REFLECT_101,
    # albumentations' default border for ShiftScaleRotate.
    assert torch.equal(warped_label[:, :2], label[:, [2, 1]])


def test_scaling_keeps_label_values_exact(image_and_label):
    image, label = image_and_label
    _, warped_label = shift_scale_rotate(image, label, 33.0, 1.37, (0.1, -0.2))
    assert set(warped_label.unique().tolist()) <= set(label.unique().tolist())


def test_rgb_shift_matches_a_hand_computation(image_and_label):
    image, label = image_and_label
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    normalised = (image - mean) / std
    only_rgb = DMLAugmentation(geometric_probability=0.0, rgb_probability=1.0, brightness_contrast_probability=0.0)
    out_image, out_label = only_rgb(normalised, label, np.random.default_rng(5))
    draws = np.random.default_rng(5)
    draws.random(), draws.random()  # the geometric and RGB coin flips
    offsets = torch.tensor(draws.uniform(-100 / 255, 100 / 255, size=3), dtype=torch.float32).view(3, 1, 1)
    expected = ((image + offsets).clamp(0, 1) - mean) / std
    assert torch.allclose(out_image, expected, atol=1e-5) and torch.equal(out_label, label)


def test_brightness_contrast_matches_a_hand_computation(image_and_label):
    image, label = image_and_label
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    only_bc = DMLAugmentation(geometric_probability=0.0, rgb_probability=0.0, brightness_contrast_probability=1.0)
    out_image, _ = only_bc((image - mean) / std, label, np.random.default_rng(9))
    draws = np.random.default_rng(9)
    draws.random(), draws.random(), draws.random()  # three coin flips: geometric, RGB, brightness/contrast
    gain, offset = 1 + draws.uniform(-0.3, 0.3), draws.uniform(-0.3, 0.3)
    assert torch.allclose(out_image, ((image * gain + offset).clamp(0, 1) - mean) / std, atol=1e-5)


def test_the_stream_draws_are_pure_functions_of_the_position(tiny_shapes):
    stream = BaseClassImageStream(tiny_shapes, SquashResize(32), seed=3, augment="dml")
    plain = BaseClassImageStream(tiny_shapes, SquashResize(32), seed=3)
    first, again = stream[5], BaseClassImageStream(tiny_shapes, SquashResize(32), seed=3, augment="dml")[5]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    changed = sum(not torch.allclose(stream[position][0], plain[position][0], atol=1e-4) for position in range(10))
    assert changed >= 5  # p(no geometric or colour change) = 0.2 x 0.7 x 0.7 per image; flips are shared
    for position in range(10):
        assert set(stream[position][1].unique().tolist()) <= set(plain[position][1].unique().tolist()) | {0}


def test_unknown_augmentation_is_refused(tiny_shapes):
    with pytest.raises(FsbenchError, match="unknown augmentation 'rotate'"):
        BaseClassImageStream(tiny_shapes, SquashResize(32), augment="rotate")


def test_episode_trained_methods_refuse_dml_augmentation(tiny_datapath, tmp_path, capsys):
    code = main(["--method", "panet", "--datapath", str(tiny_datapath), "--logpath", str(tmp_path / "run"), "--augment", "dml",
                 "--train-steps", "1", "--episodes", "2", "--img-size", "32", "--nworker", "0", "--no-progress"])
    message = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(message) == 1 and "--augment dml augments image batches" in message[0] and "dml_knn" in message[0]
    assert not (tmp_path / "run").exists()


def test_auto_augments_only_image_batch_fine_tuning():
    from fsbench.registry import METHODS
    from fsbench.run import resolve_augment

    dml_knn, panet = METHODS.get("dml_knn"), METHODS.get("panet")
    assert resolve_augment("auto", "dml_knn", dml_knn, fine_tunes=True) == "dml"
    assert resolve_augment("auto", "dml_knn", dml_knn, fine_tunes=False) == "flip"  # the measured profiles
    assert resolve_augment("auto", "panet", panet, fine_tunes=True) == "flip"
    assert resolve_augment("flip", "dml_knn", dml_knn, fine_tunes=True) == "flip"
