"""The fast evaluation paths give the answers of the plain one: batched episodes, the encoding cache,
decoded-image reuse, mixed precision, and torchrun's 2 processes against 1."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fsbench.engine.batched import EncodingCache, predict_episodes
from fsbench.engine.evaluate import EvaluationSettings, evaluate
from fsbench.engine.padding import predict_padded
from fsbench.registry import METHODS
from fsbench.sampler import EpisodeSampler
from fsbench.transforms import SquashResize

ROOT = Path(__file__).resolve().parents[1]


def _method(name: str):
    method_class = METHODS.get(name)
    torch.manual_seed(0)
    return method_class(method_class.Config.quick(), "cpu").eval()


def _sampler(benchmark, way: int = 1, shot: int = 1, episodes: int = 6, image_cache_mb: float = 256) -> EpisodeSampler:
    return EpisodeSampler(benchmark, "test", way=way, shot=shot, episodes=episodes, task="fss" if way == 1 else "fscs",
                          transform=SquashResize(48), image_cache_mb=image_cache_mb)


@pytest.mark.parametrize("name", METHODS.names())
def test_batched_and_cached_predictions_equal_one_episode_at_a_time(name, tiny_shapes):
    method = _method(name)
    episodes = [_sampler(tiny_shapes, way=2, shot=2)[index] for index in range(4)]
    with torch.inference_mode():
        expected = [predict_padded(method, episode) for episode in episodes]
        cache = EncodingCache(64)
        batched = predict_episodes(method, episodes, cache)
        again = predict_episodes(method, episodes, cache)  # every image now comes from the cache
    for reference, first, second in zip(expected, batched, again):
        assert torch.allclose(reference.fg_probs, first.fg_probs, atol=1e-5)
        assert torch.equal(first.fg_probs, second.fg_probs) and torch.equal(first.presence, second.presence)
    if method.encodes_images:
        assert cache.stats()["hits"] > 0


def test_the_cache_holds_what_a_fresh_encode_gives_and_switches_off_when_too_small(tiny_shapes):
    method = _method("panet")
    episode = _sampler(tiny_shapes)[0]
    cache = EncodingCache(64)
    with torch.inference_mode():
        predict_episodes(method, [episode], cache)
        key = (episode.query_ids[0], 48, 48)
        # (Encoded in a batch with the support, so equal up to the order of float additions.)
        assert torch.allclose(cache.get(key), method.encode(episode.query_images)[0], atol=1e-5)
        tiny = EncodingCache(0.001)
        predict_episodes(method, [episode], tiny)
    assert "fewer than" in tiny.stats()["off"]


def test_evaluation_settings_do_not_change_the_scores(tiny_shapes):
    method = _method("dml_knn")
    reference = evaluate(method, _sampler(tiny_shapes, episodes=8, image_cache_mb=0), EvaluationSettings(progress=False, feature_cache_mb=0), {})
    for settings in (EvaluationSettings(progress=False, batch_size=3), EvaluationSettings(progress=False, batch_size=8, nworker=2)):
        scores = evaluate(method, _sampler(tiny_shapes, episodes=8), settings, {})
        for metric in ("miou", "fbiou", "er"):
            assert scores[metric] == pytest.approx(reference[metric], abs=1e-6)
        assert scores["episodes"] == 8


def test_bf16_runs_and_stays_close(tiny_shapes):
    method = _method("panet")
    plain = evaluate(method, _sampler(tiny_shapes, episodes=6), EvaluationSettings(progress=False), {})
    mixed = evaluate(method, _sampler(tiny_shapes, episodes=6), EvaluationSettings(progress=False, amp="bf16"), {})
    assert mixed["episodes"] == 6 and abs(mixed["fbiou"] - plain["fbiou"]) < 10


def _command(arguments: list[str], processes: int) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*(launcher if processes > 1 else [sys.executable]), str(ROOT / "main.py"), *arguments]


def test_torchrun_two_processes_equal_one(tiny_datapath, tmp_path):
    """2 processes (gloo, CPU) shard the episodes; rank 0 writes results.json and episodes.csv equal
    to a single process's."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--datapath", str(tiny_datapath), "--method", "panet", "--train-steps", "0", "--episodes", "7",
              "--img-size", "48", "--nworker", "0", "--no-progress", "--way", "2"]
    outputs = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"p{processes}"
        done = subprocess.run(_command([*common, "--logpath", str(run_dir)], processes), cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[processes] = run_dir
    import json

    single, double = (json.loads((outputs[count] / "results.json").read_text()) for count in (1, 2))
    for key in ("miou", "fbiou", "er", "episodes", "episode_fingerprint", "class_iou"):
        assert single[key] == double[key], key
    assert double["processes"] == 2
    assert (outputs[1] / "episodes.csv").read_text() == (outputs[2] / "episodes.csv").read_text()
