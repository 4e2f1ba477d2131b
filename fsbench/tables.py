"""Runs -> paper tables: cells (mean over a cell's runs, fold mean, bootstrap interval), comparisons
between rows evaluated on the same episodes, and the entry points the CLI calls.

Layout: one table per metric and setting (SETTING_KEYS: benchmark, data, class split, task, protocol,
replay, boundary, evaluation resolution); rows are method (+ backbone); columns are each fold and the
arithmetic mean of the folds, grouped by way/shot. A cell averages the runs of one row, setting, way,
shot and fold, which then differ only in their episodes (seeds).
Rendering to markdown / LaTeX / CSV lives in fsbench/table_formats.py, the table data classes in
fsbench/table_model.py; the imports go one way: tables -> table_formats -> table_model.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fsbench.bootstrap import (  # noqa: F401  (bootstrap_interval and paired_test are part of this module's API)
    METRICS,
    TESTS,
    bootstrap_interval,
    bootstrap_replicates_all,
    episode_scores,
    interval_from_replicates,
    paired_bootstrap_p_value,
    paired_test,
    wilcoxon_p_value,
)
from fsbench.errors import FsbenchError
from fsbench.run_records import (  # noqa: F401  (collect_runs: API)
    RUN_COLUMNS,
    check_results,
    collect_runs,
    find_run_folders,
    read_episode_counts,
    read_runs,
    run_record,
)
from fsbench.table_formats import render_run_row, render_tables
from fsbench.table_model import Cell, Column, MetricTable, RowKey, TableOptions, group_label  # noqa: F401  (API)

# Runs share a table only when all of these agree (way and shot then split its column groups, the fold
# its columns). "data" is the dataset identity for all folds and "lists" a fold's list fingerprint, set
# only where one fold holds runs on different lists of otherwise equal data (see _split_by_lists).
SETTING_KEYS = ("benchmark", "data", "lists", "class_split", "task", "protocol", "replay", "boundary", "eval_resolution")
FORMATS = ("markdown", "latex", "csv")
SIGNIFICANCE_LEVEL = 0.05


def run_bootstrap_seed(seed: int, fingerprint: str) -> list[int]:
    """The bootstrap seed of one run: the table seed and its episode fingerprint.

    Runs on the same episodes share resamples (so the bootstrap is paired); runs on different
    episodes - the folds of a mean, the seeds of a cell - are resampled independently.
    """
    return [seed, int(hashlib.sha256(fingerprint.encode()).hexdigest()[:16], 16)]


UNKNOWN_STEPS = "?"


def _steps_of(runs: pd.DataFrame) -> pd.Series:
    """Each run's training steps, UNKNOWN_STEPS where results.json does not say."""
    return runs["train_steps"].map(lambda value: UNKNOWN_STEPS if value is None or pd.isna(value) else int(value))


def _row_keys(frame: pd.DataFrame) -> tuple[list, dict]:
    """Rows: (method, backbone), split further by training steps only where one method+backbone has
    runs with several (e.g. trained and untrained), so such runs are never averaged together."""
    keys, labels = [], {}
    for (method, backbone), runs in frame.groupby(["method", "backbone"], sort=True):
        steps = sorted(set(_steps_of(runs)), key=lambda step: (step == UNKNOWN_STEPS, 0 if step == UNKNOWN_STEPS else step))
        for step in steps if len(steps) > 1 else [None]:
            key = (method, backbone, step)
            keys.append(key)
            details = [backbone] if backbone else []
            if step is not None:
                details.append("steps unknown" if step == UNKNOWN_STEPS else f"{step} steps")
            labels[key] = f"{method} ({', '.join(details)})" if details else method
    return keys, labels


def _runs_of_row(frame: pd.DataFrame, key: RowKey) -> pd.DataFrame:
    method, backbone, step = key
    selected = (frame["method"] == method) & (frame["backbone"] == backbone)
    if step is not None:
        selected &= _steps_of(frame) == step
    return frame[selected]


def _fold_cell(runs: pd.DataFrame, metric: str, options: TableOptions, label: str) -> Cell:
    """Mean over the runs of one row at one fold (several seeds = several episode sets)."""
    per_episode_set: dict[str, list[str]] = {}
    for fingerprint, run_dir in zip(runs["episode_fingerprint"], runs["run_dir"]):
        per_episode_set.setdefault(fingerprint, []).append(run_dir)
    repeated = sorted((fingerprint, run_dirs) for fingerprint, run_dirs in per_episode_set.items() if len(run_dirs) > 1)
    if repeated:
        sets = "; ".join(f"{len(run_dirs)} on episodes {fingerprint[:8]}: {', '.join(run_dirs)}" for fingerprint, run_dirs in repeated)
        raise FsbenchError(
            f"{sum(len(run_dirs) for _, run_dirs in repeated)} evaluations of {label} repeat the same episodes ({sets}); "
            "pass one run per episode set"
        )
    runs = runs.sort_values("episode_fingerprint")
    cell = Cell(
        value=float(np.mean(runs[metric].to_numpy(dtype=np.float64))),
        run_dirs=runs["run_dir"].tolist(),
        seeds=tuple(int(seed) for seed in runs["seed"]),
        fingerprints=tuple(runs["episode_fingerprint"]),
    )
    if options.needs_episodes:
        replicates = []
        for run_dir, counts, fingerprint in zip(runs["run_dir"], runs["counts"], runs["episode_fingerprint"]):
            if run_dir not in options.replicate_cache:
                seed = run_bootstrap_seed(options.seed, fingerprint)
                options.replicate_cache[run_dir] = bootstrap_replicates_all(counts, options.resamples, seed)
            replicates.append(options.replicate_cache[run_dir][metric])
        cell.replicates = np.mean(replicates, axis=0)
        cell.scores = np.concatenate([episode_scores(counts, metric) for counts in runs["counts"]])
        if options.confidence:
            cell.interval = interval_from_replicates(cell.replicates, options.level)
    return cell


def _mean_cell(fold_cells: dict, folds: list[int], options: TableOptions) -> Cell:
    """Arithmetic mean of the fold cells; its replicates are the mean of theirs (folds resampled independently)."""
    cells = [fold_cells[fold] for fold in folds]
    cell = Cell(
        value=float(np.mean([item.value for item in cells])),
        run_dirs=[run for item in cells for run in item.run_dirs],
        seeds=tuple(seed for item in cells for seed in item.seeds),
        fingerprints=tuple((fold, fold_cells[fold].fingerprints) for fold in folds),
    )
    if options.needs_episodes:
        cell.replicates = np.mean([item.replicates for item in cells], axis=0)
        cell.scores = np.concatenate([item.scores for item in cells])
        if options.confidence:
            cell.interval = interval_from_replicates(cell.replicates, options.level)
    return cell


def _column_name(way: int, shot: int, fold: int | None, ways: set) -> str:
    return f"{group_label(way, shot, ways)} {'mean' if fold is None else f'fold {fold}'}"


def _describe_fingerprints(fingerprints: tuple) -> str:
    if fingerprints and isinstance(fingerprints[0], tuple):  # a mean column: per-fold sets
        return "; ".join(f"fold {fold}: {', '.join(print_[:8] for print_ in prints)}" for fold, prints in fingerprints)
    return ", ".join(print_[:8] for print_ in fingerprints)


def _compare(column: Column, table: MetricTable, options: TableOptions, ways: set) -> None:
    """Mark the best row of a column and test it against the others - only on shared episodes."""
    cells = column.cells
    if len(cells) < 2:
        return
    name = _column_name(column.way, column.shot, column.fold, ways)
    episode_sets: dict = {}
    for key in table.rows:
        if key in cells:
            episode_sets.setdefault(cells[key].fingerprints, []).append(key)
    if len(episode_sets) > 1:
        column.comparable = False
        parts = []
        for letter, (fingerprints, keys) in zip("abcdefghijklmnopqrstuvwxyz", episode_sets.items()):
            for key in keys:
                cells[key].episode_set = letter
            seeds = sorted({seed for key in keys for seed in cells[key].seeds})
            rows = ", ".join(table.row_labels[key] for key in keys)
            parts.append(f"({letter}) {rows} [seed {', '.join(map(str, seeds))}; episodes {_describe_fingerprints(fingerprints)}]")
        table.notes.append(
            ((column.way, column.shot), f"Not compared, {name}: the rows saw different episodes: {' vs '.join(parts)}.")
        )
        return
    ranked = sorted(cells, key=lambda key: cells[key].value, reverse=True)
    best = cells[ranked[0]]
    ties = [key for key in ranked[1:] if cells[key].value == best.value]
    if len(ties) == len(ranked) - 1:
        return  # every row scores the same: there is no best to mark
    for key in ranked[: len(ties) + 1]:
        cells[key].best = True
    if not options.significance:
        return
    p_values = []
    for key in ranked[1:]:
        other = cells[key]
        if options.test == "bootstrap":
            other.p_value = paired_bootstrap_p_value(best.replicates, other.replicates)
        else:
            other.p_value = wilcoxon_p_value(best.scores, other.scores)
        p_values.append(other.p_value)
    best.p_value = max(p_values)
    best.significant = not ties and best.p_value < SIGNIFICANCE_LEVEL


def _split_by_lists(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a "lists" column: each run's list fingerprint where its setting holds runs of one
    fold on different lists, else "".

    Such runs come from data that changed under the same description (a dataset regenerated in place,
    explicit --fold-classes): nothing says which lists of one fold belong with which of another, so
    each list set gets a table of its own, without a fold mean across them.
    """
    frame = frame.assign(lists="")
    others = [key for key in SETTING_KEYS if key != "lists"]
    for _, runs in frame.groupby(others, sort=False):
        if (runs.groupby("fold")["list_fingerprint"].nunique() > 1).any():
            frame.loc[runs.index, "lists"] = runs["list_fingerprint"].map(lambda fingerprint: fingerprint or "not recorded")
    return frame


def _data_labels(settings: list[dict]) -> list[str]:
    """For each setting, what tells its data apart from that of other tables of the same benchmark:
    the benchmark_info entries that differ between them ("" where a benchmark has one dataset only)."""
    labels = []
    for setting in settings:
        siblings = {other["data"] for other in settings if other["benchmark"] == setting["benchmark"]}
        if len(siblings) < 2:
            labels.append("")
            continue
        if not setting["data"]:
            labels.append("not recorded")
            continue
        described = [json.loads(data) if data else {} for data in siblings]
        own = json.loads(setting["data"])
        keys = sorted({key for other in described for key in other})
        differing = [key for key in keys if any(other.get(key) != own.get(key) for other in described)]
        labels.append(", ".join(f"{key} {_text(own[key])}" if key in own else f"{key} not recorded" for key in differing))
    return labels


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def data_id(data: str) -> str:
    """A short stable name of a run's data identity (12 hex digits of its sha256; "" when not recorded)."""
    return hashlib.sha256(data.encode()).hexdigest()[:12] if data else ""


def build_tables(frame: pd.DataFrame, metric: str, options: TableOptions | None = None) -> list[MetricTable]:
    """The tables of one metric: one per setting, in sorted setting order."""
    options = options or TableOptions()
    if options.test not in TESTS:
        raise FsbenchError(f"unknown significance test {options.test!r}; available: {', '.join(TESTS)}")
    frame = _split_by_lists(frame)
    settings = [(dict(zip(SETTING_KEYS, values)), runs) for values, runs in frame.groupby(list(SETTING_KEYS), sort=True)]
    for (setting, _), label in zip(settings, _data_labels([setting for setting, _ in settings])):
        setting.update(data_label=label, data_id=data_id(setting["data"]))
    tables = []
    for setting, setting_runs in settings:
        rows, labels = _row_keys(setting_runs)
        groups = sorted({(int(way), int(shot)) for way, shot in zip(setting_runs["way"], setting_runs["shot"])})
        ways = {way for way, _ in groups}
        table = MetricTable(metric, setting, rows, labels, groups, columns=[])
        for way, shot in groups:
            group_runs = setting_runs[(setting_runs["way"] == way) & (setting_runs["shot"] == shot)]
            folds = sorted({int(fold) for fold in group_runs["fold"]})
            fold_columns = {fold: Column(way, shot, fold) for fold in folds}
            mean_column = Column(way, shot, None)
            for key in rows:
                row_runs = _runs_of_row(group_runs, key)
                fold_cells = {}
                for fold in folds:
                    runs = row_runs[row_runs["fold"] == fold]
                    if len(runs):
                        label = f"{labels[key]} {_column_name(way, shot, fold, ways)}"
                        fold_cells[fold] = fold_columns[fold].cells[key] = _fold_cell(runs, metric, options, label)
                missing = [fold for fold in folds if fold not in fold_cells]
                if fold_cells and not missing:
                    mean_column.cells[key] = _mean_cell(fold_cells, folds, options)
                elif fold_cells:
                    table.notes.append(((way, shot), f"No {_column_name(way, shot, None, ways)} for {labels[key]}: no run for fold {', '.join(map(str, missing))}."))
            for column in [*fold_columns.values(), mean_column]:
                _compare(column, table, options, ways)
                table.columns.append(column)
        tables.append(table)
    return tables


def _require_format(format: str) -> None:
    if format not in FORMATS:
        raise FsbenchError(f"unknown table format {format!r}; available: {', '.join(FORMATS)}")


def render_table(frame: pd.DataFrame, metric: str, format: str = "markdown", options: TableOptions | None = None) -> str:
    """One metric's tables for the runs of ``frame`` (from collect_runs) in ``format``."""
    _require_format(format)
    options = options or TableOptions()
    return render_tables(build_tables(frame, metric, options), format, options)


def main_table(
    patterns: list[str],
    format: str = "markdown",
    confidence: bool = True,
    seed: int = 0,
    metrics: tuple[str, ...] = METRICS,
    test: str = "bootstrap",
    resamples: int = 1000,
) -> str:
    """Collect the runs that ``patterns`` name and render every metric's tables (what --table prints)."""
    _require_format(format)
    # Without intervals nothing reads episodes.csv, so there are no paired tests either: a fast, plain table.
    options = TableOptions(confidence=confidence, significance=confidence, resamples=resamples, seed=seed, test=test)
    folders = find_run_folders(patterns)
    if folders.unfinished:  # on stderr, so that a table redirected to a file stays a table
        print(f"fsbench: note: {folders.note()}", file=sys.stderr)
    frame = read_runs(folders.finished, with_episodes=options.needs_episodes)
    tables = [table for metric in metrics for table in build_tables(frame, metric, options)]
    return render_tables(tables, format, options)


def format_run_row(results: dict, format: str = "markdown", episodes_csv: Path | None = None) -> str:
    """One run as a one-row table in ``format``: what an evaluation prints when it ends.

    With ``episodes_csv`` (the run's episodes.csv) the cells carry their bootstrap interval.
    """
    _require_format(format)
    results = check_results(results, "evaluation results")
    counts = read_episode_counts(Path(episodes_csv), results) if episodes_csv is not None else None
    options = TableOptions(confidence=counts is not None, significance=False)
    run_dir = str(episodes_csv.parent) if episodes_csv is not None else ""
    frame = pd.DataFrame.from_records([{**run_record(results, run_dir, counts), "train_steps": None}], columns=RUN_COLUMNS)
    tables = [build_tables(frame, metric, options)[0] for metric in METRICS]
    return render_run_row(tables, format, options)
