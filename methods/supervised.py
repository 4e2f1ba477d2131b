"""supervised: a plain segmentation network trained on the base classes - generalized FSS's base model.

Any segmentation_models_pytorch architecture (default U-Net, Ronneberger et al., MICCAI 2015; e.g.
``--set architecture=DeepLabV3Plus``, Chen et al., ECCV 2018) trained by dense cross-entropy on the
fold's base classes (one engine image stage; SGD, poly decay as mmsegmentation trains Cityscapes).
In generalized FSS (``--task gfss``) it segments a query into background and the classes it was
trained on: trained on the in-classes it is the lower-bound row, trained on every class
(``--train-classes all``) the upper bound; it never sees the supports. In ordinary FS-S episodes it
is a prototype baseline: masked average pooling of its decoder features over the supports (one
background prototype, one per way) and cosine similarity x ``prototype_scale``, PANet's inference
without PANet's episodic training.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.backbones import load_imagenet_weights
from fsbench.engine.data import training_label_of
from fsbench.engine.plan import Optimiser, ParameterGroup, Schedule, StepContext, TrainingContext, TrainingStage
from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.gfss.vocabulary import VocabularyPrediction
from fsbench.losses import segmentation_loss
from fsbench.registry import METHODS
from methods.base import Method, MethodConfig, round_up
from methods.prototypes import cosine_logits, masked_average_pool

# smp architectures whose decoder widths are a tuple (decoder_channels applies to these only).
UNET_FAMILY = ("Unet", "UnetPlusPlus")


@dataclass
class SupervisedConfig(MethodConfig):
    """Defaults: U-Net with a ResNet-101 encoder, SGD lr 0.01 (momentum 0.9, weight decay 5e-4), poly
    decay (power 0.9), batch 8, 40000 steps, cross-entropy; QUICK is the CPU profile on `shapes`."""

    architecture: str = "Unet"
    backbone: str = "resnet101"
    pretrained: bool = True
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    optimiser: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "poly"
    batch_size: int = 8
    train_steps: int = 40000
    loss: str = "ce"
    # Weight of foreground-class pixels against background ones in the loss's cross-entropy (1: the
    # plain loss). From scratch on `shapes`, plain CE predicts all background for ~450 steps.
    foreground_weight: float = 1.0
    prototype_scale: float = 20.0

    QUICK = {
        "backbone": "resnet18",
        "pretrained": False,
        "decoder_channels": (128, 64, 32, 16, 16),
        "optimiser": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "schedule": "constant",
        "train_steps": 400,
        "foreground_weight": 10.0,
    }


class Vocabulary(nn.Module):
    """The dataset class ids the network's channels 1..C stand for (buffer class_ids [C] int64), so a
    checkpoint knows what it segments."""

    def __init__(self, class_ids: list[int] | None = None):
        super().__init__()
        self.register_buffer("class_ids", torch.tensor(class_ids or [], dtype=torch.int64))

    def resize(self, class_ids: list[int]) -> None:
        self.class_ids = torch.tensor(class_ids, dtype=torch.int64, device=self.class_ids.device)


@METHODS.register("supervised")
class Supervised(Method):
    Config = SupervisedConfig
    trains_on_episodes = False  # dense base-class image batches
    encodes_images = True

    def __init__(self, config: SupervisedConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        self.loss_function = segmentation_loss(config.loss, config.foreground_weight)
        self.network = self._build(classes=2)
        if config.pretrained:
            load_imagenet_weights(self.network.encoder, config.backbone)
        self.vocabulary = Vocabulary()
        self.to(self.device)

    def _build(self, classes: int) -> nn.Module:
        import segmentation_models_pytorch as smp

        extra = {"decoder_channels": tuple(self.config.decoder_channels)} if self.config.architecture in UNET_FAMILY else {}
        try:
            return smp.create_model(self.config.architecture, encoder_name=self.config.backbone, encoder_weights=None,
                                    classes=classes, activation=None, **extra)
        except KeyError as error:
            raise FsbenchError(f"supervised: {error.args[0] if error.args else error}") from None

    def modules(self) -> dict[str, nn.Module]:
        return {"network": self.network, "vocabulary": self.vocabulary}

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        # Five poolings (U-Net, FPN, DeepLabV3+ with a ResNet encoder): sides divisible by 32.
        return round_up(height, 32), round_up(width, 32)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        head = "network.segmentation_head.0.weight"
        if head in state:
            self._resize_head(state[head].shape[0])
        if "vocabulary.class_ids" in state:
            self.vocabulary.resize(state["vocabulary.class_ids"].tolist())
        super().load_state_dict(state)

    def _resize_head(self, classes: int) -> None:
        from segmentation_models_pytorch.base import SegmentationHead

        head = self.network.segmentation_head[0]
        if head.out_channels != classes:
            factor = getattr(self.network.segmentation_head[1], "scale_factor", None) or 1  # FPN, DeepLabV3+: 4
            replacement = SegmentationHead(head.in_channels, classes, kernel_size=head.kernel_size[0], upsampling=int(factor))
            self.network.segmentation_head = replacement.to(head.weight.device)

    # --- training -------------------------------------------------------------------------------
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """Dense segmentation of the base classes (training labels 0 background, 1..C) on image batches."""
        config = self.config

        def initialise() -> None:
            self._resize_head(context.num_labels)
            self.vocabulary.resize(list(context.base_classes))

        return [
            TrainingStage(
                name="train",
                steps=context.steps,
                data="images",
                batch_size=config.batch_size,
                optimiser=Optimiser(config.optimiser, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum),
                schedule=Schedule(config.schedule),
                parameter_groups=lambda: [ParameterGroup("network", list(self.network.parameters()))],
                loss=self.segmentation_loss,
                initialise=initialise,
                # On resume the head must have the trained size before the optimiser state is loaded.
                enter=lambda: self._resize_head(context.num_labels),
            )
        ]

    def segmentation_loss(self, batch: tuple[Tensor, Tensor], context: StepContext) -> dict[str, Tensor]:
        images, labels = batch
        return {"loss": self.loss_function(self.network(images), labels)}

    # --- generalized FSS: its own classes -------------------------------------------------------
    def class_log_probabilities(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, 1 + C, H, W] log-softmax over background and the trained classes (the
        channels of an unused training label - 255, with 255 or more classes - are left out)."""
        logits = self.network(images)
        channels = [0] + [training_label_of(position) for position in range(len(self.vocabulary.class_ids))]
        return F.log_softmax(logits[:, channels], dim=1)

    def predict_vocabulary(self, images: Tensor) -> VocabularyPrediction:
        return VocabularyPrediction(self.class_log_probabilities(images).exp(), tuple(self.vocabulary.class_ids.tolist()))

    def episode_logits(self, episode: Episode) -> Tensor:
        """[Q, 1 + N, H, W] log-probabilities of [background, ways] for a training episode (ways are
        base classes): each way's class probability, background the rest - differentiable, for the
        combined loss of joint fine-tuning (methods/combine.py)."""
        probabilities = self.class_log_probabilities(episode.query_images).exp()
        known = {int(class_id): column + 1 for column, class_id in enumerate(self.vocabulary.class_ids.tolist())}
        ways = [probabilities[:, known[int(class_id)]] if int(class_id) in known else torch.zeros_like(probabilities[:, 0])
                for class_id in episode.class_ids.tolist()]
        foreground = torch.stack(ways, dim=1)
        background = (1.0 - foreground.sum(dim=1, keepdim=True)).clamp(min=0.0)
        return torch.cat([background, foreground], dim=1).clamp(min=1e-9).log()

    # --- FS-S episodes: prototypes of its features ------------------------------------------------
    def features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, C, H, W] decoder features (C = the last decoder width)."""
        return self.network.decoder(self.network.encoder(images))

    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        return self.predict_by_encoding(episode)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, C, H, W] decoder features, one image at a time in evaluation batches."""
        return self.features(images)

    @torch.no_grad()
    def predict_encoded(self, episode: Episode, support_features: Tensor, query_features: Tensor) -> Prediction:
        """Prototypes from support_features [N*K, C, H, W] segment query_features [Q, C, H, W]."""
        way, shot = episode.way, episode.shot
        size = tuple(episode.query_images.shape[-2:])
        support_features, query_features = support_features.float(), query_features.float()
        masks = episode.support_masks.flatten(0, 1)
        masks = torch.stack([masks == 0, masks == 1], dim=1).to(support_features.dtype)  # ignore is in neither
        pooled = masked_average_pool(support_features, masks).view(way, shot, 2, -1)
        prototypes = torch.cat([pooled[:, :, 0].mean(dim=(0, 1)).unsqueeze(0), pooled[:, :, 1].mean(dim=1)])
        probabilities = cosine_logits(query_features, prototypes, self.config.prototype_scale, size).softmax(dim=1)
        return Prediction.from_probabilities(probabilities[:, 1:].contiguous(), bg_probs=probabilities[:, 0].contiguous())
