"""export -> predict --packaged gives the in-process predictions; methods that cannot be packaged say why."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fsbench.checkpoint import save_checkpoint
from fsbench.cli import main
from fsbench.episode import Episode
from fsbench.errors import FsbenchError
from fsbench.model_files import load_method
from fsbench.package import PackagedModel, export_method
from fsbench.predict import predict_padded
from methods.dml_knn import DMLKNN, DMLKNNConfig
from methods.mtl_unet import MTLUNet
from methods.panet import PANet
from tests.test_dml_original import write_original_checkpoint
from tests.test_predict import IMG_SIZE, tiny_dml_config, workspace  # noqa: F401  (fixture)

SIZE = 64


def _episode(way: int, seed: int = 0, size: int = SIZE) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    masks = torch.zeros(way, 2, size, size, dtype=torch.int64)
    for index in range(way):
        masks[index, :, 8 + 10 * index : 30 + 10 * index, 10:40] = 1
    masks[0, 1, 0:4] = 255
    return Episode(torch.rand(way, 2, 3, size, size, generator=generator), masks, torch.rand(3, 3, size, size, generator=generator),
                   torch.full((3, size, size), 255), torch.arange(1, way + 1), torch.zeros(3, way, dtype=torch.bool), index=5)


def _check_same(method, tmp_path, way: int = 2) -> None:
    path = tmp_path / "model.fsbench.pt"
    export_method(method.eval(), {"checkpoint": "test"}, "hsnet", SIZE, path, fp16=False)
    packaged = PackagedModel(path, torch.device("cpu"))
    episode = _episode(way)
    expected, got = method.predict(episode), packaged.predict(episode)
    assert torch.allclose(got.fg_probs, expected.fg_probs, atol=1e-6) and torch.allclose(got.presence, expected.presence, atol=1e-6)
    assert torch.equal(got.labels(), expected.labels())


def test_dml_knn_package_equals_in_process(tmp_path):
    torch.manual_seed(0)
    _check_same(DMLKNN(tiny_dml_config(), "cpu"), tmp_path)


def test_a_package_is_traced_at_the_size_the_method_takes(tmp_path):
    # UNet++ of depth 3 takes multiples of 8, so 40 px goes in unpadded in process; the package must
    # see the same input (it was once traced at the next multiple of 32, 64, and its masks differed).
    torch.manual_seed(0)
    config = DMLKNNConfig(backbone="resnet18", pretrained=False, embedding_dim=16, decoder_channels=(16, 8, 8), k=8, max_positive_samples=50)
    method = DMLKNN(config, "cpu").eval()
    path = tmp_path / "model.fsbench.pt"
    export_method(method, {"checkpoint": "test"}, "hsnet", 40, path, fp16=False)
    packaged = PackagedModel(path, torch.device("cpu"))
    assert packaged.metadata["traced_size"] == 40 and packaged.valid_size(40, 40) == method.valid_size(40, 40) == (40, 40)
    episode = _episode(2, size=40)
    expected = predict_padded(method.predict, episode, method.valid_size)
    got = predict_padded(packaged.predict, episode, packaged.valid_size)
    assert torch.allclose(got.fg_probs, expected.fg_probs, atol=1e-6) and torch.equal(got.labels(), expected.labels())
    with pytest.raises(FsbenchError, match="traced at 40 px; it cannot take 48x48 inputs"):
        packaged.valid_size(48, 48)


def test_dml_knn_original_rules_package_equals_in_process(tmp_path):
    write_original_checkpoint(tmp_path / "original")
    method, _ = load_method(tmp_path / "original" / "ckpt.pth", None, torch.device("cpu"))
    method.config.negative_samples_ratio = 3  # keeps the reference set small; rules unchanged
    _check_same(method, tmp_path, way=1)


def test_panet_package_equals_in_process(tmp_path):
    torch.manual_seed(0)
    _check_same(PANet(PANet.Config.quick(), "cpu"), tmp_path)


def test_mtl_unet_cannot_be_packaged(tmp_path):
    method = MTLUNet(MTLUNet.Config.quick(), "cpu")
    with pytest.raises(FsbenchError, match="method 'mtl_unet' cannot be packaged: its prediction adapts a base learner .* inner optimisation loop"):
        export_method(method, {}, "hsnet", SIZE, tmp_path / "x.pt", fp16=False)


def test_cli_export_then_packaged_predict_writes_the_same_masks(workspace, tmp_path):  # noqa: F811
    package = tmp_path / "model.fsbench.pt"
    assert main(["export", "--load", str(workspace / "model.safetensors"), "--out", str(package)]) == 0
    common = ["--support-image", str(workspace / "support.png"), "--support-annotation", str(workspace / "support_2.json"),
              "--query", str(workspace / "queries"), "--no-progress"]
    assert main(["predict", "--load", str(workspace / "model.safetensors"), "--out", str(tmp_path / "a"), *common]) == 0
    assert main(["predict", "--packaged", str(package), "--out", str(tmp_path / "b"), *common]) == 0
    for name in ("q1.png", "q2.png"):
        assert np.array_equal(np.array(Image.open(tmp_path / "a" / "masks" / name)), np.array(Image.open(tmp_path / "b" / "masks" / name)))
    # A size the traced network cannot take: one line, nothing written.
    assert main(["predict", "--packaged", str(package), "--img-size", str(IMG_SIZE + 64), "--out", str(tmp_path / "c"), *common]) == 1
    assert not (tmp_path / "c").exists()
    with pytest.raises(FsbenchError, match="not a packaged fsbench model"):
        (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04junk")
        PackagedModel(tmp_path / "junk.pt", torch.device("cpu"))


def test_fp16_package_is_opt_in_and_close(tmp_path):
    # The DML repo's --half_precision was store_false (half by default, off when asked for); here
    # --fp16 asks for it. fp16 embeddings may move a few kNN votes, not the masks as a whole.
    from fsbench.workflows_cli import build_parser

    assert build_parser("export").parse_args(["--out", "x.pt"]).fp16 is False
    torch.manual_seed(0)
    method = DMLKNN(tiny_dml_config(), "cpu").eval()
    export_method(method, {}, "hsnet", SIZE, tmp_path / "half.pt", fp16=True)
    packaged = PackagedModel(tmp_path / "half.pt", torch.device("cpu"))
    assert packaged.metadata["fp16"] is True
    episode = _episode(2)
    agreement = (packaged.predict(episode).labels() == method.predict(episode).labels()).float().mean()
    assert agreement > 0.99
