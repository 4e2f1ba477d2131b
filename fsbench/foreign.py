"""Reading files that other codebases wrote (released checkpoints, HSNet's COCO lists) without running them.

Those files are pickles, and unpickling an untrusted pickle can run any code. So:
- torch checkpoints (HSNet's ``best_model.pt``, iFSL's Lightning ``.ckpt``, PFENet's ``.pth``, the DML
  repo's ``ckpt.pth``) are read with ``torch.load(weights_only=True)``, which builds only tensors and
  plain containers. The few classes these formats name are admitted as inert stand-ins (``StandIn``:
  no code of theirs exists here, so none can run), and only when listed in ``ADMITTED_GLOBALS``; a
  file naming anything else is refused in one line that names the global.
- plain data pickles (HSNet's ``data/splits/coco/*/fold*.pkl``) are read by an unpickler that admits
  no global at all: dicts, lists, tuples, strings and numbers only.
Mapping a foreign state dict onto an fsbench method (prefixes, renamed keys) is the method's job;
``strict_match`` is the shared check that no key is silently dropped.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fsbench.errors import FsbenchError


class StandIn:
    """An inert placeholder for a class a foreign checkpoint names (e.g. as a dictionary key).

    It is never given behaviour: a stand-in built by the unpickler holds at most the plain state
    the file stored for it, in ``state``.
    """

    qualified_name = "StandIn"

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.qualified_name}>"


def _stand_in(qualified_name: str) -> type:
    return type(qualified_name.rsplit(".", 1)[-1], (StandIn,), {"qualified_name": qualified_name})


# Globals that released checkpoints name, with why each is harmless to admit as a stand-in.
ADMITTED_GLOBALS: dict[str, str] = {
    # PyTorch Lightning 1.3 (iFSL) keys its "callbacks" entry by the callback's class.
    "common.callbacks.CustomCheckpoint": "iFSL's checkpoint callback, the key of a Lightning 'callbacks' entry",
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": "Lightning's checkpoint callback, likewise",
}
_STAND_INS = {name: _stand_in(name) for name in ADMITTED_GLOBALS}


@dataclass
class ForeignFile:
    """A foreign torch file, read safely.

    Attributes:
        path: where it was read from.
        content: what the file holds: tensors, plain containers, numbers, strings and StandIns.
        sha256: hex digest of the file's bytes (recorded in results.json).
    """

    path: Path
    content: Any
    sha256: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_GLOBAL_PATTERN = re.compile(r"GLOBAL ([\w.]+)")


def read_torch_file(path: Path) -> ForeignFile:
    """Load a torch pickle (zip or legacy format) with weights_only=True and the admitted stand-ins.

    Raises a one-line FsbenchError for a missing file, a file that is not a torch checkpoint, or one
    that names a global outside ADMITTED_GLOBALS (named in the message); nothing from the file runs.
    """
    path = Path(path)
    if not path.is_file():
        raise FsbenchError(f"checkpoint not found: {path}")
    stand_ins = [(stand_in, name) for name, stand_in in _STAND_INS.items()]
    try:
        with torch.serialization.safe_globals(stand_ins):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = _GLOBAL_PATTERN.search(str(error))
        named = f"names {found.group(1)}, which is" if found else "holds an object"
        raise FsbenchError(
            f"{path} {named} not a tensor or plain data and not among the classes fsbench admits "
            f"({', '.join(ADMITTED_GLOBALS)}); refused, nothing from the file was run"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FsbenchError(f"{path} is not a readable torch checkpoint ({first_line})") from None
    return ForeignFile(path=path, content=content, sha256=file_sha256(path))


class _PlainDataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # every global is refused: plain data needs none
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name}")


def read_plain_pickle(path: Path) -> Any:
    """A pickle of plain data (dicts, lists, tuples, sets, strings, bytes, numbers, None).

    Any class or function reference in the file is refused with a one-line FsbenchError naming it;
    the unpickler never imports anything, so nothing from the file runs.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FsbenchError(f"file is missing: {path}") from None
    except OSError as error:
        raise FsbenchError(f"cannot read {path}: {error.strerror or error}") from None
    try:
        return _PlainDataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as error:
        found = _GLOBAL_PATTERN.search(str(error))
        if found:
            raise FsbenchError(f"{path} names {found.group(1)}; only plain data (dicts, lists, strings, numbers) is read from pickles, refused") from None
        raise FsbenchError(f"{path} is not a readable pickle ({error})") from None
    except (EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, UnicodeDecodeError) as error:
        raise FsbenchError(f"{path} is not a readable pickle ({type(error).__name__}: {error})") from None


def find_state_dict(content: Any, path: Path, keys: tuple[str, ...] = ("state_dict", "model_state_dict", "model")) -> dict[str, Tensor]:
    """The {name: tensor} mapping in a foreign file: the content itself or its first entry in ``keys``."""
    candidates = [content] + [content[key] for key in keys if isinstance(content, dict) and key in content]
    for candidate in candidates:
        if isinstance(candidate, dict) and candidate and all(isinstance(value, Tensor) for value in candidate.values()):
            if all(isinstance(key, str) for key in candidate):
                return dict(candidate)
    entries = ", ".join(sorted(map(str, content))[:6]) if isinstance(content, dict) else type(content).__name__
    raise FsbenchError(f"{path} holds no state dict of tensors (top-level entries: {entries})")


def strip_prefix(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """``state`` with ``prefix`` removed from every key that has it (e.g. DataParallel's "module.")."""
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}


def strict_match(state: dict[str, Tensor], expected: dict[str, Tensor], path: Path, what: str) -> None:
    """Refuse in one line unless ``state`` has exactly ``expected``'s keys with the same shapes."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(key for key in set(state) & set(expected) if tuple(state[key].shape) != tuple(expected[key].shape))
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
        raise FsbenchError(f"{path} does not fit {what}: {'; '.join(parts)}")
