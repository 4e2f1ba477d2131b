"""HSNet's COCO-20i lists, data/splits/coco/{trn,val}/fold<k>.pkl, read as plain data only.

Each file is a pickled dict {class index 0..79: [image name, ...]}, names "<image split>/<file name>"
(e.g. "val2014/COCO_val2014_000000429717.jpg"). val/fold<k>.pkl fills the fold's 20 test classes
(interleaved split) and trn/fold<k>.pkl its 60 training classes; the other classes' lists are empty.
HSNet's and iFSL's loaders use them as they are: fsbench's class id is the index + 1, and each list's
order is the order their loaders draw from. The pickles go through fsbench.foreign.read_plain_pickle,
which refuses any class or function reference, so reading one runs nothing.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks.split_lists import Pairs
from fsbench.errors import FsbenchError
from fsbench.foreign import read_plain_pickle

NUM_CLASSES = 80
LIST_FOLDER = {"train": "trn", "test": "val"}


def list_files(fold: int) -> dict[str, str]:
    """Split -> the list file of ``fold``, relative to the lists folder."""
    return {split: f"{folder}/fold{fold}.pkl" for split, folder in LIST_FOLDER.items()}


def read_coco_list(path: Path, image_split: str, classes: set[int], images: set[str]) -> Pairs:
    """(image key, class id) pairs of one list file, class by class in list order.

    ``image_split`` is the folder the names must lie under (train2014/val2014), ``classes`` the
    fold's class ids this file may fill, ``images`` the image keys (file names) the annotations know.
    Anything else is an error naming the file.
    """
    content = read_plain_pickle(path)
    if not isinstance(content, dict):
        raise FsbenchError(f"{path}: expected a dict of class index -> image names, got {type(content).__name__}")
    prefix = f"{image_split}/"
    pairs: Pairs = []
    for key in content:
        if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < NUM_CLASSES:
            raise FsbenchError(f"{path}: key {key!r} is not a class index 0..{NUM_CLASSES - 1}")
    for key in sorted(content):
        names = content[key]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise FsbenchError(f"{path}: the entry of class index {key} is not a list of image names")
        if names and key + 1 not in classes:
            raise FsbenchError(f"{path}: lists images for class index {key}, which is not one of this fold's classes here")
        for name in names:
            if not name.startswith(prefix):
                raise FsbenchError(f"{path}: image {name!r} (class index {key}) is not under {prefix}")
            image_key = name[len(prefix):]
            if image_key not in images:
                raise FsbenchError(f"{path}: image {name!r} (class index {key}) is not in the {image_split} annotations")
            pairs.append((image_key, key + 1))
    if not pairs:
        raise FsbenchError(f"{path}: lists no images")
    return pairs
