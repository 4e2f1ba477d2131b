"""`coco`: COCO-20i (Nguyen & Todorovic 2019; HSNet/PFENet/iFSL protocol) from COCO2014.

Classes 1..80 are COCO's categories in sorted id order (class = index + 1, so 0 stays background).
Fold f's novel classes are those with index % 4 == f (interleaved, the default) or indices
20f..20f+19 (``--class-split contiguous``, PANet). Masks come from the instances JSONs
(annotations/instances_{train,val}2014.json) through pycocotools, or, when those are absent, from
HSNet's pre-rendered class PNGs (annotations/{train,val}2014/*.png). The (image, class) pairs are
HSNet's when its lists are present (<datapath>/splits/coco/{trn,val}/fold<k>.pkl, or ``--split-dir``;
interleaved split only); otherwise a pair needs at least 2x32x32 visible pixels of the class. The
index is built once per source and cached under <datapath>/cache/coco; masks are decoded when an
image is loaded, i.e. in the loader workers. Queries draw a class uniformly, then one of its images
(as HSNet and iFSL do), so the few huge classes (person) do not take most episodes.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from benchmarks import coco_index
from benchmarks.base import Benchmark, BenchmarkOptions
from benchmarks.cache import cache_folder
from benchmarks.coco_lists import list_files, read_coco_list
from fsbench.coco_annotations import paint
from benchmarks.files import check_same_size, inside_root, require_tree
from benchmarks.split_lists import MIN_OBJECT_PIXELS, Pairs, find_split_folder, pairs_fingerprint, pairs_from_pixel_counts
from fsbench.errors import FsbenchError
from fsbench.registry import BENCHMARKS
from fsbench.replay import ReplayLists
from fsbench.transforms import read_image, read_label

NUM_CLASSES = 80
CLASS_SPLITS = ("interleaved", "contiguous")
IMAGE_SPLIT = {"train": "train2014", "test": "val2014"}


@BENCHMARKS.register("coco")
class Coco(Benchmark):
    """COCO-20i: 4 folds of 20 of COCO's 80 classes."""

    num_folds = 4
    default_img_size = 400
    default_episodes = 1000
    # PFENet evaluates COCO-20i on 20000 episodes at 641 x 641.
    protocol_defaults = {"pfenet": {"episodes": 20000, "img_size": 641}}
    query_draw = "class"

    def __init__(self, datapath: Path, fold: int, options: BenchmarkOptions | None = None):
        super().__init__(datapath, fold, options)
        if self.options.class_split not in CLASS_SPLITS:
            raise FsbenchError(f"unknown --class-split {self.options.class_split!r} for coco; available: {', '.join(CLASS_SPLITS)}")
        self.root = require_tree(self.datapath / "COCO2014", "COCO2014 tree (COCO2014/train2014, val2014, annotations/)")
        if self.options.class_split == "interleaved":
            self._novel = {index + 1 for index in range(NUM_CLASSES) if index % self.num_folds == fold}
        else:
            self._novel = set(range(20 * fold + 1, 20 * fold + 21))
        self._novel_tensor = torch.tensor(sorted(self._novel))
        self.headers: dict[str, dict] = {}
        self.cache_paths: dict[str, Path] = {}
        for split, image_split in IMAGE_SPLIT.items():
            self.headers[split] = self._index(image_split)
        names = self.headers["test"]["class_names"] or self.headers["train"]["class_names"]
        self._class_names = {int(class_id): name for class_id, name in names.items()} or {c: f"class {c}" for c in range(1, 81)}
        self._pairs = self._read_or_build_lists()

    def _read_or_build_lists(self) -> dict[str, Pairs]:
        files = list_files(self.fold)
        folder = None
        if self.options.class_split == "interleaved":
            folder = find_split_folder(self.options.split_dir, self.datapath, "coco", list(files.values()))
        elif self.options.split_dir is not None:
            raise FsbenchError(f"--split-dir {self.options.split_dir}: HSNet's COCO lists hold the interleaved split, not --class-split {self.options.class_split}")
        self.standard_lists = folder is not None
        if folder is not None:
            self.list_source = f"HSNet lists in {folder}"
            return {
                split: read_coco_list(folder / files[split], image_split, set(self.classes(split)), set(self.headers[split]["images"]))
                for split, image_split in IMAGE_SPLIT.items()
            }
        self.list_source = f"built from annotations (classes >= {MIN_OBJECT_PIXELS} visible px)"
        return {split: pairs_from_pixel_counts(self.headers[split]["pixels"], set(self.classes(split))) for split in IMAGE_SPLIT}

    def _index(self, image_split: str) -> dict:
        instances = self.root / "annotations" / f"instances_{image_split}.json"
        png_folder = self.root / "annotations" / image_split
        folder = cache_folder(self.datapath, "coco")
        if instances.is_file():
            self.source = "instances JSON (pycocotools)"
            key = coco_index.source_key([instances], "instances")
            path = folder / f"{image_split}_instances.index"
            build = lambda: coco_index.build_from_instances(instances, self.root / image_split, path, key)  # noqa: E731
        elif png_folder.is_dir():
            self.source = "pre-rendered class PNGs (HSNet)"
            key = coco_index.source_key(sorted(png_folder.glob("*.png")), "png")
            path = folder / f"{image_split}_png.index"
            build = lambda: coco_index.build_from_pngs(png_folder, path, key)  # noqa: E731
        else:
            raise FsbenchError(
                f"COCO2014 annotations not found: expected {instances} or the class PNG folder {png_folder} "
                f"(see data/README.md for the expected layout)"
            )
        header = coco_index.load_or_build(path, key, build)
        if header["class_names"] and len(header["class_names"]) != NUM_CLASSES:
            raise FsbenchError(f"{instances}: COCO-20i needs COCO's {NUM_CLASSES} categories, found {len(header['class_names'])}")
        self.cache_paths[image_split] = path
        return header

    # --- Benchmark interface ------------------------------------------------------------------------
    @property
    def class_names(self) -> dict[int, str]:
        return self._class_names

    def classes(self, split: str) -> list[int]:
        if split == "test":
            return sorted(self._novel)
        return [class_id for class_id in range(1, NUM_CLASSES + 1) if class_id not in self._novel]

    def pairs(self, split: str) -> Pairs:
        return self._pairs[split]

    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        image_split = IMAGE_SPLIT[split]
        header = self.headers[split]
        file_name, height, width = header["images"][image_id][:3]
        image_path = inside_root(self.root / image_split, file_name, self.cache_paths[image_split])
        image = read_image(image_path)
        if header["key"]["source"] == "png":
            mask_path = self.root / "annotations" / image_split / (Path(file_name).stem + ".png")
            label = read_label(mask_path)
        else:
            mask_path = f"the annotations of {file_name} in {self.root / 'annotations'}"
            record = coco_index.read_record(self.cache_paths[image_split], header, image_id)
            unions = [(class_id, {"size": [height, width], "counts": counts.encode("ascii")}) for class_id, counts in record]
            label = torch.from_numpy(paint(unions, height, width))
        check_same_size(image, label, image_path, mask_path)
        if split == "train":
            label[torch.isin(label, self._novel_tensor)] = 0  # novel classes stay unseen in training
        return image, label

    def replay_lists(self, split: str) -> ReplayLists:
        """HSNet's and iFSL's view of the lists: per class the images in list order, classes ascending
        (their class_ids), from which their loaders draw a class, then an image."""
        if not self.standard_lists:
            raise FsbenchError(f"--replay needs HSNet's COCO lists (splits/coco/{{trn,val}}/fold{self.fold}.pkl under the data folder or --split-dir); these lists were {self.list_source}")
        return ReplayLists(
            source=self.list_source,
            query_pairs=tuple(self._pairs[split]),
            images_by_class={class_id: tuple(self.images_of_class(split, class_id)) for class_id in self.classes(split)},
            class_order=tuple(self.classes(split)),
        )

    def describe(self) -> dict:
        return {
            **super().describe(),
            "class_split": self.options.class_split,
            "standard_split": self.options.class_split == "interleaved",
            "class_ids": "COCO category index (sorted ids) + 1",
            "masks": self.source,
            "lists": self.list_source,
            "list_fingerprint": pairs_fingerprint(self._pairs),
            "pairs": {split: len(pairs) for split, pairs in self._pairs.items()},
        }
