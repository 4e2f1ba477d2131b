"""main.py predict: files per query for 1- and 2-label supports, values against an independent
computation, bad query files skipped and counted (exit status 3), the original repo's flag names."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fsbench.checkpoint import save_checkpoint
from fsbench.cli import main
from fsbench.episode import Episode, Prediction
from fsbench.predict import SKIPPED_EXIT_STATUS
from fsbench.transforms import SquashResize
from methods.dml_knn import DMLKNN, DMLKNNConfig

IMG_SIZE = 64


def tiny_dml_config() -> DMLKNNConfig:
    return DMLKNNConfig(backbone="resnet18", pretrained=False, embedding_dim=16, decoder_channels=(32, 16, 16, 8, 8),
                        k=8, max_positive_samples=50, knn_stride=1)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    torch.manual_seed(0)
    method = DMLKNN(tiny_dml_config(), "cpu")
    save_checkpoint(root / "model.safetensors", method.state_dict(), {"method": "dml_knn", "config": vars(method.config), "img_size": IMG_SIZE})
    rng = np.random.default_rng(0)
    for name, (height, width) in {"support": (48, 64), "q1": (50, 70), "q2": (64, 40)}.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(root / f"{name}.png")
    (root / "queries").mkdir()
    for name in ("q1", "q2"):
        (root / f"{name}.png").rename(root / "queries" / f"{name}.png")
    shapes = [
        {"label": "cat", "points": [[4, 4], [30, 4], [30, 40], [4, 40]], "shape_type": "polygon"},
        {"label": "dog", "points": [[36, 10], [60, 30]], "shape_type": "rectangle"},
    ]
    for labels in (["cat"], ["cat", "dog"]):
        record = {"shapes": [shape for shape in shapes if shape["label"] in labels], "imageHeight": 48, "imageWidth": 64, "imagePath": "support.png"}
        (root / f"support_{len(labels)}.json").write_text(json.dumps(record))
    return root


def _predict(workspace: Path, out: Path, annotation: str, *extra: str) -> int:
    return main(["predict", "--load", str(workspace / "model.safetensors"), "--support-image", str(workspace / "support.png"),
                 "--support-annotation", str(workspace / annotation), "--query", str(workspace / "queries"), "--out", str(out),
                 "--no-progress", *extra])


@pytest.mark.parametrize("labels", [1, 2])
def test_files_per_query(workspace, tmp_path, labels):
    out = tmp_path / "out"
    assert _predict(workspace, out, f"support_{labels}.json") == 0
    names = ["cat", "dog"][:labels]
    for query, size in (("q1", (50, 70)), ("q2", (64, 40))):
        mask = Image.open(out / "masks" / f"{query}.png")
        assert mask.mode == "P" and mask.size == size[::-1]
        assert set(np.unique(np.array(mask))) <= set(range(labels + 1))
        assert Image.open(out / "overlays" / f"{query}.png").size == size[::-1]
        scores = json.loads((out / "scores" / f"{query}.json").read_text())
        assert list(scores["presence"]) == names
    summary = json.loads((out / "predict.json").read_text())
    assert summary["written"] == 2 and summary["labels"] == [{"way": n + 1, "name": name} for n, name in enumerate(names)]
    assert summary["img_size"] == IMG_SIZE and summary["preprocessing"] == "hsnet"


def test_mask_values_match_an_independent_computation(workspace, tmp_path):
    out = tmp_path / "out"
    assert _predict(workspace, out, "support_1.json", "--batch-size", "1") == 0
    method = DMLKNN(tiny_dml_config(), "cpu")
    from safetensors.torch import load_file

    method.load_state_dict(load_file(str(workspace / "model.safetensors")))
    method.eval()
    squash = SquashResize(IMG_SIZE)
    support = torch.from_numpy(np.array(Image.open(workspace / "support.png"))).permute(2, 0, 1)
    support_mask = torch.zeros(48, 64, dtype=torch.int64)
    support_mask[4:41, 4:31] = 1  # the polygon's pixels, edges included (integer vertices)
    support_image, support_label = squash(support, support_mask)
    query = torch.from_numpy(np.array(Image.open(workspace / "queries" / "q1.png"))).permute(2, 0, 1)
    query_image, _ = squash(query, torch.zeros(50, 70, dtype=torch.int64))
    episode = Episode(support_image[None, None], support_label[None, None], query_image[None], torch.full((1, IMG_SIZE, IMG_SIZE), 255),
                      torch.tensor([1]), torch.zeros(1, 1, dtype=torch.bool))
    probabilities = F.interpolate(method.predict(episode).fg_probs, size=(50, 70), mode="bilinear", align_corners=False)
    expected = (probabilities[0, 0] >= 0.5).numpy().astype(np.uint8)
    assert np.array_equal(np.array(Image.open(out / "masks" / "q1.png")), expected)


def test_bad_query_files_are_skipped_and_counted(workspace, tmp_path, capsys):
    queries = tmp_path / "queries"
    queries.mkdir()
    for name in ("q1.png", "q2.png"):
        (queries / name).write_bytes((workspace / "queries" / name).read_bytes())
    (queries / "broken.jpg").write_bytes(b"not a jpeg")
    (queries / "notes.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    status = main(["predict", "--load", str(workspace / "model.safetensors"), "--support_image", str(workspace / "support.png"),
                   "--support_annotation", str(workspace / "support_1.json"), "--inout_folder", str(queries), "--out", str(out), "--no-progress"])
    assert status == SKIPPED_EXIT_STATUS
    summary = json.loads((out / "predict.json").read_text())
    assert summary["written"] == 2 and [item["file"] for item in summary["skipped"]] == [str(queries / "broken.jpg")]
    assert sorted(path.name for path in (out / "masks").iterdir()) == ["q1.png", "q2.png"]
    captured = capsys.readouterr()
    assert sum("skipped" in line and "broken.jpg" in line for line in (captured.out + captured.err).splitlines()) >= 1


def test_input_problems_are_one_line_errors(workspace, tmp_path, capsys):
    assert _predict(workspace, tmp_path / "o1", "support_1.json", "--labels", "horse") == 1
    assert "label 'horse' has no pixels" in capsys.readouterr().err
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "x").write_text("")
    assert _predict(workspace, tmp_path / "o2", "support_1.json") == 1
    assert "is not empty; pass --overwrite" in capsys.readouterr().err


def test_sizes_the_network_cannot_take_are_padded_and_cropped_back():
    from fsbench.predict import predict_padded

    seen = {}

    def predict(episode):  # a stand-in method: records the size it got, answers "way 1" on the left half
        seen["size"] = tuple(episode.query_images.shape[-2:])
        probabilities = torch.zeros(episode.num_queries, episode.way, *seen["size"])
        probabilities[..., : seen["size"][1] // 2] = 1.0
        return Prediction.from_probabilities(probabilities)

    episode = Episode(torch.rand(1, 1, 3, 40, 40), torch.zeros(1, 1, 40, 40, dtype=torch.int64), torch.rand(2, 3, 40, 40),
                      torch.full((2, 40, 40), 255), torch.tensor([1]), torch.zeros(2, 1, dtype=torch.bool))
    prediction = predict_padded(predict, episode, lambda height, width: (64, 64))
    assert seen["size"] == (64, 64) and prediction.fg_probs.shape == (2, 1, 40, 40)
    assert prediction.fg_probs[0, 0, 0].tolist() == [1.0] * 32 + [0.0] * 8
