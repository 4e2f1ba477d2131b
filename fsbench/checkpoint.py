"""Checkpoints: safetensors tensors + JSON metadata in the same file. Nothing is ever unpickled.

A downloaded checkpoint is untrusted input: safetensors holds only raw tensors and a JSON header, so
loading one cannot run code. Files in torch's pickle format are refused with a message saying so.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch
from torch import Tensor

from fsbench.errors import FsbenchError

FORMAT = "fsbench-checkpoint-1"
# A run's periodic training state (model, optimiser, step): what --resume reads.
TRAINING_STATE_FORMAT = "fsbench-training-state-1"
METADATA_KEY = "fsbench"


def save_checkpoint(path: Path, state: dict[str, Tensor], metadata: dict, format: str = FORMAT) -> None:
    """Write ``state`` and ``metadata`` (JSON-serialisable) atomically to ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {METADATA_KEY: json.dumps({"format": format, **metadata}, sort_keys=True, default=str)}
    tensors = {key: value.detach().contiguous().cpu() for key, value in state.items()}
    temporary = path.with_name(path.name + ".partial")
    save_file(tensors, str(temporary), metadata=header)
    os.replace(temporary, path)  # a crash mid-write never leaves a truncated checkpoint behind


def is_torch_pickle(path: Path) -> bool:
    """True for torch.save files (a zip archive, or a legacy pickle), False for safetensors files.

    A safetensors file starts with its JSON header's length (8 bytes, little-endian) and then "{";
    its first byte may well be 0x80 or "P", so the pickle signatures alone would misread it.
    """
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        (header_size,) = struct.unpack("<Q", head[:8])
        if header_size <= Path(path).stat().st_size - 8:
            return False
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"


def read_metadata(path: Path, format: str = FORMAT) -> dict:
    """The fsbench metadata of a checkpoint; FsbenchError if it is not one (pickles are refused)."""
    path = Path(path)
    if not path.is_file():
        raise FsbenchError(f"checkpoint not found: {path}")
    if is_torch_pickle(path):
        raise FsbenchError(
            f"{path} is a pickled torch checkpoint; fsbench never unpickles downloaded files "
            "(they can run code) - convert it to safetensors first"
        )
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise FsbenchError(f"{path} is not an fsbench checkpoint (file too short)")
        (header_size,) = struct.unpack("<Q", head)
        if header_size > 100_000_000:
            raise FsbenchError(f"{path} is not an fsbench checkpoint (not a safetensors file)")
        try:
            header = json.loads(handle.read(header_size))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise FsbenchError(f"{path} is not an fsbench checkpoint (not a safetensors file)") from None
    try:
        metadata = json.loads(header.get("__metadata__", {})[METADATA_KEY])
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        raise FsbenchError(f"{path} is a safetensors file without fsbench metadata (not an fsbench checkpoint)") from None
    if metadata.get("format") != format:
        raise FsbenchError(f"{path} has checkpoint format {metadata.get('format')!r}; expected {format!r}")
    return metadata


def load_checkpoint(path: Path, device: torch.device | str = "cpu", format: str = FORMAT) -> tuple[dict[str, Tensor], dict]:
    """(state, metadata) of an fsbench checkpoint, tensors on ``device``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    metadata = read_metadata(path, format)
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise FsbenchError(f"{path} is a damaged checkpoint ({error})") from None
    return state, metadata
