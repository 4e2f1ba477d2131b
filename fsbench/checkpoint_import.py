"""Checkpoints of either kind behind one call: fsbench's own (safetensors) and other codebases'
released pickles (HSNet's best_model.pt, iFSL's Lightning .ckpt, ...), plus their conversion.

A foreign file is read by fsbench.foreign (weights_only, admitted stand-ins; nothing from the file
runs). Which method it belongs to is decided by the methods themselves: every registered method
class may define a classmethod ``from_foreign_checkpoint(foreign: ForeignFile) -> ForeignState |
None`` that recognises its authors' format from the keys, maps the keys onto its own state dict
strictly, and says which settings the file implies (e.g. the backbone). This module asks each
registered method (the registry is filled by whoever imported the methods package, e.g. the CLI).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import Tensor

from fsbench.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from fsbench.errors import FsbenchError
from fsbench.foreign import read_torch_file
from fsbench.registry import METHODS

HOOK = "from_foreign_checkpoint"


@dataclass
class ForeignState:
    """What a method's hook returns for a file it recognises.

    Attributes:
        config: settings the file implies ({"backbone": "resnet50", ...}), checked against the run's flags.
        state: the method's own state dict (keys as Method.state_dict() gives them).
        source_format: a short name of the file's format (e.g. "hsnet-dataparallel").
        details: anything else worth recording about the file (epoch, where it was saved...).
    """

    config: dict
    state: dict[str, Tensor]
    source_format: str
    details: dict = field(default_factory=dict)


@dataclass
class ImportedCheckpoint:
    """A foreign checkpoint turned into an fsbench method's state."""

    method: str
    config: dict
    state: dict[str, Tensor]
    source: dict  # {"format", "file", "sha256", **details}: recorded in results.json

    def metadata(self) -> dict:
        """fsbench checkpoint metadata: the method, its full config (weights come from the file, so
        pretrained is off) and where the weights came from."""
        config_class = METHODS.get(self.method).Config
        config = config_class().with_overrides({**self.config, "pretrained": False}, self.method)
        return {"method": self.method, "config": asdict(config), "source": self.source}


def is_pickled(path: Path) -> bool:
    """Whether ``path`` is a torch pickle (zip archive or legacy pickle) rather than safetensors."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def import_foreign_checkpoint(path: Path, method: str | None = None) -> ImportedCheckpoint:
    """Read a foreign checkpoint for ``method`` (None: whichever single method recognises it).

    One-line FsbenchError when no method recognises the file, when it belongs to another method
    than ``method``, or when several methods fit and none was named.
    """
    path = Path(path)
    foreign = read_torch_file(path)
    claims = {}
    for name in METHODS.names():
        hook = getattr(METHODS.get(name), HOOK, None)
        found = hook(foreign) if hook is not None else None
        if found is not None:
            claims[name] = found
    if not claims:
        raise FsbenchError(
            f"{path} is a pickled torch checkpoint that no fsbench method recognises (fsbench never unpickles code; "
            "it reads released HSNet / iFSL checkpoints as tensors, or its own .safetensors)"
        )
    if method is not None and method not in claims:
        found = next(iter(claims.values()))
        raise FsbenchError(
            f"{path} is a {' / '.join(claims)} checkpoint ({found.source_format}, backbone {found.config.get('backbone', '?')}), "
            f"not one of method {method!r}"
        )
    if method is None:
        if len(claims) > 1:
            raise FsbenchError(f"{path} fits methods {', '.join(claims)} (same weights); name one with --method")
        method = next(iter(claims))
    found = claims[method]
    source = {"format": found.source_format, "file": str(path), "sha256": foreign.sha256, **found.details}
    return ImportedCheckpoint(method=method, config=found.config, state=found.state, source=source)


def read_checkpoint(path: Path, method: str | None) -> tuple[dict, dict[str, Tensor]]:
    """(metadata, state) of an fsbench checkpoint or, for a pickle, of the foreign checkpoint it holds.

    Metadata has "method" and "config" either way; "source" where the weights came from a foreign file.
    """
    path = Path(path)
    if path.is_file() and is_pickled(path):
        imported = import_foreign_checkpoint(path, method)
        return imported.metadata(), imported.state
    metadata = read_metadata(path)
    state, _ = load_checkpoint(path)
    return metadata, state


def convert_checkpoint(source: Path, target: Path, method: str | None = None) -> ImportedCheckpoint:
    """Write the foreign checkpoint ``source`` as an fsbench checkpoint ``target`` (safetensors)."""
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise FsbenchError(f"checkpoint not found: {source}")
    if not is_pickled(source):
        raise FsbenchError(f"{source} is not a pickled torch checkpoint; nothing to convert")
    if target.suffix != ".safetensors":
        raise FsbenchError(f"the converted checkpoint is a safetensors file; name it *.safetensors, not {target.name}")
    if target.exists():
        raise FsbenchError(f"{target} already exists; converting never overwrites")
    imported = import_foreign_checkpoint(source, method)
    save_checkpoint(target, imported.state, imported.metadata())
    return imported


def convert_main(argv: list[str]) -> int:
    """``python main.py convert IN OUT.safetensors [--method NAME]``; returns the exit status."""
    import argparse
    import sys

    from fsbench.errors import one_line

    parser = argparse.ArgumentParser(prog="main.py convert", description="Write a released (pickled) checkpoint as an fsbench checkpoint.")
    parser.add_argument("source", type=Path, help="the foreign checkpoint (HSNet best_model.pt, iFSL .ckpt)")
    parser.add_argument("target", type=Path, help="the fsbench checkpoint to write (.safetensors)")
    parser.add_argument("--method", help="the method the file holds, where its keys fit several (asnet / asnethm)")
    args = parser.parse_args(argv)
    try:
        imported = convert_checkpoint(args.source, args.target, args.method)
    except FsbenchError as error:
        print(f"fsbench: error: {one_line(error)}", file=sys.stderr)
        return 1
    print(f"{args.target}: {imported.method} ({imported.config.get('backbone')}) from {imported.source['format']} {args.source} (sha256 {imported.source['sha256'][:12]}...)")
    return 0
