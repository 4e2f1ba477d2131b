"""`shapes`: the embedded synthetic benchmark - 20 classes in 4 folds of 5, like Pascal-5i, no download.

Written to <datapath>/shapes on first use, deterministically from a seed, in seconds: PNG images and
label maps (0 background, 1..20 classes, 255 boundary band) plus an index of (image, class) pairs.
It goes through exactly the same Benchmark -> EpisodeSampler -> Method -> metrics path as Pascal.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from benchmarks import shapes_render as render
from benchmarks.base import Benchmark, BenchmarkOptions
from fsbench.errors import FsbenchError
from fsbench.registry import BENCHMARKS
from fsbench.transforms import read_image, read_label

GENERATOR_VERSION = 1
GENERATOR_SEED = 2024
IMAGES_PER_SPLIT = {"train": 1200, "val": 600}
# A class counts as present (the image may be its query or support) when it keeps this many visible
# pixels: Pascal's 2x32x32 at 400 px, scaled to 128 px and rounded.
MIN_CLASS_PIXELS = 200
# Fold split -> image split on disk.
IMAGE_SPLIT = {"train": "train", "test": "val"}


def generate(root: Path, seed: int = GENERATOR_SEED, images_per_split: dict[str, int] | None = None) -> None:
    """Write the dataset to ``root`` (atomically: a half-written tree is never left behind)."""
    images_per_split = images_per_split or IMAGES_PER_SPLIT
    root = Path(root)
    staging = root.with_name(f"{root.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    pairs: dict[str, list[tuple[str, int]]] = {}
    for split_code, (split, count) in enumerate(sorted(images_per_split.items())):
        (staging / split).mkdir(parents=True)
        pairs[split] = []
        for index in range(count):
            rng = np.random.default_rng([seed, split_code, index])
            image, label = render.render(rng)
            image_id = f"{split}/{index:05d}"
            Image.fromarray(image).save(staging / f"{image_id}.png", compress_level=1)
            Image.fromarray(label).save(staging / f"{image_id}_label.png", compress_level=1)
            ids, counts = np.unique(label, return_counts=True)
            for class_id, pixels in zip(ids.tolist(), counts.tolist()):
                if 0 < class_id < render.IGNORE and pixels >= MIN_CLASS_PIXELS:
                    pairs[split].append((image_id, class_id))
    index = {
        "version": GENERATOR_VERSION,
        "seed": seed,
        "images_per_split": images_per_split,
        "pairs": pairs,
    }
    (staging / "index.json").write_text(json.dumps(index))
    if root.exists():
        shutil.rmtree(root)
    os.replace(staging, root)


def load_index(root: Path, seed: int = GENERATOR_SEED) -> dict:
    """The dataset index, generating the dataset first when it is absent or from another generator."""
    index_path = Path(root) / "index.json"
    expected = (GENERATOR_VERSION, seed)
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
            if (index.get("version"), index.get("seed")) == expected:
                return index
        except json.JSONDecodeError:
            pass  # a damaged index is regenerated below, like a missing one
    print(f"Generating the synthetic shapes benchmark in {root} (seconds, once) ...", flush=True)
    generate(Path(root), seed)
    return json.loads(index_path.read_text())


@BENCHMARKS.register("shapes")
class Shapes(Benchmark):
    """Synthetic textured shapes; fold f's novel classes are ids 5f+1..5f+5 (contiguous, as Pascal-5i)."""

    num_folds = render.NUM_FOLDS
    default_img_size = render.IMAGE_SIZE
    default_episodes = 1000
    quick = True
    supports_gfss = True

    def __init__(self, datapath: Path, fold: int, options: BenchmarkOptions | None = None):
        super().__init__(datapath, fold, options)
        self.root = self.datapath / "shapes"
        try:
            index = load_index(self.root)
        except OSError as error:
            raise FsbenchError(f"cannot write the shapes benchmark to {self.root}: {error}") from None
        self._pairs = {split: [(image_id, int(class_id)) for image_id, class_id in items] for split, items in index["pairs"].items()}
        self._novel = set(self.classes("test"))

    @property
    def class_names(self) -> dict[int, str]:
        return {class_id: render.class_name(class_id) for class_id in range(1, render.NUM_FOLDS * render.CLASSES_PER_FOLD + 1)}

    def classes(self, split: str) -> list[int]:
        novel = [render.class_of(self.fold, shape) for shape in range(render.CLASSES_PER_FOLD)]
        if split == "test":
            return novel
        return [class_id for class_id in self.class_names if class_id not in novel]

    def pairs(self, split: str) -> list[tuple[str, int]]:
        allowed = set(self.classes(split))
        return [(image_id, class_id) for image_id, class_id in self._pairs[IMAGE_SPLIT[split]] if class_id in allowed]

    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        image = read_image(self.root / f"{image_id}.png")
        label = read_label(self.root / f"{image_id}_label.png")
        if split == "train":
            label[torch.isin(label, torch.tensor(sorted(self._novel)))] = 0  # novel classes stay unseen
        return image, label

    def labelled_pairs(self, split: str) -> list[tuple[str, int]]:
        return sorted(self._pairs[IMAGE_SPLIT[split]])

    def load_labelled(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        return read_image(self.root / f"{image_id}.png"), read_label(self.root / f"{image_id}_label.png")

    def describe(self) -> dict:
        return {**super().describe(), "generator_version": GENERATOR_VERSION, "generator_seed": GENERATOR_SEED}
