"""The two objects that cross the sampler -> method -> metrics boundary: Episode and Prediction."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch
from torch import Tensor

IGNORE_INDEX = 255


@dataclass
class Episode:
    """One N-way K-shot episode with Q queries.

    Attributes:
        support_images: [N, K, 3, H, W] float, normalised.
        support_masks: [N, K, H, W] int64 in {0, 1, 255}; 1 = foreground of way n.
        query_images: [Q, 3, H, W] float, normalised.
        query_masks: [Q, H, W] int64 in {0..N, 255}; n = way index + 1, 0 = none of the ways.
        class_ids: [N] int64, the dataset class id of each way.
        query_presence: [Q, N] bool, whether way n's class occurs anywhere in query q.
        index: the episode's index in its sampler.
        query_ids / support_ids: image ids (support_ids is N lists of K).
        query_original_sizes: [Q, 2] int64 (height, width) of the images before resizing.
        query_original_masks: per query an [h, w] int64 mask at original size (same labels as
            query_masks), present only when the sampler was asked to keep them.
    """

    support_images: Tensor
    support_masks: Tensor
    query_images: Tensor
    query_masks: Tensor
    class_ids: Tensor
    query_presence: Tensor
    index: int = 0
    query_ids: list[str] = field(default_factory=list)
    support_ids: list[list[str]] = field(default_factory=list)
    query_original_sizes: Tensor | None = None
    query_original_masks: list[Tensor] | None = None

    @property
    def way(self) -> int:
        return self.support_images.shape[0]

    @property
    def shot(self) -> int:
        return self.support_images.shape[1]

    @property
    def num_queries(self) -> int:
        return self.query_images.shape[0]

    def to(self, device: torch.device | str) -> "Episode":
        """A copy with every tensor moved to ``device`` (lists of tensors too)."""
        moved = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Tensor):
                moved[item.name] = value.to(device, non_blocking=True)
            elif isinstance(value, list) and value and isinstance(value[0], Tensor):
                moved[item.name] = [tensor.to(device, non_blocking=True) for tensor in value]
        return replace(self, **moved)

    def without_query_labels(self) -> "Episode":
        """A copy in which query masks and presence are replaced by ignore / False.

        The evaluation loop hands this to ``Method.predict`` so a method cannot read the answer.
        """
        return replace(
            self,
            query_masks=torch.full_like(self.query_masks, IGNORE_INDEX),
            query_presence=torch.zeros_like(self.query_presence),
            query_original_masks=None,
        )


def collate_episodes(episodes: list[Episode]) -> list[Episode]:
    """DataLoader collate for episodes: a batch is a plain list.

    Episodes of one batch may differ in way, shot and (original-size) resolution, so they are not
    stacked; methods predict one episode at a time and the batch only groups the loading.
    """
    return list(episodes)


@dataclass
class Prediction:
    """A method's answer for one episode.

    Attributes:
        fg_probs: [Q, N, H, W] in [0, 1], the probability that a pixel is foreground of way n.
        presence: [Q, N] in [0, 1], the probability that way n's class occurs in query q.
    """

    fg_probs: Tensor
    presence: Tensor

    @classmethod
    def from_probabilities(cls, fg_probs: Tensor) -> "Prediction":
        """fg_probs [Q, N, H, W] with presence [Q, N] = each way's largest foreground probability over
        the query (iFSL's max-pooled presence, what methods without a classification head report)."""
        return cls(fg_probs=fg_probs, presence=fg_probs.flatten(2).amax(dim=2))

    def labels(self, threshold: float = 0.5) -> Tensor:
        """[Q, H, W] int64: argmax way + 1 where that way's probability >= threshold, else 0."""
        best_prob, best_way = self.fg_probs.max(dim=1)
        return torch.where(best_prob >= threshold, best_way + 1, torch.zeros_like(best_way))

    def resized(self, size: tuple[int, int]) -> "Prediction":
        """The prediction with fg_probs bilinearly resized to ``size`` (height, width)."""
        if tuple(self.fg_probs.shape[-2:]) == tuple(size):
            return self
        probs = torch.nn.functional.interpolate(
            self.fg_probs.float(), size=size, mode="bilinear", align_corners=False
        )
        return Prediction(fg_probs=probs.clamp(0, 1), presence=self.presence)
