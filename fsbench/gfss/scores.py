"""Generalized FSS scores: per-class intersections and unions summed over every query, then mIoU over
all classes, the in (base, with background where it is a class) classes, the out (novel) classes,
their harmonic mean and their arithmetic mean (intervals: fsbench/gfss/table.py).

A class's IoU is sum I / sum U over all queries (GFS-Seg, DIaM; fsbench's class-accumulated rule). A
class with an empty union (never in a query, never predicted) has no IoU and is left out of every
mean, as DIaM and cityscapesScripts do; results.json lists such classes. The harmonic mean is
2 in out / (in + out) (0 when both are 0), the arithmetic mean (in + out) / 2 is DIaM's "Mean".
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fsbench.bootstrap import interval_from_replicates
from fsbench.metrics import way_intersection_union

SCORES = ("all", "in", "out", "hmean")
SCORE_KEYS = {"all": "miou_all", "in": "miou_in", "out": "miou_out", "hmean": "hmean"}


class GFSSCounts:
    """Per-query, per-class pixel counts over the run's scored classes (mergeable: rows append).

    Args:
        classes: the scored class ids in column order (GFSSClasses.all).
    """

    def __init__(self, classes: tuple[int, ...]):
        self.classes = tuple(classes)
        self.intersection: list[Tensor] = []  # per batch [Q, C] float64
        self.union: list[Tensor] = []
        self.present: list[Tensor] = []  # [Q, C] bool: the class occurs in the query's target

    def update(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """pred, target [Q, H, W] int64 score columns + 1 (0 = no scored class; target 255 = ignore).
        Returns the [Q, C] intersections and unions added."""
        intersection, union = way_intersection_union(pred, target, len(self.classes))
        columns = torch.arange(1, len(self.classes) + 1, device=target.device).view(1, -1, 1, 1)
        present = (target.unsqueeze(1) == columns).flatten(2).any(dim=2)
        self.intersection.append(intersection.cpu())
        self.union.append(union.cpu())
        self.present.append(present.cpu())
        return intersection, union

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """([E, C] intersections, [E, C] unions, [E, C] presence) over every query so far."""
        if not self.intersection:
            empty = np.zeros((0, len(self.classes)))
            return empty, empty, empty.astype(bool)
        return (torch.cat(self.intersection).numpy(), torch.cat(self.union).numpy(), torch.cat(self.present).numpy())


def class_ious(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """[..., C] sums -> [..., C] IoU in percent, NaN where the union is empty."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, 100.0 * intersection / np.where(union > 0, union, 1.0), np.nan)


def subset_means(ious: np.ndarray, classes: tuple[int, ...], in_classes: tuple[int, ...], out_classes: tuple[int, ...]) -> dict[str, np.ndarray]:
    """{"all", "in", "out", "hmean", "mean"} from per-class IoUs [..., C] (NaN = no IoU): means over
    the classes that have an IoU; NaN where a group has none."""
    position = {class_id: column for column, class_id in enumerate(classes)}

    def mean(group: tuple[int, ...]) -> np.ndarray:
        if not group:
            return np.full(ious.shape[:-1], np.nan)
        values = ious[..., [position[class_id] for class_id in group]]
        counted = np.sum(~np.isnan(values), axis=-1)
        with np.errstate(invalid="ignore"):
            return np.where(counted > 0, np.nansum(values, axis=-1) / np.maximum(counted, 1), np.nan)

    scores = {"all": mean(classes), "in": mean(in_classes), "out": mean(out_classes)}
    in_score, out_score = scores["in"], scores["out"]
    total = in_score + out_score
    with np.errstate(invalid="ignore", divide="ignore"):
        harmonic = 2.0 * in_score * out_score / np.where(total > 0, total, 1.0)
        scores["hmean"] = np.where(total > 0, harmonic, np.where(np.isnan(total), np.nan, 0.0))
    scores["mean"] = total / 2.0
    return scores


def _number(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def summarise(counts: GFSSCounts, in_classes: tuple[int, ...], out_classes: tuple[int, ...], class_names: dict[int, str]) -> dict:
    """results.json's scores of one approach: miou_all, miou_in, miou_out, hmean, mean (percent; None
    where a group has no class with an IoU), class_iou by class name, unscored classes."""
    intersection, union, _ = counts.arrays()
    ious = class_ious(intersection.sum(axis=0), union.sum(axis=0))
    scores = subset_means(ious, counts.classes, in_classes, out_classes)
    return {
        "miou_all": _number(scores["all"]),
        "miou_in": _number(scores["in"]),
        "miou_out": _number(scores["out"]),
        "hmean": _number(scores["hmean"]),
        "mean": _number(scores["mean"]),
        "class_iou": {_name(class_names, class_id): _number(iou) for class_id, iou in zip(counts.classes, ious)},
        "unscored_classes": [_name(class_names, class_id) for class_id, iou in zip(counts.classes, ious) if np.isnan(iou)],
    }


def _name(class_names: dict[int, str], class_id: int) -> str:
    return "background" if class_id == 0 and 0 not in class_names else class_names.get(class_id, str(class_id))


@dataclass
class QueryCountsTable:
    """One approach's per-query sums, read back from gfss_queries.csv: [E, C] arrays over ``classes``."""

    classes: tuple[int, ...]
    intersection: np.ndarray
    union: np.ndarray
    present: np.ndarray


def interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    finite = replicates[~np.isnan(replicates)]
    return interval_from_replicates(finite, level) if len(finite) else None
