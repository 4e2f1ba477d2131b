"""`cityscapes`: Cityscapes (Cordts et al., CVPR 2016) with vocabulary configurations.

Layout (what detectron2 and mmseg read): ``cityscapes/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png``
and ``cityscapes/gtFine/{train,val}/<city>/*_gtFine_labelIds.png`` (2975 train / 500 val images in the
full dataset). Label ids map to the 19 evaluated classes by the official table
(benchmarks/cityscapes_labels.py); class ids are the label ids themselves, void is 255.

``--vocab-config 000..008`` chooses the out-of-vocabulary classes (none, person, person + rider, ...,
all eight thing classes). Folds: there is one (fold 0); the configuration's out-classes are its novel
classes (split "test", on val images) and the other evaluated classes its base classes (split
"train", on train images), so ordinary FS-S episodes test the out-classes and configuration 000 has
none to test. In training labels the out-classes become void (255, ``--out-as void``, the default) or
background (0, ``--out-as background``). Cityscapes has no background class: 0 never occurs in a
label map unless out-classes were turned into it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.base import Benchmark, BenchmarkOptions
from benchmarks.cache import cache_folder, cached_json, file_signature
from benchmarks.cityscapes_labels import EVALUATED_CLASSES, IGNORE, class_id_lookup, out_of_vocabulary
from benchmarks.files import BadFiles, read_class_png, read_pair, require_tree
from benchmarks.split_lists import MIN_OBJECT_PIXELS, Pairs, pairs_fingerprint
from fsbench.errors import FsbenchError
from fsbench.registry import BENCHMARKS

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
IMAGE_SPLIT = {"train": "train", "test": "val"}
OUT_AS = ("void", "background")
CACHE_VERSION = 1
FULL_DATASET_IMAGES = {"train": 2975, "val": 500}


@BENCHMARKS.register("cityscapes")
class Cityscapes(Benchmark):
    """The 19 evaluated Cityscapes classes; base = in-vocabulary, novel = out-of-vocabulary classes."""

    num_folds = 1
    default_img_size = 512
    default_episodes = 1000
    supports_gfss = True
    background_class = False

    def __init__(self, datapath: Path, fold: int, options: BenchmarkOptions | None = None):
        super().__init__(datapath, fold, options)
        self.configuration = self.options.vocab_config
        self._novel = set(out_of_vocabulary(self.configuration))
        if self.options.out_as not in OUT_AS:
            raise FsbenchError(f"unknown --out-as {self.options.out_as!r}; available: {', '.join(OUT_AS)}")
        self.root = require_tree(self.datapath / "cityscapes", "Cityscapes tree (cityscapes/leftImg8bit, cityscapes/gtFine)")
        self.lookup = class_id_lookup()
        self._novel_tensor = torch.tensor(sorted(self._novel), dtype=torch.int64)
        self.skipped = 0
        counts = self._pixel_counts()
        self.image_counts = {split: len(images) for split, images in counts.items()}
        # Every evaluated class on each image split, at Pascal's threshold (>= 2x32x32 pixels).
        self._labelled = {
            split: [
                (image_id, int(class_id))
                for image_id, classes in sorted(images.items())
                for class_id, pixels in sorted(classes.items(), key=lambda item: int(item[0]))
                if pixels >= MIN_OBJECT_PIXELS
            ]
            for split, images in counts.items()
        }

    # --- index ----------------------------------------------------------------------------------
    def _label_paths(self, image_split: str) -> list[tuple[str, Path, Path]]:
        """(image id, image path, label path) of every image of an image split, sorted by id."""
        image_root = require_tree(self.root / "leftImg8bit" / image_split, f"Cityscapes {image_split} images folder")
        label_root = require_tree(self.root / "gtFine" / image_split, f"Cityscapes {image_split} gtFine folder")
        found = []
        for image_path in sorted(image_root.glob(f"*/*{IMAGE_SUFFIX}")):
            city = image_path.parent.name
            stem = image_path.name[: -len(IMAGE_SUFFIX)]
            found.append((f"{image_split}/{city}/{stem}", image_path, label_root / city / f"{stem}{LABEL_SUFFIX}"))
        if not found:
            raise FsbenchError(f"no *{IMAGE_SUFFIX} images under {image_root}/<city>/ (see data/README.md)")
        return found

    def _pixel_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """{"train"|"val": {image id: {class id: pixels}}}, cached on the label files."""
        entries = {split: self._label_paths(split) for split in ("train", "val")}
        bad = BadFiles(self.options.skip_bad)
        present = {split: [entry for entry in items if bad.admit(lambda entry=entry: _require_label(entry))] for split, items in entries.items()}
        key = {"version": CACHE_VERSION, "signature": {split: file_signature(path for _, _, path in items) for split, items in present.items()}}

        def build() -> dict:
            total = sum(len(items) for items in present.values())
            print(f"Indexing {total} Cityscapes label maps in {self.root / 'gtFine'} (once; cached) ...", flush=True)
            counts, problems = {}, {}
            for split, items in present.items():
                counts[split] = {}
                for image_id, _, label_path in items:
                    try:
                        label = self.lookup[torch.from_numpy(read_class_png(label_path).astype(np.int64)).clamp(0, IGNORE)].numpy()
                    except FsbenchError as error:
                        problems[image_id] = str(error)
                        continue
                    values = np.bincount(label.ravel(), minlength=IGNORE + 1)
                    counts[split][image_id] = {str(class_id): int(values[class_id]) for class_id in EVALUATED_CLASSES if values[class_id]}
            return {"counts": counts, "problems": problems}

        cached = cached_json(cache_folder(self.datapath, "cityscapes") / "pixel_counts.json", key, build)
        for problem in cached["problems"].values():
            bad.admit(lambda problem=problem: _raise(problem))
        bad.report("Cityscapes image/label pairs")
        self.skipped = len(bad.skipped)
        self._paths = {image_id: (image_path, label_path) for items in present.values() for image_id, image_path, label_path in items}
        return {split: {image_id: {int(c): p for c, p in classes.items()} for image_id, classes in images.items()} for split, images in cached["counts"].items()}

    # --- Benchmark interface ----------------------------------------------------------------------
    @property
    def class_names(self) -> dict[int, str]:
        return dict(EVALUATED_CLASSES)

    def classes(self, split: str) -> list[int]:
        if split == "test":
            return sorted(self._novel)
        return [class_id for class_id in EVALUATED_CLASSES if class_id not in self._novel]

    def pairs(self, split: str) -> Pairs:
        if split == "test" and not self._novel:
            raise FsbenchError("cityscapes --vocab-config 000 removes no class, so FS-S episodes have no novel class to test; use 001..008, or --task gfss")
        return self._pairs_of(split)

    def _pairs_of(self, split: str) -> Pairs:
        allowed = set(self.classes(split))
        return [(image_id, class_id) for image_id, class_id in self._labelled[IMAGE_SPLIT[split]] if class_id in allowed]

    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        image, label = self.load_labelled(image_id, split)
        if split == "train" and len(self._novel_tensor):
            # Out-of-vocabulary classes are removed from training labels: void or background.
            label[torch.isin(label, self._novel_tensor)] = IGNORE if self.options.out_as == "void" else 0
        return image, label

    # --- generalized FSS --------------------------------------------------------------------------
    def labelled_pairs(self, split: str) -> Pairs:
        return list(self._labelled[IMAGE_SPLIT[split]])

    def load_labelled(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        if image_id not in self._paths:
            raise FsbenchError(f"unknown Cityscapes image id {image_id!r} (not under {self.root})")
        image_path, label_path = self._paths[image_id]
        image, label_ids = read_pair(image_path, label_path)
        return image, self.lookup[label_ids.clamp(0, IGNORE)]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "vocab_config": self.configuration,
            "novel_classes": sorted(self._novel),
            "out_as": self.options.out_as,
            "images": self.image_counts,
            "full_dataset": self.image_counts == FULL_DATASET_IMAGES,
            "list_fingerprint": pairs_fingerprint({split: self._pairs_of(split) for split in ("train", "test")}),
            "skipped_bad_files": self.skipped,
        }


def _require_label(entry: tuple[str, Path, Path]) -> None:
    _, image_path, label_path = entry
    if not label_path.is_file():
        raise FsbenchError(f"label file is missing: {label_path} (for {image_path})")


def _raise(message: str) -> None:
    raise FsbenchError(message)
