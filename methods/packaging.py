"""The packaged (TorchScript) forms of the methods, for ``main.py export`` / ``predict --packaged``.

A package is one scripted module, forward(support_images [N, K, 3, S, S], support_masks [N, K, S, S],
query_images [Q, 3, S, S], generator) -> fg_probs [Q, N, S, S]: the network traced, the method's
inference around it scripted from the same functions its predict uses (dml_knn's kNN, the original
rules, PANet's prototypes), so a package needs neither fsbench's methods nor their classes to run.
tests/test_package.py checks that packaged and in-process predictions agree.

mtl_unet cannot be packaged: its prediction adapts a base learner on each episode's support in an
inner optimisation loop, which a traced or scripted inference graph does not hold.
"""
from __future__ import annotations

import copy
from typing import List

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fsbench.package import EXPORTERS, UNPACKAGEABLE
from methods.dml_knn import _subset, knn_label_shares
from methods.dml_original import flat_unit_embeddings, original_probabilities, original_reference_set, original_votes
from methods.prototypes import POOLING_EPSILON, cosine_logits, pooling_weights

UNPACKAGEABLE["mtl_unet"] = "its prediction adapts a base learner on each episode's support in an inner optimisation loop"


def trace(network: nn.Module, img_size: int, fp16: bool, device: torch.device) -> torch.jit.ScriptModule:
    example = torch.zeros(1, 3, img_size, img_size, device=device, dtype=torch.float16 if fp16 else torch.float32)
    network = copy.deepcopy(network)  # the method keeps its own (fp32) network
    network = network.half() if fp16 else network.float()
    with torch.no_grad():
        return torch.jit.trace(network.eval(), example, check_trace=False)


class DMLKNNPackage(nn.Module):
    """dml_knn's predict (fsbench or original kNN rules) around a traced embedding network."""

    def __init__(self, network, proxies: Tensor, config, fp16: bool):
        super().__init__()
        self.network = network
        self.register_buffer("proxies", proxies.float())  # not needed to predict; kept so the file is the whole model
        self.fp16 = fp16
        self.original = config.knn_rules == "original"
        self.k = int(config.k)
        self.ratio = int(config.negative_samples_ratio)
        self.max_positive = int(config.max_positive_samples)
        self.chunk = int(config.knn_chunk_size)
        self.stride = int(config.knn_stride)
        self.threshold = float(config.knn_threshold)

    def raw(self, images: Tensor) -> Tensor:
        if self.fp16:
            images = images.half()
        return self.network(images).float()

    def embed(self, images: Tensor) -> Tensor:
        return F.normalize(self.raw(images), dim=1)

    def forward(self, support_images: Tensor, support_masks: Tensor, query_images: Tensor, generator: torch.Generator) -> Tensor:
        way = support_images.shape[0]
        pixels: List[Tensor] = []
        labels: List[Tensor] = []
        for index in range(way):
            if self.original:
                flat_support = flat_unit_embeddings(self.raw(support_images[index]))
                references, reference_labels = original_reference_set(flat_support, support_masks[index], self.ratio, generator)
            else:
                references, reference_labels = self.reference_set(self.embed(support_images[index]), support_masks[index], generator)
            pixels.append(references)
            labels.append(reference_labels * (index + 1))
        reference_pixels = torch.cat(pixels)
        reference_labels = torch.cat(labels)
        if self.original:
            query = self.raw(query_images)
            flat = flat_unit_embeddings(query)
            votes = original_votes(flat, reference_pixels, reference_labels, way + 1, self.k, self.threshold, self.chunk)
            probabilities = original_probabilities(votes[:, 1:], self.k, self.threshold)
            return probabilities.reshape(query.shape[0], query.shape[2], query.shape[3], way).permute(0, 3, 1, 2).contiguous()
        query = self.embed(query_images)
        grid = query[:, :, :: self.stride, :: self.stride]
        flat = grid.permute(0, 2, 3, 1).reshape(-1, query.shape[1])
        shares = knn_label_shares(flat, reference_pixels, reference_labels, way + 1, self.k, self.chunk)
        fg_probs = shares[:, 1:].reshape(query.shape[0], grid.shape[2], grid.shape[3], way).permute(0, 3, 1, 2)
        if self.stride > 1:
            fg_probs = F.interpolate(fg_probs, size=[query.shape[2], query.shape[3]], mode="bilinear", align_corners=False).clamp(0, 1)
        return fg_probs.contiguous()

    def reference_set(self, embeddings: Tensor, masks: Tensor, generator: torch.Generator):
        flat_pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
        flat_masks = masks.reshape(-1)
        positive = _subset(torch.nonzero(flat_masks == 1).squeeze(1), self.max_positive, generator)
        negative = _subset(torch.nonzero(flat_masks == 0).squeeze(1), positive.shape[0] * self.ratio, generator)
        references = torch.cat([flat_pixels[positive], flat_pixels[negative]])
        reference_labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)])
        return references, reference_labels


class PANetPackage(nn.Module):
    """PANet's inference (prototypes, cosine x scale, softmax over background + ways) around a traced encoder."""

    def __init__(self, encoder, scale: float, fp16: bool):
        super().__init__()
        self.encoder = encoder
        self.scale = float(scale)
        self.epsilon = float(POOLING_EPSILON)
        self.fp16 = fp16

    def forward(self, support_images: Tensor, support_masks: Tensor, query_images: Tensor, generator: torch.Generator) -> Tensor:
        way, shot = support_images.shape[0], support_images.shape[1]
        images = torch.cat([support_images.flatten(0, 1), query_images])
        if self.fp16:
            images = images.half()
        features = self.encoder(images).float()
        support_features = features[: way * shot]
        query_features = features[way * shot :]
        masks = support_masks.flatten(0, 1)
        masks = torch.stack([masks == 0, masks == 1], dim=1).to(features.dtype)
        weights = pooling_weights(masks, (int(features.shape[2]), int(features.shape[3])))
        sums = torch.einsum("bchw,bmhw->bmc", support_features, weights)
        pooled = (sums / (masks.sum(dim=(-2, -1)).unsqueeze(-1) + self.epsilon)).view(way, shot, 2, -1)
        background = pooled[:, :, 0].mean(dim=(0, 1))
        foreground = pooled[:, :, 1].mean(dim=1)
        prototypes = torch.cat([background.unsqueeze(0), foreground])
        size = (int(query_images.shape[2]), int(query_images.shape[3]))
        logits = cosine_logits(query_features, prototypes, self.scale, size)
        return logits.softmax(dim=1)[:, 1:].contiguous()


@EXPORTERS.register("dml_knn")
def export_dml_knn(method, img_size: int, fp16: bool) -> torch.jit.ScriptModule:
    network = trace(method.network, img_size, fp16, method.device)
    return torch.jit.script(DMLKNNPackage(network, method.proxies.weight.detach(), method.config, fp16))


@EXPORTERS.register("panet")
def export_panet(method, img_size: int, fp16: bool) -> torch.jit.ScriptModule:
    encoder = trace(method.encoder, img_size, fp16, method.device)
    return torch.jit.script(PANetPackage(encoder, method.config.scale, fp16))
