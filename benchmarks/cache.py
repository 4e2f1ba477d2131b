"""On-disk caches of dataset indexes: keyed on their source files, written atomically.

A cache is a JSON file whose "key" records what it was built from (file sizes and mtimes, filter
settings, a format version). A cache whose key differs from the current one is stale and rebuilt; a
build that is interrupted never leaves a half-written file behind (temp file + os.replace).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable

from fsbench.errors import FsbenchError


def cache_folder(datapath: Path, benchmark: str) -> Path:
    """<datapath>/cache/<benchmark>: beside the datasets, so a read-only dataset tree is fine."""
    return Path(datapath) / "cache" / benchmark


def file_signature(paths: Iterable[Path]) -> str:
    """sha256 over (name, size, mtime) of each file: changes when any source file changes."""
    digest = hashlib.sha256()
    for path in paths:
        stat = Path(path).stat()
        digest.update(f"{Path(path).name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except OSError as error:
        raise FsbenchError(f"cannot write cache file {path}: {error.strerror or error}") from None


def cached_json(path: Path, key: dict, build: Callable[[], dict]) -> dict:
    """The cached payload at ``path`` when its key equals ``key``; otherwise build, store, return it."""
    path = Path(path)
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                return stored["payload"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            pass  # a damaged cache is rebuilt like a stale one
    payload = build()
    write_atomically(path, json.dumps({"key": key, "payload": payload}, separators=(",", ":")).encode())
    return payload
