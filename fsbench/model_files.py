"""A ready method from a weights file: an fsbench checkpoint (.safetensors) or another codebase's.

Foreign formats are read by readers that methods register in FOREIGN_CHECKPOINTS (e.g. the DML
repo's ``ckpt.pth`` + ``proxies.pth``, by methods/dml_original.py); the file itself is read once,
safely, by fsbench.foreign.read_torch_file. A reader returns ForeignWeights (which method, the
config settings the file implies, a state dict in fsbench's keys) or None when the file is not its
format. The core imports no method: readers and methods come from the registries.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from fsbench.checkpoint import is_torch_pickle, load_checkpoint
from fsbench.errors import FsbenchError
from fsbench.foreign import read_torch_file
from fsbench.registry import METHODS, Registry

FOREIGN_CHECKPOINTS = Registry("foreign checkpoint format")


@dataclass
class ForeignWeights:
    """What a foreign reader found: the method, its config settings, a strict state dict."""

    method: str
    config: dict
    state: dict[str, Tensor]
    description: str
    notes: list[str] = field(default_factory=list)
    img_size: int | None = None  # the input size the weights were trained at, when the files say


def read_weights(path: Path) -> tuple[str, dict, dict[str, Tensor], dict]:
    """(method name, config settings, state dict, record) of an fsbench or foreign weights file."""
    path = Path(path)
    if not path.is_file():
        raise FsbenchError(f"checkpoint not found: {path}")
    if not is_torch_pickle(path):
        state, metadata = load_checkpoint(path)
        record = {"checkpoint": str(path), "format": "fsbench", "img_size": metadata.get("img_size"), "metadata": metadata}
        return metadata.get("method"), dict(metadata.get("config", {})), state, record
    foreign = read_torch_file(path)
    for name in FOREIGN_CHECKPOINTS.names():
        found = FOREIGN_CHECKPOINTS.get(name)(path, foreign.content)
        if found is not None:
            for note in found.notes:
                print(f"fsbench: {note}", flush=True)
            record = {"checkpoint": str(path), "format": name, "sha256": foreign.sha256, "description": found.description, "img_size": found.img_size}
            return found.method, found.config, found.state, record
    known = ", ".join(FOREIGN_CHECKPOINTS.names()) or "none"
    raise FsbenchError(f"{path} is a torch pickle in no format fsbench reads (known foreign formats: {known})")


def run_image_size(path: Path) -> int | None:
    """The img_size of the run that wrote ``path``, from config.json beside it (fsbench run folders)."""
    config_path = Path(path).parent / "config.json"
    if not config_path.is_file():
        return None
    try:
        size = json.loads(config_path.read_text()).get("img_size")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return size if isinstance(size, int) else None


def load_method(path: Path, method_name: str | None, device: torch.device, overrides: dict | None = None):
    """(method ready to predict, record) from ``path``; ``overrides`` are config settings (None = keep).

    The method is the file's; naming another with ``method_name`` is refused.
    """
    found_method, settings, state, record = read_weights(path)
    if method_name is not None and found_method != method_name:
        raise FsbenchError(f"checkpoint {path} was made for method {found_method!r}, not {method_name!r}")
    method_class = METHODS.get(found_method)
    config = method_class.Config()
    known = set(vars(config))
    # Weights come from the file: ImageNet weights need not (and must not) be loaded first.
    config = config.with_overrides({**{key: value for key, value in settings.items() if key in known}, "pretrained": False}, found_method)
    config = config.with_overrides(overrides or {}, found_method)
    method = method_class(config, device)
    method.load_state_dict({key: value.to(device) for key, value in state.items()})
    method.eval()
    record = {**record, "method": found_method, "img_size": record.get("img_size") or run_image_size(path)}
    return method, record
