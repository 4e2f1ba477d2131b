"""The DML repo's checkpoint files load strictly as dml_knn, and its kNN rules hold on hand-worked cases.

The layout written here is the repo's, learnt once outside fsbench by building its model class
(models/seg_models_pytorch.SMP, smp 0.3.3): smp's UNet++ under ``model.`` plus the extra head
``base_final_conv`` = (ReLU, BatchNorm2d, Conv2d 3x3 reflect) - 261 keys for resnet18. The test
writes it from smp and hand-named head tensors, without fsbench's own network class.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fsbench.errors import FsbenchError
from fsbench.model_files import load_method
from methods.dml_original import original_probabilities, original_votes

EMBEDDING = 16


def write_original_checkpoint(folder, seed: int = 0, proxies: bool = True):
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    unet = smp.UnetPlusPlus(encoder_name="resnet18", encoder_weights=None, classes=EMBEDDING, activation=None)
    state = {f"model.{key}": value for key, value in unet.state_dict().items()}
    head = {
        "base_final_conv.1.weight": torch.rand(EMBEDDING) + 0.5,
        "base_final_conv.1.bias": torch.randn(EMBEDDING) * 0.1,
        "base_final_conv.1.running_mean": torch.randn(EMBEDDING) * 0.1,
        "base_final_conv.1.running_var": torch.rand(EMBEDDING) + 0.5,
        "base_final_conv.1.num_batches_tracked": torch.tensor(5),
        "base_final_conv.2.weight": torch.randn(EMBEDDING, EMBEDDING, 3, 3) * 0.1,
        "base_final_conv.2.bias": torch.randn(EMBEDDING) * 0.1,
    }
    state.update(head)
    assert len(state) == 261  # the repo's resnet18 model has exactly these keys
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": state, "optimizer_state_dict": {"state": {}, "param_groups": []}, "last_epoch": 3}, folder / "ckpt.pth")
    if proxies:
        torch.save(F.normalize(torch.randn(3, EMBEDDING), dim=1), folder / "proxies.pth")
    return unet, head


def test_original_checkpoint_loads_strictly_and_embeds_as_the_repo(tmp_path):
    unet, head = write_original_checkpoint(tmp_path)
    method, record = load_method(tmp_path / "ckpt.pth", None, torch.device("cpu"))
    config = method.config
    assert (config.architecture, config.knn_rules, config.preprocessing, config.backbone, config.embedding_dim) == (
        "original", "original", "dml_original", "resnet18", EMBEDDING)
    assert method.proxies.weight.shape == (3, EMBEDDING) and record["format"] == "dml_segmentation"
    images = torch.rand(2, 3, 64, 64)
    unet.eval()
    with torch.no_grad():  # the repo's forward_all: base_final_conv(model(x)), written out by hand
        x = F.relu(unet(images))
        x = F.batch_norm(x, head["base_final_conv.1.running_mean"], head["base_final_conv.1.running_var"],
                         head["base_final_conv.1.weight"], head["base_final_conv.1.bias"], False, 0.0, 1e-5)
        x = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), head["base_final_conv.2.weight"], head["base_final_conv.2.bias"])
        assert torch.allclose(method.embed(images), F.normalize(x, dim=1), atol=1e-5)


def test_foreign_checkpoint_problems_are_one_line(tmp_path):
    write_original_checkpoint(tmp_path, proxies=False)
    method, _ = load_method(tmp_path / "ckpt.pth", None, torch.device("cpu"))  # proxies are optional to predict
    assert method.proxies.weight.shape == (0, EMBEDDING)
    content = torch.load(tmp_path / "ckpt.pth", weights_only=True)
    del content["model_state_dict"]["base_final_conv.1.running_var"]
    torch.save(content, tmp_path / "broken.pth")
    with pytest.raises(FsbenchError, match=r"broken.pth does not fit the DML repo's UNet\+\+ \(resnet18, 16-d\): 1 missing") as caught:
        load_method(tmp_path / "broken.pth", None, torch.device("cpu"))
    assert "\n" not in str(caught.value)
    with pytest.raises(FsbenchError, match="made for method 'dml_knn', not 'panet'"):
        load_method(tmp_path / "ckpt.pth", "panet", torch.device("cpu"))


def test_original_knn_rules_by_hand():
    # Three references on a circle: 0 deg (background), 10 deg and 40 deg (positive); a query at 12 deg.
    def unit(degrees):
        radians = torch.deg2rad(torch.tensor(degrees))
        return torch.stack([radians.cos(), radians.sin()], dim=-1)

    references = unit([0.0, 10.0, 40.0])
    labels = torch.tensor([0, 1, 1])
    query = unit([12.0])
    # cosines 0.978 (0 deg), 0.999 (10 deg), 0.883 (40 deg): the last drops to 0 below 0.95. Sorted:
    # 10 deg, 0 deg, 40 deg; the nearest (10 deg) is dropped; k = 2 leaves votes background 1, positive 1.
    votes = original_votes(query, references, labels, num_labels=2, k=2, threshold=0.95, chunk_size=1)
    assert votes.tolist() == [[1.0, 1.0]]
    # share 1/2 is not above 0.95: not foreground; 0.5 * share < 0.5.
    assert original_probabilities(votes[:, 1:], k=2, threshold=0.95).tolist() == [[0.25]]
    # 61 of 64 votes: 0.953 > 0.95 -> foreground (0.5 + 0.5 * 0.953); 60 of 64: 0.9375 -> not.
    probabilities = original_probabilities(torch.tensor([[61.0], [60.0]]), k=64, threshold=0.95)
    assert probabilities[0, 0] == pytest.approx(0.5 + 0.5 * 61 / 64) and probabilities[1, 0] == pytest.approx(0.5 * 60 / 64)
