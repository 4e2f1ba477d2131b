"""Name -> class registries for methods and benchmarks (the timm / smp pattern, explicit imports)."""
from __future__ import annotations

from typing import Callable, TypeVar

from fsbench.errors import FsbenchError

T = TypeVar("T")


class Registry:
    """Maps a short name (the CLI's ``--method`` / ``--benchmark`` value) to a class."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, type] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(cls: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, name: str) -> type:
        if name not in self._entries:
            raise FsbenchError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.names()) or '(none registered)'}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


METHODS = Registry("method")
BENCHMARKS = Registry("benchmark")
