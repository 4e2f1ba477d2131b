"""A least-recently-used cache bounded in bytes (decoded images in the sampler, encodings in evaluation)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Hashable

import torch


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in ``value`` (a tensor, or nested tuples / lists / dicts of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(item) for item in value)
    if isinstance(value, dict):
        return sum(nbytes(item) for item in value.values())
    return 0


class ByteLRU:
    """Maps keys to values (tensors or structures of them), evicting the least recently used entries
    when the total exceeds ``max_bytes``. A value larger than the whole budget is not stored.

    Attributes:
        hits, misses: lookups that found / did not find their key.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self.entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> Any | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: Any) -> None:
        size = nbytes(value)
        if size > self.max_bytes:
            return
        if key in self.entries:
            self.bytes -= self.entries.pop(key)[1]
        self.entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, evicted) = self.entries.popitem(last=False)
            self.bytes -= evicted

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0

    def stats(self) -> dict:
        lookups = self.hits + self.misses
        return {
            "hits": self.hits, "misses": self.misses, "entries": len(self.entries), "megabytes": round(self.bytes / 2**20, 1),
            "hit_rate": round(self.hits / lookups, 4) if lookups else None,
        }
