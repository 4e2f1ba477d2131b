"""Packaged models: one TorchScript file holding a method's network, its inference and what predict needs.

Format choice (measured on this 2-core CPU, smp UNet++ resnet18 at 224, batch 2, OMP 1 thread):
TorchScript trace loads in 0.24 s and runs in 1.25 s per batch; torch.export loads in 2.8 s and runs
in 1.78 s; eager runs in 1.60 s; both reproduce eager outputs exactly in fp32. TorchScript also
scripts the kNN / prototype step around the network, with its random generator, so the whole
prediction is in the file. (PyTorch marks TorchScript deprecated; the format is named in the
file's metadata, so a torch.export version can be added beside it.)

The file's ``fsbench.json`` extra holds the format, method, its config, the preprocessing profile and
input size, fp16, and where the weights came from. Exporters are registered by the methods
(methods/packaging.py) in EXPORTERS; UNPACKAGEABLE names methods that cannot be packaged and why.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from fsbench.episode import Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.registry import Registry

FORMAT = "fsbench-package-torchscript-1"
METADATA_FILE = "fsbench.json"
EXPORTERS = Registry("packaged method")
UNPACKAGEABLE: dict[str, str] = {}


def export_method(method, record: dict, preprocessing: str, img_size: int, out_path: Path, fp16: bool) -> dict:
    """Write ``method`` as a package to ``out_path``; returns its metadata."""
    name = method.registry_name
    if name in UNPACKAGEABLE:
        raise FsbenchError(f"method {name!r} cannot be packaged: {UNPACKAGEABLE[name]}")
    if fp16 and method.device.type == "cpu":
        print("fsbench: note: an fp16 package runs slowly on CPUs without native half-precision arithmetic", flush=True)
    exporter = EXPORTERS.get(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        # Traced at the size the in-process method pads img_size to, so that packaged and in-process
        # predictions see the same input (dml_knn at depth 3 takes 400 as is; padding it to 416
        # changed 0.3% of the mask pixels at 400).
        traced_size = max(method.valid_size(img_size, img_size))
        module = exporter(method, traced_size, fp16)
        metadata = {
            "format": FORMAT, "method": name, "config": asdict(method.config), "preprocessing": preprocessing,
            "img_size": img_size, "traced_size": traced_size, "fp16": fp16, "source": record,
        }
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = out_path.with_name(out_path.name + ".partial")
        torch.jit.save(module, str(temporary), _extra_files={METADATA_FILE: json.dumps(metadata, default=str)})
        temporary.replace(out_path)
    return metadata


class PackagedModel:
    """A package loaded for predict: ``predict(episode) -> Prediction`` like a method's."""

    def __init__(self, path: Path, device: torch.device):
        path = Path(path)
        if not path.is_file():
            raise FsbenchError(f"packaged model not found: {path}")
        extra = {METADATA_FILE: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            try:
                self.module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
            except RuntimeError as error:
                first = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
                raise FsbenchError(f"{path} is not a packaged fsbench model ({first})") from None
        try:
            self.metadata = json.loads(extra[METADATA_FILE])
        except json.JSONDecodeError:
            self.metadata = {}
        if self.metadata.get("format") != FORMAT:
            raise FsbenchError(f"{path} is a TorchScript file but not an fsbench package (format {self.metadata.get('format')!r})")
        self.module.eval()
        self.device = device
        self.path = path

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The traced network takes one size: inputs are padded to it (older packages: a multiple of 32)."""
        from fsbench.predict import padded_size

        traced = self.metadata.get("traced_size") or padded_size(self.metadata["img_size"])
        if height > traced or width > traced:
            raise FsbenchError(f"{self.path} was traced at {traced} px; it cannot take {height}x{width} inputs (predict with --img-size "
                               f"{self.metadata['img_size']}, or export again at the size you need)")
        return traced, traced

    @torch.no_grad()
    def predict(self, episode: Episode) -> Prediction:
        # Same seed as the in-process methods: the episode index.
        generator = torch.Generator().manual_seed(int(episode.index))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            fg_probs = self.module(episode.support_images, episode.support_masks, episode.query_images, generator)
        return Prediction.from_probabilities(fg_probs)
