"""The two objects that cross the sampler -> method -> metrics boundary: Episode and Prediction."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Callable

import torch
import torch.nn.functional as F
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

    def pin_memory(self) -> "Episode":
        """A copy in page-locked memory; the DataLoader's pinning thread calls this for custom types,
        so that later ``to(cuda, non_blocking=True)`` copies overlap with compute."""
        pinned = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Tensor):
                pinned[item.name] = value.pin_memory()
            elif isinstance(value, list) and value and isinstance(value[0], Tensor):
                pinned[item.name] = [tensor.pin_memory() for tensor in value]
        return replace(self, **pinned)

    def with_class_tags_only(self) -> "Episode":
        """The episode as weak (class-tag) supervision sees it: support masks carry no pixel labels
        (all foreground: each support image is known only to contain its way's class, as iFSL's weak
        setting uses unmasked support features) and the query's masks are hidden (ignore); the
        query's class presence stays, which is the only training signal."""
        return replace(
            self,
            support_masks=torch.ones_like(self.support_masks),
            query_masks=torch.full_like(self.query_masks, IGNORE_INDEX),
            query_original_masks=None,
        )

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
    """DataLoader collate for episodes: a batch is a plain list (the pinning thread pins each item
    through Episode.pin_memory).

    Episodes of one batch may differ in way, shot and (original-size) resolution, so they are not
    stacked here; the evaluator groups compatible ones into one forward pass.
    """
    return list(episodes)


LABEL_RULES = ("argmax", "threshold")
UPSAMPLING_SPACES = ("probabilities", "log_probabilities")
# exp(-87.3): the log of a probability is clamped here so that interpolating it never meets -inf.
_TINY = torch.finfo(torch.float32).tiny


@dataclass
class Prediction:
    """A method's answer for one episode.

    Attributes:
        fg_probs: [Q, N, H, W] in [0, 1], the probability that a pixel is foreground of way n.
        presence: [Q, N] in [0, 1], the probability that way n's class occurs in query q.
        bg_probs: [Q, H, W] in [0, 1], the probability of background (none of the ways), or None for
            the rest of the probability mass, 1 - sum_n fg_probs (exact for methods whose ways share
            one softmax or one kNN vote). Methods with one binary model per way give their merge
            (iFSL: the mean over ways of the per-way background log-probabilities).
        upsampling: the space resized() interpolates in: "probabilities", or "log_probabilities"
            (HSNet / iFSL upsample logits; argmax over interpolated log-softmax equals theirs).
        align_corners: the bilinear interpolation's align_corners, as the method's authors use it.
        presence_from_maps: presence is each way's largest foreground probability over the maps, so
            cropping away padding recomputes it over the real pixels only.
        at_size: optional, size -> Prediction at that size computed from the method's own
            (coarser) maps, for methods whose authors upsample once from their output resolution
            straight to the scoring size (HSNet / iFSL at the original image size): resized() then
            calls it instead of interpolating these maps a second time. Dropped by a real crop.
    """

    fg_probs: Tensor
    presence: Tensor
    bg_probs: Tensor | None = None
    upsampling: str = "probabilities"
    align_corners: bool = False
    presence_from_maps: bool = False
    at_size: Callable[[tuple[int, int]], "Prediction"] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_probabilities(cls, fg_probs: Tensor, bg_probs: Tensor | None = None, **options) -> "Prediction":
        """fg_probs [Q, N, H, W] with presence [Q, N] = each way's largest foreground probability over
        the query (iFSL's max-pooled presence, what methods without a classification head report)."""
        return cls(fg_probs=fg_probs, presence=fg_probs.flatten(2).amax(dim=2), bg_probs=bg_probs, presence_from_maps=True, **options)

    def background(self) -> Tensor:
        """[Q, H, W] background probability (bg_probs, or 1 - sum of the ways' probabilities)."""
        if self.bg_probs is not None:
            return self.bg_probs
        return (1.0 - self.fg_probs.sum(dim=1)).clamp(min=0.0)

    def labels(self, rule: str = "argmax", threshold: float = 0.5) -> Tensor:
        """[Q, H, W] int64 labels, 0 = background, n = way n.

        "argmax" (iFSL / HSNet): the argmax over [background, way 1..N]; a tie goes to the lower
        index, so background wins an exact tie as in torch.argmax. "threshold": the most probable
        way where its probability >= threshold, else background.
        """
        if rule == "argmax":
            # Classes stacked innermost: PyTorch's CPU argmax over dim 1 of [Q, 1 + N, H, W] is a slow
            # strided reduction (54 ms at 1 x 2 x 400 x 400 against 15 ms), same first-index ties.
            scores = torch.stack([self.background(), *self.fg_probs.unbind(1)], dim=-1)
            return scores.argmax(dim=-1)
        if rule == "threshold":
            best_prob, best_way = self.fg_probs.max(dim=1)
            return torch.where(best_prob >= threshold, best_way + 1, torch.zeros_like(best_way))
        raise ValueError(f"unknown label rule {rule!r}; available: {', '.join(LABEL_RULES)}")

    def resized(self, size: tuple[int, int]) -> "Prediction":
        """The prediction with its maps bilinearly resized to ``size`` (height, width), in the
        method's upsampling space; presence is unchanged."""
        if tuple(self.fg_probs.shape[-2:]) == tuple(size):
            return self
        if self.at_size is not None:
            return self.at_size(tuple(size))
        maps = self.fg_probs.float()
        if self.bg_probs is not None:
            maps = torch.cat([self.bg_probs.float().unsqueeze(1), maps], dim=1)
        if self.upsampling == "log_probabilities":
            maps = maps.clamp(min=_TINY).log()
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=self.align_corners)
        maps = maps.exp() if self.upsampling == "log_probabilities" else maps.clamp(0, 1)
        background = maps[:, 0] if self.bg_probs is not None else None
        foreground = maps[:, 1:] if self.bg_probs is not None else maps
        return replace(self, fg_probs=foreground, bg_probs=background)

    def cropped(self, height: int, width: int) -> "Prediction":
        """The top-left height x width of the maps (undoes bottom/right padding); presence derived
        from the maps is taken over the kept pixels only."""
        if tuple(self.fg_probs.shape[-2:]) == (height, width):
            return self
        background = self.bg_probs[..., :height, :width] if self.bg_probs is not None else None
        foreground = self.fg_probs[..., :height, :width]
        presence = foreground.flatten(2).amax(dim=2) if self.presence_from_maps else self.presence
        # The method's own maps covered the padding too: resizing from them would misplace the image.
        return replace(self, fg_probs=foreground, bg_probs=background, presence=presence, at_size=None)

    def query(self, index: int) -> "Prediction":
        """The prediction of one query (leading dimension kept, of size 1)."""
        background = self.bg_probs[index : index + 1] if self.bg_probs is not None else None
        at_size = None if self.at_size is None else (lambda size, whole=self.at_size: whole(size).query(index))
        return replace(
            self, fg_probs=self.fg_probs[index : index + 1], presence=self.presence[index : index + 1], bg_probs=background,
            at_size=at_size,
        )

    def to(self, device: torch.device | str) -> "Prediction":
        background = self.bg_probs.to(device) if self.bg_probs is not None else None
        at_size = None if self.at_size is None else (lambda size, whole=self.at_size: whole(size).to(device))
        return replace(self, fg_probs=self.fg_probs.to(device), presence=self.presence.to(device), bg_probs=background, at_size=at_size)
