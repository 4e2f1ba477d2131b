"""Predictions over a class vocabulary, and how any method gives one for a generalized FSS query.

A method answers a generalized FSS query in one of three ways, found by what it offers:
- ``vocabulary_predictions(query_images, supports)``: several named predictions at once (a
  combination: its members and every combination rule); it pads for its members itself.
- ``predict_vocabulary(images)``: a dense model's own classes (the base model: softmax over
  background and the classes it was trained on); the supports are not used.
- otherwise it is a few-shot method: ``predict`` on an episode whose ways are the novel classes and
  whose supports are the run's support set; its [background, ways] probabilities are the prediction.
Inputs are padded to the method's valid size and the maps cropped back, as fsbench.engine.padding
does for episodes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from fsbench.engine.padding import pad_amount, pad_images, predict_padded
from fsbench.gfss.task import SupportSet

# Probabilities are floored here before they are normalised, so an all-zero pixel stays defined.
_FLOOR = 1e-12


@dataclass
class VocabularyPrediction:
    """Per-pixel probabilities over [background] + ``class_ids``.

    Attributes:
        probabilities: [Q, 1 + C, H, W], channel 0 = background ("none of my classes"), channel
            1 + i = class_ids[i]; each pixel sums to 1.
        class_ids: the C dataset class ids of channels 1..C.
    """

    probabilities: Tensor
    class_ids: tuple[int, ...]

    @classmethod
    def from_scores(cls, scores: Tensor, class_ids: tuple[int, ...]) -> "VocabularyPrediction":
        """Non-negative scores [Q, 1 + C, H, W] normalised per pixel."""
        scores = scores.clamp(min=0) + _FLOOR
        return cls(scores / scores.sum(dim=1, keepdim=True), tuple(int(class_id) for class_id in class_ids))

    def resized(self, size: tuple[int, int]) -> "VocabularyPrediction":
        """Bilinearly resized probabilities (height, width), as fsbench's probability-space methods resize."""
        if tuple(self.probabilities.shape[-2:]) == tuple(size):
            return self
        return replace(self, probabilities=F.interpolate(self.probabilities.float(), size=size, mode="bilinear", align_corners=False))

    def cropped(self, height: int, width: int) -> "VocabularyPrediction":
        return replace(self, probabilities=self.probabilities[..., :height, :width])

    def query(self, index: int) -> "VocabularyPrediction":
        return replace(self, probabilities=self.probabilities[index : index + 1])

    def score_columns(self, lookup: Tensor, background_scored: bool) -> Tensor:
        """[Q, H, W] int64: the argmax channel as a score column + 1 (``lookup``: GFSSClasses.index_lookup);
        background -> background's column where it is scored, else 0 (a pixel given to no class)."""
        channels = torch.tensor([0, *self.class_ids], dtype=torch.int64)
        columns = lookup[channels.clamp(max=len(lookup) - 1)]
        columns[channels >= len(lookup)] = 0
        if not background_scored:
            columns[0] = 0
        return columns.to(self.probabilities.device)[self.probabilities.argmax(dim=1)]


def vocabulary_predictions(method, query_images: Tensor, supports: SupportSet, index: int = 0) -> dict[str, VocabularyPrediction]:
    """The method's predictions for queries [Q, 3, H, W], by approach key ("" for a plain method)."""
    several = getattr(method, "vocabulary_predictions", None)
    if several is not None:
        return several(query_images, supports, index)
    return {"": vocabulary_prediction(method, query_images, supports, index)}


def vocabulary_prediction(method, query_images: Tensor, supports: SupportSet, index: int = 0) -> VocabularyPrediction:
    """One method's prediction (a dense model's own classes, or a few-shot method's novel classes)."""
    height, width = query_images.shape[-2:]
    dense = getattr(method, "predict_vocabulary", None)
    if dense is not None:
        valid = tuple(method.valid_size(height, width))
        rows, columns = pad_amount((height, width), valid)
        own = dense(pad_images(query_images, rows, columns)).cropped(height, width)
        return replace(own, probabilities=own.probabilities.float())  # float32 under --amp too: rules take logs
    if supports.way == 0:  # nothing is novel: a few-shot method has no class to find
        return VocabularyPrediction(torch.ones(query_images.shape[0], 1, height, width, device=query_images.device), ())
    prediction = predict_padded(method, supports.episode(query_images, index))
    scores = torch.cat([prediction.background().unsqueeze(1), prediction.fg_probs], dim=1).float()
    return VocabularyPrediction.from_scores(scores, tuple(supports.class_ids.tolist()))
