"""dml_knn: deep metric learning + kNN few-shot segmentation.

After rootvisionai/dml_segmentation: a UNet++ maps every pixel to an embedding, trained on the base
classes with the Proxy-Anchor loss (Kim, Kim, Cho, Kwak, "Proxy Anchor Loss for Deep Metric
Learning", CVPR 2020); a novel class is segmented by cosine kNN of each query pixel among the
support's positive and negative pixels. In an N-way episode one kNN runs over every way's support
pixels (labels: background, way 1..N), so a way's probability is its share of the k votes. Unlike
the original code, the proxies are trainable parameters in the optimiser (at 100x the network's
learning rate), so they actually train.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.backbones import load_imagenet_weights
from fsbench.engine.plan import Optimiser, ParameterGroup, Schedule, StepContext, TrainingContext, TrainingStage
from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.losses import proxy_anchor_loss
from fsbench.registry import METHODS
from methods.base import Method, MethodConfig, round_up
from methods.dml_original import OriginalEmbeddingNetwork, predict_original


KNN_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DMLKNNConfig(MethodConfig):
    """Defaults of the original method; QUICK is the CPU demo profile used on `shapes`."""

    backbone: str = "resnet101"
    pretrained: bool = True
    embedding_dim: int = 512
    # smp's UNet++ default decoder widths, deepest first; their count is the encoder depth (5: the
    # encoder's five stages, down to 1/32; 3 stops at 1/8 and skips the deepest, widest stages).
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    lr: float = 1e-4
    proxy_lr_multiplier: float = 100.0
    batch_size: int = 8
    train_steps: int = 20000
    alpha: float = 32.0
    delta: float = 0.1
    # Pixels sampled per image per step (class-balanced): bounds training memory of the loss.
    pixels_per_image: int = 1024
    proxy_init_batches: int = 8
    # Train the decoder and proxies only: the encoder's weights and batch-norm statistics stay as
    # loaded (fine-tuning a trained model on a small custom dataset).
    freeze_encoder: bool = False
    k: int = 64
    negative_samples_ratio: int = 20
    # Positive support pixels kept per way (a random subset when there are more): with the ratio
    # above this bounds the reference set, and so kNN time and memory, at any shot and resolution.
    max_positive_samples: int = 1000
    # Query pixels per kNN chunk: peak memory is about chunk x reference pixels x 4 bytes.
    knn_chunk_size: int = 4096
    # kNN on every knn_stride-th query pixel, probabilities upsampled bilinearly (1 = every pixel).
    knn_stride: int = 1
    # The similarity matmul's precision: "fp32", or "bf16" / "fp16" (faster where the device has
    # fast half-precision matmuls; neighbours may change at near-ties, see fsbench.perf knn-options).
    knn_precision: str = "fp32"
    # rootvisionai/dml_segmentation's own checkpoints (methods/dml_original.py): "original" =
    # its network (UNet++ + ReLU-BN-Conv head), its kNN rules, its preprocessing for predict.
    architecture: str = "fsbench"
    knn_rules: str = "fsbench"
    knn_threshold: float = 0.95  # the original rules' cosine floor and foreground share
    preprocessing: str = "hsnet"  # fsbench.preprocessing profile that predict uses
    # The UNet++'s weights and activations in channels-last (NHWC) layout: oneDNN's convolutions skip
    # their layout conversions (a demo training step on this 2-core CPU: 0.29 -> 0.24 s in bf16,
    # 0.58 -> 0.47 s in fp32). Same numbers up to float rounding; off for the original network,
    # whose outputs are compared with the repo's to the last bit.
    channels_last: bool = True
    # Train on one random train_crop x train_crop window of each batch (0: whole images): a step costs
    # less (0.7x for 96 px windows of the demo's 128 px images), so a fixed time buys more steps. A
    # multiple of 2^(encoder depth).
    train_crop: int = 0

    QUICK = {
        "backbone": "resnet18",
        "pretrained": False,
        "embedding_dim": 64,
        # Encoder depth 3 (stops at 1/8): 11.7 GMAC per 8 x 128 px forward against 28.1 at depth 5.
        # Measured on shapes fold 0 at 1500 bf16 steps, the same 300 episodes: mIoU 45.3 vs 44.5.
        "decoder_channels": (64, 32, 16),
        "lr": 1e-3,
        # Class identity needs this budget on shapes: at 400 steps 2-way way wins are still at chance.
        # 96 px windows of the 128 px images make a bf16 step about 0.7x as long (0.12-0.14 s against
        # 0.18 s in whole runs on a 2-core CPU), so 3000 steps fit the demo in 7 minutes; the gain is
        # the extra steps. Shapes fold 0, 1000 episodes, bf16: 3000 steps on 96 px windows 59.5 mIoU
        # (413 s in all; training seed 1: 56.0); 2000 steps 47.9 on windows, 48.8 on whole images;
        # 1500 whole-image steps 46.7 (512 s); 3000 steps on 64 px windows 45.3 (a 64 px window cuts
        # the larger objects, up to 60 px across).
        "train_steps": 3000,
        "train_crop": 96,
        "pixels_per_image": 512,
        "max_positive_samples": 200,
        # Fewer neighbours than the original's 64 for 200 positives and 4000 negatives per support:
        # on shapes fold 0, 1000 episodes, three demo checkpoints, k 16 gives +1.3 to +1.7 mIoU over
        # 64 (k 8 and 24 the same as 16 within 0.3) and a 1.6x faster kNN.
        "k": 16,
        "knn_stride": 2,
    }


class ProxyBank(nn.Module):
    """One trainable proxy per training class (index 0 = background): weight [C, D].

    Its size is only known once the training classes are; a loaded checkpoint sets it too.
    """

    def __init__(self, embedding_dim: int, num_classes: int = 0):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_classes, embedding_dim))

    def resize(self, num_classes: int) -> None:
        self.weight = nn.Parameter(torch.zeros(num_classes, self.weight.shape[1], device=self.weight.device))


@METHODS.register("dml_knn")
class DMLKNN(Method):
    Config = DMLKNNConfig
    trains_on_episodes = False  # supervised pixel batches of the base classes
    encodes_images = True
    auto_bf16 = True  # the demo: bf16 steps 2.1x faster on this suite's AVX512-BF16 CPU

    def __init__(self, config: DMLKNNConfig, device: torch.device | str = "cpu"):
        super().__init__(config, device)
        import segmentation_models_pytorch as smp

        if config.knn_precision not in KNN_PRECISIONS:
            raise FsbenchError(f"unknown knn_precision {config.knn_precision!r} for dml_knn; available: {', '.join(KNN_PRECISIONS)}")

        if config.train_crop < 0 or config.train_crop % self.size_step:
            raise FsbenchError(f"train_crop {config.train_crop} for dml_knn: use 0 (whole images) or a multiple of {self.size_step}, "
                               f"the UNet++'s size step at encoder depth {len(config.decoder_channels)}")
        # The original repo's kNN rules work on the whole episode (methods/dml_original.py), not on
        # per-image encodings.
        self.encodes_images = config.knn_rules != "original"
        if config.architecture == "original":
            self.network = OriginalEmbeddingNetwork(config.backbone, config.embedding_dim, tuple(config.decoder_channels))
        else:
            self.network = smp.UnetPlusPlus(
                encoder_name=config.backbone,
                encoder_weights=None,
                encoder_depth=len(config.decoder_channels),
                decoder_channels=tuple(config.decoder_channels),
                classes=config.embedding_dim,
                activation=None,
            )
        if config.pretrained:
            load_imagenet_weights(self.network.encoder, config.backbone)
        if config.channels_last and config.architecture != "original":
            self.network.to(memory_format=torch.channels_last)
        self.proxies = ProxyBank(config.embedding_dim)
        self.to(self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"network": self.network, "proxies": self.proxies}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "proxies.weight" in state:
            self.proxies.resize(state["proxies.weight"].shape[0])
        super().load_state_dict(state)

    def train(self, mode: bool = True) -> "DMLKNN":
        super().train(mode)
        if mode and self.config.freeze_encoder:
            self.network.encoder.eval()  # frozen: its batch-norm statistics stay as loaded
        return self

    def embed(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, D, H, W] L2-normalised pixel embeddings."""
        return F.normalize(self.network(images), dim=1)

    @property
    def size_step(self) -> int:
        """UNet++'s poolings (one per encoder stage) need sides divisible by 2^depth (smp refuses
        anything else): 32 at the default depth 5, 8 in the demo profile."""
        return 2 ** len(self.config.decoder_channels)

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        return round_up(height, self.size_step), round_up(width, self.size_step)

    # --- training -----------------------------------------------------------------------------
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """One stage: Proxy-Anchor on class-balanced pixel samples of base-class image batches.
        AdamW (weight decay 1e-4), proxies at proxy_lr_multiplier x the lr, cosine decay to 0 over the
        budget (on shapes fold 0, 1500 steps reach about the 2-way ER of 3000 at a constant rate),
        gradient norm of the network clipped at 10."""
        config = self.config

        def initialise() -> None:
            self.proxies.resize(context.num_labels)
            self._initialise_proxies(context)

        def enter() -> None:
            self.network.encoder.requires_grad_(not config.freeze_encoder)

        return [
            TrainingStage(
                name="train",
                steps=context.steps,
                data="images",
                batch_size=config.batch_size,
                optimiser=Optimiser("adamw", lr=config.lr, weight_decay=1e-4),
                schedule=Schedule("cosine"),
                parameter_groups=lambda: [
                    ParameterGroup("network", [parameter for parameter in self.network.parameters() if parameter.requires_grad]),
                    ParameterGroup("proxies", list(self.proxies.parameters()), lr_multiplier=config.proxy_lr_multiplier, clip=False),
                ],
                loss=self.metric_loss,
                initialise=initialise,
                enter=enter,
                clip_grad_norm=10.0,
            )
        ]

    def metric_loss(self, batch: tuple[Tensor, Tensor], context: StepContext) -> dict[str, Tensor]:
        """Proxy-Anchor loss of a batch: images [B, 3, H, W], training labels [B, H, W]."""
        images, labels = batch
        crop = self.config.train_crop
        if crop and (images.shape[-2] > crop or images.shape[-1] > crop):
            height, width = min(crop, images.shape[-2]), min(crop, images.shape[-1])
            top = int(torch.randint(images.shape[-2] - height + 1, (1,), generator=context.generator))
            left = int(torch.randint(images.shape[-1] - width + 1, (1,), generator=context.generator))
            images = images[..., top : top + height, left : left + width]
            labels = labels[..., top : top + height, left : left + width]
            if self.config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        embeddings = self.network(images)
        # The loss in float32 also under --amp: alpha (32) multiplies the cosines in the exponents,
        # and a bf16 cosine is off by up to ~4e-3, i.e. 0.1 in each exponent; the summed loss itself
        # rounded to bf16 moves in steps of 0.125 near its typical value 18. Only the sampled pixels
        # are cast (gathering commutes with the cast), not the whole [B, D, H, W] map.
        with torch.autocast(device_type=images.device.type, enabled=False):
            sampled, sampled_labels = sample_pixels(embeddings, labels, self.config.pixels_per_image, context.generator)
            loss = proxy_anchor_loss(sampled.float(), sampled_labels, self.proxies.weight.float(), self.config.alpha, self.config.delta)
        return {"loss": loss}

    @torch.no_grad()
    def _initialise_proxies(self, context: TrainingContext) -> None:
        """Proxy c = normalised sum of sampled embeddings of label c over a few batches of training
        images; a label not seen in those batches gets a random unit vector."""
        generator = torch.Generator().manual_seed(context.seed + 1)
        sums = torch.zeros_like(self.proxies.weight)
        self.network.eval()
        count = self.config.proxy_init_batches * self.config.batch_size
        for images, labels in context.image_batches(count, self.config.batch_size, context.seed + 1):
            embeddings, sampled_labels = sample_pixels(self.embed(images), labels, self.config.pixels_per_image, generator)
            sums.index_add_(0, sampled_labels, embeddings)
        unseen = sums.norm(dim=1) == 0
        sums[unseen] = torch.randn(int(unseen.sum()), sums.shape[1], generator=generator).to(sums)
        self.proxies.weight.data.copy_(F.normalize(sums, dim=1))

    # --- inference ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        if self.config.knn_rules == "original":
            return predict_original(self, episode)
        return self.predict_by_encoding(episode)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, D, H, W] unit pixel embeddings."""
        return self.embed(images)

    @torch.no_grad()
    def predict_encoded(self, episode: Episode, support_features: Tensor, query_features: Tensor) -> Prediction:
        """kNN of every query pixel among the support's reference pixels.

        support_features: [N*K, D, H, W]; query_features: [Q, D, H, W] (from encode).
        """
        height, width = episode.query_images.shape[-2:]
        # Reference subsets are drawn from a generator seeded by the episode: same episode, same answer.
        generator = torch.Generator().manual_seed(int(episode.index))
        support_features = support_features.unflatten(0, (episode.way, episode.shot))
        references = [
            self._reference_set(support_features[way].float(), episode.support_masks[way], generator) for way in range(episode.way)
        ]
        # One kNN over every way's references, labelled 0 = background, n = way n: the ways compete
        # for each query pixel, so an object that looks like one way's support does not also count
        # as present for the others.
        reference_pixels = torch.cat([pixels for pixels, _ in references])
        reference_labels = torch.cat([labels * (way + 1) for way, (_, labels) in enumerate(references)])
        stride = self.config.knn_stride
        query_grid = query_features[:, :, ::stride, ::stride].float()
        grid_size = query_grid.shape[-2:]
        query_pixels = query_grid.permute(0, 2, 3, 1).reshape(-1, query_grid.shape[1])  # [Q*h*w, D]
        dtype = KNN_PRECISIONS[self.config.knn_precision]
        shares = knn_label_shares(
            query_pixels.to(dtype), reference_pixels.to(dtype), reference_labels, episode.way + 1, self.config.k, self.config.knn_chunk_size
        ).float()
        fg_probs = shares[:, 1:].reshape(query_grid.shape[0], *grid_size, episode.way).permute(0, 3, 1, 2)
        if stride > 1:
            fg_probs = F.interpolate(fg_probs, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
        return Prediction.from_probabilities(fg_probs.contiguous())

    def _reference_set(self, embeddings: Tensor, masks: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Support pixels of one way: embeddings [K, D, H, W], masks [K, H, W] ->
        (references [R, D], labels [R] int64, 1 = positive), R <= max_pos * (1 + ratio)."""
        pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        flat_masks = masks.reshape(-1)
        positive_index = torch.nonzero(flat_masks == 1).squeeze(1)
        negative_index = torch.nonzero(flat_masks == 0).squeeze(1)
        positive_index = _subset(positive_index, self.config.max_positive_samples, generator)
        negative_index = _subset(negative_index, len(positive_index) * self.config.negative_samples_ratio, generator)
        references = torch.cat([pixels[positive_index], pixels[negative_index]])
        labels = torch.cat([positive_index.new_ones(len(positive_index)), negative_index.new_zeros(len(negative_index))])
        return references, labels


def knn_label_shares(queries: Tensor, references: Tensor, reference_labels: Tensor, num_labels: int, k: int, chunk_size: int) -> Tensor:
    """Share of each label among each query's k nearest references by cosine similarity.

    Args:
        queries: [P, D] unit vectors; references: [R, D] unit vectors; reference_labels: [R] int64 in
        [0, num_labels).
    Returns:
        [P, num_labels], rows summing to 1 (all zero when there are no references). Computed
        chunk_size queries at a time, so memory is O(chunk_size x R).
    """
    result = queries.new_zeros(queries.shape[0], num_labels)
    k = min(k, references.shape[0])
    if k == 0:
        return result
    ones = queries.new_ones(1, k)
    for start in range(0, queries.shape[0], chunk_size):
        similarity = queries[start : start + chunk_size] @ references.t()  # [chunk, R]
        nearest = similarity.topk(k, dim=1, sorted=False).indices
        # Count each label's votes in place, without a [chunk, k, num_labels] one-hot tensor.
        result[start : start + chunk_size].scatter_add_(1, reference_labels[nearest], ones.expand(len(nearest), k))
    return result.div_(k)


def sample_pixels(embeddings: Tensor, labels: Tensor, per_image: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Class-balanced pixel sample for the metric loss.

    Args:
        embeddings: [B, D, H, W]; labels: [B, H, W] with 255 = ignore.
    Returns:
        ([M, D] embeddings, [M] labels), M <= B * per_image; within each image every present class
        gets an equal share of the draws, so small objects are not drowned by background.
    """
    batch, dim = embeddings.shape[:2]
    flat_labels = labels.reshape(batch, -1)
    valid = flat_labels != IGNORE_INDEX
    # Weight each valid pixel by 1 / (pixels of its class in its image).
    safe = torch.where(valid, flat_labels, torch.zeros_like(flat_labels))
    counts = torch.zeros(batch, int(safe.max()) + 1, device=labels.device).scatter_add_(1, safe, valid.float())
    weights = torch.where(valid, 1.0 / counts.gather(1, safe).clamp(min=1), torch.zeros_like(valid, dtype=torch.float))
    has_pixels = weights.sum(dim=1) > 0
    if not bool(has_pixels.all()):
        # Boolean indexing copies the whole [B, D, H, W] map (and scatters it back in the backward
        # pass: 13% of a float32 demo step), so only when an image has no valid pixel at all.
        weights, flat_labels, embeddings = weights[has_pixels], flat_labels[has_pixels], embeddings[has_pixels]
    if weights.shape[0] == 0:
        return embeddings.new_zeros(0, dim), labels.new_zeros(0)
    draws = min(per_image, int(valid[has_pixels].sum(dim=1).min()))
    chosen = torch.multinomial(weights.cpu(), draws, replacement=False, generator=generator).to(labels.device)
    pixels = embeddings.flatten(2).transpose(1, 2)  # [B, H*W, D]
    sampled = torch.gather(pixels, 1, chosen.unsqueeze(-1).expand(-1, -1, dim)).reshape(-1, dim)
    return sampled, torch.gather(flat_labels, 1, chosen).reshape(-1)


def _subset(index: Tensor, count: int, generator: torch.Generator) -> Tensor:
    if len(index) <= count:
        return index
    chosen = torch.randperm(len(index), generator=generator)[:count].to(index.device)
    return index[chosen]
