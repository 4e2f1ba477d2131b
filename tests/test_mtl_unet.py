"""mtl_unet: scaling/shifting is MTL's definition and starts as the identity, pre-trained weights reach
the meta model, the inner loop touches only the (copied) base learner, the budget split."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fsbench.backbones import IMAGENET_WEIGHT_FILES
from fsbench.checkpoint import load_checkpoint, save_checkpoint
from fsbench.episode import Episode
from fsbench.engine.fit import FitSettings, fit, single_update
from fsbench.engine.plan import TrainingContext
from fsbench.transforms import SquashResize
from methods.mtl_unet import MTLUNet, MTLUNetConfig
from methods.scale_shift import ScaleShift

SIZE = 64


def _method(**overrides) -> MTLUNet:
    torch.manual_seed(0)
    config = dataclasses.replace(MTLUNetConfig.quick(), inner_steps=3, batch_size=2, **overrides)
    return MTLUNet(config, "cpu").eval()


def _train(method: MTLUNet, benchmark, steps: int, **settings) -> None:
    fit(method, benchmark, FitSettings(steps=steps, transform=SquashResize(SIZE), progress=False, **settings), run_dir=None)


def _episode(way: int = 2, shot: int = 1, seed: int = 0) -> Episode:
    generator = torch.Generator().manual_seed(seed)
    support_masks = (torch.rand(way, shot, SIZE, SIZE, generator=generator) < 0.3).long()
    support_masks[..., :2, :] = 255
    return Episode(
        support_images=torch.randn(way, shot, 3, SIZE, SIZE, generator=generator),
        support_masks=support_masks,
        query_images=torch.randn(1, 3, SIZE, SIZE, generator=generator),
        query_masks=torch.randint(0, way + 1, (1, SIZE, SIZE), generator=generator),
        class_ids=torch.arange(1, way + 1),
        query_presence=torch.ones(1, way, dtype=torch.bool),
        index=seed,
    )


def _state(method: MTLUNet) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in method.state_dict().items()}


def _changed(before: dict, after: dict, prefix: str) -> bool:
    return any(not torch.equal(before[key], after[key]) for key in before if key.startswith(prefix))


@pytest.mark.parametrize("bias", [True, False])
def test_scale_shift_is_mtls_definition(bias):
    network = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=bias))
    scale_shift = ScaleShift(network, prefixes=("0",))
    generator = torch.Generator().manual_seed(0)
    scale = torch.rand(4, generator=generator) + 0.5
    shift = torch.randn(4, generator=generator)
    scale_shift.scale["0"].data.copy_(scale)
    scale_shift.shift["0"].data.copy_(shift)
    images = torch.randn(2, 3, 5, 5, generator=generator)
    conv = network[0]
    original_bias = conv.bias if bias else torch.zeros(4)
    expected = F.conv2d(images, conv.weight * scale.view(4, 1, 1, 1), original_bias + shift, padding=1)
    with scale_shift.applied(network):
        assert torch.allclose(network(images), expected, atol=1e-5)
    assert torch.allclose(network(images), F.conv2d(images, conv.weight, conv.bias, padding=1))  # hooks removed


def test_every_encoder_and_decoder_conv_is_scaled_and_shifted():
    method = _method()
    convs = [name for name, module in method.network.named_modules() if isinstance(module, nn.Conv2d)]
    assert sorted(method.scale_shift.conv_names) == sorted(name for name in convs if not name.startswith("segmentation_head"))
    assert len(method.scale_shift.scale) == len(convs) - 1


def test_identity_at_start_reproduces_the_pretrained_model(tiny_shapes):
    method = _method(pretrain_share=1.0)
    _train(method, tiny_shapes, 1)
    method.start_meta_training()
    method.eval()
    images = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        pretrained_features = method.network.decoder(method.network.encoder(images))
        pretrained_logits = method.network.segmentation_head(pretrained_features)
        meta_features = method.meta_features(images)
        learner = F.conv2d(meta_features, method.base_learner.weight, method.base_learner.bias)
    assert torch.equal(meta_features, pretrained_features)
    # The base learner starts as the pre-trained head's background vs mean base-class logit.
    assert torch.allclose(learner[:, 0], pretrained_logits[:, 0], atol=1e-5)
    assert torch.allclose(learner[:, 1], pretrained_logits[:, 1:].mean(dim=1), atol=1e-5)


def test_pretrained_weights_reach_the_meta_model(tiny_shapes, tmp_path, monkeypatch):
    import segmentation_models_pytorch as smp

    # ImageNet weights from a local file land in the U-Net's encoder under their own names.
    torch.manual_seed(5)
    imagenet = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    torch.save(imagenet, tmp_path / IMAGENET_WEIGHT_FILES["resnet18"])
    monkeypatch.setenv("FSBENCH_WEIGHTS", str(tmp_path))
    method = _method(pretrained=True, pretrain_share=1.0)
    for key, value in imagenet.items():
        assert torch.equal(method.network.encoder.state_dict()[key], value), key

    # Base-class pre-training -> checkpoint -> a fresh method: every U-Net weight arrives and the
    # meta model computes with them (no renamed copy that could silently stay random).
    _train(method, tiny_shapes, 1)
    method.eval()
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, method.state_dict(), {"method": "mtl_unet"})
    restored = _method()
    restored.load_state_dict(load_checkpoint(path)[0])
    restored.eval()
    for key, value in method.network.state_dict().items():
        assert torch.equal(restored.network.state_dict()[key], value), key
    images = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        features = restored.meta_features(images)
        assert torch.equal(features, method.meta_features(images))
        restored.network.encoder.layer4[1].conv2.weight.mul_(2.0)
        assert not torch.equal(restored.meta_features(images), features)  # the live weights are used


def test_inner_loop_changes_only_the_base_learner_copy():
    method = _method()
    before = _state(method)
    episode = _episode()
    with torch.no_grad():
        features = method.meta_features(episode.support_images[0])
    weight, bias = method.adapt(features, episode.support_masks[0])
    assert not torch.equal(weight, method.base_learner.weight) and not torch.equal(bias, method.base_learner.bias)
    first = method.predict(episode)
    method.predict(_episode(seed=1))  # another episode in between must not leak into the next answer
    again = method.predict(episode)
    assert torch.equal(first.fg_probs, again.fg_probs)
    after = _state(method)
    assert all(torch.equal(before[key], after[key]) for key in before)


def test_meta_training_trains_scales_shifts_and_learner_but_not_the_convs():
    method = _method()
    meta = method.training_stages(TrainingContext(steps=2, base_classes=[1, 2]))[1]
    meta.enter()
    meta.initialise()
    before = _state(method)
    method.train()
    method.network.eval()  # as the stage declares (eval_modules)
    optimiser = meta.optimiser.build(meta.parameter_groups())
    scalars, _ = single_update(method, meta, optimiser, [_episode(shot=2)], seed=0)
    after = _state(method)
    assert meta.eval_modules == ("network",) and scalars["loss"] > 0
    assert not _changed(before, after, "network.")  # weights and batch-norm statistics frozen
    assert _changed(before, after, "scale_shift.scale.") and _changed(before, after, "scale_shift.shift.")
    assert _changed(before, after, "base_learner.")


def test_budget_is_split_between_pretraining_and_meta_training(tiny_shapes):
    method = _method(pretrain_share=0.5)
    seen = []
    _train(method, tiny_shapes, 3, on_step=lambda step, row: seen.append(row["stage"]))
    assert seen == ["pretrain", "pretrain", "meta"]


def test_n_way_probabilities_come_from_independent_learners():
    method = _method()
    prediction = method.predict(_episode(way=3))
    assert prediction.fg_probs.shape == (1, 3, SIZE, SIZE)
    assert torch.equal(prediction.presence, prediction.fg_probs.flatten(2).amax(2))
    single = method.predict(dataclasses.replace(_episode(way=3), support_images=_episode(way=3).support_images[1:2],
                                                support_masks=_episode(way=3).support_masks[1:2], class_ids=torch.tensor([2]),
                                                query_presence=torch.ones(1, 1, dtype=torch.bool)))
    assert torch.allclose(single.fg_probs[:, 0], prediction.fg_probs[:, 1], atol=1e-5)


def test_test_time_adaptation_works_under_the_evaluators_inference_mode():
    method = _method()
    episode = _episode()
    expected = method.predict(episode)
    with torch.inference_mode():
        # Inference tensors, as episode.to(cuda) makes them inside the evaluation loop.
        inference_episode = dataclasses.replace(episode, support_images=episode.support_images.clone(),
                                                support_masks=episode.support_masks.clone(), query_images=episode.query_images.clone())
        assert inference_episode.support_masks.is_inference()
        prediction = method.predict(inference_episode)
    assert torch.equal(prediction.fg_probs, expected.fg_probs)
