"""Settings that benchmarks read (each ignores the ones it does not need), built by the CLI.

It lives in the core so that the core can build a benchmark from settings without importing
benchmarks/; the benchmarks themselves import it from benchmarks.base.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class BenchmarkOptions:
    """Settings that some benchmarks read; each ignores the ones it does not need."""

    protocol: str = "hsnet"
    split_dir: Path | None = None
    class_split: str = "interleaved"
    # Skip image/mask pairs found broken while indexing (and report how many) instead of stopping.
    skip_bad: bool = False
    # coco_json: the on-disk layout ("auto", "separate_json", "unified", "separate"), the number of
    # folds over the categories, or explicit novel-class lists (one list of category ids per fold).
    layout: str = "auto"
    folds: int | None = None
    fold_classes: list[list[int]] | None = None
    # coco_json: train on every category (no held-out fold), for deployment.
    all_classes: bool = False
