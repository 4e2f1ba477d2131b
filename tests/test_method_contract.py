"""Contract tests run over every registered method (the smp pattern: one class, every method)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fsbench.checkpoint import load_checkpoint, save_checkpoint
from fsbench.registry import METHODS
from fsbench.sampler import EpisodeSampler
from fsbench.engine.fit import FitSettings, fit
from fsbench.transforms import SquashResize

IMAGE_SIZE = 64


def tiny_method(name: str):
    method_class = METHODS.get(name)
    config = dataclasses.replace(method_class.Config.quick(), batch_size=2)
    torch.manual_seed(0)
    return method_class(config, "cpu")


def train(method, benchmark, steps: int) -> None:
    fit(method, benchmark, FitSettings(steps=steps, transform=SquashResize(IMAGE_SIZE), progress=False), run_dir=None)


def tiny_episode(benchmark, way: int, shot: int, index: int = 3):
    sampler = EpisodeSampler(benchmark, "test", way=way, shot=shot, episodes=8, seed=0,
                             task="fss" if way == 1 else "fscs", transform=SquashResize(IMAGE_SIZE))
    return sampler[index]


@pytest.fixture(scope="module", params=METHODS.names())
def trained_method(request, tiny_shapes):
    """Each method after a few training steps, so its state is not just the initialisation."""
    method = tiny_method(request.param)
    train(method, tiny_shapes, steps=2)
    method.eval()
    return method


@pytest.mark.parametrize("way,shot", [(1, 1), (1, 2), (2, 1)])
def test_prediction_shapes_and_ranges(trained_method, tiny_shapes, way, shot):
    episode = tiny_episode(tiny_shapes, way, shot)
    prediction = trained_method.predict(episode.without_query_labels())
    assert prediction.fg_probs.shape == (1, way, IMAGE_SIZE, IMAGE_SIZE)
    assert prediction.presence.shape == (1, way)
    for tensor in (prediction.fg_probs, prediction.presence):
        assert torch.isfinite(tensor).all() and tensor.min() >= 0 and tensor.max() <= 1
    assert prediction.labels().shape == (1, IMAGE_SIZE, IMAGE_SIZE)


def test_prediction_ignores_query_labels(trained_method, tiny_shapes):
    episode = tiny_episode(tiny_shapes, 2, 1)
    scrambled = dataclasses.replace(
        episode,
        query_masks=torch.randint(0, 3, episode.query_masks.shape),
        query_presence=~episode.query_presence,
    )
    first = trained_method.predict(episode)
    second = trained_method.predict(scrambled)
    assert torch.equal(first.fg_probs, second.fg_probs) and torch.equal(first.presence, second.presence)


def test_save_load_gives_identical_predictions(trained_method, tiny_shapes, tmp_path):
    path = tmp_path / "model.safetensors"
    save_checkpoint(path, trained_method.state_dict(), {"method": trained_method.registry_name})
    restored = tiny_method(trained_method.registry_name)
    state, metadata = load_checkpoint(path)
    restored.load_state_dict(state)
    restored.eval()
    assert metadata["method"] == trained_method.registry_name
    episode = tiny_episode(tiny_shapes, 1, 2)
    assert torch.equal(trained_method.predict(episode).fg_probs, restored.predict(episode).fg_probs)


def test_training_changes_the_state(tiny_shapes):
    for name in METHODS.names():
        method = tiny_method(name)
        before = {key: value.clone() for key, value in method.state_dict().items()}
        train(method, tiny_shapes, steps=1)
        after = method.state_dict()
        changed = [key for key in after if key not in before or before[key].shape != after[key].shape or not torch.equal(before[key], after[key])]
        assert changed, f"{name}: training changed nothing"
