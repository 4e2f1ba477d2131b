"""dml_knn as rootvisionai/dml_segmentation ships it: its network, its checkpoint files, its kNN rules.

- Network (``architecture="original"``): smp UNet++ whose head gives the embedding, followed by the
  extra ReLU -> BatchNorm -> 3x3 conv (reflect padding) that the repo's BaseModel adds; state keys
  ``model.*`` and ``base_final_conv.{1,2}.*`` as in its ``ckpt.pth`` (models/base.py, models/seg_models_pytorch.py).
- Checkpoint: ``ckpt.pth`` / ``ckpt_finetuned.pth`` ({model_state_dict, optimizer_state_dict,
  last_epoch}) with ``proxies.pth`` / ``proxies_finetuned.pth`` (a [classes, D] tensor) beside it,
  read through fsbench.foreign (weights_only) and matched strictly; a ``config.yml`` beside it gives
  the input size and the kNN settings.
- kNN rules (``knn_rules="original"``, inference.py's predict_few_shot): every positive support
  pixel, positives x negative_samples_ratio negatives drawn uniformly with replacement from the
  support's background pixels except its last one (torch.randint(0, n - 1)); references are
  [negatives, positives]; cosine similarities below ``knn_threshold`` become 0; of the k + 1 most
  similar references the first is dropped; a pixel is foreground where the share of positive votes
  exceeds ``knn_threshold`` (0.95 for both, the repo's config.yml). N-way: one vote over every way's
  references (the repo handles one class; with one way this is its rule exactly).
- Preprocessing: fsbench.preprocessing's ``dml_original`` profile.

Probabilities: fsbench scores a pixel as a way's where its probability is >= 0.5, so the vote share s
is reported as 0.5 s + 0.5 [s > threshold]: 0.5 falls exactly at the repo's rule and the order of
shares is kept.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.foreign import find_state_dict, read_torch_file, strict_match, strip_prefix
from fsbench.model_files import FOREIGN_CHECKPOINTS, ForeignWeights

# smp ResNet encoders by (blocks per stage, bottleneck blocks): what a state dict's keys reveal.
RESNET_LAYOUTS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}


class OriginalEmbeddingNetwork(nn.Module):
    """[B, 3, H, W] -> [B, D, H, W] embeddings (not normalised): smp UNet++ then ReLU-BN-Conv3x3."""

    def __init__(self, backbone: str, embedding_dim: int, decoder_channels: tuple[int, ...]):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.base_final_conv = nn.Sequential(
            nn.ReLU(),
            nn.BatchNorm2d(embedding_dim),
            nn.Conv2d(embedding_dim, embedding_dim, kernel_size=3, padding=1, padding_mode="reflect"),
        )
        self.model = smp.UnetPlusPlus(
            encoder_name=backbone, encoder_weights=None, decoder_channels=tuple(decoder_channels),
            classes=embedding_dim, activation=None,
        )

    @property
    def encoder(self) -> nn.Module:  # where ImageNet weights go, as for fsbench's own UNet++
        return self.model.encoder

    def forward(self, images: Tensor) -> Tensor:
        return self.base_final_conv(self.model(images))


# --- kNN rules ---------------------------------------------------------------------------------------
def flat_unit_embeddings(embeddings: Tensor) -> Tensor:
    """[B, D, H, W] network output -> [B*H*W, D] unit vectors, flattened and then normalised as the
    repo does (normalising the contiguous [P, D] rows; normalising [B, D, H, W] over D differs in the
    last bits, enough to move a few similarities across the 0.95 floor)."""
    flat = embeddings.reshape(embeddings.shape[0], embeddings.shape[1], -1).permute(0, 2, 1).contiguous()
    return F.normalize(flat.reshape(-1, embeddings.shape[1]), p=2.0, dim=1)


def original_reference_set(pixels: Tensor, masks: Tensor, ratio: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """One way's references as the repo draws them.

    Args:
        pixels: [K*H*W, D] unit vectors (flat_unit_embeddings); masks: [K, H, W] in {0, 1, 255}.
    Returns:
        ([R, D] references: sampled negatives then every positive, [R] labels 0/1).
    """
    flat = masks.reshape(-1)
    negatives = torch.nonzero(flat == 0).squeeze(1)
    positives = torch.nonzero(flat == 1).squeeze(1)
    # With no background pixel at all there is nothing to draw (the repo would fail here).
    count = len(positives) * ratio if len(negatives) > 0 else 0
    drawn = torch.randint(0, max(len(negatives) - 1, 1), (count,), generator=generator).to(negatives.device)
    chosen = torch.cat([negatives[drawn], positives])
    labels = torch.cat([positives.new_zeros(count), positives.new_ones(len(positives))])
    return pixels[chosen], labels


def original_votes(queries: Tensor, references: Tensor, labels: Tensor, num_labels: int, k: int, threshold: float, chunk_size: int) -> Tensor:
    """[P, num_labels] vote counts among each query's k neighbours after the nearest is dropped,
    similarities below ``threshold`` set to 0 first (ties resolved by torch.topk, as in the repo)."""
    votes = queries.new_zeros(queries.shape[0], num_labels)
    neighbours = min(k + 1, references.shape[0])
    if neighbours < 2:
        return votes
    for start in range(0, queries.shape[0], chunk_size):
        similarity = F.linear(queries[start : start + chunk_size], references)
        similarity = torch.where(similarity < threshold, 0.0, similarity)
        nearest = similarity.topk(neighbours).indices[:, 1:]
        votes[start : start + chunk_size].scatter_add_(1, labels[nearest], torch.ones_like(nearest, dtype=votes.dtype))
    return votes


def original_probabilities(votes: Tensor, k: int, threshold: float) -> Tensor:
    """[P, N] way votes -> [P, N] probabilities whose >= 0.5 is the repo's share > threshold."""
    share = votes / k  # float32 share compared with the float threshold, as the repo compares them
    return 0.5 * share + 0.5 * (share > threshold).to(share.dtype)


@torch.no_grad()
def predict_original(method, episode: Episode) -> Prediction:
    """DMLKNN.predict under ``knn_rules="original"``: fg_probs [Q, N, H, W], presence [Q, N]."""
    config = method.config
    generator = torch.Generator().manual_seed(int(episode.index))
    references, labels = [], []
    for way in range(episode.way):
        pixels, way_labels = original_reference_set(
            flat_unit_embeddings(method.network(episode.support_images[way])), episode.support_masks[way], config.negative_samples_ratio, generator
        )
        references.append(pixels)
        labels.append(way_labels * (way + 1))
    reference_pixels, reference_labels = torch.cat(references), torch.cat(labels)
    query = method.network(episode.query_images)  # [Q, D, H, W]
    queries = flat_unit_embeddings(query)
    votes = original_votes(queries, reference_pixels, reference_labels, episode.way + 1, config.k, config.knn_threshold, config.knn_chunk_size)
    probabilities = original_probabilities(votes[:, 1:], config.k, config.knn_threshold)
    height, width = query.shape[-2:]
    fg_probs = probabilities.reshape(query.shape[0], height, width, episode.way).permute(0, 3, 1, 2)
    return Prediction.from_probabilities(fg_probs.contiguous())


# --- the repo's checkpoint files ---------------------------------------------------------------------
def _resnet_name(state: dict[str, Tensor], path: Path) -> str:
    blocks = tuple(
        len({key.split(".")[3] for key in state if key.startswith(f"model.encoder.layer{stage}.")}) for stage in (1, 2, 3, 4)
    )
    bottleneck = "model.encoder.layer1.0.conv3.weight" in state
    if (blocks, bottleneck) not in RESNET_LAYOUTS:
        raise FsbenchError(f"{path}: encoder is not a ResNet fsbench knows (blocks per stage {blocks}); the DML repo's UNet++ checkpoints use resnet18-152")
    return RESNET_LAYOUTS[(blocks, bottleneck)]


def _proxies_beside(path: Path) -> Path | None:
    candidates = ["proxies_finetuned.pth", "proxies.pth"] if "finetuned" in path.name else ["proxies.pth"]
    for name in candidates:
        if (path.parent / name).is_file():
            return path.parent / name
    return None


def _settings_beside(path: Path) -> dict:
    """Input size and kNN settings from the repo's config.yml beside the checkpoint, when there is one."""
    config_path = path.parent / "config.yml"
    if not config_path.is_file():
        return {}
    import yaml  # a dependency of segmentation-models-pytorch (via huggingface-hub)

    try:
        data = yaml.safe_load(config_path.read_text())
        inference, model, input_size = data["inference"], data["model"], data["data"]["input_size"]
        settings = {
            "k": int(inference["num_of_neighbors"]),
            "knn_threshold": float(inference["threshold"]),
            "negative_samples_ratio": int(inference["negative_samples_ratio"]),
            "img_size": int(input_size),
        }
        arch = model.get("arch")
    except (yaml.YAMLError, OSError, KeyError, TypeError, ValueError) as error:
        raise FsbenchError(f"{config_path}: not a readable DML config.yml ({type(error).__name__}: {error})") from None
    if arch != "UnetPlusPlus":
        raise FsbenchError(f"{config_path}: arch {arch!r}; fsbench reads the DML repo's UnetPlusPlus checkpoints only")
    return settings


@FOREIGN_CHECKPOINTS.register("dml_segmentation")
def read_dml_checkpoint(path: Path, content) -> ForeignWeights | None:
    """The DML repo's ckpt.pth as dml_knn weights, or None when ``content`` is not that layout."""
    if not (isinstance(content, dict) and "model_state_dict" in content):
        return None
    state = strip_prefix(find_state_dict(content, path, keys=("model_state_dict",)), "module.")
    if "base_final_conv.2.weight" not in state or "model.encoder.conv1.weight" not in state:
        return None
    embedding_dim = int(state["base_final_conv.2.weight"].shape[0])
    backbone = _resnet_name(state, path)
    decoder_channels = tuple(int(state[f"model.decoder.blocks.x_0_{depth}.conv2.0.weight"].shape[0]) for depth in range(5) if f"model.decoder.blocks.x_0_{depth}.conv2.0.weight" in state)
    network = OriginalEmbeddingNetwork(backbone, embedding_dim, decoder_channels)
    strict_match(state, network.state_dict(), path, f"the DML repo's UNet++ ({backbone}, {embedding_dim}-d)")
    weights = {f"network.{key}": value.float() for key, value in state.items()}
    notes = []
    proxies_path = _proxies_beside(path)
    if proxies_path is None:
        notes.append(f"no proxies.pth beside {path}; predicting needs none (proxies only train)")
        weights["proxies.weight"] = torch.zeros(0, embedding_dim)
    else:
        proxies = read_torch_file(proxies_path).content
        if not isinstance(proxies, Tensor) or proxies.dim() != 2 or proxies.shape[1] != embedding_dim:
            raise FsbenchError(f"{proxies_path}: expected a [classes, {embedding_dim}] proxy tensor, found {getattr(proxies, 'shape', type(proxies).__name__)}")
        weights["proxies.weight"] = proxies.float()
    settings = _settings_beside(path)
    config = {
        "architecture": "original", "knn_rules": "original", "preprocessing": "dml_original",
        "backbone": backbone, "embedding_dim": embedding_dim, "decoder_channels": decoder_channels,
        **{key: value for key, value in settings.items() if key != "img_size"},
    }
    description = f"rootvisionai/dml_segmentation UNet++ {backbone}, epoch {content.get('last_epoch')}"
    return ForeignWeights("dml_knn", config, weights, description, notes, img_size=settings.get("img_size"))
