"""What a checkpoint was trained on, and the guard that refuses to test it on those classes.

Every fsbench checkpoint carries ``trained_on``: one record per training it went through (a
fine-tuned checkpoint inherits its starting point's records). An evaluation on the SAME benchmark
data whose test classes overlap any record's training classes would score a model on classes it
has seen; that is refused in one line. Another benchmark (cross-domain, e.g. Pascal -> FSS-1000 as
PATNet evaluates) is allowed and recorded in results.json.
"""
from __future__ import annotations

from pathlib import Path

from fsbench.errors import FsbenchError


def training_record(benchmark, steps: int) -> dict:
    """The record of one training on ``benchmark``'s current fold."""
    return {
        "benchmark": benchmark.registry_name,
        "dataset": benchmark.identity(),
        "fold": benchmark.fold,
        "class_split": getattr(benchmark.options, "class_split", None),
        "class_ids": benchmark.classes("train"),
        "steps": steps,
    }


def records_of(metadata: dict | None) -> list[dict]:
    """A checkpoint's training records (older checkpoints: benchmark and fold only)."""
    if not metadata:
        return []
    if isinstance(metadata.get("trained_on"), list):
        return metadata["trained_on"]
    if metadata.get("benchmark") is not None and metadata.get("fold") is not None:
        return [{"benchmark": metadata["benchmark"], "dataset": metadata["benchmark"], "fold": metadata["fold"], "class_ids": None}]
    return []


def check_test_classes_unseen(records: list[dict], benchmark, checkpoint: Path) -> None:
    """Refuse when ``checkpoint`` was trained on any of ``benchmark``'s test classes (same data),
    unless the benchmark tests its training classes on purpose (coco_json --all-classes)."""
    if getattr(benchmark, "tests_seen_classes", False):
        return
    test_classes = set(benchmark.classes("test"))
    for record in records:
        if record.get("dataset", record.get("benchmark")) != benchmark.identity():
            continue  # cross-domain: allowed, and results.json records it
        seen = record.get("class_ids")
        overlap = sorted(test_classes & set(seen)) if seen is not None else ([] if record.get("fold") == benchmark.fold else sorted(test_classes))
        if overlap:
            names = ", ".join(benchmark.class_names.get(class_id, str(class_id)) for class_id in overlap[:5])
            more = f" and {len(overlap) - 5} more" if len(overlap) > 5 else ""
            raise FsbenchError(
                f"checkpoint {checkpoint} was trained on {record['benchmark']} fold {record.get('fold')}, whose training "
                f"classes include {len(overlap)} of fold {benchmark.fold}'s test classes ({names}{more}); "
                f"test it on fold {record.get('fold')}, or use a checkpoint trained for fold {benchmark.fold}"
            )
