"""What hsnet, asnet and asnethm share: a frozen backbone's taps, 4D correlations of every (query,
way, shot) pair, a learner that turns them into 2-channel maps, the FS-CS heads and k-shot rules
(way_maps.py), and the training stage.

Each method says how support taps are prepared (``support_taps``), which learner squeezes the
correlations and whether the learner sees the support masks (ASNet's attention masking). The
backbone's taps of an image depend on nothing else, so prediction splits into ``encode`` (taps per
image, cached by the evaluator) and ``predict_encoded`` (masking, correlations, learner, heads).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.engine.plan import Optimiser, ParameterGroup, StepContext, TrainingContext, TrainingStage
from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.losses import class_tag_loss, foreground_weights
from methods.base import Method, MethodConfig
from methods.correlation.backbone_taps import build_taps
from methods.correlation.hypercorrelation import hypercorrelation
from methods.correlation.way_maps import SHOT_AGGREGATIONS, WayMaps, upsample

LOSSES = ("hsnet", "ifsl")
# Largest padding the engine may add to reach a size the learner takes (beyond it the size is refused).
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
    foreground_weight: weight of foreground pixels in the training loss relative to background ones
        (1 = the papers' unweighted loss). The quick profile raises it: shapes' objects cover about
        5% of a query, and an unweighted loss on random features settles on all-background.
    """

    backbone: str = "resnet101"
    pretrained: bool = True
    lr: float = 1e-3  # Adam, both papers
    batch_size: int = 20  # episodes per update: HSNet's; iFSL's code defaults to 12
    # Updates of batch_size episodes (200k episodes); the papers train "until convergence" (HSNet:
    # 2 days on 4 GPUs for Pascal) and give no fixed count.
    train_steps: int = 10_000
    shot_aggregation: str = "vote"
    loss: str = "hsnet"
    way_valued_support_masks: bool = False
    train_backbone: bool = False
    foreground_weight: float = 1.0

    # The shapes demo shared by the family (no ImageNet weights offline): resnet18 from scratch,
    # trained with the learner, 4 episodes per update, foreground pixels weighted 20 (they cover
    # about 5% of a shapes query; unweighted, the learners settle on all-background). Each method
    # adds its number of updates.
    QUICK_COMMON: ClassVar[dict] = {
        "backbone": "resnet18",
        "pretrained": False,
        "train_backbone": True,
        "foreground_weight": 20.0,
        "batch_size": 4,
    }


class CorrelationMethod(Method):
    """Base of hsnet / asnet / asnethm. Subclasses set ``learner_class`` and ``learner_sees_masks``
    and implement ``support_taps``."""

    Config = CorrelationConfig
    encodes_images = True
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
        self.to(self.device)
        self.eval()

    def modules(self) -> dict[str, nn.Module]:
        return {"backbone": self.backbone, "learner": self.learner}

    def train(self, mode: bool = True) -> "CorrelationMethod":
        super().train(mode)
        if not self.config.train_backbone:
            self.backbone.eval()  # frozen: batch-norm statistics stay ImageNet's
        return self

    # --- the model -------------------------------------------------------------------------------
    @abstractmethod
    def support_taps(self, taps: list[Tensor], images: Tensor, masks: Tensor | None) -> list[Tensor]:
        """Support taps as the learner needs them, from the backbone's taps of the support images.

        Args:
            taps: per tap [S, C_l, h_l, w_l], the backbone's taps of the support images.
            images: [S, 3, H, W] the support images (asnethm runs the backbone on masked images).
            masks: [S, H, W] float support masks, or None when supports carry no pixel labels (--weak).
        """

    def tap_backbone(self, images: Tensor) -> list[Tensor]:
        with torch.set_grad_enabled(self.config.train_backbone and torch.is_grad_enabled()):
            return self.backbone(images)

    def support_masks(self, episode: Episode) -> Tensor:
        """[N, K, H, W] float: 1 on way n's foreground (or n + 1, see way_valued_support_masks), 0 elsewhere
        (ignore and padding pixels included, as HSNet's and iFSL's loaders zero ignore pixels)."""
        masks = (episode.support_masks == 1).float()
        if self.config.way_valued_support_masks:
            masks = masks * torch.arange(1, episode.way + 1, device=masks.device, dtype=masks.dtype).view(-1, 1, 1, 1)
        return masks

    def shot_logits(self, episode: Episode, support_features: list[Tensor] | None = None,
                    query_features: list[Tensor] | None = None, use_masks: bool = True) -> Tensor:
        """[K, Q, N, 2, h, w] raw 2-channel logits of every (shot, query, way) at the learner's output
        size (1/4 of the input), for an episode of a size the learner takes (see valid_size).

        support_features [N*K, ...] / query_features [Q, ...]: the backbone's taps from ``encode``
        (computed here when None). use_masks False: the supports' masks are not used at all (iFSL's
        weak training passes no support mask).
        """
        way, shot, queries = episode.way, episode.shot, episode.num_queries
        support_images = episode.support_images.flatten(0, 1)
        masks = self.support_masks(episode).flatten(0, 1) if use_masks else None  # [N*K, H, W], image n*K + k
        query_taps = self.tap_backbone(episode.query_images) if query_features is None else list(query_features)
        support_raw = self.tap_backbone(support_images) if support_features is None else list(support_features)
        support_taps = self.support_taps(support_raw, support_images, masks)
        device = episode.query_images.device
        query_index = torch.arange(queries, device=device).repeat_interleave(way)  # pairs (q, n), q major
        logits = []
        for shot_index in range(shot):
            support_index = (torch.arange(way, device=device) * shot + shot_index).repeat(queries)
            correlations = hypercorrelation(query_taps, support_taps, query_index, support_index, self.backbone.group_sizes)
            pair_masks = masks.index_select(0, support_index) if self.learner_sees_masks and masks is not None else None
            pair_logits = self.learner(correlations, pair_masks)  # [Q*N, 2, h, w]
            logits.append(pair_logits.view(queries, way, *pair_logits.shape[1:]))
        return torch.stack(logits)

    def way_maps(self, logits: Tensor) -> WayMaps:
        return WayMaps(log_probs=logits.log_softmax(dim=3), aggregation=self.config.shot_aggregation, logits=logits)

    # --- inference -------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> the backbone's taps, per tap [B, C_l, h_l, w_l] (frozen: a pure function of the image)."""
        return self.backbone(images)

    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        return self.predict_by_encoding(episode)

    @torch.no_grad()
    def predict_encoded(self, episode: Episode, support_features: list[Tensor], query_features: list[Tensor]) -> Prediction:
        """Prediction at the query images' size: log-probabilities upsampled bilinearly with
        align_corners=True (as HSNet and iFSL upsample logits); resizing further (original-size
        scoring) interpolates in the same space. Presence is iFSL's per-way head (computed at the
        learner's output size), not recomputed from the maps."""
        logits = self.shot_logits(episode, [tap.float() for tap in support_features], [tap.float() for tap in query_features])
        maps = self.way_maps(logits.float())

        def at_size(size: tuple[int, int]) -> Prediction:
            # Straight from the learner's maps to any scoring size (the original image's too), one
            # interpolation as HSNet and iFSL do, not a second one from the input size.
            return Prediction(**maps.prediction_fields(size))

        return replace(at_size(tuple(episode.query_images.shape[-2:])), at_size=at_size)

    # --- input sizes -----------------------------------------------------------------------------
    def takes_side(self, side: int) -> bool:
        """Whether an image side gives taps and correlations the learner takes (sides are independent)."""
        sides = self.backbone.tap_sizes(side)
        return min(sides) >= 1 and self.learner.accepts_support_sides(sides)

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest (height, width) >= the given one that the learner takes (the engine pads to it).

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
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """One episodic stage as both papers train: Adam (lr 1e-3), ``batch_size`` episodes per
        update, constant lr, the learner only (the backbone frozen in eval mode unless
        train_backbone)."""
        frozen = not self.config.train_backbone

        def enter() -> None:
            self.backbone.requires_grad_(not frozen)

        def groups() -> list[ParameterGroup]:
            trained = [("learner", self.learner)] + ([] if frozen else [("backbone", self.backbone)])
            return [ParameterGroup(name, list(module.parameters())) for name, module in trained]

        return [
            TrainingStage(
                name="train", steps=context.steps, data="episodes", batch_size=self.config.batch_size,
                optimiser=Optimiser("adam", lr=self.config.lr), parameter_groups=groups, loss=self.episode_loss,
                enter=enter, eval_modules=("backbone",) if frozen else (),
            )
        ]

    def episode_loss(self, episode: Episode, context: StepContext) -> dict[str, Tensor]:
        """The loss of one training episode. Every shot is trained as a 1-shot episode (the papers
        train 1-shot) and the shots' losses averaged.

        Pixel labels: cross-entropy ("hsnet") or NLL over [merged background, ways] ("ifsl"); query
        pixels labelled 255 are ignored (the sampler's --boundary rule decides whether a dataset's
        boundary band is 255 or background; the engine's padding is 255). Class tags (--weak):
        fsbench.losses.class_tag_loss on each shot's per-way log-softmax maps, and the supports'
        masks are not used (iFSL passes no support mask)."""
        if context.weak:
            logits = self.shot_logits(episode, use_masks=False)
            log_probs = logits.log_softmax(dim=3)
            loss = torch.stack([class_tag_loss(shot_log_probs, episode.query_presence) for shot_log_probs in log_probs]).mean()
            return {"loss": loss}
        logits = self.shot_logits(episode)
        size = tuple(episode.query_images.shape[-2:])
        shots, queries, ways = logits.shape[:3]
        target = episode.query_masks
        if self.config.loss == "hsnet":
            full = upsample(logits.flatten(0, 2), size).unflatten(0, (shots, queries, ways))  # [K, Q, N, 2, H, W]
            per_way = (target.unsqueeze(1) == torch.arange(1, ways + 1, device=target.device).view(1, -1, 1, 1)).long()
            per_way = per_way.masked_fill(target.unsqueeze(1) == IGNORE_INDEX, IGNORE_INDEX)  # [Q, N, H, W]
            per_way = per_way.unsqueeze(0).expand(shots, -1, -1, -1, -1)
            weight = self._class_weights(2, logits.device)
            loss = F.cross_entropy(full.flatten(0, 2), per_way.flatten(0, 2), weight=weight, ignore_index=IGNORE_INDEX)
        else:
            merged = WayMaps(logits.log_softmax(dim=3), "average").shot_scores(size)  # [K, Q, 1+N, H, W]
            expanded = target.unsqueeze(0).expand(shots, -1, -1, -1).flatten(0, 1)
            loss = F.nll_loss(merged.flatten(0, 1), expanded, weight=self._class_weights(1 + ways, logits.device), ignore_index=IGNORE_INDEX)
        return {"loss": loss}

    def _class_weights(self, classes: int, device: torch.device) -> Tensor | None:
        """[classes] loss weights: 1 for background (index 0), foreground_weight for the rest; None when 1."""
        if self.config.foreground_weight == 1.0:
            return None  # the papers' loss, bit for bit
        return foreground_weights(classes, self.config.foreground_weight, device)
