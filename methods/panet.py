"""panet: prototype alignment network.

Wang, Liew, Zou, Zhou, Feng, "PANet: Few-Shot Image Semantic Segmentation with Prototype Alignment",
ICCV 2019. Masked average pooling gives one prototype per way (averaged over its shots) and one
background prototype shared by the episode (averaged over every support image); each query pixel is
labelled by cosine similarity x 20 to those prototypes. Training adds prototype alignment
regularisation (PAR): prototypes pooled from the query under its own prediction must segment the
supports. Defaults are the paper's: VGG-16 encoder, SGD lr 1e-3 (momentum 0.9, weight decay 5e-4),
one episode per step, 30000 steps with the lr divided by 10 every 10000.

N-way (FS-CS): the softmax runs over background + N ways, so way n's foreground probability is its
softmax share; its presence score is the largest such share over the query's pixels.

Weak (``--weak``, iFSL's PANet): the loss is iFSL's classification objective on each way's
(background, way) log-softmax maps; supports carry no pixel labels, so the background prototype
pools nothing (zero: cosine 0) and PAR, which needs support masks, is left out.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fsbench.backbones import FeatureExtractor
from fsbench.engine.plan import Optimiser, ParameterGroup, Schedule, StepContext, TrainingContext, TrainingStage
from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.losses import class_tag_loss, segmentation_loss
from fsbench.registry import METHODS
from methods.base import Method, MethodConfig
from methods.prototypes import POOLING_EPSILON, cosine_logits, masked_average_pool, pooling_weights

OPTIMIZERS = ("sgd", "adam")


@dataclass
class PANetConfig(MethodConfig):
    """The paper's settings; QUICK trains a small encoder from scratch for the CPU demo on `shapes`."""

    backbone: str = "vgg16"
    pretrained: bool = True
    lr: float = 1e-3
    # Episodes per optimiser step (gradients are accumulated); train_steps counts optimiser steps.
    batch_size: int = 1
    train_steps: int = 30000
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # The lr is multiplied by lr_decay after each third of the training steps (the paper: 10k of 30k).
    lr_decay: float = 0.1
    scale: float = 20.0
    alignment_weight: float = 1.0
    loss: str = "ce"

    QUICK = {
        "backbone": "resnet18",
        "pretrained": False,
        # From scratch in a few hundred steps SGD barely moves; Adam does.
        "optimizer": "adam",
        "lr": 5e-4,
        "weight_decay": 0.0,
        "train_steps": 400,
    }


@METHODS.register("panet")
class PANet(Method):
    Config = PANetConfig
    encodes_images = True
    supports_weak = True

    def __init__(self, config: PANetConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        if config.optimizer not in OPTIMIZERS:
            raise FsbenchError(f"unknown optimizer {config.optimizer!r} for panet; available: {', '.join(OPTIMIZERS)}")
        self.loss_function = segmentation_loss(config.loss)
        self.encoder = FeatureExtractor(config.backbone, config.pretrained)
        self.to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder}

    # --- the model ----------------------------------------------------------------------------
    def segment(self, episode: Episode) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Query logits and what PAR reuses.

        Returns:
            query_logits [Q, 1+N, H, W] (channel 0 = background), support_features [N, K, C, h, w],
            query_features [Q, C, h, w], background_prototype [C].
        """
        # Supports and queries in one forward: in training, batch-norm statistics span both, as in PANet.
        features = self.encoder(torch.cat([episode.support_images.flatten(0, 1), episode.query_images]))
        support_count = episode.way * episode.shot
        return self.segment_features(episode, features[:support_count], features[support_count:])

    def segment_features(self, episode: Episode, support_features: Tensor, query_features: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """segment() from encoded images: support_features [N*K, C, h, w], query_features [Q, C, h, w]."""
        way, shot = episode.way, episode.shot
        size = tuple(episode.query_images.shape[-2:])
        masks = episode.support_masks.flatten(0, 1)  # [N*K, H, W]
        masks = torch.stack([masks == 0, masks == 1], dim=1).to(support_features.dtype)  # ignore is in neither
        pooled = masked_average_pool(support_features, masks).view(way, shot, 2, -1)
        background_prototype = pooled[:, :, 0].mean(dim=(0, 1))  # [C]
        foreground_prototypes = pooled[:, :, 1].mean(dim=1)  # [N, C]
        prototypes = torch.cat([background_prototype.unsqueeze(0), foreground_prototypes])
        query_logits = cosine_logits(query_features, prototypes, self.config.scale, size)
        return query_logits, support_features.unflatten(0, (way, shot)), query_features, background_prototype

    def alignment_loss(self, episode: Episode, query_logits: Tensor, support_features: Tensor, query_features: Tensor) -> Tensor:
        """PAR: prototypes pooled from the queries under their predicted labels segment each support.

        A way the queries predict nowhere has no query prototype and is skipped, but still counts in
        the average over ways and shots (as in PANet's code).
        """
        way = episode.way
        predicted = query_logits.detach().argmax(dim=1)  # [Q, H, W]
        masks = torch.stack([predicted == label for label in range(way + 1)], dim=1).to(query_features.dtype)
        # One prototype per label pooled over all queries together, as PANet does.
        weights = pooling_weights(masks, tuple(query_features.shape[-2:]))  # [Q, 1+N, h, w]
        pixels = masks.sum(dim=(0, 2, 3))  # [1+N] predicted pixels per label
        query_prototypes = torch.einsum("qchw,qmhw->mc", query_features, weights) / (pixels.unsqueeze(-1) + POOLING_EPSILON)
        size = tuple(episode.support_images.shape[-2:])
        total = query_logits.new_zeros(())
        for way_index in range(way):
            if pixels[way_index + 1] == 0:
                continue
            prototypes = torch.stack([query_prototypes[0], query_prototypes[way_index + 1]])
            logits = cosine_logits(support_features[way_index], prototypes, self.config.scale, size)  # [K, 2, H, W]
            total = total + self.loss_function(logits, episode.support_masks[way_index])
        return total / way

    # --- training -----------------------------------------------------------------------------
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """Episodic training: segmentation loss on the query plus PAR, batch_size episodes per update,
        the lr divided by 1 / lr_decay after each third of the budget."""
        config = self.config
        return [
            TrainingStage(
                name="train",
                steps=context.steps,
                data="episodes",
                batch_size=config.batch_size,
                optimiser=Optimiser(config.optimizer, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum),
                schedule=Schedule("step", milestones=(1 / 3, 2 / 3), gamma=config.lr_decay),
                parameter_groups=lambda: [
                    ParameterGroup("encoder", [parameter for parameter in self.encoder.parameters() if parameter.requires_grad])
                ],
                loss=self.weak_loss if context.weak else self.episode_loss,
            )
        ]

    def episode_logits(self, episode: Episode) -> Tensor:
        """[Q, 1 + N, H, W] query logits over [background, ways], differentiable (for joint fine-tuning
        in methods/combine.py)."""
        return self.segment(episode)[0]

    def episode_loss(self, episode: Episode, context: StepContext) -> dict[str, Tensor]:
        losses = self.training_losses(episode)
        return {"loss": losses["total"], "alignment": losses["alignment"].detach()}

    def weak_loss(self, episode: Episode, context: StepContext) -> dict[str, Tensor]:
        """iFSL's class-tag objective: way n's map is the log-softmax over (background, way n) logits
        [Q, N, 2, H, W]; only the query's class presence is read (no mask, no PAR)."""
        query_logits = self.segment(episode)[0]  # [Q, 1+N, H, W]
        background = query_logits[:, :1].expand(-1, episode.way, -1, -1)
        way_maps = torch.stack([background, query_logits[:, 1:]], dim=2)
        return {"loss": class_tag_loss(torch.log_softmax(way_maps.float(), dim=2), episode.query_presence)}

    def training_losses(self, episode: Episode) -> dict[str, Tensor]:
        """{"segmentation", "alignment", "total"} of one training episode (query masks are read)."""
        query_logits, support_features, query_features, _ = self.segment(episode)
        segmentation = self.loss_function(query_logits, episode.query_masks)
        alignment = self.alignment_loss(episode, query_logits, support_features, query_features)
        total = segmentation + self.config.alignment_weight * alignment
        return {"segmentation": segmentation, "alignment": alignment, "total": total}

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        return self.predict_by_encoding(episode)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, C, H/8, W/8] encoder features."""
        return self.encoder(images)

    @torch.no_grad()
    def predict_encoded(self, episode: Episode, support_features: Tensor, query_features: Tensor) -> Prediction:
        query_logits = self.segment_features(episode, support_features.float(), query_features.float())[0]
        probabilities = query_logits.softmax(dim=1)
        return Prediction.from_probabilities(probabilities[:, 1:].contiguous(), bg_probs=probabilities[:, 0])
