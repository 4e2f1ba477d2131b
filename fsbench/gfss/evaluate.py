"""The generalized FSS evaluation loop: batches of queries with the run's support set -> every approach's
prediction over the scored classes -> per-class counts -> scores and gfss_queries.csv."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fsbench.engine.batched import autocast
from fsbench.gfss.scores import GFSSCounts, summarise
from fsbench.gfss.task import GFSSTask, collate_queries
from fsbench.gfss.vocabulary import vocabulary_predictions
from fsbench.run_folder import write_csv_atomically

QUERIES_CSV = "gfss_queries.csv"


@dataclass
class GFSSEvaluationSettings:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    nworker: int = 0
    # Queries per forward pass (--eval-bsz): the support set is encoded once per batch, not once per query.
    batch_size: int = 1
    # Mixed precision of the forward passes (--amp): "off", "bf16" or "fp16".
    amp: str = "off"
    original_size: bool = False
    progress: bool = True


def evaluate_gfss(method, task: GFSSTask, settings: GFSSEvaluationSettings, class_names: dict[int, str], run_dir: Path | None = None) -> dict:
    """Evaluate ``method`` on every query of ``task``.

    Returns {"approaches": {key: summarise(...)}, "queries": count, "timing": {...}}; with
    ``run_dir``, writes gfss_queries.csv there: one row per query with each approach's per-class
    intersection and union and the class presence.
    """
    device = settings.device
    classes = task.classes
    lookup = classes.index_lookup().to(device)
    started = time.perf_counter()
    supports = task.support_set().to(device)
    support_seconds = time.perf_counter() - started
    loader = DataLoader(
        task.query_dataset(), batch_size=settings.batch_size, shuffle=False, num_workers=settings.nworker,
        collate_fn=collate_queries, prefetch_factor=4 if settings.nworker > 0 else None,
    )
    counts: dict[str, GFSSCounts] = {}
    query_ids: list[str] = []
    predict_seconds = 0.0
    method.eval()
    bar = tqdm(total=len(task), desc=f"gfss {method.registry_name}", disable=not settings.progress, dynamic_ncols=True)
    with torch.inference_mode():
        for batch_index, items in enumerate(loader):
            images = torch.stack([item.image for item in items]).to(device)
            predict_started = time.perf_counter()
            with autocast(device, settings.amp):
                predictions = vocabulary_predictions(method, images, supports, batch_index)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            predict_seconds += time.perf_counter() - predict_started
            for key, prediction in predictions.items():
                counter = counts.setdefault(key, GFSSCounts(classes.all))
                if settings.original_size:
                    for query, item in enumerate(items):
                        target = lookup_targets(item.original_target.to(device), lookup)
                        resized = prediction.query(query).resized(tuple(target.shape))
                        counter.update(resized.score_columns(lookup, classes.background), target.unsqueeze(0))
                else:
                    targets = lookup_targets(torch.stack([item.target for item in items]).to(device), lookup)
                    counter.update(prediction.score_columns(lookup, classes.background), targets)
            query_ids.extend(item.image_id for item in items)
            bar.update(len(items))
    bar.close()
    total = time.perf_counter() - started
    scores = {key: summarise(counter, classes.in_classes, classes.novel, class_names) for key, counter in counts.items()}
    if run_dir is not None:
        write_queries_csv(Path(run_dir) / QUERIES_CSV, query_ids, counts)
    return {
        "approaches": scores,
        "queries": len(query_ids),
        "timing": {"support_s": round(support_seconds, 3), "predict_s": round(predict_seconds, 3), "total_s": round(total, 3)},
    }


def lookup_targets(target: torch.Tensor, lookup: torch.Tensor) -> torch.Tensor:
    """Dataset class ids -> score columns + 1; 255 stays ignore, and so does any id that is no scored
    class (0 where the dataset has no background: it never occurs in evaluation labels)."""
    inside = target < len(lookup)
    columns = lookup[target.clamp(0, len(lookup) - 1)]
    columns = torch.where(inside & (columns > 0), columns, torch.full_like(columns, 255))
    return columns


def write_queries_csv(path: Path, query_ids: list[str], counts: dict[str, GFSSCounts]) -> None:
    """One row per query: query index and id, ``present_<class>``, and per approach key k
    ``<k>|intersection_<class>`` and ``<k>|union_<class>`` (k "" for a plain method)."""
    rows: list[dict] = [{"query": index, "query_id": query_id} for index, query_id in enumerate(query_ids)]
    columns = ["query", "query_id"]
    tables = {key: counter.arrays() for key, counter in counts.items()}
    classes = next(iter(counts.values())).classes if counts else ()
    if tables:
        present = next(iter(tables.values()))[2]
        for column, class_id in enumerate(classes):
            columns.append(f"present_{class_id}")
            for row, value in zip(rows, present[:, column]):
                row[f"present_{class_id}"] = int(value)
    for key, (intersection, union, _) in tables.items():
        for kind, values in (("intersection", intersection), ("union", union)):
            for column, class_id in enumerate(classes):
                name = f"{key}|{kind}_{class_id}"
                columns.append(name)
                for row, value in zip(rows, values[:, column]):
                    row[name] = int(value)
    write_csv_atomically(path, rows, columns)
