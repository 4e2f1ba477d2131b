"""The Method interface: every few-shot segmentation method in fsbench implements this."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError


@dataclass
class MethodConfig:
    """Settings every method has; a method's own Config subclasses this with its paper defaults.

    ``QUICK`` holds the overrides of the quick profile, used on the embedded synthetic benchmark so
    that the demo trains and evaluates in minutes on a laptop CPU.
    """

    backbone: str = "resnet101"
    pretrained: bool = True
    lr: float = 1e-3
    batch_size: int = 8
    train_steps: int = 10000

    QUICK: ClassVar[dict] = {}

    @classmethod
    def quick(cls) -> "MethodConfig":
        return replace(cls(), **cls.QUICK)

    def with_overrides(self, overrides: dict, method_name: str) -> "MethodConfig":
        """A copy with ``overrides`` applied; None values mean "keep the default" (timm's rule)."""
        names = {item.name for item in fields(self)}
        given = {key: value for key, value in overrides.items() if value is not None}
        unknown = sorted(set(given) - names)
        if unknown:
            raise FsbenchError(
                f"method {method_name!r} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(names))}"
            )
        return replace(self, **given)


class Method(ABC):
    """A few-shot segmentation method: holds its nn.Modules, predicts episodes, trains.

    Subclasses set ``Config`` and implement ``modules`` and ``predict``; episodic methods implement
    ``train_step``, and methods that train on plain image batches override ``fit``.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    registry_name: str = "method"
    # False when training never sees episodes (plain base-class image batches), so way, shot and
    # task do not change the trained weights and one checkpoint serves every setting.
    trains_on_episodes: ClassVar[bool] = True

    def __init__(self, config: MethodConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)

    @abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Every nn.Module whose state is the method's learned state, by a stable name."""

    @abstractmethod
    def predict(self, episode: Episode) -> Prediction:
        """Segment the queries of ``episode`` (already on self.device).

        Must read only support images/masks, query images and class ids: never query masks or
        presence (the evaluator hands over a copy with those blanked, and a test checks it).
        Returns fg_probs [Q, N, H, W] at the query images' resolution and presence [Q, N].
        """

    def train_step(self, episode: Episode) -> dict[str, float]:
        """One optimisation step on one training episode; returns scalars to log (e.g. {"loss": ...})."""
        raise FsbenchError(f"method {self.registry_name!r} does not train on episodes")

    def fit(self, benchmark, settings) -> None:
        """Train on ``benchmark``'s base classes; the default is the episodic loop over train_step."""
        from fsbench.train import train_episodic

        train_episodic(self, benchmark, settings)

    # --- shared plumbing --------------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Method":
        for module in self.modules().values():
            module.train(mode)
        return self

    def eval(self) -> "Method":
        return self.train(False)

    def state_dict(self) -> dict[str, Tensor]:
        """Flat {"<module>.<key>": tensor} over modules(), for safetensors."""
        state = {}
        for module_name, module in self.modules().items():
            for key, value in module.state_dict().items():
                state[f"{module_name}.{key}"] = value
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of state_dict; every key must match (strict), or FsbenchError lists the mismatch."""
        for module_name, module in self.modules().items():
            prefix = f"{module_name}."
            own = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
            expected = module.state_dict()
            missing = sorted(set(expected) - set(own))
            unexpected = sorted(set(own) - set(expected))
            mismatched = sorted(key for key in set(own) & set(expected) if own[key].shape != expected[key].shape)
            if missing or unexpected or mismatched:
                problems = [
                    f"{label}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
                    if keys
                ]
                raise FsbenchError(f"checkpoint does not fit module {module_name!r} ({'; '.join(problems)})")
            module.load_state_dict(own)
        known = tuple(f"{name}." for name in self.modules())
        stray = [key for key in state if not key.startswith(known)]
        if stray:
            raise FsbenchError(f"checkpoint holds modules this method does not have: {stray[0].split('.')[0]!r}")

    def to(self, device: torch.device | str) -> "Method":
        self.device = torch.device(device)
        for module in self.modules().values():
            module.to(self.device)
        return self
