"""Reading generalized FSS runs back for tables: results.json (checked) and gfss_queries.csv (per-query
sums, checked against results.json so that one run's file never lends its intervals to another)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from fsbench.errors import FsbenchError
from fsbench.gfss.evaluate import QUERIES_CSV
from fsbench.gfss.scores import QueryCountsTable, class_ious, subset_means

REQUIRED_KEYS = {
    "method": str, "benchmark": str, "fold": int, "configuration": str, "shot": int, "seed": int, "episodes": int,
    "episode_fingerprint": str, "approaches": dict, "classes": dict,
}
SCORE_FIELDS = ("miou_all", "miou_in", "miou_out", "hmean")
AGREEMENT_TOLERANCE = 1e-6


def is_gfss_run(folder: Path) -> bool:
    """Whether a finished run folder holds a generalized FSS run (its results.json says task gfss)."""
    try:
        return json.loads((Path(folder) / "results.json").read_text()).get("task") == "gfss"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False  # the ordinary reader reports what is wrong with it


def read_gfss_results(path: Path) -> dict:
    """results.json of a gfss run, checked for what its table needs."""
    source = f"results.json {path}"
    try:
        results = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise FsbenchError(f"malformed {source}: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FsbenchError(f"cannot read {path}: {error}") from None
    if not isinstance(results, dict):
        raise FsbenchError(f"malformed {source}: expected a JSON object")
    for key, kind in REQUIRED_KEYS.items():
        if not isinstance(results.get(key), kind) or isinstance(results.get(key), bool):
            raise FsbenchError(f"malformed {source}: {key!r} should be {kind.__name__}, got {results.get(key)!r}")
    if not results["approaches"]:
        raise FsbenchError(f"malformed {source}: 'approaches' is empty")
    for key, approach in results["approaches"].items():
        if not isinstance(approach, dict) or not isinstance(approach.get("role"), str) or not isinstance(approach.get("label"), str):
            raise FsbenchError(f"malformed {source}: approach {key!r} needs a role and a label")
        for field in SCORE_FIELDS:
            value = approach.get(field)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
                raise FsbenchError(f"malformed {source}: approach {key!r} {field} should be a number or null, got {value!r}")
    classes = results["classes"]
    for group in ("in", "out"):
        if not isinstance(classes.get(group), list) or not all(isinstance(class_id, int) for class_id in classes[group]):
            raise FsbenchError(f"malformed {source}: classes.{group} should be a list of class ids")
    return results


def read_query_counts(path: Path, results: dict) -> dict[str, QueryCountsTable]:
    """gfss_queries.csv as one QueryCountsTable per approach, each checked against results.json."""
    try:
        frame = pd.read_csv(path, dtype={"query_id": str}, keep_default_na=False)
    except FileNotFoundError:
        raise FsbenchError(f"{path} is missing; confidence intervals need each gfss run's {QUERIES_CSV}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as error:
        raise FsbenchError(f"malformed {QUERIES_CSV} {path}: {str(error).splitlines()[0]}") from None
    classes = tuple(results["classes"]["in"] + results["classes"]["out"])
    if len(frame) != results["episodes"]:
        raise FsbenchError(f"{path} holds {len(frame)} queries, results.json says {results['episodes']}")
    try:
        present = frame[[f"present_{class_id}" for class_id in classes]].to_numpy(dtype=np.float64) > 0
        tables = {}
        for key in results["approaches"]:
            intersection = frame[[f"{key}|intersection_{class_id}" for class_id in classes]].to_numpy(dtype=np.float64)
            union = frame[[f"{key}|union_{class_id}" for class_id in classes]].to_numpy(dtype=np.float64)
            tables[key] = QueryCountsTable(classes, intersection, union, present)
    except KeyError as error:
        raise FsbenchError(f"malformed {QUERIES_CSV} {path}: missing column(s) {error.args[0]}") from None
    except ValueError as error:
        raise FsbenchError(f"malformed {QUERIES_CSV} {path}: non-numeric count ({error})") from None
    for key, table in tables.items():
        _check_agreement(path, key, table, results)
    return tables


def _check_agreement(path: Path, key: str, table: QueryCountsTable, results: dict) -> None:
    ious = class_ious(table.intersection.sum(axis=0), table.union.sum(axis=0))
    scores = subset_means(ious, table.classes, tuple(results["classes"]["in"]), tuple(results["classes"]["out"]))
    approach = results["approaches"][key]
    for name, field in (("all", "miou_all"), ("in", "miou_in"), ("out", "miou_out")):
        recomputed, recorded = float(scores[name]), approach.get(field)
        same = (np.isnan(recomputed) and recorded is None) or (
            recorded is not None and abs(recomputed - recorded) <= AGREEMENT_TOLERANCE * max(1.0, abs(recorded))
        )
        if not same:
            raise FsbenchError(f"{path} gives {key or 'the'} {field} {recomputed:.4f} but results.json says {recorded}; they are from different runs")
