"""What hsnet, asnet and asnethm share: a frozen backbone's taps, 4D correlations of every (query,
way, shot) pair, a learner that turns them into 2-channel maps, the FS-CS heads and k-shot rules
(way_maps.py), training losses and the hook that reads the authors' released checkpoints.

Each method says how support taps are prepared (``support_taps``), which learner squeezes the
correlations and whether the learner sees the support masks (ASNet's attention masking).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.train import TrainSettings, train_episodic
from methods.base import Method, MethodConfig
from methods.correlation.backbone_taps import build_taps
from methods.correlation.hypercorrelation import hypercorrelation
from methods.correlation.way_maps import SHOT_AGGREGATIONS, WayMaps, upsample

LOSSES = ("hsnet", "ifsl")
# Largest padding fsbench adds to reach a size the learner takes (beyond it the size is refused).
MAX_PADDING = 1024


@dataclass
class CorrelationConfig(MethodConfig):
    """Settings of the correlation methods; defaults are the papers' (Pascal-5i / COCO-20i training).

    shot_aggregation: "vote" (HSNet's k-shot protocol) or "average" (iFSL's logit averaging).
    loss: "hsnet" (cross-entropy of each way's bilinearly upsampled 2-channel logits) or "ifsl"
        (NLL of the upsampled merged log-probabilities over [background, ways]).
    way_valued_support_masks: iFSL's FS-CS loader gives way n's support mask the value n (1-based)
        instead of 1; its models multiply features (and asnethm the support image) by that mask.
        True reproduces that pipeline (it changes asnethm's N-way predictions; hsnet's and asnet's
        only through the 1e-5 in the feature normalisation); False (default) uses 0/1 masks.
    train_backbone: False keeps the backbone frozen in eval mode (the papers).
    """

    backbone: str = "resnet101"
    pretrained: bool = True
    lr: float = 1e-3  # Adam, both papers
    batch_size: int = 20  # HSNet's; iFSL's code defaults to 12
    # Episodes; the papers train "until convergence" (HSNet: 2 days on 4 GPUs for Pascal), no fixed count.
    train_steps: int = 200_000
    shot_aggregation: str = "vote"
    loss: str = "hsnet"
    way_valued_support_masks: bool = False
    train_backbone: bool = False


class CorrelationMethod(Method):
    """Base of hsnet / asnet / asnethm. Subclasses set ``learner_class`` and ``learner_sees_masks``
    and implement ``support_taps``."""

    Config = CorrelationConfig
    learner_class: ClassVar[type[nn.Module]]
    learner_sees_masks: ClassVar[bool] = False

    def __init__(self, config: CorrelationConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        for name, value, choices in (("shot_aggregation", config.shot_aggregation, SHOT_AGGREGATIONS), ("loss", config.loss, LOSSES)):
            if value not in choices:
                raise FsbenchError(f"{self.registry_name}: unknown {name} {value!r}; available: {', '.join(choices)}")
        self.backbone = build_taps(config.backbone, config.pretrained)
        self.backbone.requires_grad_(config.train_backbone)
        self.learner = self.learner_class(self.backbone.group_sizes)
        self.optimizer: torch.optim.Optimizer | None = None
        self.accumulated = 0
        self.to(self.device)
        self.eval()

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "learner": self.learner}

    def train(self, mode: bool = True) -> "CorrelationMethod":
        super().train(mode)
        if not self.config.train_backbone:
            self.backbone.eval()  # frozen: batch-norm statistics stay ImageNet's
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters training updates: the learner's (and the backbone's if train_backbone)."""
        return [parameter for module in self.modules().values() for parameter in module.parameters() if parameter.requires_grad]

    # --- the model -------------------------------------------------------------------------------
    @abstractmethod
    def support_taps(self, images: Tensor, masks: Tensor) -> list[Tensor]:
        """Taps of support images [S, 3, H, W] with masks [S, H, W] (float) as the learner needs them."""

    def tap_backbone(self, images: Tensor) -> list[Tensor]:
        with torch.set_grad_enabled(self.config.train_backbone and torch.is_grad_enabled()):
            return self.backbone(images)

    def support_masks(self, episode: Episode) -> Tensor:
        """[N, K, H, W] float: 1 on way n's foreground (or n + 1, see way_valued_support_masks), 0 elsewhere
        (ignore pixels included, as HSNet's and iFSL's loaders do)."""
        masks = (episode.support_masks == 1).float()
        if self.config.way_valued_support_masks:
            masks = masks * torch.arange(1, episode.way + 1, device=masks.device, dtype=masks.dtype).view(-1, 1, 1, 1)
        return masks

    def shot_logits(self, episode: Episode) -> Tensor:
        """[K, Q, N, 2, h, w] raw 2-channel logits of every (shot, query, way) at the learner's output
        size, for an episode whose images the learner takes (see valid_input_size)."""
        way, shot, queries = episode.way, episode.shot, episode.num_queries
        masks = self.support_masks(episode).flatten(0, 1)  # [N*K, H, W], support image n*K + k
        query_taps = self.tap_backbone(episode.query_images)
        support_taps = self.support_taps(episode.support_images.flatten(0, 1), masks)
        device = episode.query_images.device
        query_index = torch.arange(queries, device=device).repeat_interleave(way)  # pairs (q, n), q major
        logits = []
        for shot_index in range(shot):
            support_index = (torch.arange(way, device=device) * shot + shot_index).repeat(queries)
            correlations = hypercorrelation(query_taps, support_taps, query_index, support_index, self.backbone.group_sizes)
            pair_masks = masks.index_select(0, support_index) if self.learner_sees_masks else None
            pair_logits = self.learner(correlations, pair_masks)  # [Q*N, 2, h, w]
            logits.append(pair_logits.view(queries, way, *pair_logits.shape[1:]))
        return torch.stack(logits)

    def padded_shot_logits(self, episode: Episode) -> tuple[Tensor, tuple[int, int]]:
        """shot_logits of the episode padded (bottom/right, zeros) to a size the learner takes.

        Returns (logits, size): unpadded, the learner's own output and the images' size; padded,
        logits upsampled to the padded size and cropped to the images (so already at ``size``).
        """
        size = tuple(episode.query_images.shape[-2:])
        padded = self.valid_input_size(*size)
        if padded == size:
            return self.shot_logits(episode), size
        extra = (0, padded[1] - size[1], 0, padded[0] - size[0])
        padded_episode = Episode(
            support_images=F.pad(episode.support_images, extra),
            support_masks=F.pad(episode.support_masks, extra),
            query_images=F.pad(episode.query_images, extra),
            query_masks=episode.query_masks,
            class_ids=episode.class_ids,
            query_presence=episode.query_presence,
        )
        logits = self.shot_logits(padded_episode)
        shots, queries, ways = logits.shape[:3]
        logits = upsample(logits.flatten(0, 2), padded)[..., : size[0], : size[1]]
        return logits.unflatten(0, (shots, queries, ways)), size

    def way_maps(self, episode: Episode) -> WayMaps:
        logits, _ = self.padded_shot_logits(episode)
        return WayMaps(log_probs=logits.log_softmax(dim=3), aggregation=self.config.shot_aggregation, logits=logits)

    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        return self.way_maps(episode).prediction(tuple(episode.query_images.shape[-2:]))

    # --- input sizes -----------------------------------------------------------------------------
    def takes_side(self, side: int) -> bool:
        """Whether an image side gives taps and correlations the learner takes (sides are independent)."""
        sides = self.backbone.tap_sizes(side)
        return min(sides) >= 1 and self.learner.accepts_support_sides(sides)

    def valid_input_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (height, width) >= the given one that the learner takes (padding target).

        HSNet adds squeezed blocks whose support sides must agree, which fails at a few sizes with
        VGG-16 (e.g. 528 px: 2 against 3); ASNet takes any size (see asnet_learner.py).
        """
        new_height, new_width = (next((value for value in range(side, side + MAX_PADDING) if self.takes_side(value)), None) for side in (height, width))
        if new_height is None or new_width is None:
            raise FsbenchError(
                f"{self.registry_name} with {self.config.backbone} cannot take {height}x{width} images, nor any size up to "
                f"{MAX_PADDING} px larger (its squeezed correlation blocks do not add up)"
            )
        return new_height, new_width

    # --- training --------------------------------------------------------------------------------
    def training_losses(self, episode: Episode) -> dict[str, Tensor]:
        """{"segmentation", "total"} of one training episode; every shot is trained as a 1-shot
        episode (the papers train 1-shot) and the losses are averaged. Query pixels marked ignore
        (255, object boundaries) count as background, as HSNet's and iFSL's loaders make them."""
        logits, size = self.padded_shot_logits(episode)
        shots, queries, ways = logits.shape[:3]
        target = episode.query_masks.masked_fill(episode.query_masks == IGNORE_INDEX, 0)
        if self.config.loss == "hsnet":
            full = upsample(logits.flatten(0, 2), size).unflatten(0, (shots, queries, ways))  # [K, Q, N, 2, H, W]
            per_way = (target.unsqueeze(1) == torch.arange(1, ways + 1, device=target.device).view(1, -1, 1, 1)).long()
            per_way = per_way.unsqueeze(0).expand(shots, -1, -1, -1, -1)
            loss = F.cross_entropy(full.flatten(0, 2), per_way.flatten(0, 2))
        else:
            merged = WayMaps(logits.log_softmax(dim=3), "average").shot_scores(size)  # [K, Q, 1+N, H, W]
            loss = F.nll_loss(merged.flatten(0, 1), target.unsqueeze(0).expand(shots, -1, -1, -1).flatten(0, 1))
        return {"segmentation": loss, "total": loss}

    def fit(self, benchmark, settings: TrainSettings) -> None:
        self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=self.config.lr)
        self.accumulated = 0
        train_episodic(self, benchmark, settings)
        if self.accumulated:  # a last partial batch still updates the model
            self._optimizer_step()

    def train_step(self, episode: Episode) -> dict[str, float]:
        """One episode of a batch of ``batch_size`` episodes (gradients accumulate, Adam steps per batch)."""
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(self.trainable_parameters(), lr=self.config.lr)
        loss = self.training_losses(episode)["total"]
        (loss / max(self.config.batch_size, 1)).backward()
        self.accumulated += 1
        if self.accumulated >= self.config.batch_size:
            self._optimizer_step()
        return {"loss": loss.item()}

    def _optimizer_step(self) -> None:
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accumulated = 0

    # --- released checkpoints --------------------------------------------------------------------
    @classmethod
    def from_foreign_checkpoint(cls, foreign):
        """fsbench.checkpoint_import's hook: a ForeignState if ``foreign`` (a ForeignFile) is an
        HSNet or iFSL checkpoint of this method, else None."""
        from methods.correlation.released_checkpoints import foreign_state_for

        return foreign_state_for(cls, foreign)
