"""Dilated feature extractors: stride 8 for every architecture, ImageNet weights really load."""
from __future__ import annotations

import pytest
import torch

from fsbench.backbones import IMAGENET_WEIGHT_FILES, FeatureExtractor, _VGGFeatures
from fsbench.errors import FsbenchError


@pytest.mark.parametrize("architecture,channels", [("resnet18", 256), ("resnet50", 2048), ("vgg16", 512)])
def test_output_stride_8(architecture, channels):
    extractor = FeatureExtractor(architecture, pretrained=False).eval()
    with torch.no_grad():
        features = extractor(torch.randn(1, 3, 64, 48))
    assert features.shape == (1, channels, 8, 6) and extractor.channels == channels


def test_vgg16_has_no_relu_after_conv5_3():
    # PANet's encoder: the last conv's output stays signed.
    extractor = FeatureExtractor("vgg16", pretrained=False).eval()
    with torch.no_grad():
        assert (extractor(torch.randn(1, 3, 32, 32)) < 0).any()


def test_imagenet_weights_load_from_a_local_file(tmp_path, monkeypatch):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, tmp_path / IMAGENET_WEIGHT_FILES["resnet18"])
    vgg_reference = _VGGFeatures().state_dict()  # conv layers only: the classifier is dropped anyway
    torch.save(vgg_reference, tmp_path / IMAGENET_WEIGHT_FILES["vgg16"])
    monkeypatch.setenv("FSBENCH_WEIGHTS", str(tmp_path))

    torch.manual_seed(1)  # a different random initialisation, so equality means the file was loaded
    resnet = FeatureExtractor("resnet18", pretrained=True)
    for key, value in resnet.body.state_dict().items():
        assert torch.equal(value, reference[key]), key
    vgg = FeatureExtractor("vgg16", pretrained=True)
    assert torch.equal(vgg.body[28].weight, vgg_reference["features.28.weight"])


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("FSBENCH_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("fsbench.backbones.PROJECT_ROOT", tmp_path)  # a user's data/weights must not count
    with pytest.raises(FsbenchError, match=IMAGENET_WEIGHT_FILES["resnet50"]) as error:
        FeatureExtractor("resnet50", pretrained=True)
    # Every place searched, by its full path: $FSBENCH_WEIGHTS, <project>/data/weights, the hub cache.
    message = str(error.value)
    for place in (tmp_path, tmp_path / "data" / "weights", tmp_path / "torch" / "hub" / "checkpoints"):
        assert f"{place}," in message or f"{place};" in message, place
    assert "\n" not in message
    monkeypatch.delenv("FSBENCH_WEIGHTS")
    with pytest.raises(FsbenchError) as error:
        FeatureExtractor("resnet50", pretrained=True)
    message = str(error.value)
    assert f"{tmp_path / 'data' / 'weights'}, {tmp_path / 'torch' / 'hub' / 'checkpoints'};" in message
    assert "$FSBENCH_WEIGHTS" in message and f"{tmp_path}," not in message
    with pytest.raises(FsbenchError, match="available: resnet18"):
        FeatureExtractor("mobilenet", pretrained=False)
