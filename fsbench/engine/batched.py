"""Predicting several episodes at once, encoding every image once.

A method that splits its prediction into a per-image ``encode(images)`` and
``predict_encoded(episode, support_features, query_features)`` (``encodes_images = True``) gets
all the images of a batch of episodes encoded in one forward pass, and an image seen before - the
same id at the same size, e.g. a Pascal image that is the query of one episode and a support of
another - is taken from a byte-bounded cache instead of being encoded again. Any other method is
called episode by episode. Either way the shared padding rule applies (fsbench.engine.padding).
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import Tensor

from fsbench.engine.padding import pad_episode, predict_padded
from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.lru import ByteLRU, nbytes

AMP_MODES = ("off", "bf16", "fp16")
# The encoding cache switches itself off when it could hold fewer images than this: an LRU that
# small mostly evicts before the image recurs (e.g. 512-d full-resolution embeddings at 400x400).
MIN_CACHED_IMAGES = 32


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16 support; a CPU with AVX512-BF16
    or AMX-BF16), where --amp bf16 is faster, not an emulation slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_amp(mode: str, device: torch.device, quick: bool) -> str:
    """``--amp auto`` (the default): bf16 for a quick profile of a method measured in bf16 (the
    demo; ``quick`` says both) on a device with native bf16, float32 everywhere else, so
    published-protocol numbers stay float32 unless asked for."""
    if mode != "auto":
        return mode
    return "bf16" if quick and native_bf16(device) else "off"


def check_amp(mode: str, device: torch.device, method_class) -> None:
    """Refuse in one line a precision the method's kernels cannot run on ``device``."""
    if mode == "bf16" and device.type == "cpu" and not getattr(method_class, "cpu_bf16", True):
        raise FsbenchError(f"method {method_class.registry_name!r} cannot run --amp bf16 on the CPU (PyTorch's CPU bf16 "
                           "kernels fail on its layers); use --amp off, or bf16 on a GPU")


def autocast(device: torch.device, mode: str):
    """The autocast context of ``--amp``: bfloat16 or float16 matmuls/convolutions, or nothing."""
    if mode == "off":
        return nullcontext()
    if mode not in AMP_MODES:
        raise FsbenchError(f"unknown --amp {mode!r}; available: {', '.join(AMP_MODES)}")
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    if mode == "fp16" and device.type == "cpu":
        raise FsbenchError("--amp fp16 needs a CUDA device; on the CPU use --amp bf16")
    return torch.autocast(device_type=device.type, dtype=dtype)


class EncodingCache:
    """Per-image encodings, keyed by (image id, height, width), bounded in bytes; ``off`` says why
    it switched itself off, when it did."""

    def __init__(self, max_megabytes: float):
        self.store = ByteLRU(int(max_megabytes * 2**20))
        self.off: str | None = None if max_megabytes > 0 else "--feature-cache-mb 0"

    def get(self, key):
        return None if self.off else self.store.get(key)

    def put(self, key, value) -> None:
        if self.off:
            return
        size = nbytes(value)
        if size * MIN_CACHED_IMAGES > self.store.max_bytes:
            self.off = f"one encoding takes {size / 2**20:.1f} MB: the cache would hold fewer than {MIN_CACHED_IMAGES} images"
            self.store.clear()
            return
        self.store.put(key, value)

    def stats(self) -> dict:
        return {"off": self.off} if self.off else self.store.stats()


def _split(features, count: int) -> list:
    """Batched features (a tensor [B, ...] or a list/tuple of them) -> B per-image items."""
    if isinstance(features, Tensor):
        return list(features.unbind(0)) if count else []
    per_level = [_split(level, count) for level in features]
    return [type(features)(level[index] for level in per_level) for index in range(count)]


def _stack(items: list):
    """Per-image items -> batched features (inverse of _split)."""
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items)
    return type(first)(_stack([item[level] for item in items]) for level in range(len(first)))


def predict_episodes(method, episodes: list[Episode], cache: EncodingCache | None = None) -> list[Prediction]:
    """Predictions for ``episodes`` (on the method's device), each at its episode's own size."""
    identified = all(episode.query_ids and episode.support_ids for episode in episodes)
    if not getattr(method, "encodes_images", False) or not identified:
        return [predict_padded(method, episode) for episode in episodes]
    sizes = [tuple(episode.query_images.shape[-2:]) for episode in episodes]
    padded = [pad_episode(episode, tuple(method.valid_size(*size))) for episode, size in zip(episodes, sizes)]
    keys_of, images = [], {}
    for episode in padded:
        height, width = episode.query_images.shape[-2:]
        support_keys = [(image_id, height, width) for ids in episode.support_ids for image_id in ids]
        query_keys = [(image_id, height, width) for image_id in episode.query_ids]
        keys_of.append((support_keys, query_keys))
        for key, image in zip(support_keys + query_keys, [*episode.support_images.flatten(0, 1), *episode.query_images]):
            images.setdefault(key, image)
    encodings = {}
    for key in images:
        cached = cache.get(key) if cache is not None else None
        if cached is not None:
            encodings[key] = cached
    missing = [key for key in images if key not in encodings]
    # One forward per image size (all of them, normally: one transform gives one size).
    for size in sorted({key[1:] for key in missing}):
        group = [key for key in missing if key[1:] == size]
        for key, item in zip(group, _split(method.encode(torch.stack([images[key] for key in group])), len(group))):
            encodings[key] = item
            if cache is not None:
                cache.put(key, item)
    predictions = []
    for episode, (support_keys, query_keys), (height, width) in zip(padded, keys_of, sizes):
        support_features = _stack([encodings[key] for key in support_keys])
        query_features = _stack([encodings[key] for key in query_keys])
        predictions.append(method.predict_encoded(episode, support_features, query_features).cropped(height, width))
    return predictions
