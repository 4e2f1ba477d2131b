"""Training losses shared by methods: Proxy-Anchor (metric learning) and the segmentation losses."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from fsbench.episode import IGNORE_INDEX
from fsbench.errors import FsbenchError


def proxy_anchor_loss(embeddings: Tensor, labels: Tensor, proxies: Tensor, alpha: float = 32.0, delta: float = 0.1) -> Tensor:
    """Proxy-Anchor loss (Kim et al., CVPR 2020).

    Args:
        embeddings: [M, D] sample embeddings (any norm; cosine similarity is used).
        labels: [M] int64 class index of each sample, in 0..C-1.
        proxies: [C, D] one trainable proxy per class.
    Returns:
        Scalar: (1/|P+|) sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x,p) - delta)))
              + (1/|P|)  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x,p) + delta)))
        where P+ are the proxies with at least one positive sample in the batch.
    """
    cosine = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).t()  # [M, C]
    positive = F.one_hot(labels, num_classes=proxies.shape[0]).bool()
    # log(1 + sum exp(z)) == logsumexp over z with an extra 0 term: numerically stable for alpha 32.
    positive_logits = torch.where(positive, -alpha * (cosine - delta), torch.full_like(cosine, float("-inf")))
    negative_logits = torch.where(~positive, alpha * (cosine + delta), torch.full_like(cosine, float("-inf")))
    zeros = torch.zeros(1, proxies.shape[0], dtype=cosine.dtype, device=cosine.device)
    positive_terms = torch.logsumexp(torch.cat([zeros, positive_logits]), dim=0)  # [C]
    negative_terms = torch.logsumexp(torch.cat([zeros, negative_logits]), dim=0)
    with_positives = positive.any(dim=0)
    positive_loss = positive_terms[with_positives].sum() / with_positives.sum().clamp(min=1)
    negative_loss = negative_terms.sum() / proxies.shape[0]
    return positive_loss + negative_loss


# --- segmentation losses --------------------------------------------------------------------------
# Each takes logits [B, C, H, W] (C = classes, background included) and labels [B, H, W] int64 in
# 0..C-1 with IGNORE_INDEX (255) = ignore, and returns a scalar. Pixels labelled 255 contribute
# nothing; a batch without any valid pixel gives 0 (not NaN), so an all-ignore support cannot poison
# a training run.


def _valid_pixels(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(log-probabilities [P, C], labels [P]) of the non-ignored pixels."""
    classes = logits.shape[1]
    log_probs = F.log_softmax(logits.float(), dim=1).permute(0, 2, 3, 1).reshape(-1, classes)
    flat_labels = labels.reshape(-1)
    valid = flat_labels != IGNORE_INDEX
    return log_probs[valid], flat_labels[valid]


def cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Mean pixel cross-entropy over the valid pixels: -mean log softmax(logits)[label].

    class_weights: optional [C] weight per class; the mean is then weighted, sum w_y l / sum w_y
    (torch's weighted cross-entropy).
    """
    log_probs, valid_labels = _valid_pixels(logits, labels)
    if valid_labels.numel() == 0:
        return logits.sum() * 0.0
    weight = None if class_weights is None else class_weights.to(log_probs)
    return F.nll_loss(log_probs, valid_labels, weight=weight)


def dice(logits: Tensor, labels: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft multi-class Dice loss: 1 - mean over the C classes of (2 sum p g + s) / (sum p + sum g + s).

    p is the softmax probability and g the one-hot label of a class, summed over every valid pixel of
    the batch; s = ``smooth`` keeps a class absent from both prediction and labels at Dice 1.
    """
    log_probs, valid_labels = _valid_pixels(logits, labels)
    probs = log_probs.exp()  # [P, C]
    one_hot = F.one_hot(valid_labels, num_classes=logits.shape[1]).to(probs.dtype)
    intersection = (probs * one_hot).sum(dim=0)
    total = probs.sum(dim=0) + one_hot.sum(dim=0)
    return 1.0 - ((2.0 * intersection + smooth) / (total + smooth)).mean()


def ce_dice(logits: Tensor, labels: Tensor, class_weights: Tensor | None = None) -> Tensor:
    """Cross-entropy (class-weighted when class_weights [C] is given) plus unweighted Dice."""
    return cross_entropy(logits, labels, class_weights) + dice(logits, labels)


def focal(logits: Tensor, labels: Tensor, gamma: float = 2.0) -> Tensor:
    """Focal loss (Lin et al., ICCV 2017) without class weighting: mean of -(1 - p_t)^gamma log p_t."""
    log_probs, valid_labels = _valid_pixels(logits, labels)
    if valid_labels.numel() == 0:
        return logits.sum() * 0.0
    log_true = log_probs.gather(1, valid_labels.unsqueeze(1)).squeeze(1)
    return (-((1.0 - log_true.exp()) ** gamma) * log_true).mean()


def _lovasz_gradient(sorted_truth: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at errors sorted in decreasing order.

    sorted_truth: [P] float in {0, 1}, the ground truth in that order. Returns [P].
    """
    positives = sorted_truth.sum()
    intersection = positives - sorted_truth.cumsum(0)
    union = positives + (1.0 - sorted_truth).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1].clone()
    return jaccard


def lovasz_softmax(logits: Tensor, labels: Tensor) -> Tensor:
    """Lovasz-softmax loss (Berman et al., CVPR 2018), over the batch's pixels together.

    For each class present in the labels: sort the errors |g_c - p_c| in decreasing order and take
    their dot product with the Lovasz gradient of the Jaccard loss; the loss is the mean over those
    classes (the reference implementation's classes="present", per_image=False). With hard 0/1
    probabilities it equals 1 - IoU averaged over the present classes.
    """
    log_probs, valid_labels = _valid_pixels(logits, labels)
    probs = log_probs.exp()
    losses = []
    for class_index in valid_labels.unique().tolist():
        truth = (valid_labels == class_index).to(probs.dtype)
        errors = (truth - probs[:, class_index]).abs()
        sorted_errors, order = errors.sort(descending=True)
        losses.append(sorted_errors @ _lovasz_gradient(truth[order]))
    if not losses:
        return logits.sum() * 0.0
    return torch.stack(losses).mean()


SEGMENTATION_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "ce": cross_entropy,
    "dice": dice,
    "ce_dice": ce_dice,
    "focal": focal,
    "lovasz": lovasz_softmax,
}


# Losses with a cross-entropy term that class weights apply to.
CLASS_WEIGHTED_LOSSES = ("ce", "ce_dice")


def foreground_weights(classes: int, foreground_weight: float, device: torch.device | str = "cpu") -> Tensor:
    """[classes] loss weights: 1 for background (index 0), ``foreground_weight`` for every other class."""
    weights = torch.full((classes,), float(foreground_weight), device=device)
    weights[0] = 1.0
    return weights


def segmentation_loss(name: str, foreground_weight: float = 1.0) -> Callable[[Tensor, Tensor], Tensor]:
    """The segmentation loss called ``name`` (the --loss value); an unknown name lists the options.

    foreground_weight != 1 weights every foreground class's pixels that much against background ones
    in the cross-entropy term (scratch networks on small data otherwise settle on "all background"
    first); only the losses in CLASS_WEIGHTED_LOSSES take it.
    """
    if name not in SEGMENTATION_LOSSES:
        raise FsbenchError(f"unknown loss {name!r}; available: {', '.join(SEGMENTATION_LOSSES)}")
    function = SEGMENTATION_LOSSES[name]
    if foreground_weight == 1.0:
        return function  # the unweighted loss, bit for bit
    if name not in CLASS_WEIGHTED_LOSSES:
        raise FsbenchError(f"foreground_weight applies to the losses {', '.join(CLASS_WEIGHTED_LOSSES)}, not {name!r}")

    def weighted(logits: Tensor, labels: Tensor) -> Tensor:
        return function(logits, labels, foreground_weights(logits.shape[1], foreground_weight, logits.device))

    return weighted


# --- weak (class-tag) supervision -----------------------------------------------------------------
def class_tag_loss(way_log_probabilities: Tensor, presence: Tensor) -> Tensor:
    """iFSL's classification objective for training from class tags only (``--weak``).

    Args:
        way_log_probabilities: [Q, N, 2, h, w] per-way log-softmax maps (channel 0 background,
            1 the way's class), at any resolution.
        presence: [Q, N] bool, whether each way's class is in each query (the only label).
    Returns:
        Scalar: the negative log-likelihood of the true presence under the spatial mean of the
        log-probabilities, averaged over queries and ways (iFSL: ``nll_loss(maps.mean([-1, -2]),
        presence)``, which it applies to 1-way episodes; every way counts alike here).
    """
    if way_log_probabilities.dim() != 5 or way_log_probabilities.shape[2] != 2:
        raise FsbenchError(f"class_tag_loss expects [Q, N, 2, h, w] log-probabilities, got {tuple(way_log_probabilities.shape)}")
    spatial_mean = way_log_probabilities.mean(dim=(-1, -2))  # [Q, N, 2]
    chosen = spatial_mean.gather(-1, presence.long().unsqueeze(-1)).squeeze(-1)  # [Q, N]
    return -chosen.mean()
