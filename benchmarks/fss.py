"""`fss`: FSS-1000 (Li et al. 2020): 1000 class folders of 10 image/mask pairs.

Masks are thresholded at 128. The standard class split (520 train / 240 val / 240 test, HSNet's
data/splits/fss/{trn,val,test}.txt) is read from <datapath>/splits/fss or ``--split-dir``; without
lists a seeded split in the same proportions is used and results.json says it is non-standard. The
test protocol visits every test image once as the query: the default episode count is the number
of test images (2400 on the full dataset).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from benchmarks.base import Benchmark, BenchmarkOptions
from benchmarks.files import BadFiles, inside_root, read_pair, require_tree
from benchmarks.split_lists import Pairs, find_split_folder, pairs_fingerprint
from fsbench.errors import FsbenchError
from fsbench.registry import BENCHMARKS
from fsbench.replay import ReplayLists

SPLIT_FILES = {"train": "trn.txt", "val": "val.txt", "test": "test.txt"}
STANDARD_SHARES = {"train": 520, "val": 240, "test": 240}
SEEDED_SPLIT_SEED = 1000
FOREGROUND_THRESHOLD = 128
IGNORE = 255


def class_id_of(position: int) -> int:
    """Class id of the class at ``position`` (0-based, sorted folder names): position + 1, skipping 255,
    which label maps reserve for ignore."""
    class_id = position + 1
    return class_id + 1 if class_id >= IGNORE else class_id


@BENCHMARKS.register("fss")
class Fss1000(Benchmark):
    """FSS-1000 with one fold; split "train" = the training classes, "test" = the test classes."""

    num_folds = 1
    default_img_size = 400
    default_episodes = 2400

    def __init__(self, datapath: Path, fold: int, options: BenchmarkOptions | None = None):
        super().__init__(datapath, fold, options)
        self.root = require_tree(self.datapath / "FSS-1000", "FSS-1000 tree (FSS-1000/<class>/<n>.jpg + <n>.png)")
        names = sorted(path.name for path in self.root.iterdir() if path.is_dir())
        if not names:
            raise FsbenchError(f"FSS-1000 tree {self.root} holds no class folders (see data/README.md)")
        self._class_ids = {name: class_id_of(position) for position, name in enumerate(names)}
        self._class_names = {class_id: name for name, class_id in self._class_ids.items()}
        self._split_classes = self._class_split(names)
        bad = BadFiles(self.options.skip_bad)
        self._pairs = {split: self._scan(self._split_classes[split], bad) for split in ("train", "test")}
        bad.report("FSS-1000 image/mask pairs")
        self.skipped = len(bad.skipped)
        # The protocol: each test image is the query exactly once.
        self.default_episodes = len(self._pairs["test"])

    def _class_split(self, names: list[str]) -> dict[str, list[str]]:
        folder = find_split_folder(self.options.split_dir, self.datapath, "fss", list(SPLIT_FILES.values()))
        if folder is not None:
            self.split_source, self.standard_split = f"lists in {folder}", True
            split = {}
            for key, file_name in SPLIT_FILES.items():
                listed = [line.strip() for line in (folder / file_name).read_text().splitlines() if line.strip()]
                for name in listed:
                    if name not in self._class_ids:
                        raise FsbenchError(f"{folder / file_name}: class {name!r} has no folder in {self.root}")
                split[key] = listed
            return split
        self.split_source, self.standard_split = f"seeded split (seed {SEEDED_SPLIT_SEED}; no lists found)", False
        order = [names[position] for position in np.random.default_rng(SEEDED_SPLIT_SEED).permutation(len(names))]
        total = sum(STANDARD_SHARES.values())
        train_count = round(len(names) * STANDARD_SHARES["train"] / total)
        val_count = round(len(names) * STANDARD_SHARES["val"] / total)
        return {
            "train": sorted(order[:train_count]),
            "val": sorted(order[train_count : train_count + val_count]),
            "test": sorted(order[train_count + val_count :]),
        }

    def _scan(self, names: list[str], bad: BadFiles) -> Pairs:
        pairs: Pairs = []
        for name in names:
            folder = self.root / name
            for image_path in sorted(folder.glob("*.jpg"), key=lambda path: (len(path.stem), path.stem)):
                mask_path = image_path.with_suffix(".png")
                if bad.admit(lambda mask_path=mask_path: _require(mask_path)):
                    pairs.append((f"{name}/{image_path.stem}", self._class_ids[name]))
        return pairs

    # --- Benchmark interface ------------------------------------------------------------------------
    @property
    def class_names(self) -> dict[int, str]:
        return self._class_names

    def classes(self, split: str) -> list[int]:
        return sorted(self._class_ids[name] for name in self._split_classes[split])

    def pairs(self, split: str) -> Pairs:
        return self._pairs[split]

    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        class_name = image_id.rsplit("/", 1)[0]
        image_path = inside_root(self.root, f"{image_id}.jpg", "image id")
        image, mask = read_pair(image_path, image_path.with_suffix(".png"))
        label = torch.where(mask >= FOREGROUND_THRESHOLD, self._class_ids[class_name], 0)
        return image, label

    def replay_lists(self, split: str) -> ReplayLists:
        """The test images as a sorted directory listing visits them (class names sorted, then file
        names sorted as text: 1, 10, 2, ..., 9, as HSNet's loader globs them), and each class's
        images by file number, from which HSNet's loader draws supports."""
        if not self.standard_split:
            raise FsbenchError(f"--replay needs the standard FSS-1000 class split (splits/fss/{{trn,val,test}}.txt under the data folder or --split-dir); this run uses a {self.split_source}")
        by_name: dict[str, list[str]] = {}
        for image_id, _ in self._pairs[split]:
            name, stem = image_id.rsplit("/", 1)
            by_name.setdefault(name, []).append(stem)
        query_pairs, images_by_class, numbered = [], {}, {}
        for name in sorted(by_name):
            class_id = self._class_ids[name]
            stems = sorted(by_name[name], key=lambda stem: f"{stem}.jpg")
            query_pairs += [(f"{name}/{stem}", class_id) for stem in stems]
            images_by_class[class_id] = tuple(f"{name}/{stem}" for stem in stems)
            numbered[class_id] = {int(stem): f"{name}/{stem}" for stem in stems if stem.isdigit() and str(int(stem)) == stem}
        return ReplayLists(
            source=self.split_source,
            query_pairs=tuple(query_pairs),
            images_by_class=images_by_class,
            class_order=tuple(self.classes(split)),
            numbered_images=numbered,
        )

    def describe(self) -> dict:
        return {
            **super().describe(),
            "class_split": self.split_source,
            "standard_split": self.standard_split,
            "classes": {split: len(names) for split, names in self._split_classes.items()},
            "list_fingerprint": pairs_fingerprint(self._pairs),
            "pairs": {split: len(pairs) for split, pairs in self._pairs.items()},
            "skipped_bad_files": self.skipped,
        }


def _require(mask_path: Path) -> None:
    if not mask_path.is_file():
        raise FsbenchError(f"mask file is missing: {mask_path} (for image {mask_path.with_suffix('.jpg')})")
