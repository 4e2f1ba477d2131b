"""The evaluation loop: episodes -> method.predict (padded to a size it takes) -> metrics -> records."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fsbench.engine.data import SkippedItem, SkippingEpisodes
from fsbench.engine.padding import predict_padded
from fsbench.episode import Episode, Prediction, collate_episodes
from fsbench.metrics import FSSIoU, PresenceScore, QueryCounts
from fsbench.run_folder import write_csv_atomically
from fsbench.sampler import EpisodeSampler


@dataclass
class Timing:
    """Wall seconds spent waiting for data, inside predict, and in metrics/records."""

    data_s: float = 0.0
    predict_s: float = 0.0
    metrics_s: float = 0.0
    total_s: float = 0.0

    def as_dict(self) -> dict:
        overhead = self.total_s / self.predict_s if self.predict_s else float("nan")
        return {
            "data_s": round(self.data_s, 3),
            "predict_s": round(self.predict_s, 3),
            "metrics_s": round(self.metrics_s, 3),
            "total_s": round(self.total_s, 3),
            "total_over_predict": round(overhead, 4),
        }


@dataclass
class EvaluationSettings:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    nworker: int = 0
    batch_size: int = 1
    original_size: bool = False
    progress: bool = True
    # How labels are read from probabilities: "argmax" over [background, ways] (iFSL / HSNet) or
    # "threshold" (a way where its probability >= 0.5); see Prediction.labels.
    label_rule: str = "argmax"
    # Episodes with a file found broken while loading are skipped (and listed) instead of stopping.
    skip_bad: bool = False
    # Called as on_episode(episode, prediction, query_ious) for every episode (e.g. renders).
    on_episode: object = None


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _score(episode: Episode, prediction: Prediction, iou: FSSIoU, presence: PresenceScore, settings: EvaluationSettings):
    """Update the metrics with one episode; returns (QueryCounts, predicted presence [Q, N])."""
    way_ids = episode.class_ids.unsqueeze(0).expand(episode.num_queries, -1)
    predicted_presence = presence.update(prediction.presence, episode.query_presence)
    if not settings.original_size:
        return iou.update(prediction.labels(settings.label_rule), episode.query_masks, way_ids), predicted_presence
    # Each query is scored at its own original size, its maps upsampled as the method's authors do.
    parts = []
    for query, target in enumerate(episode.query_original_masks):
        labels = prediction.query(query).resized(tuple(target.shape)).labels(settings.label_rule)
        parts.append(iou.update(labels, target.unsqueeze(0), way_ids[query : query + 1]))
    return QueryCounts(*(torch.cat(tensors) for tensors in zip(*parts))), predicted_presence


def _episode_rows(episode: Episode, counts: QueryCounts, predicted_presence, class_names: dict[int, str]) -> list[dict]:
    way_intersection, way_union = counts.way_intersection.cpu(), counts.way_union.cpu()
    fb_intersection, fb_union = counts.fb_intersection.cpu(), counts.fb_union.cpu()
    truth, predicted = episode.query_presence.cpu(), predicted_presence.cpu()
    class_ids = episode.class_ids.tolist()
    rows = []
    for query in range(episode.num_queries):
        row = {
            "episode": episode.index,
            "query_index": query,
            "query_id": episode.query_ids[query],
            "support_ids": "|".join(";".join(ids) for ids in episode.support_ids),
            "class_ids": ";".join(str(class_id) for class_id in class_ids),
            "class_names": ";".join(class_names.get(class_id, str(class_id)) for class_id in class_ids),
        }
        for way, _ in enumerate(class_ids):
            intersection, union = way_intersection[query, way].item(), way_union[query, way].item()
            row[f"intersection_{way + 1}"] = int(intersection)
            row[f"union_{way + 1}"] = int(union)
            row[f"iou_{way + 1}"] = round(100.0 * intersection / union, 4) if union else ""
            row[f"present_{way + 1}"] = int(truth[query, way])
            row[f"predicted_present_{way + 1}"] = int(predicted[query, way])
        row["bg_intersection"], row["fg_intersection"] = (int(value) for value in fb_intersection[query].tolist())
        row["bg_union"], row["fg_union"] = (int(value) for value in fb_union[query].tolist())
        rows.append(row)
    return rows


def query_ious(rows: list[dict]) -> list[float]:
    """Per-query IoU over its ways (pooled intersection / union), in percent: for names and renders."""
    ious = []
    for row in rows:
        ways = [key.split("_")[1] for key in row if key.startswith("intersection_")]
        intersection = sum(row[f"intersection_{way}"] for way in ways)
        union = sum(row[f"union_{way}"] for way in ways)
        ious.append(100.0 * intersection / union if union else 100.0)
    return ious


def evaluate(method, sampler: EpisodeSampler, settings: EvaluationSettings, class_names: dict[int, str], run_dir: Path | None = None) -> dict:
    """Evaluate ``method`` on every episode of ``sampler``.

    Returns {"miou", "fbiou", "er", "class_iou" (keyed by class name), "timing", "episodes" (scored),
    "skipped_episodes" ([{"episode", "reason"}])}; with ``run_dir``, also writes episodes.csv there
    (one row per episode and query).
    """
    device = settings.device
    iou = FSSIoU(sampler.class_ids, device=device)
    presence = PresenceScore(device=device)
    skipped: list[dict] = []
    scored = 0
    loader = DataLoader(
        SkippingEpisodes(sampler, settings.skip_bad),
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.nworker,
        collate_fn=collate_episodes,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if settings.nworker > 0 else None,
    )
    rows: list[dict] = []
    timing = Timing()
    method.eval()
    started = time.perf_counter()
    bar = tqdm(total=len(sampler), desc=f"eval {method.registry_name}", disable=not settings.progress, dynamic_ncols=True)
    with torch.inference_mode():
        waiting_since = time.perf_counter()
        for batch in loader:
            timing.data_s += time.perf_counter() - waiting_since
            for episode in batch:
                if isinstance(episode, SkippedItem):
                    skipped.append({"episode": episode.index, "reason": episode.reason})
                    continue
                scored += 1
                episode = episode.to(device)
                predict_started = time.perf_counter()
                prediction = predict_padded(method, episode.without_query_labels())
                _synchronise(device)
                timing.predict_s += time.perf_counter() - predict_started

                metrics_started = time.perf_counter()
                counts, predicted_presence = _score(episode, prediction, iou, presence, settings)
                episode_rows = _episode_rows(episode, counts, predicted_presence, class_names)
                rows.extend(episode_rows)
                if settings.on_episode is not None:
                    settings.on_episode(episode.to("cpu"), prediction.to("cpu"), query_ious(episode_rows))
                timing.metrics_s += time.perf_counter() - metrics_started
            bar.update(len(batch))
            if len(rows) and bar.n % 50 < len(batch):
                bar.set_postfix(miou=f"{iou.compute()['miou']:.1f}", refresh=False)
            waiting_since = time.perf_counter()
    bar.close()
    timing.total_s = time.perf_counter() - started

    scores = iou.compute()
    if skipped:
        print(f"fsbench: skipped {len(skipped)} episode(s) with a bad file (--skip-bad); first: {skipped[0]['reason']}", flush=True)
    if run_dir is not None:
        write_episodes_csv(Path(run_dir) / "episodes.csv", rows)
    return {
        "episodes": scored,
        "skipped_episodes": skipped,
        "miou": scores["miou"],
        "fbiou": scores["fbiou"],
        "er": presence.compute()["er"],
        "class_iou": {class_names.get(class_id, str(class_id)): value for class_id, value in scores["class_iou"].items()},
        "timing": timing.as_dict(),
    }


def write_episodes_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:  # ways may differ between rows only in count; keep first-seen column order
        columns.extend(key for key in row if key not in columns)
    write_csv_atomically(path, rows, columns)
