"""Meta-transfer learning's scaling and shifting of frozen convolutions (Sun et al., CVPR 2019).

Each frozen convolution W * x + b becomes (W . s) * x + b + t with a per-filter scale s (init 1)
and shift t (init 0). The parameters live in their own module and act on the network through
forward hooks: the network keeps its own parameter names, so pre-trained weights are used by the
meta model as they are - no copy, no renamed keys that could fail to load and leave convs random.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn


def _parameter_key(module_name: str) -> str:
    # ParameterDict keys may not contain dots.
    return module_name.replace(".", "__")


class ScaleShift(nn.Module):
    """Per-filter scale [out_channels] and shift [out_channels] for every Conv2d of ``network`` whose
    name starts with one of ``prefixes``.

    Attributes:
        conv_names: the convolutions covered, by their names in ``network``.
        scale, shift: ParameterDicts keyed by conv name with dots replaced by "__".
    """

    def __init__(self, network: nn.Module, prefixes: tuple[str, ...]):
        super().__init__()
        self.conv_names = [
            name for name, module in network.named_modules() if isinstance(module, nn.Conv2d) and name.startswith(prefixes)
        ]
        self.scale = nn.ParameterDict()
        self.shift = nn.ParameterDict()
        for name in self.conv_names:
            channels = network.get_submodule(name).out_channels
            self.scale[_parameter_key(name)] = nn.Parameter(torch.ones(channels))
            self.shift[_parameter_key(name)] = nn.Parameter(torch.zeros(channels))

    def reset(self) -> None:
        """Back to the identity: scale 1, shift 0."""
        with torch.no_grad():
            for parameter in self.scale.values():
                parameter.fill_(1.0)
            for parameter in self.shift.values():
                parameter.zero_()

    @contextmanager
    def applied(self, network: nn.Module) -> Iterator[None]:
        """Within the block, every covered conv of ``network`` computes (W . s) * x + b + t."""
        handles = [
            network.get_submodule(name).register_forward_hook(self._hook(_parameter_key(name))) for name in self.conv_names
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, key: str):
        def scale_and_shift(conv: nn.Conv2d, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
            # (W . s) * x = s (W * x) per output channel, so the conv runs once with its own weights.
            scale = self.scale[key].view(1, -1, 1, 1)
            shift = self.shift[key].view(1, -1, 1, 1)
            if conv.bias is None:
                return output * scale + shift
            bias = conv.bias.view(1, -1, 1, 1)
            return (output - bias) * scale + bias + shift

        return scale_and_shift
