"""The evaluation loop: episodes -> method (batched, padded, cached) -> metrics -> records.

Speed: data loads in workers into pinned memory and is copied without blocking; B episodes go
through the method together (their images encoded in one forward pass, each image once, see
fsbench.engine.batched); metric counters and per-episode counts stay on the device and are read
once at the end, so there is no synchronisation per episode. Under torchrun each process scores its
shard of the episodes and the counters are summed (fsbench.engine.distributed).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from fsbench.engine import distributed
from fsbench.engine.batched import EncodingCache, autocast, predict_episodes
from fsbench.engine.data import SkippedItem, SkippingEpisodes
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


class Stopwatch:
    """Sums the time of timed sections: wall time on the CPU; CUDA events on a GPU, read at the end,
    so timing adds no synchronisation."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.seconds = 0.0
        self.pairs: list = []
        self._start = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((self._start, end))
        else:
            self.seconds += time.perf_counter() - self._start

    def total(self) -> float:
        if self.cuda and self.pairs:
            torch.cuda.synchronize()
            return self.seconds + sum(start.elapsed_time(end) for start, end in self.pairs) / 1000.0
        return self.seconds


@dataclass
class EvaluationSettings:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    nworker: int = 0
    # Episodes given to the method together (their images are encoded in one forward pass).
    batch_size: int = 1
    # Mixed precision of the method's forward passes: "off", "bf16" or "fp16".
    amp: str = "off"
    # Budget of the per-image encoding cache (0: off); see fsbench.engine.batched.
    feature_cache_mb: float = 1024
    # Class tags only (--weak): supports carry no pixel labels, as the model was trained.
    weak: bool = False
    original_size: bool = False
    progress: bool = True
    # How labels are read from probabilities: "argmax" over [background, ways] (iFSL / HSNet) or
    # "threshold" (a way where its probability >= 0.5); see Prediction.labels.
    label_rule: str = "argmax"
    # Episodes with a file found broken while loading are skipped (and listed) instead of stopping.
    skip_bad: bool = False
    # Called as on_episode(episode, prediction, query_ious) for every episode (e.g. renders).
    on_episode: object = None


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


def _episode_rows(episode: Episode | EpisodeIdentity, counts: QueryCounts, predicted_presence, class_names: dict[int, str]) -> list[dict]:
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
    """Evaluate ``method`` on every episode of ``sampler`` (this process's shard under torchrun).

    Returns {"miou", "fbiou", "er", "class_iou" (keyed by class name), "timing", "episodes" (scored),
    "skipped_episodes" ([{"episode", "reason"}]), "feature_cache"}; with ``run_dir``, rank 0 also
    writes episodes.csv there (one row per episode and query, in episode order).
    """
    device = settings.device
    processes = distributed.current()
    iou = FSSIoU(sampler.class_ids, device=device)
    presence = PresenceScore(device=device)
    cache = EncodingCache(settings.feature_cache_mb)
    indices = distributed.shard(len(sampler), processes)
    loader = DataLoader(
        Subset(SkippingEpisodes(sampler, settings.skip_bad), indices),
        batch_size=settings.batch_size,
        shuffle=False,
        num_workers=settings.nworker,
        collate_fn=collate_episodes,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if settings.nworker > 0 else None,
    )
    skipped: list[dict] = []
    # Per scored episode: its CPU-side identity and its counts, still on the device.
    records: list[tuple[Episode, QueryCounts, torch.Tensor]] = []
    data_time, predict_time, metrics_time = 0.0, Stopwatch(device), Stopwatch(device)
    method.eval()
    started = time.perf_counter()
    bar = tqdm(total=len(indices), desc=f"eval {method.registry_name}", disable=not settings.progress, dynamic_ncols=True)
    with torch.inference_mode():
        waiting_since = time.perf_counter()
        for batch in loader:
            data_time += time.perf_counter() - waiting_since
            episodes = []
            for item in batch:
                if isinstance(item, SkippedItem):
                    skipped.append({"episode": item.index, "reason": item.reason})
                else:
                    episodes.append(item)
            on_device = [episode.to(device) for episode in episodes]
            predict_time.start()
            with autocast(device, settings.amp):
                hidden = [episode.without_query_labels() for episode in on_device]
                if settings.weak:
                    hidden = [episode.with_class_tags_only() for episode in hidden]
                predictions = predict_episodes(method, hidden, cache)
            predict_time.stop()
            metrics_time.start()
            for episode, on_device_episode, prediction in zip(episodes, on_device, predictions):
                prediction = _as_float(prediction)
                counts, predicted_presence = _score(on_device_episode, prediction, iou, presence, settings)
                records.append((_identity(episode), counts, predicted_presence))
                if settings.on_episode is not None:
                    rows = _episode_rows(episode, _to_cpu(counts), predicted_presence.cpu(), class_names)
                    settings.on_episode(episode, prediction.to("cpu"), query_ious(rows))
            metrics_time.stop()
            bar.update(len(batch))
            waiting_since = time.perf_counter()
    bar.close()

    # One read of the device counters; under torchrun, summed over every process first.
    distributed.sum_across([iou.class_intersection, iou.class_union, iou.fb_intersection, iou.fb_union, presence.exact, presence.total])
    rows = [row for identity, counts, predicted in _read_once(records) for row in _episode_rows(identity, counts, predicted, class_names)]
    gathered = distributed.gather((rows, skipped))
    rows = sorted((row for part, _ in gathered for row in part), key=lambda row: (row["episode"], row["query_index"]))
    skipped = sorted((item for _, part in gathered for item in part), key=lambda item: item["episode"])
    scores = iou.compute()
    timing = Timing(data_s=data_time, predict_s=predict_time.total(), metrics_s=metrics_time.total(), total_s=time.perf_counter() - started)
    if skipped and processes.is_main:
        print(f"fsbench: skipped {len(skipped)} episode(s) with a bad file (--skip-bad); first: {skipped[0]['reason']}", flush=True)
    if run_dir is not None and processes.is_main:
        write_episodes_csv(Path(run_dir) / "episodes.csv", rows)
    return {
        "episodes": len({row["episode"] for row in rows}),
        "skipped_episodes": skipped,
        "miou": scores["miou"],
        "fbiou": scores["fbiou"],
        "er": presence.compute()["er"],
        "class_iou": {class_names.get(class_id, str(class_id)): value for class_id, value in scores["class_iou"].items()},
        "timing": timing.as_dict(),
        "feature_cache": cache.stats(),
    }


@dataclass
class EpisodeIdentity:
    """What the records keep of an episode: ids, classes and presence - not its pixels."""

    index: int
    query_ids: list[str]
    support_ids: list[list[str]]
    class_ids: torch.Tensor  # [N], CPU
    query_presence: torch.Tensor  # [Q, N], CPU

    @property
    def num_queries(self) -> int:
        return self.query_presence.shape[0]


def _identity(episode: Episode) -> EpisodeIdentity:
    return EpisodeIdentity(episode.index, list(episode.query_ids), [list(ids) for ids in episode.support_ids],
                           episode.class_ids.clone(), episode.query_presence.clone())


def _as_float(prediction: Prediction) -> Prediction:
    """Scores are computed in float32 whatever precision the method ran in."""
    if prediction.fg_probs.dtype == torch.float32:
        return prediction
    background = prediction.bg_probs.float() if prediction.bg_probs is not None else None
    return replace(prediction, fg_probs=prediction.fg_probs.float(), presence=prediction.presence.float(), bg_probs=background)


def _to_cpu(counts: QueryCounts) -> QueryCounts:
    return QueryCounts(*(tensor.cpu() for tensor in counts))


def _read_once(records: list) -> list:
    """The records with their device tensors copied to the CPU in one transfer per field."""
    if not records:
        return []
    sizes = [counts.way_intersection.shape for _, counts, _ in records]
    if len({size[1] for size in sizes}) != 1:  # ways differ between episodes: copy one by one
        return [(identity, _to_cpu(counts), predicted.cpu()) for identity, counts, predicted in records]
    fields = [torch.cat([counts[position] for _, counts, _ in records]).cpu() for position in range(4)]
    predicted = torch.cat([item for _, _, item in records]).cpu()
    result, offset = [], 0
    for identity, counts, _ in records:
        queries = counts.way_intersection.shape[0]
        part = QueryCounts(*(field[offset : offset + queries] for field in fields))
        result.append((identity, part, predicted[offset : offset + queries]))
        offset += queries
    return result


def write_episodes_csv(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:  # ways may differ between rows only in count; keep first-seen column order
        columns.extend(key for key in row if key not in columns)
    write_csv_atomically(path, rows, columns)
