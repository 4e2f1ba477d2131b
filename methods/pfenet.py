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

Weak (``--weak``, iFSL): the loss is iFSL's classification objective (fsbench.losses.class_tag_loss)
on the per-way log-softmax maps; the supports it sees carry no pixel labels (all foreground).

Input sizes: the network runs at any size (features are ceil(S/8) wide). PFENet asserts
(S - 1) % 8 == 0 (473, 641): then feature i sits on pixel 8i and the align_corners upsampling to S
puts every feature on its pixel. With ``align_input`` (the default) ``valid_size`` asks the engine
for such a size (it pads bottom/right and crops back); iFSL runs unpadded at 400, which loading its
checkpoint keeps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.engine.plan import OPTIMISERS, Optimiser, ParameterGroup, Schedule, StepContext, TrainingContext, TrainingStage
from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.losses import class_tag_loss
from fsbench.registry import METHODS
from methods.base import Method, MethodConfig
from methods.dilated_resnet import DilatedResNet, freeze
from methods.feature_enrichment import COCO_BINS, IFSL_BINS, PASCAL_BINS, FeatureEnrichment, reduction_layer, weighted_average_pool
from methods.prior_mask import ifsl_shared_support_vectors, masked_support_vectors, resize_mask, shots_prior
from methods.way_merging import merge_ways, upsample_log_probs, way_presence

PRIOR_LAYOUTS = ("per_way", "ifsl")
# Feature stride of the dilated backbone; PFENet's zoom_factor (8) upsamples back to the input.
FEATURE_STRIDE = 8
# What a released checkpoint's codebase fixes beyond its weights' shapes (``weights_layout``): a run
# that asks for something else is refused rather than silently computing another network.
LAYOUT_SETTINGS = {
    "pfenet": {"deep_stem": True, "prior_layout": "per_way", "align_input": True},
    "ifsl": {"deep_stem": False, "prior_layout": "ifsl", "align_input": False, "pyramid_bins": IFSL_BINS,
             "backbone_batch_statistics": False},
}
# The trained part, in PFENet's optimiser order (train.py's SGD groups after down_query / down_supp).
ENRICHMENT_GROUPS = ("merge", "interaction", "refine", "auxiliary_classifiers", "fuse", "fuse_refine", "classifier")


@dataclass
class PFENetConfig(MethodConfig):
    """PFENet's Pascal config (config/pascal/pascal_split0_resnet50.yaml); QUICK is the CPU demo on `shapes`."""

    backbone: str = "resnet50"
    pretrained: bool = True
    # PFENet's three-conv stem (its ImageNet file resnet50_v2.pth); False = torchvision's 7x7 stem (iFSL).
    deep_stem: bool = True
    # Channels of the backbone's first layer (64: the ResNet); smaller only from scratch (tests).
    backbone_width: int = 64
    reduce_dim: int = 256
    # Absolute sides > 1, shares of the feature size <= 1 (PFENet's COCO config: 1.0/0.5/0.25/0.125).
    pyramid_bins: tuple[float, ...] = PASCAL_BINS
    # "per_way": one prior per way (PFENet); "ifsl": iFSL's N-way prior shared by the ways.
    prior_layout: str = "per_way"
    # Ask for inputs with (S - 1) % 8 == 0 (PFENet's sizes); False runs any size as is (iFSL at 400).
    align_input: bool = True
    # PFENet freezes the backbone; the quick profile (random init) must train it.
    train_backbone: bool = False
    # PFENet trains with model.train(): the frozen backbone's BatchNorms still use batch statistics and
    # update their running averages. iFSL keeps the backbone in eval mode (False).
    backbone_batch_statistics: bool = True
    # "" for fsbench's own weights; "pfenet" / "ifsl" when they came from that codebase's release
    # (set by methods/pfenet_checkpoints.py): LAYOUT_SETTINGS then says what must not change.
    weights_layout: str = ""
    optimizer: str = "sgd"
    lr: float = 0.0025
    # PFENet's poly_learning_rate gives every parameter group lr x 10 (scale_lr, index_split -1).
    lr_multiplier: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    auxiliary_weight: float = 1.0
    # Weight of foreground pixels in the cross-entropies (background 1): 1 is PFENet's loss. The quick
    # profile raises it because a network trained from scratch on shapes' small objects first learns
    # "all background" and its foreground probability stays under PFENet's 0.5 for thousands of steps.
    foreground_weight: float = 1.0
    # Episodes per optimiser update (gradients accumulated); train_steps counts updates. PFENet trains
    # 200 epochs at batch 4 over the fold's training images (those of its 5953-image Pascal list that
    # hold a base class): at most 200 x 5953 / 4 updates.
    batch_size: int = 4
    train_steps: int = 200 * 5953 // 4

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
        # with PFENet's plain loss the foreground probability mostly stays under 0.5 (its argmax)
        # until about 2000 steps; hence the foreground weight below.
        "optimizer": "adam",
        "lr": 1e-3,
        "lr_multiplier": 1.0,
        "weight_decay": 0.0,
        "batch_size": 1,
        "train_steps": 1000,
        # Measured on shapes fold 0 (200 episodes, 1000 steps). FS-S training: weight 1 predicts all
        # background (mIoU 0.0), weight 5 gives mIoU 35.3 / FB-IoU 65.3. FS-CS training (iFSL's: half
        # the queries lack the class, all-background targets): weight 5 still all background (mIoU
        # 0.0, ER 47.0 = untrained), 10 gives mIoU 16.9 / ER 53.5, 20 gives 17.4 / 53.0; FS-S at 10: 33.1 / 63.0.
        "foreground_weight": 10.0,
    }


@METHODS.register("pfenet")
class PFENet(Method):
    Config = PFENetConfig
    # The backbone's layer2 / layer3 features depend on the image alone (layer4 of a support reads its
    # mask, so it runs per episode): batched evaluation encodes each image once.
    encodes_images = True
    supports_weak = True

    def __init__(self, config: PFENetConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        check_config(config)
        self.backbone = DilatedResNet(config.backbone, config.deep_stem, config.pretrained, config.backbone_width)
        if not config.train_backbone:
            freeze(self.backbone)
        layer2_channels, layer3_channels, _ = self.backbone.channels
        self.reduce_query = reduction_layer(layer3_channels + layer2_channels, config.reduce_dim)
        self.reduce_support = reduction_layer(layer3_channels + layer2_channels, config.reduce_dim)
        self.enrichment = FeatureEnrichment(config.reduce_dim, config.pyramid_bins)
        self.to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {
            "backbone": self.backbone,
            "reduce_query": self.reduce_query,
            "reduce_support": self.reduce_support,
            "enrichment": self.enrichment,
        }

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        if not self.config.align_input:
            return height, width
        return aligned_size(height), aligned_size(width)

    # --- the model ----------------------------------------------------------------------------
    def middle_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(layer2, layer3) of images [B, 3, H, W]: each [B, C, ceil(H/8), ceil(W/8)]; with gradients
        only when the backbone trains."""
        with torch.set_grad_enabled(self.config.train_backbone and torch.is_grad_enabled()):
            return self.backbone.middle_features(images)

    def support_middle_features(self, support_images: Tensor) -> tuple[Tensor, Tensor]:
        """(layer2, layer3) of support images [N, K, 3, H, W], each [N*K, C, h, w] in (way, shot) order.

        One backbone pass per shot, as PFENet runs its supports: while training, the backbone's
        BatchNorms take batch statistics (``backbone_batch_statistics``), so the batching matters.
        """
        per_shot = [self.middle_features(support_images[:, shot]) for shot in range(support_images.shape[1])]
        return tuple(torch.stack([features[level] for features in per_shot], 1).flatten(0, 1) for level in range(2))

    def way_logits(self, episode: Episode) -> tuple[Tensor, list[Tensor]]:
        """Two-way logits of every (query, way) pair at feature resolution (see way_logits_of_features)."""
        support = self.support_middle_features(episode.support_images)
        return self.way_logits_of_features(episode, support, self.middle_features(episode.query_images))

    def way_logits_of_features(self, episode: Episode, support: tuple[Tensor, Tensor], query: tuple[Tensor, Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Two-way logits from mid-level features.

        Args:
            support: (layer2, layer3) of the supports, [N*K, C, h, w] in (way, shot) order.
            query: (layer2, layer3) of the queries, [Q, C, h, w].
        Returns:
            logits [Q, N, 2, h, w] (channel 0 background, 1 foreground of the way) and the auxiliary
            logits, one [Q, N, 2, bin_h, bin_w] per pyramid bin.
        """
        way, shot, queries = episode.way, episode.shot, episode.num_queries
        query_layer2, query_layer3 = query
        support_layer2, support_layer3 = (level.unflatten(0, (way, shot)) for level in support)
        with torch.no_grad():  # layer4 only feeds the training-free prior
            query_high = self.backbone.layer4(query_layer3)
        reduced_query = self.reduce_query(torch.cat([query_layer3, query_layer2], 1))  # [Q, R, h, w]
        size = tuple(reduced_query.shape[-2:])

        prototypes, shot_vectors = [], []
        for shot_index in range(shot):
            full_mask = (episode.support_masks[:, shot_index] == 1).to(reduced_query.dtype).unsqueeze(1)  # [N, 1, H, W]
            layer2, layer3 = support_layer2[:, shot_index], support_layer3[:, shot_index]
            feature_mask = resize_mask(full_mask, tuple(layer3.shape[-2:]))
            with torch.no_grad():
                support_high = self.backbone.layer4(layer3 * feature_mask)
            reduced_support = self.reduce_support(torch.cat([layer3, layer2], 1))
            prototypes.append(weighted_average_pool(reduced_support, feature_mask))  # [N, R, 1, 1]
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
            reduced_query.repeat_interleave(way, dim=0), prototype.repeat(queries, 1, 1, 1), prior.to(reduced_query.dtype)
        )
        return logits.unflatten(0, (queries, way)), [item.unflatten(0, (queries, way)) for item in auxiliary]

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        return self.predict_by_encoding(episode)

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> [layer2 [B, C2, h, w], layer3 [B, C3, h, w]] (h = ceil(H/8))."""
        return list(self.backbone.middle_features(images))

    @torch.no_grad()
    def predict_encoded(self, episode: Episode, support_features: list[Tensor], query_features: list[Tensor]) -> Prediction:
        logits, _ = self.way_logits_of_features(episode, tuple(support_features), tuple(query_features))
        return way_prediction(logits.float(), tuple(episode.query_images.shape[-2:]), self.config.align_input)

    # --- training -----------------------------------------------------------------------------
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """One episodic stage: PFENet's SGD groups (lr x lr_multiplier each), poly decay, the
        main + auxiliary cross-entropy; with context.weak iFSL's class-tag objective instead."""
        config = self.config
        return [
            TrainingStage(
                name="train",
                steps=context.steps,
                data="episodes",
                batch_size=config.batch_size,
                optimiser=Optimiser(config.optimizer, lr=config.lr, weight_decay=config.weight_decay, momentum=config.momentum),
                schedule=Schedule("poly", power=config.poly_power),
                parameter_groups=self.parameter_groups,
                loss=self.weak_loss if context.weak else self.episode_loss,
                eval_modules=() if config.backbone_batch_statistics else ("backbone",),
            )
        ]

    def parameter_groups(self) -> list[ParameterGroup]:
        """PFENet's SGD groups in its order, the backbone first when it trains (quick profile);
        frozen parameters are left out."""
        modules = [("backbone", self.backbone)] if self.config.train_backbone else []
        modules += [("reduce_query", self.reduce_query), ("reduce_support", self.reduce_support)]
        modules += [(name, getattr(self.enrichment, name)) for name in ENRICHMENT_GROUPS]
        groups = []
        for name, module in modules:
            parameters = [parameter for parameter in module.parameters() if parameter.requires_grad]
            if parameters:
                groups.append(ParameterGroup(name, parameters, lr_multiplier=self.config.lr_multiplier))
        return groups

    def episode_loss(self, episode: Episode, context: StepContext) -> dict[str, Tensor]:
        losses = self.training_losses(episode)
        return {"loss": losses["total"], "auxiliary": losses["auxiliary"].detach()}

    def training_losses(self, episode: Episode) -> dict[str, Tensor]:
        """{"main", "auxiliary", "total"} of one training episode (query masks are read).

        Each (query, way) pair is a two-way problem: way n's pixels are foreground, the other ways'
        and the background are background, 255 stays ignored. Logits are upsampled to the input size
        (bilinear, align_corners=True) before the cross-entropy, the auxiliary losses likewise and
        averaged over the bins, as in PFENet.
        """
        logits, auxiliary = self.way_logits(episode)
        size = tuple(episode.query_images.shape[-2:])
        way_ids = torch.arange(1, episode.way + 1, device=episode.query_masks.device).view(1, -1, 1, 1)
        masks = episode.query_masks.unsqueeze(1)  # [Q, 1, H, W]
        targets = torch.where(masks == IGNORE_INDEX, masks, (masks == way_ids).long()).flatten(0, 1)  # [Q*N, H, W]

        weights = None
        if self.config.foreground_weight != 1.0:
            weights = torch.tensor([1.0, float(self.config.foreground_weight)], device=targets.device)

        def loss_of(way_maps: Tensor) -> Tensor:
            upsampled = F.interpolate(way_maps.flatten(0, 1).float(), size=size, mode="bilinear", align_corners=True)
            return F.cross_entropy(upsampled, targets, weight=weights, ignore_index=IGNORE_INDEX)

        main = loss_of(logits)
        auxiliary_loss = sum(loss_of(item) for item in auxiliary) / len(auxiliary)
        total = main + self.config.auxiliary_weight * auxiliary_loss
        return {"main": main, "auxiliary": auxiliary_loss, "total": total}

    def weak_loss(self, episode: Episode, context: StepContext) -> dict[str, Tensor]:
        """iFSL's class-tag objective on the per-way log-softmax maps at feature resolution; reads
        the query's class presence only (the engine hands over Episode.with_class_tags_only())."""
        logits, _ = self.way_logits(episode)
        return {"loss": class_tag_loss(torch.log_softmax(logits.float(), dim=2), episode.query_presence)}


def way_prediction(way_logits: Tensor, size: tuple[int, int], nodes_on_pixels: bool) -> Prediction:
    """The Prediction of per-way two-way logits [Q, N, 2, h, w] for queries of ``size`` (H, W).

    iFSL's merge (methods/way_merging.py) gives (1 + N) log-probability maps, upsampled bilinearly
    (align_corners=True) in log space; fg_probs / bg_probs are their exponentials, so the argmax over
    [background, ways] is iFSL's labelling (for one way, PFENet's argmax). Presence is each way's
    largest foreground probability at feature resolution (iFSL). When the size is 8k + 1
    (``nodes_on_pixels``: feature i lands on pixel 8i) that is also the largest over the upsampled
    map, so cropping padding away may recompute it from the kept pixels.
    """
    merged = merge_ways(way_logits)
    probabilities = upsample_log_probs(merged.log_probs, size).exp()
    return Prediction(
        fg_probs=probabilities[:, 1:].contiguous(), presence=way_presence(merged.log_probs[:, 1:]),
        bg_probs=probabilities[:, 0].contiguous(), upsampling="log_probabilities", align_corners=True,
        presence_from_maps=nodes_on_pixels,
    )


def check_config(config: PFENetConfig) -> None:
    """One-line refusals of settings pfenet cannot build, or that contradict the released weights."""
    if config.optimizer not in OPTIMISERS:
        raise FsbenchError(f"unknown optimizer {config.optimizer!r} for pfenet; available: {', '.join(OPTIMISERS)}")
    if config.prior_layout not in PRIOR_LAYOUTS:
        raise FsbenchError(f"unknown prior_layout {config.prior_layout!r} for pfenet; available: {', '.join(PRIOR_LAYOUTS)}")
    if not config.pyramid_bins:
        raise FsbenchError("pfenet needs at least one pyramid bin")
    if config.weights_layout and config.weights_layout not in LAYOUT_SETTINGS:
        raise FsbenchError(f"unknown weights_layout {config.weights_layout!r} for pfenet; known: {', '.join(LAYOUT_SETTINGS)}")
    for key, fixed in LAYOUT_SETTINGS.get(config.weights_layout, {}).items():
        value = getattr(config, key)
        if (tuple(value) if isinstance(value, (list, tuple)) else value) != fixed:
            raise FsbenchError(
                f"pfenet weights from {config.weights_layout}'s release fix {key} = {fixed!r}; the run asked for {value!r}"
            )


def aligned_size(size: int) -> int:
    """The smallest S >= size with (S - 1) % 8 == 0, PFENet's input rule."""
    return size + (-(size - 1)) % FEATURE_STRIDE
