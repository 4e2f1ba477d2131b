"""mtl_unet: a U-Net adapted to each episode by meta-transfer learning.

Sun, Liu, Chua, Schiele, "Meta-Transfer Learning for Few-Shot Learning", CVPR 2019, applied to
segmentation with a U-Net (Ronneberger, Fischer, Brox, MICCAI 2015; here smp's ResNet-encoder U-Net).
1. Pre-training: the U-Net learns dense labels of the fold's base classes (plain image batches).
2. Meta-transfer learning: every encoder and decoder conv is frozen and gets a per-filter scale
   (init 1) and shift (init 0); a small base learner (a 1x1 conv on the decoder's output, background
   vs foreground, like MTL's fully connected classifier) is adapted on each episode's support by gradient descent (20 steps, lr 0.01); the
   adapted learner's loss on the query trains the scales, shifts and the learner's initialisation.
   First-order: the inner loop's steps are constants for the outer gradient.
3. Test: the same adaptation on the support, then the adapted learner segments the query.

N-way: each way gets its own base learner, adapted on that way's support masks from the shared
initialisation; way n's foreground probability is its learner's softmax foreground share and its
presence score the largest such share over the query's pixels; the background is the mean over ways
of the learners' background log-probabilities (iFSL's merge).

train_steps is the whole budget: the first ``pretrain_share`` of it pre-trains (batches of
``batch_size`` images), the rest meta-trains (one episode per step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.backbones import load_imagenet_weights
from fsbench.engine.plan import Optimiser, ParameterGroup, StepContext, TrainingContext, TrainingStage
from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.losses import segmentation_loss
from fsbench.registry import METHODS
from methods.base import Method, MethodConfig, round_up
from methods.scale_shift import ScaleShift


@dataclass
class MTLUNetConfig(MethodConfig):
    """Defaults: MTL's inner loop (20 steps, lr 0.01, Adam lr 1e-3 outside); QUICK is the CPU demo."""

    backbone: str = "resnet101"
    pretrained: bool = True
    # smp's U-Net decoder widths, deepest first; the base learner reads the last one.
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    lr: float = 1e-3  # meta-training (scales, shifts, base-learner initialisation)
    pretrain_lr: float = 1e-3
    batch_size: int = 8  # pre-training images per step
    train_steps: int = 20000
    pretrain_share: float = 0.5
    inner_steps: int = 20
    inner_lr: float = 0.01
    # 1: a per-pixel linear classifier, the analogue of MTL's single fully connected base learner.
    base_learner_kernel: int = 1
    loss: str = "ce_dice"

    QUICK = {
        "backbone": "resnet18",
        "pretrained": False,
        "decoder_channels": (128, 64, 32, 16, 16),
        "train_steps": 400,
    }


class BaseLearner(nn.Module):
    """The meta-learned initialisation of the per-episode learner: a conv, decoder features -> 2
    logits (background, foreground). weight [2, C, k, k], bias [2]."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        conv = nn.Conv2d(channels, 2, kernel_size=kernel, padding=kernel // 2)
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())


def base_learner_logits(features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """[B, C, H, W] decoder features -> [B, 2, H, W] logits of a learner (weight, bias)."""
    return F.conv2d(features, weight, bias, padding=weight.shape[-1] // 2)


@METHODS.register("mtl_unet")
class MTLUNet(Method):
    Config = MTLUNetConfig
    encodes_images = True

    def __init__(self, config: MTLUNetConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        import segmentation_models_pytorch as smp

        self.loss_function = segmentation_loss(config.loss)
        # Two output classes until pre-training (or a checkpoint) says how many base classes there are.
        self.network = smp.Unet(
            encoder_name=config.backbone,
            encoder_weights=None,
            decoder_channels=tuple(config.decoder_channels),
            classes=2,
            activation=None,
        )
        if config.pretrained:
            load_imagenet_weights(self.network.encoder, config.backbone)
        # The pre-training head has the base learner's kernel, so it can initialise the learner.
        self._resize_pretraining_head(2)
        self.scale_shift = ScaleShift(self.network, prefixes=("encoder.", "decoder."))
        self.base_learner = BaseLearner(config.decoder_channels[-1], config.base_learner_kernel)
        self.to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"network": self.network, "scale_shift": self.scale_shift, "base_learner": self.base_learner}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        key = "network.segmentation_head.0.weight"
        if key in state:
            self._resize_pretraining_head(state[key].shape[0])
        super().load_state_dict(state)

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        # The U-Net's five poolings need sides divisible by 32 (e.g. HSNet's 400 -> 416).
        return round_up(height, 32), round_up(width, 32)

    def _resize_pretraining_head(self, classes: int) -> None:
        from segmentation_models_pytorch.base import SegmentationHead

        head = self.network.segmentation_head[0]
        kernel = self.config.base_learner_kernel
        if head.out_channels != classes or head.kernel_size[0] != kernel:
            replacement = SegmentationHead(head.in_channels, classes, kernel_size=kernel)
            self.network.segmentation_head = replacement.to(head.weight.device)

    # --- the meta model ---------------------------------------------------------------------------
    def meta_features(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, C, H, W] decoder output of the frozen U-Net under scaling and shifting."""
        with self.scale_shift.applied(self.network):
            return self.network.decoder(self.network.encoder(images))

    def adapt(self, features: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """The inner loop: ``inner_steps`` of gradient descent on the support from the initialisation.

        Args:
            features: [K, C, H, W] support decoder features (treated as constants).
            masks: [K, H, W] in {0, 1, 255}.
        Returns:
            The adapted (weight, bias), detached. Nothing stored is modified, so one episode's
            adaptation never leaks into the next; full-batch descent makes it deterministic.
        """
        features, masks = features.detach(), masks.clone()
        if self.config.base_learner_kernel == 1:
            # A 1x1 learner sees pixels independently: keep only the labelled ones, once, as a
            # [1, C, P, 1] "image" (every loss pools the batch's valid pixels, so the value is equal).
            valid = masks != IGNORE_INDEX
            features = features.permute(0, 2, 3, 1)[valid].t()[None, :, :, None]
            masks = masks[valid][None, :, None]
        weight = self.base_learner.weight.detach().clone()
        bias = self.base_learner.bias.detach().clone()
        with torch.enable_grad():
            for _ in range(self.config.inner_steps):
                weight.requires_grad_(True)
                bias.requires_grad_(True)
                loss = self.loss_function(base_learner_logits(features, weight, bias), masks)
                weight_gradient, bias_gradient = torch.autograd.grad(loss, (weight, bias))
                weight = (weight - self.config.inner_lr * weight_gradient).detach()
                bias = (bias - self.config.inner_lr * bias_gradient).detach()
        return weight, bias

    def adapted_learners(self, support_images: Tensor, support_masks: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Every way's adapted (weight, bias): support_images [N, K, 3, H, W], masks [N, K, H, W].

        First-order: the support's features are constants for the outer gradient (adapt detaches
        them), so they are computed without an autograd graph, in training too.
        """
        way, shot = support_images.shape[:2]
        with torch.no_grad():
            features = self.meta_features(support_images.flatten(0, 1)).unflatten(0, (way, shot))
        return [self.adapt(features[way_index], support_masks[way_index]) for way_index in range(way)]

    # --- training ---------------------------------------------------------------------------------
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """Pre-training (the first pretrain_share of the budget: dense base-class segmentation, every
        U-Net weight, Adam at pretrain_lr), then meta-transfer learning (one episode per update: the
        frozen U-Net's scales and shifts and the base learner's initialisation, Adam at lr)."""
        config = self.config
        pretrain_steps = min(context.steps, math.ceil(context.steps * config.pretrain_share))

        def enter_pretraining() -> None:
            self._resize_pretraining_head(context.num_labels)
            self.network.requires_grad_(True)

        def enter_meta_training() -> None:
            # Only scales, shifts and the base learner's initialisation are meta-trained.
            self.network.requires_grad_(False)

        return [
            TrainingStage(
                name="pretrain",
                steps=pretrain_steps,
                data="images",
                batch_size=config.batch_size,
                optimiser=Optimiser("adam", lr=config.pretrain_lr),
                parameter_groups=lambda: [ParameterGroup("network", list(self.network.parameters()))],
                loss=self.pretraining_loss,
                enter=enter_pretraining,
            ),
            TrainingStage(
                name="meta",
                steps=context.steps - pretrain_steps,
                data="episodes",
                batch_size=1,
                optimiser=Optimiser("adam", lr=config.lr),
                parameter_groups=lambda: [
                    ParameterGroup("scale_shift", list(self.scale_shift.parameters())),
                    ParameterGroup("base_learner", list(self.base_learner.parameters())),
                ],
                loss=lambda episode, step: {"loss": self.meta_loss(episode)},
                initialise=self.start_meta_training,
                enter=enter_meta_training,
                # Frozen: batch-norm statistics stay the pre-trained ones.
                eval_modules=("network",),
            ),
        ]

    def pretraining_loss(self, batch: tuple[Tensor, Tensor], context: StepContext) -> dict[str, Tensor]:
        """Dense segmentation loss of images [B, 3, H, W] against training labels [B, H, W]."""
        images, labels = batch
        return {"loss": self.loss_function(self.network(images), labels)}

    @torch.no_grad()
    def start_meta_training(self) -> None:
        """Freeze the U-Net, reset scales/shifts to the identity, and start the base learner from the
        pre-trained head: background from its background filter, foreground from the mean of its
        base-class filters."""
        self.scale_shift.reset()
        head = self.network.segmentation_head[0]
        self.base_learner.weight[0] = head.weight[0]
        self.base_learner.weight[1] = head.weight[1:].mean(dim=0)
        self.base_learner.bias[0] = head.bias[0]
        self.base_learner.bias[1] = head.bias[1:].mean()

    def meta_loss(self, episode: Episode) -> Tensor:
        """First-order MTL loss of one episode: adapt per way on its support, score on the query."""
        learners = self.adapted_learners(episode.support_images, episode.support_masks)
        query_features = self.meta_features(episode.query_images)
        total = query_features.new_zeros(())
        for way_index, (weight, bias) in enumerate(learners):
            # theta' = theta + (theta' - theta) with the update a constant: the query's gradient at
            # theta' reaches the initialisation theta unchanged (first-order MAML / MTL).
            weight = self.base_learner.weight + (weight - self.base_learner.weight).detach()
            bias = self.base_learner.bias + (bias - self.base_learner.bias).detach()
            labels = (episode.query_masks == way_index + 1).long()
            labels[episode.query_masks == IGNORE_INDEX] = IGNORE_INDEX
            total = total + self.loss_function(base_learner_logits(query_features, weight, bias), labels)
        return total / len(learners)

    # --- inference --------------------------------------------------------------------------------
    def predict(self, episode: Episode) -> Prediction:
        return self.predict_by_encoding(episode)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, C, H, W] decoder features of the frozen U-Net under scaling and shifting."""
        return self.meta_features(images)

    def predict_encoded(self, episode: Episode, support_features: Tensor, query_features: Tensor) -> Prediction:
        # The evaluator runs under inference_mode; the inner loop needs autograd, so leave it here
        # and work on ordinary copies of the inputs.
        with torch.inference_mode(False), torch.no_grad():
            support_features = support_features.float().clone().unflatten(0, (episode.way, episode.shot))
            masks = episode.support_masks.clone()
            learners = [self.adapt(support_features[way], masks[way]) for way in range(episode.way)]
            query_features = query_features.float().clone()
            log_probs = torch.stack(
                [base_learner_logits(query_features, weight, bias).log_softmax(dim=1) for weight, bias in learners], dim=1
            )  # [Q, N, 2, H, W]
        # One binary learner per way: background is merged as iFSL merges its per-way maps, the
        # mean over ways of the background log-probabilities.
        return Prediction.from_probabilities(log_probs[:, :, 1].exp(), bg_probs=log_probs[:, :, 0].mean(dim=1).exp())
