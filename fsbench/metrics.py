"""FSS metrics as HSNet / PFENet / iFSL define them: class-accumulated mIoU, FB-IoU and ER.

Every score is a ratio of sums accumulated over all episodes (never a mean of per-episode ratios), so
two metric objects merge by adding their counters - which is what distributed evaluation needs.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fsbench.episode import IGNORE_INDEX


def way_intersection_union(pred: Tensor, target: Tensor, way: int) -> tuple[Tensor, Tensor]:
    """Per-query, per-way pixel counts.

    Args:
        pred: [Q, H, W] int64, 0 = background, n = way n.
        target: [Q, H, W] int64, same labels, 255 = ignore.
        way: N.
    Returns:
        intersection, union: [Q, N] float64, ignore pixels counted in neither.
    """
    valid = (target != IGNORE_INDEX).unsqueeze(1)  # [Q, 1, H, W]
    ways = torch.arange(1, way + 1, device=pred.device).view(1, way, 1, 1)
    predicted = (pred.unsqueeze(1) == ways) & valid  # [Q, N, H, W]
    actual = (target.unsqueeze(1) == ways) & valid
    intersection = (predicted & actual).flatten(2).sum(-1).double()
    union = (predicted | actual).flatten(2).sum(-1).double()
    return intersection, union


class QueryCounts(NamedTuple):
    """Pixel counts of a batch of Q queries with N ways (all float64)."""

    way_intersection: Tensor  # [Q, N]
    way_union: Tensor  # [Q, N]
    fb_intersection: Tensor  # [Q, 2]: background, foreground (any way)
    fb_union: Tensor  # [Q, 2]


def query_counts(pred: Tensor, target: Tensor, way: int) -> QueryCounts:
    """Per-query way and foreground/background intersections and unions ([Q, H, W] inputs)."""
    way_intersection, way_union = way_intersection_union(pred, target, way)
    valid = target != IGNORE_INDEX
    fb_intersection, fb_union = [], []
    for predicted, actual in ((pred == 0, target == 0), (pred > 0, (target > 0) & valid)):
        predicted = predicted & valid
        fb_intersection.append((predicted & actual).flatten(1).sum(-1).double())
        fb_union.append((predicted | actual).flatten(1).sum(-1).double())
    return QueryCounts(way_intersection, way_union, torch.stack(fb_intersection, 1), torch.stack(fb_union, 1))


class FSSIoU:
    """mIoU over the fold's classes and FB-IoU.

    Args:
        class_ids: the fold's class ids (the classes that mIoU averages over).
    """

    def __init__(self, class_ids: list[int], device: torch.device | str = "cpu"):
        self.class_ids = [int(class_id) for class_id in class_ids]
        self.device = torch.device(device)
        # Dataset class id -> row of the counters; a dense lookup table so update() stays vectorised.
        self._lookup = torch.full((max(self.class_ids) + 1,), -1, dtype=torch.int64)
        self._lookup[torch.tensor(self.class_ids)] = torch.arange(len(self.class_ids))
        self._lookup = self._lookup.to(self.device)
        self.reset()

    def reset(self) -> None:
        self.class_intersection = torch.zeros(len(self.class_ids), dtype=torch.float64, device=self.device)
        self.class_union = torch.zeros_like(self.class_intersection)
        # Row 0 background, row 1 foreground (any way).
        self.fb_intersection = torch.zeros(2, dtype=torch.float64, device=self.device)
        self.fb_union = torch.zeros_like(self.fb_intersection)

    def update(self, pred: Tensor, target: Tensor, episode_class_ids: Tensor) -> "QueryCounts":
        """Add one batch of queries.

        Args:
            pred: [Q, H, W] int64 (0 = bg, n = way n).
            target: [Q, H, W] int64 (255 = ignore).
            episode_class_ids: [Q, N] dataset class id of each way, per query.
        Returns:
            The per-query counts that were added, for per-episode records.
        """
        pred, target = pred.to(self.device), target.to(self.device)
        episode_class_ids = episode_class_ids.to(self.device)
        counts = query_counts(pred, target, episode_class_ids.shape[1])
        rows = self._lookup[episode_class_ids.clamp(max=len(self._lookup) - 1)]
        unknown = (episode_class_ids >= len(self._lookup)) | (rows < 0)
        if bool(unknown.any()):
            raise ValueError(f"class ids {episode_class_ids[unknown].unique().tolist()} are not in this metric's classes")
        self.class_intersection.index_add_(0, rows.flatten(), counts.way_intersection.flatten())
        self.class_union.index_add_(0, rows.flatten(), counts.way_union.flatten())
        self.fb_intersection += counts.fb_intersection.sum(dim=0)
        self.fb_union += counts.fb_union.sum(dim=0)
        return counts

    def merge(self, other: "FSSIoU") -> "FSSIoU":
        if other.class_ids != self.class_ids:
            raise ValueError("cannot merge FSSIoU objects over different classes")
        self.class_intersection += other.class_intersection.to(self.device)
        self.class_union += other.class_union.to(self.device)
        self.fb_intersection += other.fb_intersection.to(self.device)
        self.fb_union += other.fb_union.to(self.device)
        return self

    def compute(self) -> dict:
        """{"miou": %, "fbiou": %, "class_iou": {class_id: %}}.

        A class with an empty union (never seen, never predicted) gets IoU 0 and still counts in the
        mean, as in HSNet; in a full evaluation every fold class is seen.
        """
        class_iou = self.class_intersection / self.class_union.clamp(min=1)
        fb_iou = self.fb_intersection / self.fb_union.clamp(min=1)
        return {
            "miou": 100.0 * class_iou.mean().item(),
            "fbiou": 100.0 * fb_iou.mean().item(),
            "class_iou": {class_id: 100.0 * value for class_id, value in zip(self.class_ids, class_iou.tolist())},
        }


class PresenceScore:
    """iFSL's 0/1 exact ratio: % of queries whose whole presence vector is right (higher is better)."""

    def __init__(self, threshold: float = 0.5, device: torch.device | str = "cpu"):
        self.threshold = threshold
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self.exact = torch.zeros((), dtype=torch.float64, device=self.device)
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)

    def update(self, scores: Tensor, target: Tensor) -> Tensor:
        """scores [Q, N] in [0, 1], target [Q, N] bool. Returns [Q, N] bool predicted presence."""
        predicted = scores.to(self.device) >= self.threshold
        exact = (predicted == target.to(self.device).bool()).all(dim=1)
        self.exact += exact.sum().double()
        self.total += exact.numel()
        return predicted

    def merge(self, other: "PresenceScore") -> "PresenceScore":
        self.exact += other.exact.to(self.device)
        self.total += other.total.to(self.device)
        return self

    def compute(self) -> dict:
        return {"er": 100.0 * (self.exact / self.total.clamp(min=1)).item()}
