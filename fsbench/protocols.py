"""Evaluation protocols: how images are resized, how many episodes, at which resolution to score."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fsbench.errors import FsbenchError
from fsbench.transforms import SquashResize


@dataclass(frozen=True)
class Protocol:
    """A published evaluation protocol.

    Attributes:
        name: the --protocol value.
        make_transform: img_size -> (image, label) transform for episodes.
        score_original_size: score at each query's original size by default.
    """

    name: str
    make_transform: Callable[[int], Callable]
    score_original_size: bool = False

    def episodes(self, benchmark) -> int:
        """Default episode count for ``benchmark`` under this protocol."""
        return benchmark.default_episodes


PROTOCOLS: dict[str, Protocol] = {
    # HSNet / iFSL: squash to img_size x img_size, score at img_size unless --use_original_imgsize.
    "hsnet": Protocol("hsnet", SquashResize, score_original_size=False),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise FsbenchError(f"unknown protocol {name!r}; available: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
