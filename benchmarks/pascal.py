"""`pascal`: Pascal-5i (Shaban et al. 2017) from VOC2012 JPEGImages + SegmentationClassAug.

Fold f's novel classes are VOC labels 5f+1..5f+5; label 255 (object boundaries) is ignored. The
(image, class) lists are HSNet's when they are present (``<datapath>/splits/pascal``, or ``--split-dir``),
otherwise they are built from the masks (PFENet filter, >= 2x32x32 pixels), cached under
``<datapath>/cache/pascal``, and results.json says the split is not the standard one. Training
images are SBD-augmented train_aug: every mask of SegmentationClassAug that is not in VOC2012's
ImageSets/Segmentation/val.txt.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.base import Benchmark, BenchmarkOptions
from benchmarks.cache import cache_folder, cached_json, file_signature
from benchmarks.files import BadFiles, image_size, read_class_png, read_pair, require_tree
from benchmarks.split_lists import (
    MIN_OBJECT_PIXELS,
    Pairs,
    find_split_folder,
    pairs_fingerprint,
    pairs_from_pixel_counts,
    read_pair_list,
)
from fsbench.errors import FsbenchError
from fsbench.registry import BENCHMARKS
from fsbench.replay import ReplayLists

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CLASSES_PER_FOLD = 5
CACHE_VERSION = 1
IGNORE = 255


@BENCHMARKS.register("pascal")
class Pascal(Benchmark):
    """Pascal-5i: 4 contiguous folds of 5 VOC classes."""

    num_folds = 4
    default_img_size = 400
    default_episodes = 1000
    # PFENet evaluates Pascal-5i on 5000 episodes at 473 x 473.
    protocol_defaults = {"pfenet": {"episodes": 5000, "img_size": 473}}

    def __init__(self, datapath: Path, fold: int, options: BenchmarkOptions | None = None):
        super().__init__(datapath, fold, options)
        self.root = require_tree(self.datapath / "VOC2012", "Pascal VOC2012 tree (VOC2012/JPEGImages, VOC2012/SegmentationClassAug)")
        self.image_folder = require_tree(self.root / "JPEGImages", "VOC2012 images folder")
        self.mask_folder = require_tree(self.root / "SegmentationClassAug", "VOC2012 SegmentationClassAug masks folder")
        self._novel = set(range(CLASSES_PER_FOLD * fold + 1, CLASSES_PER_FOLD * (fold + 1) + 1))
        self._novel_tensor = torch.tensor(sorted(self._novel))
        self.skipped = 0
        self._pairs = self._read_or_build_lists()

    # --- lists -------------------------------------------------------------------------------------
    def _read_or_build_lists(self) -> dict[str, Pairs]:
        required = [f"trn/fold{k}.txt" for k in range(self.num_folds)] + [f"val/fold{self.fold}.txt"]
        folder = find_split_folder(self.options.split_dir, self.datapath, "pascal", required)
        self.standard_lists = folder is not None
        if folder is not None:
            self.list_source = f"HSNet lists in {folder}"
            train = [pair for k in range(self.num_folds) if k != self.fold for pair in read_pair_list(folder / f"trn/fold{k}.txt")]
            test = read_pair_list(folder / f"val/fold{self.fold}.txt")
            self._check_list_classes(train, "train", folder / "trn")
            self._check_list_classes(test, "test", folder / f"val/fold{self.fold}.txt")
            return {"train": sorted(set(train)), "test": test}
        self.list_source = f"built from masks (classes >= {MIN_OBJECT_PIXELS} px; no lists in {self.datapath / 'splits' / 'pascal'})"
        counts = self._pixel_counts()
        return {
            split: pairs_from_pixel_counts(counts[image_split], set(self.classes(split)))
            for split, image_split in (("train", "train"), ("test", "val"))
        }

    def _check_list_classes(self, pairs: Pairs, split: str, source: Path) -> None:
        allowed = set(self.classes(split))
        for image_id, class_id in pairs:
            if class_id not in allowed:
                raise FsbenchError(f"{source}: pair {image_id}__{class_id} has a class outside fold {self.fold}'s {split} classes")

    def _pixel_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """{"train"|"val": {image id: {class: pixels}}} for every mask, cached on the mask files."""
        val_list = require_tree(self.root / "ImageSets" / "Segmentation" / "val.txt", "VOC2012 val image list")
        val_ids = [line.strip() for line in val_list.read_text().splitlines() if line.strip()]
        mask_paths = sorted(self.mask_folder.glob("*.png"))
        key = {"version": CACHE_VERSION, "masks": len(mask_paths), "signature": file_signature([val_list, *mask_paths])}

        def build() -> dict:
            print(f"Indexing {len(mask_paths)} Pascal masks in {self.mask_folder} (once; cached) ...", flush=True)
            counts, problems = {}, {}
            for mask_path in mask_paths:
                try:
                    counts[mask_path.stem] = self._count_classes(mask_path)
                except FsbenchError as error:
                    problems[mask_path.stem] = str(error)
            return {"val_ids": val_ids, "counts": counts, "problems": problems}

        cached = cached_json(cache_folder(self.datapath, "pascal") / "pixel_counts.json", key, build)
        bad = BadFiles(self.options.skip_bad)
        for problem in cached["problems"].values():
            bad.admit(lambda problem=problem: _raise(problem))
        val_set = set(cached["val_ids"])
        missing = [image_id for image_id in cached["val_ids"] if image_id not in cached["counts"] and image_id not in cached["problems"]]
        for image_id in missing:
            bad.admit(lambda image_id=image_id: _raise(f"mask file is missing: {self.mask_folder / (image_id + '.png')} (listed in {val_list})"))
        bad.report("Pascal image/mask pairs")
        self.skipped = len(bad.skipped)
        by_split: dict[str, dict] = {"train": {}, "val": {}}
        for image_id, classes in cached["counts"].items():
            by_split["val" if image_id in val_set else "train"][image_id] = classes
        return by_split

    def _count_classes(self, mask_path: Path) -> dict[str, int]:
        label = read_class_png(mask_path)
        image_path = self.image_folder / f"{mask_path.stem}.jpg"
        if image_size(image_path) != label.shape:
            raise FsbenchError(
                f"mask {mask_path} is {label.shape[0]}x{label.shape[1]} but its image {image_path} is "
                f"{image_size(image_path)[0]}x{image_size(image_path)[1]} (height x width)"
            )
        pixels = np.bincount(label.ravel(), minlength=IGNORE + 1)
        return {str(class_id): int(pixels[class_id]) for class_id in range(1, len(VOC_CLASSES) + 1) if pixels[class_id]}

    # --- Benchmark interface ------------------------------------------------------------------------
    @property
    def class_names(self) -> dict[int, str]:
        return {class_id: name for class_id, name in enumerate(VOC_CLASSES, start=1)}

    def classes(self, split: str) -> list[int]:
        if split == "test":
            return sorted(self._novel)
        return [class_id for class_id in self.class_names if class_id not in self._novel]

    def pairs(self, split: str) -> Pairs:
        return self._pairs[split]

    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        image, label = read_pair(self.image_folder / f"{image_id}.jpg", self.mask_folder / f"{image_id}.png")
        if split == "train":
            label[torch.isin(label, self._novel_tensor)] = 0  # novel classes stay unseen in training
        return image, label

    def replay_lists(self, split: str) -> ReplayLists:
        """HSNet's and iFSL's view of the test list: queries in file order, per-class images in
        file order, classes ascending (as their class_ids lists are)."""
        if not self.standard_lists:
            raise FsbenchError(f"--replay needs HSNet's Pascal lists (splits/pascal/{{trn,val}}/fold<k>.txt under the data folder or --split-dir); these lists were {self.list_source}")
        pairs = self._pairs[split]
        return ReplayLists(
            source=self.list_source,
            query_pairs=tuple(pairs),
            images_by_class={class_id: tuple(self.images_of_class(split, class_id)) for class_id in self.classes(split)},
            class_order=tuple(self.classes(split)),
        )

    def describe(self) -> dict:
        return {
            **super().describe(),
            "lists": self.list_source,
            "list_fingerprint": pairs_fingerprint(self._pairs),
            "pairs": {split: len(pairs) for split, pairs in self._pairs.items()},
            # Pascal-5i's fold classes are fixed; the split is the standard one only with its lists.
            "standard_split": self.standard_lists,
            "skipped_bad_files": self.skipped,
        }


def _raise(message: str) -> None:
    raise FsbenchError(message)
