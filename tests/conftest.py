"""Shared fixtures: a tiny generated copy of the shapes benchmark (seconds), reused by every test."""
from __future__ import annotations

import sys
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
