"""`coco_json`: your own data in COCO format (or image/mask pairs), in rootvisionai/dml_segmentation's
three layouts (see benchmarks/coco_json_layouts.py).

``--datapath`` is the dataset folder itself (the one holding train/ and val/ or eval/). Classes are
the categories numbered 1..C (COCO ids in increasing order, gaps closed, names kept; then LabelMe
labels by name; 0 is background, 255 ignore). Folds are over the
categories: ``--folds N`` (default 4) assigns category position p to fold p % N (or contiguous blocks
with ``--class-split contiguous``); ``--fold-classes "1,2;3,4"`` gives each fold's novel classes
explicitly. "train" = base classes on train/ images (novel pixels become background), "test" = the
fold's novel classes on val/ images. Any visible pixel of a class makes an (image, class) pair.
Queries draw a class uniformly, then one of its images (as COCO-20i): custom data is usually as
unbalanced as COCO, and mIoU weighs every class equally, so every class gets an equal share of the
episodes instead of the big classes taking most of them.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from benchmarks.base import Benchmark, BenchmarkOptions
from fsbench.coco_annotations import paint
from benchmarks.coco_json_layouts import LAYOUTS, detect_layout, mask_classes, read_mask_png, read_split
from benchmarks.files import BadFiles, check_same_size, require_tree
from benchmarks.split_lists import Pairs, pairs_fingerprint
from fsbench.errors import FsbenchError
from fsbench.registry import BENCHMARKS
from fsbench.transforms import read_image

DEFAULT_FOLDS = 4
IMAGE_SPLIT = {"train": "train", "test": "val"}  # val/ may be called eval/ (the DML repo's README)


@BENCHMARKS.register("coco_json")
class CocoJson(Benchmark):
    """A custom COCO-format dataset with folds over its categories."""

    num_folds = DEFAULT_FOLDS
    query_draw = "class"

    def __init__(self, datapath: Path, fold: int, options: BenchmarkOptions | None = None):
        options = options or BenchmarkOptions()
        if options.all_classes:
            # Deployment: train on every category; "test" then means the val/ images of those same
            # classes (a check of the trained model, not a few-shot evaluation).
            self.num_folds = 1
        elif options.fold_classes:
            self.num_folds = len(options.fold_classes)
        elif options.folds is not None:
            if options.folds < 1:
                raise FsbenchError(f"--folds must be at least 1, got {options.folds}")
            self.num_folds = options.folds
        super().__init__(datapath, fold, options)
        self.root = require_tree(self.datapath, "custom dataset folder (holding train/ and val/)")
        layout = self.options.layout if self.options.layout != "auto" else detect_layout(self.root)
        if layout not in LAYOUTS:
            raise FsbenchError(f"unknown --layout {layout!r}; available: auto, {', '.join(LAYOUTS)}")
        self.layout = layout
        bad = BadFiles(self.options.skip_bad)
        self.splits = {split: read_split(self.root, folder, layout, bad) for split, folder in IMAGE_SPLIT.items()}
        bad.report("custom images")
        self.skipped = len(bad.skipped)
        self._class_names = self._categories()
        self._novel = set(self._class_names) if self.options.all_classes else self._novel_classes()
        # The classes training never sees (none when training on every category).
        self._hidden_tensor = torch.tensor([] if self.options.all_classes else sorted(self._novel), dtype=torch.int64)
        self._pairs = {split: self._split_pairs(split) for split in IMAGE_SPLIT}

    def _categories(self) -> dict[int, str]:
        """Number the categories 1..C (by sort key: COCO ids in order, then LabelMe labels by name)
        and turn every record's class names into those ids."""
        merged: dict[str, tuple] = {}
        for split_index in self.splits.values():
            for name, key in split_index.categories.items():
                merged[name] = min(merged.get(name, key), key)
        self._class_of = {name: number + 1 for number, name in enumerate(sorted(merged, key=lambda name: (merged[name], name)))}
        for split_index in self.splits.values():
            for record in split_index.records.values():
                record.unions = [(self._class_of[name], rle) for name, rle in record.unions]
                record.pixels = {self._class_of[name]: count for name, count in record.pixels.items()}
        return {number: name for name, number in self._class_of.items()}

    def _novel_classes(self) -> set[int]:
        ids = sorted(self._class_names)
        if self.options.fold_classes:
            novel = set(self.options.fold_classes[self.fold])
            unknown = sorted(novel - set(ids))
            if unknown:
                raise FsbenchError(f"--fold-classes: class {unknown[0]} of fold {self.fold} is not a category of {self.root}")
        elif self.options.class_split == "contiguous":
            size = -(-len(ids) // self.num_folds)
            novel = set(ids[size * self.fold : size * (self.fold + 1)])
        elif self.options.class_split == "interleaved":
            novel = {class_id for position, class_id in enumerate(ids) if position % self.num_folds == self.fold}
        else:
            raise FsbenchError(f"unknown --class-split {self.options.class_split!r}; available: interleaved, contiguous")
        if not novel:
            raise FsbenchError(f"fold {self.fold} of {self.root} has no novel classes ({len(ids)} categories, {self.num_folds} folds)")
        return novel

    def _split_pairs(self, split: str) -> Pairs:
        allowed = set(self.classes(split))
        records = self.splits[split].records
        return [(key, class_id) for key in sorted(records) for class_id in sorted(records[key].pixels) if class_id in allowed]

    # --- Benchmark interface ------------------------------------------------------------------------
    @property
    def class_names(self) -> dict[int, str]:
        return self._class_names

    def classes(self, split: str) -> list[int]:
        if split == "test":
            return sorted(self._novel)
        if self.options.all_classes:
            return sorted(self._class_names)
        return [class_id for class_id in sorted(self._class_names) if class_id not in self._novel]

    def pairs(self, split: str) -> Pairs:
        return self._pairs[split]

    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        record = self.splits[split].records[image_id]
        image = read_image(record.image_path)
        if record.mask_path is not None:
            stored = read_mask_png(record.mask_path)
            label = torch.from_numpy(mask_classes(stored, self.splits[split].mask_values, self._class_of, record.mask_path))
            mask_name = record.mask_path
        else:
            label = torch.from_numpy(paint(record.unions, record.height, record.width))
            mask_name = f"the annotations of {record.image_path}"
        check_same_size(image, label, record.image_path, mask_name)
        if split == "train":
            label[torch.isin(label, self._hidden_tensor)] = 0  # novel classes stay unseen in training
        return image, label

    def identity(self) -> str:
        return f"{self.registry_name}:{self.root.resolve()}"

    @property
    def tests_seen_classes(self) -> bool:
        """--all-classes: the test split's classes are the training classes, on purpose."""
        return bool(self.options.all_classes)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "dataset": str(self.root),
            "layout": self.layout,
            "folds": self.num_folds,
            "novel_classes": [] if self.options.all_classes else sorted(self._novel),
            "all_classes": bool(self.options.all_classes),
            "class_split": "all classes (--all-classes)" if self.options.all_classes else (
                "explicit --fold-classes" if self.options.fold_classes else self.options.class_split),
            "standard_split": False,
            "list_fingerprint": pairs_fingerprint(self._pairs),
            "pairs": {split: len(pairs) for split, pairs in self._pairs.items()},
            "skipped_bad_files": self.skipped,
        }
