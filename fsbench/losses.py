"""Training losses shared by methods."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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
