"""pfenet: prior guided feature enrichment network.

Tian, Zhao, Shu, Yang, Li, Jia, "Prior Guided Feature Enrichment Network for Few-Shot Segmentation",
TPAMI 2020. A frozen ImageNet ResNet (PFENet's deep stem; layer3/layer4 dilated to stride 8) encodes
query and support. Mid-level features (layer3 ++ layer2) are reduced by 1x1 convs; the support's are
pooled under its mask into a prototype. The training-free prior (methods/prior_mask.py) compares
high-level (layer4) features. The feature enrichment module (methods/feature_enrichment.py) merges
query, prototype and prior at scales 60/30/15/8 with inter-scale interaction and predicts two-way
logits, with one auxiliary classifier per scale. Training: cross-entropy on the bilinearly
(align_corners=True) upsampled logits plus the mean auxiliary loss (weight 1); only the reduction
layers and the FEM learn. Defaults are PFENet's Pascal config (ResNet-50, SGD lr 0.0025 momentum 0.9
weight decay 1e-4, poly decay power 0.9, batch 4); its code multiplies every group's lr by 10
(poly_learning_rate's scale_lr with index_split -1), kept here as ``lr_multiplier``. PFENet's COCO
settings are in ``PFENetConfig.COCO``.

N-way (FS-CS) as iFSL's fs-cs PFENet: the 1-way network runs once per way, giving two-way logits
per way; methods/way_merging.py merges them (background = mean of the ways' background
log-probabilities) and gives presence (a way is present where its foreground probability reaches 0.5).

Input sizes: the network runs at any size (features are ceil(S/8) wide). PFENet asserts
(S - 1) % 8 == 0 (473, 641): then feature i sits on pixel 8i and the align_corners upsampling to S
puts every feature on its pixel. With ``align_input`` (the default) inputs are padded bottom/right to
such a size and the prediction cropped back; iFSL runs unpadded at 400, which loading its checkpoint
keeps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.foreign import ForeignFile, ForeignImport, strict_match
from fsbench.registry import METHODS
from fsbench.train import TrainSettings, train_episodic
from fsbench.transforms import IMAGENET_MEAN, IMAGENET_STD
from methods.base import Method, MethodConfig
from methods.dilated_resnet import DilatedResNet, freeze
from methods.feature_enrichment import COCO_BINS, PASCAL_BINS, FeatureEnrichment, reduction_layer, weighted_average_pool
from methods.pfenet_checkpoints import map_checkpoint
from methods.prior_mask import ifsl_shared_support_vectors, masked_support_vectors, resize_mask, shots_prior
from methods.way_merging import label_probabilities, merge_ways, upsample_log_probs, way_presence

OPTIMIZERS = ("sgd", "adam")
PRIOR_LAYOUTS = ("per_way", "ifsl")
# Feature stride of the dilated backbone; PFENet's zoom_factor (8) upsamples back to the input.
FEATURE_STRIDE = 8


@dataclass
class PFENetConfig(MethodConfig):
    """PFENet's Pascal config (config/pascal/pascal_split0_resnet50.yaml); QUICK is the CPU demo on `shapes`."""

    backbone: str = "resnet50"
    pretrained: bool = True
    # PFENet's three-conv stem (its ImageNet file resnet50_v2.pth); False = torchvision's 7x7 stem (iFSL).
    deep_stem: bool = True
    reduce_dim: int = 256
    # Absolute sides > 1, shares of the feature size <= 1 (PFENet's COCO config: 1.0/0.5/0.25/0.125).
    pyramid_bins: tuple[float, ...] = PASCAL_BINS
    # "per_way": one prior per way (PFENet); "ifsl": iFSL's N-way prior shared by the ways.
    prior_layout: str = "per_way"
    # Pad inputs to (S - 1) % 8 == 0 (PFENet's sizes); False runs any size as is (iFSL at 400).
    align_input: bool = True
    # PFENet freezes the backbone; the quick profile (random init) must train it.
    train_backbone: bool = False
    # PFENet trains with model.train(): the frozen backbone's BatchNorms still use batch statistics and
    # update their running averages. iFSL keeps the backbone in eval mode (False).
    backbone_batch_statistics: bool = True
    optimizer: str = "sgd"
    lr: float = 0.0025
    # PFENet's poly_learning_rate gives every parameter group lr x 10 (scale_lr, index_split -1).
    lr_multiplier: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    auxiliary_weight: float = 1.0
    # Episodes per optimiser step (gradients accumulated); train_steps counts episodes. PFENet trains
    # 200 epochs at batch 4 over the fold's training images (those of its 5953-image Pascal list that
    # hold a base class): at most 200 x 5953 episodes.
    batch_size: int = 4
    train_steps: int = 200 * 5953

    # PFENet's COCO config (coco_split0_resnet101.yaml; its one-GPU advice: batch 8, lr 0.005; 50 epochs).
    COCO: ClassVar[dict] = {"backbone": "resnet101", "lr": 0.005, "batch_size": 8, "pyramid_bins": COCO_BINS}
    QUICK = {
        "backbone": "resnet18",
        "pretrained": False,
        "deep_stem": False,
        "reduce_dim": 64,
        "pyramid_bins": COCO_BINS,
        "train_backbone": True,
        # From scratch SGD barely moves in a CPU budget; Adam does. On shapes fold 0 (60 episodes) lr
        # 1e-3 localised best of 5e-4 / 1e-3 / 2e-3: at 1000 steps mIoU 34-36 with a 0.3 threshold, but
        # the foreground probability mostly stays under 0.5 (PFENet's argmax) until about 2000 steps.
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_multiplier": 1.0,
        "weight_decay": 0.0,
        "batch_size": 1,
        "train_steps": 1000,
    }


@METHODS.register("pfenet")
class PFENet(Method):
    Config = PFENetConfig

    def __init__(self, config: PFENetConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        if config.optimizer not in OPTIMIZERS:
            raise FsbenchError(f"unknown optimizer {config.optimizer!r} for pfenet; available: {', '.join(OPTIMIZERS)}")
        if config.prior_layout not in PRIOR_LAYOUTS:
            raise FsbenchError(f"unknown prior_layout {config.prior_layout!r} for pfenet; available: {', '.join(PRIOR_LAYOUTS)}")
        if not config.pyramid_bins:
            raise FsbenchError("pfenet needs at least one pyramid bin")
        self.backbone = DilatedResNet(config.backbone, config.deep_stem, config.pretrained)
        if not config.train_backbone:
            freeze(self.backbone)
        layer2_channels, layer3_channels, _ = self.backbone.channels
        self.reduce_query = reduction_layer(layer3_channels + layer2_channels, config.reduce_dim)
        self.reduce_support = reduction_layer(layer3_channels + layer2_channels, config.reduce_dim)
        self.enrichment = FeatureEnrichment(config.reduce_dim, config.pyramid_bins)
        self.optimizer: torch.optim.Optimizer | None = None
        self.total_updates: int | None = None
        self.updates = 0
        self.accumulated = 0
        self.to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {
            "backbone": self.backbone,
            "reduce_query": self.reduce_query,
            "reduce_support": self.reduce_support,
            "enrichment": self.enrichment,
        }

    def train(self, mode: bool = True) -> "PFENet":
        super().train(mode)
        if mode and not self.config.backbone_batch_statistics:
            self.backbone.eval()
        return self

    # --- the model ----------------------------------------------------------------------------
    def _middle(self, images: Tensor) -> tuple[Tensor, Tensor]:
        with torch.set_grad_enabled(self.config.train_backbone and torch.is_grad_enabled()):
            return self.backbone.middle_features(images)

    def way_logits(self, episode: Episode) -> tuple[Tensor, list[Tensor]]:
        """Two-way logits of every (query, way) pair at feature resolution.

        Returns:
            logits [Q, N, 2, h, w] (channel 0 background, 1 foreground of the way) and the auxiliary
            logits, one [Q, N, 2, bin_h, bin_w] per pyramid bin.
        """
        way, shot, queries = episode.way, episode.shot, episode.num_queries
        query_layer2, query_layer3 = self._middle(episode.query_images)
        with torch.no_grad():  # layer4 only feeds the training-free prior
            query_high = self.backbone.layer4(query_layer3)
        query = self.reduce_query(torch.cat([query_layer3, query_layer2], 1))  # [Q, R, h, w]
        size = tuple(query.shape[-2:])

        prototypes, shot_vectors = [], []
        for shot_index in range(shot):
            full_mask = (episode.support_masks[:, shot_index] == 1).to(query.dtype).unsqueeze(1)  # [N, 1, H, W]
            support_layer2, support_layer3 = self._middle(episode.support_images[:, shot_index])
            feature_mask = resize_mask(full_mask, tuple(support_layer3.shape[-2:]))
            with torch.no_grad():
                support_high = self.backbone.layer4(support_layer3 * feature_mask)
            support = self.reduce_support(torch.cat([support_layer3, support_layer2], 1))
            prototypes.append(weighted_average_pool(support, feature_mask))  # [N, R, 1, 1]
            shot_vectors.append(masked_support_vectors(support_high, full_mask))  # [N, C, S]
        # PFENet's k-shot prototype: the running sum of the shots divided by K.
        prototype = sum(prototypes) / shot if shot > 1 else prototypes[0]

        with torch.no_grad():
            if self.config.prior_layout == "ifsl":
                shared = [ifsl_shared_support_vectors(vectors).expand(queries, -1, -1) for vectors in shot_vectors]
                prior = shots_prior(query_high, shared, size).repeat_interleave(way, dim=0)
            else:
                paired = [vectors.repeat(queries, 1, 1) for vectors in shot_vectors]
                prior = shots_prior(query_high.repeat_interleave(way, dim=0), paired, size)

        # Pairs in (query, way) order, as iFSL's repeat_interleave over ways.
        logits, auxiliary = self.enrichment(
            query.repeat_interleave(way, dim=0), prototype.repeat(queries, 1, 1, 1), prior
        )
        return logits.unflatten(0, (queries, way)), [item.unflatten(0, (queries, way)) for item in auxiliary]

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        height, width = episode.query_images.shape[-2:]
        padded = pad_to_input_size(episode, self.config.align_input)
        logits, _ = self.way_logits(padded)
        merged = merge_ways(logits)
        size = tuple(padded.query_images.shape[-2:])
        probabilities = label_probabilities(upsample_log_probs(merged.log_probs, size))[..., :height, :width]
        # Presence over the feature locations that lie on the unpadded image (feature i on pixel 8i).
        rows, columns = (height - 1) // FEATURE_STRIDE + 1, (width - 1) // FEATURE_STRIDE + 1
        presence = way_presence(merged.log_probs[:, 1:, :rows, :columns])
        return Prediction(fg_probs=probabilities[:, 1:].contiguous(), presence=presence)

    # --- training -----------------------------------------------------------------------------
    def training_losses(self, episode: Episode) -> dict[str, Tensor]:
        """{"main", "auxiliary", "total"} of one training episode (query masks are read).

        Each (query, way) pair is a two-way problem: way n's pixels are foreground, the other ways'
        and the background are background, 255 stays ignored. Logits are upsampled to the input size
        (bilinear, align_corners=True) before the cross-entropy, the auxiliary losses likewise and
        averaged over the bins, as in PFENet.
        """
        padded = pad_to_input_size(episode, self.config.align_input)
        logits, auxiliary = self.way_logits(padded)
        size = tuple(padded.query_images.shape[-2:])
        way_ids = torch.arange(1, episode.way + 1, device=padded.query_masks.device).view(1, -1, 1, 1)
        masks = padded.query_masks.unsqueeze(1)  # [Q, 1, H, W]
        targets = torch.where(masks == IGNORE_INDEX, masks, (masks == way_ids).long()).flatten(0, 1)  # [Q*N, H, W]

        def loss_of(way_maps: Tensor) -> Tensor:
            upsampled = F.interpolate(way_maps.flatten(0, 1), size=size, mode="bilinear", align_corners=True)
            return F.cross_entropy(upsampled, targets, ignore_index=IGNORE_INDEX)

        main = loss_of(logits)
        auxiliary_loss = torch.zeros_like(main)
        for item in auxiliary:
            auxiliary_loss = auxiliary_loss + loss_of(item)
        auxiliary_loss = auxiliary_loss / len(auxiliary)
        total = main + self.config.auxiliary_weight * auxiliary_loss
        return {"main": main, "auxiliary": auxiliary_loss, "total": total}

    def parameter_groups(self) -> list[dict]:
        """PFENet's SGD groups (its order), each {"name", "params", "lr_multiplier"}; the backbone leads
        when it trains (quick profile). Frozen parameters are left out."""
        modules = [("backbone", self.backbone)] if self.config.train_backbone else []
        modules += [("reduce_query", self.reduce_query), ("reduce_support", self.reduce_support)]
        modules += [(name, getattr(self.enrichment, name)) for name in
                    ("merge", "interaction", "refine", "auxiliary_classifiers", "fuse", "fuse_refine", "classifier")]
        groups = []
        for name, module in modules:
            parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
            if parameters:
                groups.append({"name": name, "params": parameters, "lr_multiplier": self.config.lr_multiplier})
        return groups

    def training_schedule(self) -> dict:
        """The optimiser and lr schedule as data: lr at update u of T = lr x multiplier x (1 - u/T)^power."""
        config = self.config
        return {"optimizer": config.optimizer, "lr": config.lr, "momentum": config.momentum,
                "weight_decay": config.weight_decay, "schedule": "poly", "power": config.poly_power}

    def fit(self, benchmark, settings: TrainSettings) -> None:
        self._make_optimizer(total_updates=math.ceil(settings.steps / max(self.config.batch_size, 1)))
        train_episodic(self, benchmark, settings)
        if self.accumulated:  # a last partial batch of episodes still updates the model
            self._optimizer_step()

    def _make_optimizer(self, total_updates: int | None) -> None:
        config = self.config
        groups = [{"params": group["params"], "lr": config.lr * group["lr_multiplier"]} for group in self.parameter_groups()]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
        self.base_lrs = [group["lr"] for group in groups]
        self.total_updates, self.updates, self.accumulated = total_updates, 0, 0

    def _optimizer_step(self) -> None:
        self.updates += 1
        if self.total_updates:
            # PFENet sets the lr before each update from the 1-based iteration: the last one gets 0.
            factor = max(1.0 - self.updates / self.total_updates, 0.0) ** self.config.poly_power
            for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base_lr * factor
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.accumulated = 0

    def train_step(self, episode: Episode) -> dict[str, float]:
        if self.optimizer is None:
            self._make_optimizer(total_updates=None)
        losses = self.training_losses(episode)
        (losses["total"] / max(self.config.batch_size, 1)).backward()
        self.accumulated += 1
        if self.accumulated >= self.config.batch_size:
            self._optimizer_step()
        return {"loss": losses["total"].item(), "auxiliary": losses["auxiliary"].item()}

    # --- released checkpoints -----------------------------------------------------------------
    @classmethod
    def from_foreign(cls, foreign: ForeignFile) -> ForeignImport:
        """PFENet's .pth or iFSL's fs-cs PFENet .ckpt -> settings, fsbench state and provenance."""
        mapped = map_checkpoint(foreign)
        config = replace(cls.Config(), pretrained=False, **mapped.config)
        if mapped.bins != len(config.pyramid_bins):
            raise FsbenchError(
                f"{foreign.path} has {mapped.bins} pyramid bins, pfenet is set up for {len(config.pyramid_bins)} "
                f"({'/'.join(map(str, config.pyramid_bins))})"
            )
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised for real
            expected = cls(config, "meta").state_dict()
        strict_match(mapped.state, expected, foreign.path, f"pfenet ({config.backbone}, {mapped.layout} layout)")
        provenance = {
            "format": "PFENet .pth (DataParallel state_dict)" if mapped.layout == "pfenet" else "iFSL fs-cs PFENet Lightning .ckpt",
            "path": str(foreign.path),
            "sha256": foreign.sha256,
            "epoch": foreign.content.get("epoch") if isinstance(foreign.content, dict) else None,
            "notes": mapped.notes,
        }
        return ForeignImport(config=mapped.config, state=mapped.state, provenance=provenance)


def aligned_size(size: int) -> int:
    """The smallest S >= size with (S - 1) % 8 == 0, PFENet's input rule."""
    return size + (-(size - 1)) % FEATURE_STRIDE


def pad_to_input_size(episode: Episode, align: bool) -> Episode:
    """TEMPORARY, until the engine pads for every method: the episode padded bottom/right to PFENet's
    input rule ((S - 1) % 8 == 0 per side), images with black (PFENet's padding, before
    normalisation), masks with 255. Returns the episode itself when nothing needs padding."""
    if not align:
        return episode

    def pad_images(images: Tensor) -> Tensor:
        height, width = images.shape[-2:]
        extra_h, extra_w = aligned_size(height) - height, aligned_size(width) - width
        if not (extra_h or extra_w):
            return images
        mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device)
        std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device)
        black = (-mean / std).view(3, 1, 1)
        padded = black.expand(*images.shape[:-2], height + extra_h, width + extra_w).clone()
        padded[..., :height, :width] = images
        return padded

    def pad_masks(masks: Tensor) -> Tensor:
        height, width = masks.shape[-2:]
        extra_h, extra_w = aligned_size(height) - height, aligned_size(width) - width
        return F.pad(masks, (0, extra_w, 0, extra_h), value=IGNORE_INDEX) if (extra_h or extra_w) else masks

    return replace(
        episode,
        support_images=pad_images(episode.support_images),
        support_masks=pad_masks(episode.support_masks),
        query_images=pad_images(episode.query_images),
        query_masks=pad_masks(episode.query_masks),
    )
