"""The authors' released checkpoint formats (HSNet DataParallel .pt, iFSL Lightning .ckpt), written
here in exactly their key layouts, load strictly into hsnet / asnet / asnethm; anything else is refused."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
import torchvision

from fsbench.checkpoint import is_torch_pickle
from fsbench.cli import main
from fsbench.errors import FsbenchError
from fsbench.model_files import load_method, read_weights
from fsbench.registry import METHODS
from fsbench.sampler import EpisodeSampler
from fsbench.transforms import SquashResize

def _method(name: str, backbone: str = "resnet50"):
    method_class = METHODS.get(name)
    torch.manual_seed(0)
    return method_class(method_class.Config().with_overrides({"backbone": backbone, "pretrained": False}, name))


def _backbone_with_classifier(method) -> dict:
    """torchvision's full ResNet-50 state (classifier included), with the method's backbone values."""
    full = torchvision.models.resnet50(weights=None).state_dict()
    own = method.backbone.state_dict()
    return {key: own.get(key, value) for key, value in full.items()}


def _learner_state(method) -> dict:
    return method.learner.state_dict()


@pytest.fixture(scope="module")
def hsnet_source():
    return _method("hsnet")


@pytest.fixture(scope="module")
def hsnet_file(tmp_path_factory, hsnet_source):
    """HSNet's best_model.pt: nn.DataParallel(HypercorrSqueezeNetwork).state_dict()."""
    state = {f"module.backbone.{key}": value for key, value in _backbone_with_classifier(hsnet_source).items()}
    state.update({f"module.hpn_learner.{key}": value for key, value in _learner_state(hsnet_source).items()})
    # HSNet's layout, restated: its learner's first center-pivot conv of the layer-4 block (3 taps of
    # ResNet-50 in, 16 out, 3x3), its last decoder conv (2 logits) and the ImageNet classifier.
    assert state["module.hpn_learner.encoder_layer4.0.conv1.weight"].shape == (16, 3, 3, 3)
    assert state["module.hpn_learner.encoder_layer2.0.conv2.weight"].shape == (16, 4, 5, 5)
    assert state["module.hpn_learner.decoder2.2.bias"].shape == (2,)
    assert state["module.backbone.fc.weight"].shape == (1000, 2048)
    path = tmp_path_factory.mktemp("hsnet") / "best_model.pt"
    torch.save(state, path, _use_new_zipfile_serialization=False)  # HSNet's PyTorch 1.5 wrote the legacy format
    return path


def _lightning(path, learner_state, backbone_state, callbacks_module, dirpath, extra=None):
    """iFSL's PyTorch Lightning 1.3 checkpoint: state_dict plus training state and a callbacks entry."""
    state = {f"backbone.{key}": value for key, value in backbone_state.items()}
    state.update({f"learner.{key}": value for key, value in learner_state.items()})
    parameters = [value for key, value in learner_state.items() if value.dtype.is_floating_point]
    optimizer = torch.optim.Adam([torch.nn.Parameter(value.clone()) for value in parameters], lr=1e-3)
    content = {
        "epoch": 57,
        "global_step": 12000,
        "pytorch-lightning_version": "1.3.8",
        "state_dict": state,
        "callbacks": {callbacks_module.CustomCheckpoint: {
            "monitor": "val/miou", "best_model_score": torch.tensor(52.3), "current_score": torch.tensor(51.0),
            "best_model_path": f"{dirpath}/best_model.ckpt", "dirpath": dirpath,
        }},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [],
        **(extra or {}),
    }
    torch.save(content, path)
    return path


@pytest.fixture(scope="module")
def asnet_source():
    return _method("asnet")


def _predictions_equal(first, second, tiny_shapes, way=2):
    sampler = EpisodeSampler(tiny_shapes, "test", way=way, shot=1, episodes=2, seed=0, task="fscs", transform=SquashResize(64))
    episode = sampler[1]
    one, two = first.eval().predict(episode), second.eval().predict(episode)
    return torch.equal(one.fg_probs, two.fg_probs) and torch.equal(one.presence, two.presence)


def _load(method_name, settings, state):
    method_class = METHODS.get(method_name)
    method = method_class(method_class.Config().with_overrides({**settings, "pretrained": False}, method_name))
    method.load_state_dict(state)
    return method


def test_hsnet_dataparallel_file_loads_strictly_and_predicts_the_same(hsnet_file, hsnet_source, tiny_shapes):
    method_name, settings, state, record = read_weights(hsnet_file)
    assert method_name == "hsnet" and settings == {"backbone": "resnet50", "shot_aggregation": "vote"}
    assert record["format"] == "hsnet_best_model" and record["img_size"] == 400
    assert record["sha256"] == hashlib.sha256(hsnet_file.read_bytes()).hexdigest()
    assert not any(key.startswith("backbone.fc.") for key in state)  # the classifier is dropped by name
    assert _predictions_equal(_load(method_name, settings, state), hsnet_source, tiny_shapes)
    # predict --load and export go through load_method: the same weights, ready in eval mode
    method, record = load_method(hsnet_file, "hsnet", torch.device("cpu"))
    assert record["method"] == "hsnet" and not method.learner.training
    assert _predictions_equal(method, hsnet_source, tiny_shapes)


def test_hsnet_file_with_a_missing_or_stray_key_is_refused(tmp_path, hsnet_file):
    state = torch.load(hsnet_file, weights_only=True)
    missing = dict(state)
    del missing["module.hpn_learner.decoder1.0.bias"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(FsbenchError, match=r"1 missing \(e\.g\. learner\.decoder1\.0\.bias\)"):
        read_weights(tmp_path / "missing.pt")
    stray = {**state, "module.hpn_learner.extra.weight": torch.zeros(1)}
    torch.save(stray, tmp_path / "stray.pt")
    with pytest.raises(FsbenchError, match=r"1 unexpected \(e\.g\. learner\.extra\.weight\)"):
        read_weights(tmp_path / "stray.pt")


def test_a_checkpoint_of_another_method_is_refused_in_one_line(hsnet_file, tiny_datapath, tmp_path, capsys):
    assert read_weights(hsnet_file, "asnet")[0] == "hsnet"  # an hsnet file is never read as asnet
    with pytest.raises(FsbenchError) as caught:
        load_method(hsnet_file, "asnet", torch.device("cpu"))
    assert str(caught.value) == f"checkpoint {hsnet_file} was made for method 'hsnet', not 'asnet'"
    code = main(["--method", "asnet", "--eval", "--load", str(hsnet_file), "--datapath", str(tiny_datapath),
                 "--logpath", str(tmp_path / "run"), "--nworker", "0", "--no-progress"])
    message = capsys.readouterr().err.strip()
    assert code == 1 and "was made for method 'hsnet', not 'asnet'" in message and len(message.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_ifsl_lightning_file_loads_strictly_and_names_its_method(tmp_path, asnet_source, ifsl_callbacks, tiny_shapes):
    backbone = _backbone_with_classifier(asnet_source)
    learner = _learner_state(asnet_source)
    assert learner["encoder_layer4.0.attn.qhead.weight"].shape == (16, 3, 1, 5, 5)  # iFSL's layout, restated
    assert learner["encoder_layer3to2.1.ff.ff.3.weight"].shape == (128, 64, 1, 1, 1)

    hm = _lightning(tmp_path / "hm.ckpt", learner, backbone, ifsl_callbacks, "logs/pascal/fold0/resnet50/asnethm")
    method_name, settings, state, record = read_weights(hm)  # the callback's dirpath names the method
    assert method_name == "asnethm" and settings["shot_aggregation"] == "average"
    assert record["format"] == "ifsl_lightning" and "epoch 57" in record["description"]
    assert "saved under logs/pascal/fold0/resnet50/asnethm" in record["description"]
    assert read_weights(hm, "asnet")[0] == "asnethm"  # the other of the two only where the file cannot tell

    plain = _lightning(tmp_path / "run.ckpt", learner, backbone, ifsl_callbacks, "logs/pascal/fold0/resnet50/myrun")
    assert read_weights(plain)[0] == "asnet"
    assert read_weights(plain, "asnethm")[0] == "asnethm"
    assert read_weights(plain, "hsnet")[0] == "asnet"  # hsnet's learner does not fit: the caller refuses
    method_name, settings, state, record = read_weights(plain, "asnet")
    assert _predictions_equal(_load(method_name, settings, state), asnet_source, tiny_shapes)


def test_a_file_naming_any_other_global_is_refused_and_nothing_runs(tmp_path, asnet_source, ifsl_callbacks, tiny_datapath, capsys):
    evil = _lightning(tmp_path / "evil.ckpt", _learner_state(asnet_source), _backbone_with_classifier(asnet_source),
                      ifsl_callbacks, "logs/x/asnet", extra={"hyper_parameters": ifsl_callbacks.Dangerous()})
    with pytest.raises(FsbenchError, match=r"names \S*record_call, .*refused, nothing from the file was run"):
        read_weights(evil)
    run_dir = tmp_path / "run"
    code = main(["--method", "asnet", "--eval", "--load", str(evil), "--datapath", str(tiny_datapath),
                 "--logpath", str(run_dir), "--nworker", "0", "--no-progress"])
    assert code == 1 and not ifsl_callbacks.calls and not run_dir.exists()
    assert "refused" in capsys.readouterr().err


def test_eval_load_of_a_released_file_records_format_and_sha256(tmp_path, hsnet_file, tiny_datapath, capsys):
    run_dir = tmp_path / "run"
    code = main(["--method", "hsnet", "--eval", "--load", str(hsnet_file), "--datapath", str(tiny_datapath), "--img-size", "64",
                 "--episodes", "2", "--nworker", "0", "--logpath", str(run_dir), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["started_from"]["format"] == "hsnet_best_model"
    assert results["started_from"]["sha256"] == hashlib.sha256(hsnet_file.read_bytes()).hexdigest()
    assert json.loads((run_dir / "config.json").read_text())["method_config"]["backbone"] == "resnet50"


def test_convert_writes_a_safetensors_checkpoint_that_evaluates_without_pickle(tmp_path, hsnet_file, tiny_datapath, monkeypatch, capsys):
    converted = tmp_path / "hsnet_r50.safetensors"
    assert main(["convert", str(hsnet_file), str(converted)]) == 0
    assert converted.is_file() and not is_torch_pickle(converted)
    assert main(["convert", str(hsnet_file), str(converted)]) == 1  # never overwrites
    assert main(["convert", str(hsnet_file), str(tmp_path / "other.safetensors"), "--method", "asnet"]) == 1
    assert "made for method 'hsnet', not 'asnet'" in capsys.readouterr().err

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_pickles)
    run_dir = tmp_path / "run"
    code = main(["--method", "hsnet", "--eval", "--load", str(converted), "--datapath", str(tiny_datapath), "--img-size", "64",
                 "--episodes", "2", "--nworker", "0", "--logpath", str(run_dir), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    source = results["started_from"]["converted_from"]
    assert source["format"] == "hsnet_best_model" and source["checkpoint"] == str(hsnet_file)
    assert source["sha256"] == hashlib.sha256(hsnet_file.read_bytes()).hexdigest()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["method_config"]["backbone"] == "resnet50" and config["method_config"]["shot_aggregation"] == "vote"


def test_backbone_flag_must_match_the_file(hsnet_file, tiny_datapath, tmp_path, capsys):
    code = main(["--method", "hsnet", "--backbone", "resnet101", "--eval", "--load", str(hsnet_file), "--datapath", str(tiny_datapath),
                 "--logpath", str(tmp_path / "run"), "--nworker", "0", "--no-progress"])
    message = capsys.readouterr().err.strip()
    assert code == 1 and "made for backbone 'resnet50', not 'resnet101'" in message and len(message.splitlines()) == 1
