"""``main.py convert IN OUT.safetensors``: a foreign checkpoint (any format registered in
fsbench.model_files.FOREIGN_CHECKPOINTS) written once as an fsbench checkpoint, which later runs
read with no pickle involved. The metadata keeps where the weights came from (``converted_from``:
format, file, sha256, description), and a run that loads it records that in results.json."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from fsbench.checkpoint import is_torch_pickle, save_checkpoint
from fsbench.errors import FsbenchError
from fsbench.model_files import read_weights
from fsbench.registry import METHODS


def convert_checkpoint(source: Path, target: Path, method_name: str | None = None) -> dict:
    """Write the foreign checkpoint ``source`` as the fsbench checkpoint ``target``; returns its metadata.

    ``method_name`` picks among methods the file fits alike (asnet / asnethm) and refuses a file of
    another method. One-line FsbenchError for a missing, unknown or non-pickle source, a target that
    exists (never overwritten) or is not named *.safetensors.
    """
    source, target = Path(source), Path(target)
    if not source.is_file():
        raise FsbenchError(f"checkpoint not found: {source}")
    if not is_torch_pickle(source):
        raise FsbenchError(f"{source} is not a pickled torch checkpoint; nothing to convert (fsbench reads it as it is)")
    if target.suffix != ".safetensors":
        raise FsbenchError(f"the converted checkpoint is a safetensors file; name it *.safetensors, not {target.name}")
    if target.exists():
        raise FsbenchError(f"{target} already exists; converting never overwrites")
    found_method, settings, state, record = read_weights(source, method_name)
    if method_name is not None and found_method != method_name:
        raise FsbenchError(f"checkpoint {source} was made for method {found_method!r}, not {method_name!r}")
    config = METHODS.get(found_method).Config()
    known = set(vars(config))
    # The weights are the file's: the full config with ImageNet weights off, as a run that loads it builds it.
    config = config.with_overrides({**{key: value for key, value in settings.items() if key in known}, "pretrained": False}, found_method)
    metadata = {
        "method": found_method,
        "config": asdict(config),
        "img_size": record.get("img_size"),
        "converted_from": {key: record.get(key) for key in ("format", "checkpoint", "sha256", "description")},
    }
    save_checkpoint(target, state, metadata)
    return metadata
