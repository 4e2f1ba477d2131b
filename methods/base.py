"""The Method interface: every few-shot segmentation method in fsbench implements this."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import torch
from torch import Tensor, nn

from fsbench.engine.plan import TrainingContext, TrainingStage
from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError


def round_up(size: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= size (e.g. 400 -> 416 for 32)."""
    return -(-size // multiple) * multiple


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

    def with_settings(self, settings: list[str], method_name: str) -> "MethodConfig":
        """A copy with ``--set KEY=VALUE`` settings applied, each VALUE read as the type of the
        setting's current value (bool: true/false; tuple: comma-separated numbers)."""
        current = {item.name: getattr(self, item.name) for item in fields(self)}
        changes = {}
        for setting in settings:
            key, separator, text = setting.partition("=")
            key = key.strip().replace("-", "_")
            if not separator or key not in current:
                known = ", ".join(sorted(current))
                raise FsbenchError(f"--set {setting!r}: expected KEY=VALUE with KEY one of method {method_name!r}'s settings ({known})")
            changes[key] = _parse_setting(text.strip(), current[key], f"--set {setting!r}")
        return replace(self, **changes)


def _parse_setting(text: str, current, where: str):
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            kind = type(current[0]) if current else int
            return tuple(kind(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise FsbenchError(f"{where}: {text!r} is not a {type(current).__name__} like the setting's default {current!r}") from None
    return text


class Method(ABC):
    """A few-shot segmentation method: holds its nn.Modules, predicts episodes, declares its training.

    Subclasses set ``Config`` and implement ``modules``, ``predict`` and ``training_stages`` (what to
    optimise, with which loss, optimiser and schedule, as data); fsbench.engine runs the loops.
    ``valid_size`` states which input sizes the network takes; the engine pads to it and crops back.
    """

    Config: ClassVar[type[MethodConfig]] = MethodConfig
    registry_name: str = "method"
    # False when training never sees episodes (plain base-class image batches), so way, shot and
    # task do not change the trained weights and one checkpoint serves every setting.
    trains_on_episodes: ClassVar[bool] = True
    # True when prediction splits into encode(images) -> per-image features [B, ...] (a tensor or a
    # list of per-level tensors) and predict_encoded(episode, support_features [N*K, ...],
    # query_features [Q, ...]): the evaluator then encodes the images of several episodes in one
    # forward pass and never encodes an image twice (fsbench.engine.batched).
    encodes_images: ClassVar[bool] = False
    # True when the method can learn from class tags only (--weak): its training_stages(context)
    # with context.weak gives a loss on the query's class presence (iFSL's classification objective),
    # and it predicts from supports whose masks carry no pixel labels.
    supports_weak: ClassVar[bool] = False
    # --amp auto picks bf16 for the quick profile only for methods measured faster in it and as
    # accurate (dml_knn: 2.1x per demo step on an AVX512-BF16 CPU); the rest stay float32 unless asked.
    auto_bf16: ClassVar[bool] = False
    # False where PyTorch's CPU bf16 kernels fail for the method (asnet / asnethm: the backward of
    # torch 2.14's CPU bf16 path aborts with a double free), so --amp bf16 on a CPU is refused.
    cpu_bf16: ClassVar[bool] = True

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

    def predict_by_encoding(self, episode: Episode) -> Prediction:
        """predict() of a method with encodes_images: encode supports and queries, then predict_encoded."""
        support_features = self.encode(episode.support_images.flatten(0, 1))
        return self.predict_encoded(episode, support_features, self.encode(episode.query_images))

    @abstractmethod
    def training_stages(self, context: TrainingContext) -> list[TrainingStage]:
        """The method's training, as stages the engine runs (fsbench.engine.plan); ``context.steps``
        is the whole budget in optimiser updates."""

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest input size >= (height, width) the network takes (default: any size)."""
        return height, width

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
