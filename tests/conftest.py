"""Shared fixtures: a tiny generated copy of the shapes benchmark (seconds), reused by every test."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import benchmarks  # noqa: E402,F401  (registers benchmarks)
import methods  # noqa: E402,F401  (registers methods)
from benchmarks.shapes import Shapes, generate  # noqa: E402

torch.set_num_threads(2)

TINY_IMAGES = {"train": 160, "val": 200}


@pytest.fixture(scope="session")
def tiny_datapath(tmp_path_factory) -> Path:
    """A datapath folder holding a small shapes tree (same generator, fewer images)."""
    datapath = tmp_path_factory.mktemp("data")
    generate(datapath / "shapes", images_per_split=TINY_IMAGES)
    return datapath


@pytest.fixture(scope="session")
def tiny_shapes(tiny_datapath) -> Shapes:
    return Shapes(tiny_datapath, fold=0)


# Calls made by unpickling a payload: a loader that runs anything from a file would append here.
UNPICKLED_CALLS: list = []


def record_call(*arguments):
    """What a malicious pickle would run (importable by name, as pickle requires)."""
    UNPICKLED_CALLS.append(arguments)
    return 0


@pytest.fixture
def ifsl_callbacks(monkeypatch):
    """A module named like iFSL's common.callbacks, so torch.save names its classes as iFSL's
    Lightning checkpoints do: CustomCheckpoint (the key of their 'callbacks' entry) and Dangerous,
    whose unpickling would call record_call. module.calls is that record, emptied per test."""
    package, module = types.ModuleType("common"), types.ModuleType("common.callbacks")

    class CustomCheckpoint:
        pass

    class Dangerous:
        def __reduce__(self):
            return (record_call, ("this must never run",))

    for cls in (CustomCheckpoint, Dangerous):
        cls.__module__, cls.__qualname__ = "common.callbacks", cls.__name__
        setattr(module, cls.__name__, cls)
    UNPICKLED_CALLS.clear()
    module.calls = UNPICKLED_CALLS
    monkeypatch.setitem(sys.modules, "common", package)
    monkeypatch.setitem(sys.modules, "common.callbacks", module)
    return module
