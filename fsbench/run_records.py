"""Reading finished runs: run folders from patterns, results.json checked, episodes.csv as episode sums.

A run folder is finished exactly when it holds results.json (written last); a folder with only
config.json / status.json is a run that failed, was interrupted or is still going, and is passed over
with a note. Everything here is input from disk that a person may have edited, moved or half-copied,
so each problem is a one-line FsbenchError naming the file.
"""
from __future__ import annotations

import glob
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fsbench.bootstrap import EpisodeCounts, point_score
from fsbench.errors import FsbenchError

# Keys a table cannot do without, with the type each must have.
REQUIRED_KEYS = {
    "method": str,
    "benchmark": str,
    "fold": int,
    "way": int,
    "shot": int,
    "seed": int,
    "episodes": int,
    "episode_fingerprint": str,
    "miou": float,
    "fbiou": float,
    "er": float,
    "class_iou": dict,
}
# Keys that split runs into separate tables; older or foreign runs without them still load.
SETTING_DEFAULTS = {"backbone": "", "task": "", "protocol": "", "eval_resolution": ""}
# Settings added later (episode replay, treatment of the Pascal boundary): absent or null reads as "".
OPTIONAL_SETTINGS = ("replay", "boundary")
# benchmark_info entries that describe one fold's lists rather than the data (or repeat a top-level
# key): left out of the data identity, so the folds of one dataset share a table. The lists
# themselves are compared fold by fold through list_fingerprint.
PER_FOLD_INFO = ("benchmark", "fold", "protocol", "class_split", "list_fingerprint", "pairs", "novel_classes", "skipped_bad_files")
# results.json rounds nothing, so a sum recomputed from episodes.csv must agree to float precision.
AGREEMENT_TOLERANCE = 1e-6
ERROR_PREVIEW = 80  # characters of a failed run's error shown in the note on unfinished runs


@dataclass
class UnfinishedRun:
    """A run folder without results.json; ``state`` and ``error`` as its status.json says ("" if it does not)."""

    folder: Path
    state: str = ""
    error: str = ""

    def describe(self) -> str:
        state = self.state or "state unknown"
        if self.error:
            state += f": {self.error.splitlines()[0][:ERROR_PREVIEW]}"
        return f"{self.folder} ({state})"


@dataclass
class RunFolders:
    finished: list[Path] = field(default_factory=list)
    unfinished: list[UnfinishedRun] = field(default_factory=list)

    def note(self) -> str:
        """One line naming the unfinished runs that were passed over ("" when there are none)."""
        if not self.unfinished:
            return ""
        runs = "; ".join(run.describe() for run in self.unfinished)
        return f"skipped {len(self.unfinished)} unfinished run{'s' if len(self.unfinished) > 1 else ''} (no results.json): {runs}"


def read_status(folder: Path) -> UnfinishedRun:
    """What an unfinished folder's status.json says; a missing or unreadable one only leaves it unknown."""
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return UnfinishedRun(folder)
    if not isinstance(status, dict):
        return UnfinishedRun(folder)
    state, error = status.get("state"), status.get("error")
    return UnfinishedRun(folder, state if isinstance(state, str) else "", error if isinstance(error, str) else "")


def is_run_folder(folder: Path) -> bool:
    """A run writes config.json first and results.json last; status.json marks one that did not finish."""
    return any((folder / name).is_file() for name in ("results.json", "config.json", "status.json"))


def find_run_folders(patterns: list[str]) -> RunFolders:
    """Run folders named by folders, results.json paths or glob patterns, in order, without repeats.

    Finished runs (with results.json) are returned for the table; unfinished ones (config.json or
    status.json but no results.json) are listed apart, for a note. A glob may also catch plain files
    beside the runs (logs/README.md); those are passed over. A pattern that names no finished run, or
    a folder that is no run at all, is an error.
    """
    if not patterns:
        raise FsbenchError("--table needs at least one run folder or glob pattern")
    folders = RunFolders()
    seen: set[Path] = set()
    for pattern in patterns:
        is_glob = glob.has_magic(pattern)
        matches = [Path(match) for match in (sorted(glob.glob(pattern, recursive=True)) if is_glob else [pattern])]
        finished, unfinished = 0, []
        for path in matches:
            if is_glob and path.is_file() and path.name != "results.json":
                continue
            if not path.exists():
                continue
            if path.is_file() and path.name != "results.json":
                raise FsbenchError(f"{path} is neither a run folder nor a results.json")
            folder = path.parent if path.is_file() else path
            if not is_run_folder(folder):
                raise FsbenchError(f"{folder} has no results.json (pass run folders, e.g. logs/*)")
            new = folder.resolve() not in seen
            seen.add(folder.resolve())
            if (folder / "results.json").is_file():
                finished += 1
                folders.finished += [folder] if new else []
            else:
                unfinished.append(read_status(folder))
                folders.unfinished += unfinished[-1:] if new else []
        if not finished and unfinished:
            listed = "; ".join(run.describe() for run in unfinished)
            raise FsbenchError(f"{pattern} names no finished run, only {len(unfinished)} unfinished (no results.json): {listed}")
        if not finished:
            raise FsbenchError(f"{pattern} matches no run folder")
    return folders


def read_results(path: Path) -> dict:
    """results.json, checked for every key a table needs."""
    try:
        results = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise FsbenchError(f"malformed results.json {path}: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FsbenchError(f"cannot read {path}: {error}") from None
    return check_results(results, f"results.json {path}")


def check_results(results: object, source: str) -> dict:
    """``results`` with every key a table needs checked; ``source`` names it in the error message."""
    if not isinstance(results, dict):
        raise FsbenchError(f"malformed {source}: expected a JSON object")
    for key, kind in REQUIRED_KEYS.items():
        if key not in results:
            raise FsbenchError(f"malformed {source}: missing {key!r}")
        value = results[key]
        # bool is an int in Python; a flag where a number belongs is still malformed.
        wrong = isinstance(value, bool) or not (
            isinstance(value, (int, float)) and math.isfinite(value) if kind is float else isinstance(value, kind)
        )
        if wrong:
            raise FsbenchError(f"malformed {source}: {key!r} should be {kind.__name__}, got {value!r}")
    if not results["class_iou"]:
        raise FsbenchError(f"malformed {source}: 'class_iou' is empty")
    if not isinstance(results.get("benchmark_info", {}), (dict, type(None))):
        raise FsbenchError(f"malformed {source}: 'benchmark_info' should be an object")
    # A missing or null setting (a method without a backbone, an older run) reads as empty.
    return {
        **results,
        **{key: str(results.get(key) or default) for key, default in SETTING_DEFAULTS.items()},
        **{key: setting_text(results.get(key)) for key in OPTIONAL_SETTINGS},
    }


def setting_text(value: object) -> str:
    """A setting as comparable text: "" when absent or null, a string as it is, anything else as JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def data_identity(results: dict) -> dict[str, str]:
    """What a run's data was, from results.json's benchmark_info ("" for what it does not record).

    class_split: the benchmark's class split. data: every other entry that holds for all folds of a
    dataset (dataset folder, fold count, list source, generator version, ...) as canonical JSON.
    list_fingerprint: the hash of this fold's (image, class) lists.
    """
    info = results.get("benchmark_info") or {}
    data = {key: value for key, value in info.items() if key not in PER_FOLD_INFO}
    return {
        "class_split": setting_text(info.get("class_split")),
        "data": json.dumps(data, sort_keys=True, default=str) if data else "",
        "list_fingerprint": setting_text(info.get("list_fingerprint")),
    }


def read_episode_counts(path: Path, results: dict) -> EpisodeCounts:
    """episodes.csv as per-episode sums over the fold's classes, checked against results.json.

    Rows are grouped by episode; way n of a row belongs to the n-th of its ';'-separated class names,
    and the fold's classes (what mIoU averages over) are the keys of results.json's class_iou.
    """
    try:
        frame = pd.read_csv(path, dtype={"class_names": str, "query_id": str, "support_ids": str}, keep_default_na=False)
    except FileNotFoundError:
        raise FsbenchError(f"{path} is missing; confidence intervals need each run's episodes.csv") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise FsbenchError(f"malformed episodes.csv {path}: {str(error).splitlines()[0]}") from None
    way = results["way"]
    needed = ["episode", "class_names", "fg_intersection", "fg_union", "bg_intersection", "bg_union"]
    for number in range(1, way + 1):
        needed += [f"intersection_{number}", f"union_{number}", f"present_{number}", f"predicted_present_{number}"]
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise FsbenchError(f"malformed episodes.csv {path}: missing column(s) {', '.join(missing)}")
    if frame.empty:
        raise FsbenchError(f"malformed episodes.csv {path}: no rows")
    numeric = [column for column in needed if column != "class_names"]
    try:
        values = frame[numeric].apply(pd.to_numeric, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise FsbenchError(f"malformed episodes.csv {path}: non-numeric count ({error})") from None
    columns = {name: values[:, position] for position, name in enumerate(numeric)}

    class_names = list(results["class_iou"])
    class_position = {name: position for position, name in enumerate(class_names)}
    episode_index, episode_row = np.unique(columns["episode"].astype(np.int64), return_inverse=True)
    episodes, classes = len(episode_index), len(class_names)

    way_names = frame["class_names"].str.split(";", expand=True)
    if way_names.shape[1] != way:
        raise FsbenchError(f"malformed episodes.csv {path}: class_names hold {way_names.shape[1]} ways, results.json says {way}")
    class_intersection = np.zeros(episodes * classes)
    class_union = np.zeros(episodes * classes)
    class_present = np.zeros(episodes * classes)
    exact = np.ones(len(frame), dtype=bool)
    for number in range(1, way + 1):
        names = way_names[number - 1]
        unknown = sorted(set(names) - set(class_position))
        if unknown:
            raise FsbenchError(f"episodes.csv {path} names class(es) {', '.join(map(repr, unknown))} that results.json's class_iou lacks")
        cell = episode_row * classes + names.map(class_position).to_numpy()
        class_intersection += np.bincount(cell, weights=columns[f"intersection_{number}"], minlength=episodes * classes)
        class_union += np.bincount(cell, weights=columns[f"union_{number}"], minlength=episodes * classes)
        class_present += np.bincount(cell, weights=columns[f"present_{number}"] > 0, minlength=episodes * classes)
        exact &= columns[f"present_{number}"] == columns[f"predicted_present_{number}"]

    def per_episode(weights: np.ndarray) -> np.ndarray:
        return np.bincount(episode_row, weights=weights, minlength=episodes)

    counts = EpisodeCounts(
        episode_index=episode_index,
        class_names=class_names,
        class_intersection=class_intersection.reshape(episodes, classes),
        class_union=class_union.reshape(episodes, classes),
        fb_intersection=np.stack([per_episode(columns["bg_intersection"]), per_episode(columns["fg_intersection"])], axis=1),
        fb_union=np.stack([per_episode(columns["bg_union"]), per_episode(columns["fg_union"])], axis=1),
        exact=per_episode(exact.astype(np.float64)),
        queries=per_episode(np.ones(len(frame))),
        class_present=class_present.reshape(episodes, classes) > 0,
    )
    _check_agreement(path, results, counts)
    return counts


def _check_agreement(path: Path, results: dict, counts: EpisodeCounts) -> None:
    """An episodes.csv from another run (or a truncated one) must not lend its intervals to this one."""
    if counts.episodes != results["episodes"]:
        raise FsbenchError(f"{path} holds {counts.episodes} episodes, results.json says {results['episodes']}")
    for metric in ("miou", "fbiou", "er"):
        recomputed = point_score(counts, metric)
        if abs(recomputed - results[metric]) > AGREEMENT_TOLERANCE * max(1.0, abs(results[metric])):
            raise FsbenchError(f"{path} gives {metric} {recomputed:.4f} but results.json says {results[metric]:.4f}; they are from different runs")


RUN_COLUMNS = [
    "run_dir", "method", "backbone", "benchmark", "task", "protocol", "eval_resolution", "class_split", "replay",
    "boundary", "data", "list_fingerprint", "fold", "way", "shot", "seed", "episodes", "episode_fingerprint",
    "train_steps", "miou", "fbiou", "er", "counts",
]


def run_record(results: dict, run_dir: str, counts: EpisodeCounts | None) -> dict:
    """One row of the runs frame (RUN_COLUMNS) from checked results (check_results)."""
    record = {column: results.get(column) for column in RUN_COLUMNS if column in results}
    record.update(data_identity(results))
    record.update(run_dir=run_dir, counts=counts, train_steps=results.get("train_steps"))
    return record


def read_runs(folders: list[Path], with_episodes: bool = True) -> pd.DataFrame:
    """One row per finished run folder: its settings and scores, and (``with_episodes``) its EpisodeCounts.

    Columns: RUN_COLUMNS; ``counts`` holds an EpisodeCounts object (None without episodes).
    """
    records = []
    for folder in folders:
        results = read_results(folder / "results.json")
        counts = read_episode_counts(folder / "episodes.csv", results) if with_episodes else None
        records.append(run_record(results, str(folder), counts))
    return pd.DataFrame.from_records(records, columns=RUN_COLUMNS)


def collect_runs(patterns: list[str], with_episodes: bool = True) -> pd.DataFrame:
    """read_runs of the finished runs that ``patterns`` name (unfinished ones are passed over)."""
    return read_runs(find_run_folders(patterns).finished, with_episodes)
