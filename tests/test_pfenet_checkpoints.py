"""Released PFENet checkpoints load strictly: PFENet's .pth and iFSL's Lightning .ckpt, written here in
exactly their key layouts (stated independently from the authors' module names, not from fsbench's)."""
from __future__ import annotations

import collections
import json

import pytest
import torch
import torchvision

import methods  # noqa: F401  (registers the methods and the foreign readers)
from fsbench.cli import main
from fsbench.errors import FsbenchError
from fsbench.foreign import read_torch_file
from fsbench.model_files import load_method, read_weights
from methods.pfenet_checkpoints import read_ifsl_pfenet_checkpoint, read_pfenet_checkpoint

REDUCE, BINS = 256, 4
RAN = []


def _record_run(*arguments):
    RAN.append(arguments)


def batch_norm(prefix: str, channels: int, generator) -> dict:
    return {
        f"{prefix}.weight": torch.rand(channels, generator=generator) + 0.5,
        f"{prefix}.bias": torch.randn(channels, generator=generator) * 0.1,
        f"{prefix}.running_mean": torch.randn(channels, generator=generator) * 0.1,
        f"{prefix}.running_var": torch.rand(channels, generator=generator) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def learner_keys(prefix: str, generator) -> dict:
    """PFENet's FEM and classifier keys (model/PFENet.py, iFSL's PFENetLearner): shapes for reduce_dim 256."""
    state = {}

    def conv(name, out_channels, in_channels, kernel, bias=False):
        state[f"{prefix}{name}.weight"] = torch.randn(out_channels, in_channels, kernel, kernel, generator=generator) * 0.01
        if bias:
            state[f"{prefix}{name}.bias"] = torch.randn(out_channels, generator=generator) * 0.01

    for index in range(BINS):
        conv(f"init_merge.{index}.0", REDUCE, 2 * REDUCE + 1, 1)
        conv(f"beta_conv.{index}.0", REDUCE, REDUCE, 3)
        conv(f"beta_conv.{index}.2", REDUCE, REDUCE, 3)
        conv(f"inner_cls.{index}.0", REDUCE, REDUCE, 3)
        conv(f"inner_cls.{index}.3", 2, REDUCE, 1, bias=True)
    for index in range(BINS - 1):
        conv(f"alpha_conv.{index}.0", REDUCE, 2 * REDUCE, 1)
    conv("res1.0", REDUCE, REDUCE * BINS, 1)
    conv("res2.0", REDUCE, REDUCE, 3)
    conv("res2.2", REDUCE, REDUCE, 3)
    conv("cls.0", REDUCE, REDUCE, 3)
    conv("cls.3", 2, REDUCE, 1, bias=True)
    return state


def torchvision_resnet50_layers(generator) -> dict:
    """layer1..layer4 of a torchvision ResNet-50 (the bottleneck layout both codebases share)."""
    torch.manual_seed(int(torch.randint(0, 1000, (1,), generator=generator)))
    return {key: value for key, value in torchvision.models.resnet50(weights=None).state_dict().items() if key.startswith("layer")}


def pfenet_state(generator) -> dict:
    """model.state_dict() of PFENet(layers=50) wrapped in DataParallel: deep stem as layer0.{0..9}."""
    state = {}
    state["layer0.0.weight"] = torch.randn(64, 3, 3, 3, generator=generator) * 0.1
    state.update(batch_norm("layer0.1", 64, generator))
    state["layer0.3.weight"] = torch.randn(64, 64, 3, 3, generator=generator) * 0.05
    state.update(batch_norm("layer0.4", 64, generator))
    state["layer0.6.weight"] = torch.randn(128, 64, 3, 3, generator=generator) * 0.05
    state.update(batch_norm("layer0.7", 128, generator))
    layers = torchvision_resnet50_layers(generator)
    # The deep stem ends at 128 channels, so layer1's first block reads 128, not 64.
    layers["layer1.0.conv1.weight"] = torch.randn(64, 128, 1, 1, generator=generator) * 0.05
    layers["layer1.0.downsample.0.weight"] = torch.randn(256, 128, 1, 1, generator=generator) * 0.05
    state.update(layers)
    state["down_query.0.weight"] = torch.randn(REDUCE, 1536, 1, 1, generator=generator) * 0.02
    state["down_supp.0.weight"] = torch.randn(REDUCE, 1536, 1, 1, generator=generator) * 0.02
    state.update(learner_keys("", generator))
    return collections.OrderedDict((f"module.{key}", value) for key, value in state.items())


def ifsl_state(generator) -> dict:
    """iFSL's PriorGuidedFeatureEnrichmentNetwork.state_dict(): torchvision stem as backbone0.{0,1}."""
    state = {"backbone0.0.weight": torch.randn(64, 3, 7, 7, generator=generator) * 0.05}
    state.update(batch_norm("backbone0.1", 64, generator))
    for key, value in torchvision_resnet50_layers(generator).items():
        layer, rest = key.split(".", 1)
        state[f"backbone{layer[len('layer'):]}.{rest}"] = value
    state["down_qry.0.weight"] = torch.randn(REDUCE, 1536, 1, 1, generator=generator) * 0.02
    state["down_spt.0.weight"] = torch.randn(REDUCE, 1536, 1, 1, generator=generator) * 0.02
    state.update(learner_keys("learner.", generator))
    return collections.OrderedDict(state)


@pytest.fixture(scope="module")
def checkpoint_states():
    generator = torch.Generator().manual_seed(0)
    return {"pfenet": pfenet_state(generator), "ifsl": ifsl_state(generator)}


def write_pfenet(path, state):
    # PFENet's train.py: {'epoch', 'state_dict': model.state_dict(), 'optimizer': optimizer.state_dict()}
    optimizer_state = {"state": {0: {"momentum_buffer": torch.zeros(3)}},
                       "param_groups": [{"lr": 0.025, "momentum": 0.9, "dampening": 0, "weight_decay": 0.0001,
                                         "nesterov": False, "params": [0]}]}
    torch.save({"epoch": 199, "state_dict": state, "optimizer": optimizer_state}, path)


def write_ifsl(path, state, callbacks_module):
    # PyTorch Lightning 1.3's dump_checkpoint with iFSL's callbacks.
    torch.save({"epoch": 41, "global_step": 123456, "pytorch-lightning_version": "1.3.8", "state_dict": state,
                "callbacks": {callbacks_module.CustomCheckpoint: {"monitor": "val/miou", "best_model_score": torch.tensor(61.2)}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 0.0025, "params": [0, 1]}]}], "lr_schedulers": []}, path)


def test_pfenet_pth_loads_strictly(tmp_path, checkpoint_states, capsys):
    state = checkpoint_states["pfenet"]
    path = tmp_path / "train_epoch_199_0.6123.pth"
    write_pfenet(path, state)
    method, record = load_method(path, "pfenet", torch.device("cpu"))
    assert method.config.backbone == "resnet50" and method.config.deep_stem and method.config.prior_layout == "per_way"
    assert tuple(method.config.pyramid_bins) == (60, 30, 15, 8) and method.config.weights_layout == "pfenet"
    assert len(method.state_dict()) == len(state)
    assert torch.equal(method.backbone.conv3.weight, state["module.layer0.6.weight"])
    assert torch.equal(method.backbone.bn3.running_var, state["module.layer0.7.running_var"])
    assert torch.equal(method.backbone.layer4[2].conv3.weight, state["module.layer4.2.conv3.weight"])
    assert torch.equal(method.reduce_support[0].weight, state["module.down_supp.0.weight"])
    assert torch.equal(method.enrichment.interaction[2][0].weight, state["module.alpha_conv.2.0.weight"])
    assert torch.equal(method.enrichment.classifier[3].bias, state["module.cls.3.bias"])
    assert record["format"] == "pfenet_original" and "epoch 199" in record["description"] and len(record["sha256"]) == 64
    assert "PFENet checkpoint, deep-stem resnet50" in capsys.readouterr().out


def test_ifsl_ckpt_loads_strictly_and_follows_its_keys(tmp_path, checkpoint_states, ifsl_callbacks, capsys):
    state = checkpoint_states["ifsl"]
    path = tmp_path / "best_model.ckpt"
    write_ifsl(path, state, ifsl_callbacks)
    method, record = load_method(path, "pfenet", torch.device("cpu"))
    assert (method.config.backbone, method.config.deep_stem) == ("resnet50", False)
    assert tuple(method.config.pyramid_bins) == (50, 25, 13, 7) and method.config.prior_layout == "ifsl"
    assert torch.equal(method.backbone.conv1.weight, state["backbone0.0.weight"])
    assert torch.equal(method.backbone.layer3[5].bn2.running_mean, state["backbone3.5.bn2.running_mean"])
    assert torch.equal(method.reduce_query[0].weight, state["down_qry.0.weight"])
    assert torch.equal(method.enrichment.auxiliary_classifiers[1][3].weight, state["learner.inner_cls.1.3.weight"])
    assert record["format"] == "ifsl_pfenet" and record["img_size"] == 400 and "epoch 41" in record["description"]
    assert "whatever its --backbone said" in capsys.readouterr().out


def test_each_reader_takes_only_its_own_layout(tmp_path, checkpoint_states, ifsl_callbacks):
    pfenet_path, ifsl_path = tmp_path / "final.pth", tmp_path / "best_model.ckpt"
    write_pfenet(pfenet_path, checkpoint_states["pfenet"])
    write_ifsl(ifsl_path, checkpoint_states["ifsl"], ifsl_callbacks)
    pfenet_content, ifsl_content = read_torch_file(pfenet_path).content, read_torch_file(ifsl_path).content
    assert read_ifsl_pfenet_checkpoint(pfenet_path, pfenet_content) is None
    assert read_pfenet_checkpoint(ifsl_path, ifsl_content) is None
    # iFSL's HSNet / ASNet checkpoints: backbone.* and learner.* (no PFENet modules): not PFENet's.
    hsnet = {"state_dict": {"backbone.conv1.weight": torch.zeros(1), "learner.encoder_layer4.0.weight": torch.zeros(1)}}
    assert read_pfenet_checkpoint(ifsl_path, hsnet) is None and read_ifsl_pfenet_checkpoint(ifsl_path, hsnet) is None
    assert read_pfenet_checkpoint(ifsl_path, {"epoch": 3}) is None


def test_strictness_and_foreign_globals_are_refused(tmp_path, checkpoint_states, ifsl_callbacks):
    state = dict(checkpoint_states["ifsl"])
    extra = tmp_path / "extra.ckpt"
    write_ifsl(extra, {**state, "learner.extra.weight": torch.zeros(1)}, ifsl_callbacks)
    with pytest.raises(FsbenchError, match="1 unexpected .*unmapped:learner.extra.weight"):
        read_weights(extra)
    missing = tmp_path / "missing.ckpt"
    write_ifsl(missing, {key: value for key, value in state.items() if key != "learner.cls.3.bias"}, ifsl_callbacks)
    with pytest.raises(FsbenchError, match="1 missing .*enrichment.classifier.3.bias"):
        read_weights(missing)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {"encoder.conv1.weight": torch.zeros(1)}}, other)
    with pytest.raises(FsbenchError, match="in no format fsbench reads"):
        read_weights(other)

    class Payload:
        def __reduce__(self):
            return (_record_run, ("this must never run",))

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": state, "callbacks": {ifsl_callbacks.CustomCheckpoint: Payload()}}, evil)
    RAN.clear()
    with pytest.raises(FsbenchError, match="_record_run, which is not a tensor.*refused") as caught:
        read_torch_file(evil)
    assert not RAN and "\n" not in str(caught.value)


def test_cli_evaluates_a_foreign_checkpoint_and_refuses_contradicting_flags(tmp_path, tiny_datapath, checkpoint_states, ifsl_callbacks, capsys):
    path = tmp_path / "best_model.ckpt"
    write_ifsl(path, checkpoint_states["ifsl"], ifsl_callbacks)
    common = ["--method", "pfenet", "--datapath", str(tiny_datapath), "--eval", "--load", str(path), "--episodes", "2",
              "--img-size", "64", "--nworker", "0", "--no-progress"]
    assert main(common + ["--backbone", "resnet101", "--logpath", str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err
    assert "made for backbone 'resnet50', not 'resnet101'" in error and error.count("\n") == 1
    assert not (tmp_path / "refused").exists()
    # A setting iFSL's release fixes (not a weight shape, so strict loading alone would not notice).
    assert main(common + ["--set", "prior_layout=per_way", "--logpath", str(tmp_path / "refused")]) == 1
    error = capsys.readouterr().err
    assert "fix prior_layout = 'ifsl'; the run asked for 'per_way'" in error and error.count("\n") == 1
    assert not (tmp_path / "refused").exists()

    assert main(common + ["--logpath", str(tmp_path / "run")]) == 0
    assert "iFSL fs-cs PFENet checkpoint" in capsys.readouterr().out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    settings = config["method_config"]  # the quick profile of `shapes` gives way to what the file fixes
    assert settings["backbone"] == "resnet50" and settings["deep_stem"] is False and settings["pyramid_bins"] == [50, 25, 13, 7]
    assert settings["prior_layout"] == "ifsl" and settings["train_backbone"] is False and settings["reduce_dim"] == 256
    import hashlib

    assert results["started_from"] == {"path": str(path), "format": "ifsl_pfenet", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
