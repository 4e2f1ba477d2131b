"""What a built table is: cells, columns, one metric's table, the options that shaped it.

fsbench.tables builds these from runs; fsbench.table_formats renders them. Both import this module
and neither imports the other's direction back (tables -> table_formats -> table_model).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

RowKey = tuple  # (method, backbone, train_steps or None)


@dataclass
class Cell:
    """One number of a table and everything needed to compare it with its column's other cells."""

    value: float
    run_dirs: list[str]
    seeds: tuple[int, ...]
    # Identifies the episodes behind the cell; two cells are comparable only when these are equal.
    fingerprints: tuple
    interval: tuple[float, float] | None = None
    replicates: np.ndarray | None = None  # [resamples] bootstrap replicates of ``value``
    scores: np.ndarray | None = None  # per-episode scores, for the Wilcoxon test
    best: bool = False
    significant: bool = False
    # Against the column's best row; for the best row itself, its largest p against any other row.
    p_value: float | None = None
    episode_set: str = ""  # a letter when the column mixes episode sets, else ""


@dataclass
class Column:
    way: int
    shot: int
    fold: int | None  # None: the mean of the folds
    cells: dict = field(default_factory=dict)  # RowKey -> Cell
    comparable: bool = True


@dataclass
class MetricTable:
    """One metric for one setting: rows x (way/shot groups x folds + mean)."""

    metric: str
    setting: dict
    rows: list
    row_labels: dict
    groups: list  # [(way, shot)]
    columns: list
    notes: list = field(default_factory=list)  # [(way, shot) or None, text]


@dataclass
class TableOptions:
    confidence: bool = True  # show bootstrap intervals
    significance: bool = True  # paired tests between rows on the same episodes
    resamples: int = 1000
    level: float = 0.95
    seed: int = 0
    test: str = "bootstrap"  # or "wilcoxon"
    # run folder -> {metric: replicates}: shared by the tables of all metrics, so each run is resampled once.
    replicate_cache: dict = field(default_factory=dict, repr=False)

    @property
    def needs_episodes(self) -> bool:
        return self.confidence or self.significance


def group_label(way: int, shot: int, ways: set) -> str:
    """"1-shot" when every group of the table is 1-way, else "2-way 1-shot"."""
    return f"{shot}-shot" if ways == {1} else f"{way}-way {shot}-shot"
