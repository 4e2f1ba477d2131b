"""Run folders: created fresh, written atomically, and recognisably finished or not.

A run folder holds config.json (written first), status.json (running / failed / interrupted, with
the error), training checkpoints, train_log.csv, and - last, when everything else is on disk -
episodes.csv and results.json. A folder is FINISHED exactly when it holds results.json; every file
is written to a temporary name and renamed, so no file is ever half-written, whatever stops the run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from fsbench.errors import FsbenchError

CONFIG = "config.json"
STATUS = "status.json"
RESULTS = "results.json"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "w", newline="") as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, payload: dict) -> None:
    write_atomically(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomically(path: Path, rows: list[dict], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(path, buffer.getvalue())


def is_finished(folder: Path) -> bool:
    return (Path(folder) / RESULTS).is_file()


def set_status(folder: Path, state: str, error: str | None = None) -> None:
    """Record where an unfinished run stands: "running", "failed" (with the error) or "interrupted"."""
    payload = {"state": state, "updated": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if error:
        payload["error"] = error
    write_json(Path(folder) / STATUS, payload)


def read_status(folder: Path) -> dict:
    """The run's status: {"state": "finished"} when it has results.json, else status.json's content."""
    folder = Path(folder)
    if is_finished(folder):
        return {"state": "finished"}
    try:
        return json.loads((folder / STATUS).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {"state": "unknown"}


def new_run_dir(logpath: Path | None, logs_root: Path, name: str) -> Path:
    """A folder that did not exist before: never overwrite an earlier run.

    ``--logpath`` naming a FINISHED run is refused. One naming an unfinished run (it failed or was
    interrupted) is moved aside to ``<logpath>.unfinished-<n>`` - nothing is lost - and started anew;
    ``--resume`` is the way to continue it instead.
    """
    if logpath is not None:
        logpath = Path(logpath)
        if logpath.exists():
            if is_finished(logpath):
                raise FsbenchError(f"run folder {logpath} already holds a finished run; runs are never overwritten")
            if not (logpath / CONFIG).is_file():
                raise FsbenchError(f"--logpath {logpath} exists and is not a run folder; pick a new path")
            aside = _free_name(logpath)
            logpath.rename(aside)
            print(f"fsbench: {logpath} held an unfinished run ({read_status(aside).get('state')}); moved it to {aside}", flush=True)
        logpath.mkdir(parents=True)
        return logpath
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        candidate = Path(logs_root) / (name + f"_{stamp}" + ("" if attempt == 0 else f"-{attempt}"))
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise FsbenchError(f"could not create a new run folder under {logs_root}")


def _free_name(folder: Path) -> Path:
    for number in range(1, 10000):
        candidate = folder.with_name(f"{folder.name}.unfinished-{number}")
        if not candidate.exists():
            return candidate
    raise FsbenchError(f"too many unfinished runs beside {folder}")
