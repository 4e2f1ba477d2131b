"""From per-way 2-channel maps to an episode's prediction: iFSL's FS-CS heads and the two k-shot rules.

Each (query, way, shot) gets a 2-channel map (background, foreground of that way) from a binary
learner, turned into log-probabilities by a softmax over the 2 channels. Then, as iFSL does:
- merged background (merge_bg_masks): the mean over ways of the per-way background log-probabilities;
  a pixel's label is the argmax over [merged background, way 1..N] of the log-probabilities;
- class presence (collect_class_presence): way n is present when some pixel's foreground probability
  (per-way map, before upsampling) is >= 0.5;
- upsampling: bilinear with align_corners=True of the merged log-probabilities (iFSL); under HSNet's
  protocol (the vote rule) with one way, of the raw 2-channel logits, as HSNet does (the argmax is
  the same but for rounding: log-softmax shifts both channels of a pixel by one constant, and
  bilinear weights are shared by the channels).
k shots:
- "average" (iFSL): the shots' upsampled merged log-probabilities are averaged, the labels are the
  argmax of the average; a way is present when at least half of the shots say so.
- "vote" (HSNet predict_mask_nshot): each shot's labels at the scoring size; per way, pixels with at
  least half of that way's largest vote count over the image (counts of 0 treated as 1) are its.
With one shot both rules are the plain argmax of that shot.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


SHOT_AGGREGATIONS = ("vote", "average")
PRESENCE_THRESHOLD = 0.5


def upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[B, C, h, w] -> [B, C, *size], bilinear with align_corners=True (HSNet's and iFSL's)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size, mode="bilinear", align_corners=True)


@dataclass
class WayMaps:
    """One episode's per-shot, per-way log-probabilities and the k-shot rule.

    Attributes:
        log_probs: [K, Q, N, 2, h, w], log-softmax over (background, foreground of way n).
        aggregation: "vote" or "average".
        logits: the raw 2-channel logits the log-probabilities came from, if known (see shot_scores).
    """

    log_probs: Tensor
    aggregation: str
    logits: Tensor | None = None

    @property
    def shots(self) -> int:
        return self.log_probs.shape[0]

    def merged(self) -> Tensor:
        """[K, Q, 1+N, h, w]: channel 0 the merged background, channel n the way-n foreground."""
        background = self.log_probs[:, :, :, 0].mean(dim=2, keepdim=True)
        return torch.cat([background, self.log_probs[:, :, :, 1]], dim=2)

    def shot_presence(self) -> Tensor:
        """[K, Q, N]: each shot's largest foreground probability of each way over the query."""
        return self.log_probs[:, :, :, 1].flatten(3).amax(dim=3).exp()

    def presence(self) -> Tensor:
        """[Q, N] in [0, 1], >= 0.5 where the way is predicted present (iFSL's rule, shots averaged)."""
        per_shot = self.shot_presence()
        if self.shots == 1:
            return per_shot[0]
        return (per_shot >= PRESENCE_THRESHOLD).float().mean(dim=0)

    def shot_scores(self, size: tuple[int, int] | None) -> Tensor:
        """[K, Q, 1+N, H, W] per-shot scores whose argmax is the label, upsampled to ``size`` (None:
        kept as they are): the merged log-probabilities (iFSL), or under HSNet's protocol (the vote)
        with one way the raw logits, which HSNet upsamples and argmaxes (the same labels but for
        rounding, which this way is the same too)."""
        if self.aggregation == "vote" and self.log_probs.shape[2] == 1 and self.logits is not None:
            scores = self.logits[:, :, 0]
        else:
            scores = self.merged()
        if size is None:
            return scores
        shots, queries = scores.shape[:2]
        return upsample(scores.flatten(0, 1), size).unflatten(0, (shots, queries))

    def vote_shares(self, size: tuple[int, int]) -> Tensor:
        """[Q, N, H, W]: per way, the pixel's vote count over the way's largest count (at least 1)."""
        labels = self.shot_scores(size).argmax(dim=2)  # [K, Q, H, W], 0 = background
        ways = self.log_probs.shape[2]
        way_labels = torch.arange(1, ways + 1, device=labels.device).view(1, 1, ways, 1, 1)
        counts = (labels.unsqueeze(2) == way_labels).sum(dim=0).float()  # [Q, N, H, W]
        largest = counts.flatten(2).amax(dim=2).clamp(min=1).view(*counts.shape[:2], 1, 1)
        return counts / largest

    def prediction_fields(self, size: tuple[int, int] | None = None) -> dict:
        """The fields of an fsbench Prediction, at ``size`` (None: at the maps' own size).

        Returns {"fg_probs": [Q, N, H, W], "bg_probs": [Q, H, W], "presence": [Q, N],
        "upsampling": ..., "align_corners": True}. The label of a pixel is the argmax over
        [bg_probs, fg_probs] (background wins ties). With the average rule (and with one shot) they
        are the softmax over [merged background, ways] of the (shot-averaged) log-probabilities:
        the argmax is iFSL's, it survives log-space upsampling (a per-pixel shift), and with one way
        fg_probs >= 0.5 is the same decision (for one way and one shot they are the per-way head's
        own probabilities). With the vote rule they are vote shares and an indicator of "no way
        reaches half its largest vote", so only the labels carry over.
        """
        if self.shots > 1 and self.aggregation == "vote":
            if size is None:
                raise ValueError("the vote over shots is taken at the scoring size; pass size")
            shares = self.vote_shares(size)
            background = (shares < PRESENCE_THRESHOLD).all(dim=1).float()
            return {"fg_probs": shares, "bg_probs": background, "presence": shares.flatten(2).amax(dim=2),
                    "upsampling": "probabilities", "align_corners": True}
        scores = self.shot_scores(size)
        total = scores[0]
        for shot_scores in scores[1:]:  # summed shot by shot, then divided, as iFSL does (same rounding)
            total = total + shot_scores
        # float64: distinct float32 scores keep distinct probabilities, so the argmax stays theirs
        # (in float32 the softmax can round two near-equal scores to one value, a tie).
        probabilities = (total / self.shots).double().softmax(dim=1)  # [Q, 1+N, H, W]
        return {"fg_probs": probabilities[:, 1:], "bg_probs": probabilities[:, 0], "presence": self.presence(),
                "upsampling": "log_probabilities", "align_corners": True}
