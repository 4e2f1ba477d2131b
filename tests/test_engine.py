"""The engine: parameter groups get their learning rates, schedules as data, curves, training labels
for any number of classes, the padding rule, and resume after kill -9 giving identical weights."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from fsbench.errors import FsbenchError
from fsbench.checkpoint import load_checkpoint
from fsbench.engine.data import label_lookup, to_training_labels, training_label_count, training_label_of
from fsbench.engine.fit import FitSettings, fit
from fsbench.engine.padding import pad_episode, predict_padded
from fsbench.engine.plan import Optimiser, ParameterGroup, Schedule, TrainingStage
from fsbench.episode import IGNORE_INDEX, Prediction
from fsbench.registry import METHODS
from fsbench.sampler import EpisodeSampler
from fsbench.transforms import SquashResize
from methods.base import Method, MethodConfig

ROOT = Path(__file__).resolve().parents[1]


class TwoGroups(Method):
    """A toy method: loss = a + b, with b in a group at 10x the learning rate."""

    registry_name = "two_groups"

    def __init__(self, config=None, device="cpu"):
        super().__init__(config or MethodConfig(), device)
        self.holder = nn.Module()
        self.holder.a = nn.Parameter(torch.zeros(()))
        self.holder.b = nn.Parameter(torch.zeros(()))

    def modules(self):
        return {"holder": self.holder}

    def predict(self, episode):
        raise AssertionError("not used")

    def training_stages(self, context):
        return [TrainingStage(
            name="train", steps=context.steps, data="images", batch_size=1,
            optimiser=Optimiser("sgd", lr=0.5, momentum=0.0),
            schedule=Schedule("step", milestones=(0.5,), gamma=0.1),
            parameter_groups=lambda: [ParameterGroup("a", [self.holder.a]), ParameterGroup("b", [self.holder.b], lr_multiplier=10.0)],
            loss=lambda batch, step: {"loss": self.holder.a + self.holder.b},
        )]


def test_each_parameter_group_gets_its_learning_rate_and_the_schedule_applies(tiny_shapes, tmp_path):
    method = TwoGroups()
    rows = []
    fit(method, tiny_shapes, FitSettings(steps=4, transform=SquashResize(32), progress=False, on_step=lambda step, row: rows.append(row)), tmp_path)
    # d(a + b)/da = d/db = 1: a moves by -lr each update, b by -10 lr; lr 0.5 for updates 0-1, 0.05 after.
    assert method.holder.a.item() == pytest.approx(-(0.5 + 0.5 + 0.05 + 0.05))
    assert method.holder.b.item() == pytest.approx(-10 * (0.5 + 0.5 + 0.05 + 0.05))
    assert [row["lr"] for row in rows] == pytest.approx([0.5, 0.5, 0.05, 0.05])
    with open(tmp_path / "train_log.csv") as handle:
        logged = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in logged] == [1, 2, 3, 4]
    assert (tmp_path / "train_curves.png").is_file()


def test_schedules_are_pure_functions_of_the_step():
    assert Schedule("step", milestones=(1 / 3, 2 / 3)).factor(9999, 30000) == 1.0
    assert Schedule("step", milestones=(1 / 3, 2 / 3)).factor(10000, 30000) == pytest.approx(0.1)
    assert Schedule("step", milestones=(1 / 3, 2 / 3)).factor(20000, 30000) == pytest.approx(0.01)
    assert Schedule("cosine").factor(0, 8) == 1.0 and Schedule("cosine").factor(4, 8) == pytest.approx(0.5)
    assert Schedule("poly", power=0.9).factor(5, 10) == pytest.approx(0.5**0.9)


def test_validation_rows_come_at_their_interval(tiny_shapes, tmp_path):
    method = TwoGroups()
    calls = []

    def validate(trained, sampler):
        calls.append(len(sampler))
        assert set(sampler.class_ids) <= set(tiny_shapes.classes("train"))  # never the test fold's classes
        return {"miou": 12.5, "er": 50.0}

    fit(method, tiny_shapes, FitSettings(steps=6, transform=SquashResize(32), progress=False, validate_every=2,
                                         validation_episodes=3, validate=validate), tmp_path)
    with open(tmp_path / "train_log.csv") as handle:
        logged = list(csv.DictReader(handle))
    assert calls == [3, 3, 3]
    assert [row["val_miou"] for row in logged] == ["", "12.5", "", "12.5", "", "12.5"]


def test_training_labels_never_collide_with_ignore_for_fss_sized_class_counts():
    base_classes = [class_id for class_id in range(1, 1002) if class_id != 255][:520]  # FSS-1000's 520
    lookup = label_lookup(base_classes)
    labels = [int(lookup[class_id]) for class_id in base_classes]
    assert len(set(labels)) == 520 and IGNORE_INDEX not in labels and 0 not in labels
    assert max(labels) < training_label_count(520) == 522
    assert training_label_of(253) == 254 and training_label_of(254) == 256
    label_map = torch.tensor([[0, 255, base_classes[300]], [base_classes[0], 999999, base_classes[519]]])
    assert to_training_labels(label_map, lookup).tolist() == [[0, 255, 302], [1, 0, 521]]


def test_fss_sized_training_runs(tmp_path):
    """520 base classes train (they used to stop with an IndexError in the label lookup)."""
    from fsbench.fixtures import make_fss
    from fsbench.benchmark_options import BenchmarkOptions
    from benchmarks.fss import Fss1000

    make_fss(tmp_path, classes=1000, per_class=2, size=16)
    benchmark = Fss1000(tmp_path, 0, BenchmarkOptions())
    assert len(benchmark.classes("train")) == 520
    for name in ("dml_knn", "mtl_unet"):
        method_class = METHODS.get(name)
        config = method_class.Config.quick().with_overrides({"batch_size": 2}, name)
        method = method_class(config, "cpu")
        fit(method, benchmark, FitSettings(steps=2, transform=SquashResize(32), progress=False), None)


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_takes_any_size_through_the_padding_rule(name, tiny_shapes):
    """Odd sizes no network takes as they are (not multiples of 8 or 32): the shared rule pads and
    crops, so every method answers at the input's own size."""
    method_class = METHODS.get(name)
    method = method_class(method_class.Config.quick(), "cpu").eval()
    sampler = EpisodeSampler(tiny_shapes, "test", way=2, shot=1, episodes=2, task="fscs", transform=SquashResize(45))
    episode = sampler[1]
    height, width = method.valid_size(45, 45)
    assert height >= 45 and width >= 45
    with torch.inference_mode():
        prediction = predict_padded(method, episode.without_query_labels())
    assert prediction.fg_probs.shape == (1, 2, 45, 45) and prediction.labels().shape == (1, 45, 45)


def test_padding_marks_padded_pixels_ignore_and_zero():
    from fsbench.episode import Episode

    episode = Episode(
        support_images=torch.ones(1, 1, 3, 5, 7), support_masks=torch.ones(1, 1, 5, 7, dtype=torch.long),
        query_images=torch.ones(1, 3, 5, 7), query_masks=torch.ones(1, 5, 7, dtype=torch.long),
        class_ids=torch.tensor([3]), query_presence=torch.ones(1, 1, dtype=torch.bool),
    )
    padded = pad_episode(episode, (8, 8))
    assert padded.query_images.shape == (1, 3, 8, 8) and padded.support_masks.shape == (1, 1, 8, 8)
    assert padded.query_images[..., 5:, :].abs().sum() == 0 and padded.query_images[..., :, 7:].abs().sum() == 0
    assert (padded.support_masks[..., 5:, :] == IGNORE_INDEX).all() and (padded.query_masks[..., :, 7:] == IGNORE_INDEX).all()
    assert (padded.support_masks[..., :5, :7] == 1).all()
    prediction = Prediction.from_probabilities(torch.rand(1, 1, 8, 8))
    assert prediction.cropped(5, 7).fg_probs.shape == (1, 1, 5, 7)


def _run(arguments: list[str], datapath: Path, **popen) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    command = [sys.executable, str(ROOT / "main.py"), "--datapath", str(datapath), "--no-progress", "--nworker", "0", *arguments]
    return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def test_resume_after_kill_gives_the_uninterrupted_weights(tiny_datapath, tmp_path):
    """mtl_unet (an image stage, then an episode stage) killed with SIGKILL at a random moment of
    training, then --resume: the final weights equal an uninterrupted run's, bit for bit."""
    arguments = ["--method", "mtl_unet", "--train-steps", "8", "--checkpoint-every", "1", "--img-size", "32",
                 "--episodes", "2", "--bsz", "2", "--set", "inner_steps=2", "--val-every", "0"]
    reference = _run([*arguments, "--logpath", str(tmp_path / "reference")], tiny_datapath)
    assert reference.wait(timeout=600) == 0, reference.stderr.read()

    stop_after = int(np.random.default_rng().integers(1, 8))  # rows logged before the kill: a random step
    killed_dir = tmp_path / "killed"
    victim = _run([*arguments, "--logpath", str(killed_dir)], tiny_datapath)
    log = killed_dir / "train_log.csv"
    deadline = time.monotonic() + 600
    while victim.poll() is None and time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) - 1 >= stop_after:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, f"the run ended before the kill ({victim.returncode})"
    assert not (killed_dir / "results.json").exists()

    resumed = _run(["--resume", str(killed_dir)], tiny_datapath)
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    expected, _ = load_checkpoint(tmp_path / "reference" / "model.safetensors")
    actual, metadata = load_checkpoint(killed_dir / "model.safetensors")
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected), f"weights differ after a kill at step {stop_after}"
    assert (killed_dir / "results.json").is_file()
    with open(killed_dir / "train_log.csv") as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, 9))


def test_the_core_imports_nothing_from_methods_or_benchmarks():
    """fsbench/ (the core) never imports methods/ or benchmarks/, except cli.py, which registers
    them, and the measuring scripts in fsbench/perf/."""
    import ast

    offenders = []
    for path in sorted((ROOT / "fsbench").rglob("*.py")):
        relative = path.relative_to(ROOT / "fsbench").as_posix()
        if relative == "cli.py" or relative.startswith("perf/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{relative}: {name}" for name in names if name.split(".")[0] in ("methods", "benchmarks")]
    assert not offenders


def test_amp_auto_is_bf16_only_for_the_quick_profile_on_native_bf16(monkeypatch):
    from fsbench.engine import batched

    cpu = torch.device("cpu")
    assert batched.resolve_amp("off", cpu, quick=True) == "off"
    assert batched.resolve_amp("bf16", cpu, quick=False) == "bf16"
    monkeypatch.setattr(batched, "native_bf16", lambda device: True)
    assert batched.resolve_amp("auto", cpu, quick=True) == "bf16"
    assert batched.resolve_amp("auto", cpu, quick=False) == "off"  # protocol runs stay float32
    monkeypatch.setattr(batched, "native_bf16", lambda device: False)
    assert batched.resolve_amp("auto", cpu, quick=True) == "off"  # emulated bf16 would be slower


def test_bf16_is_refused_in_one_line_for_a_method_whose_cpu_kernels_fail():
    from fsbench.engine.batched import check_amp
    from fsbench.registry import METHODS

    with pytest.raises(FsbenchError, match="cannot run --amp bf16 on the CPU"):
        check_amp("bf16", torch.device("cpu"), METHODS.get("asnet"))
    check_amp("off", torch.device("cpu"), METHODS.get("asnet"))
    check_amp("bf16", torch.device("cpu"), METHODS.get("dml_knn"))
    assert METHODS.get("dml_knn").auto_bf16 and not METHODS.get("panet").auto_bf16


def test_loader_workers_default_to_none_on_the_cpu_and_two_with_an_accelerator():
    from fsbench.engine.data import resolve_nworker

    assert resolve_nworker(None, torch.device("cpu")) == 0
    assert resolve_nworker(None, torch.device("cuda")) == 2
    assert resolve_nworker(3, torch.device("cpu")) == 3
