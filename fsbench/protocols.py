"""Evaluation protocols: how images are resized, how many episodes, at which resolution to score."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from fsbench.errors import FsbenchError
from fsbench.transforms import AspectResizePad, SquashResize


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
        """Default episode count for ``benchmark`` under this protocol (its paper's, when it states one)."""
        return benchmark.protocol_defaults.get(self.name, {}).get("episodes", benchmark.default_episodes)

    def img_size(self, benchmark) -> int:
        """Default input size for ``benchmark`` under this protocol."""
        return benchmark.protocol_defaults.get(self.name, {}).get("img_size", benchmark.default_img_size)


PROTOCOLS: dict[str, Protocol] = {
    # HSNet / iFSL: squash to img_size x img_size, score at img_size unless --use_original_imgsize.
    "hsnet": Protocol("hsnet", SquashResize, score_original_size=False),
    # PFENet: aspect-preserving resize + padding, scored on the original-size label; benchmarks state
    # PFENet's episode counts and sizes in protocol_defaults (Pascal 5000 at 473, COCO 20000 at 641).
    "pfenet": Protocol("pfenet", AspectResizePad, score_original_size=True),
}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise FsbenchError(f"unknown protocol {name!r}; available: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]
