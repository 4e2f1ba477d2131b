"""Lists of (image, class) pairs: the HSNet text format, lists built from masks, and their fingerprint.

HSNet's lists (data/splits/<dataset>/{trn,val}/fold<k>.txt) hold one ``<image id>__<class>`` per line,
classes counted from 1; they are found in ``<datapath>/splits/<dataset>/`` or under ``--split-dir``.
Without them, lists are built from the masks the PFENet way: an image is a pair of class c when c
covers at least MIN_OBJECT_PIXELS pixels of its original-size label.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from fsbench.errors import FsbenchError

# PFENet / HSNet: objects smaller than 2 x 32 x 32 pixels are too small to serve as a query or support.
MIN_OBJECT_PIXELS = 2 * 32 * 32

Pairs = list[tuple[str, int]]


def read_pair_list(path: Path) -> Pairs:
    """Pairs from an HSNet list file; a malformed line is an error naming the file and line."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FsbenchError(f"split list is missing: {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FsbenchError(f"cannot read split list {path}: {error}") from None
    pairs: Pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        image_id, separator, class_text = line.rpartition("__")
        if not separator or not image_id or not class_text.isdigit():
            raise FsbenchError(f"{path}:{number}: expected '<image id>__<class>', got {line!r}")
        pairs.append((image_id, int(class_text)))
    if not pairs:
        raise FsbenchError(f"split list {path} is empty")
    return pairs


def find_split_folder(split_dir: Path | None, datapath: Path, dataset: str, required: list[str]) -> Path | None:
    """The folder holding the ``required`` list files, or None when there are none.

    Without ``--split-dir`` the lists are looked for where data/README.md puts them,
    ``<datapath>/splits/<dataset>/``; a folder there that lacks one of them is an error naming the
    file (an incomplete copy must not silently turn into lists of another origin). ``--split-dir``
    may point at HSNet's ``data/splits`` (holding ``<dataset>/``) or at the dataset's folder itself;
    one that lacks a required file is an error naming it.
    """
    default = Path(datapath) / "splits" / dataset
    candidates = [Path(split_dir) / dataset, Path(split_dir)] if split_dir is not None else [default]
    for folder in candidates:
        if all((folder / name).is_file() for name in required):
            return folder
    for folder in candidates:
        if folder.is_dir():
            missing = next(name for name in required if not (folder / name).is_file())
            given = f"--split-dir {split_dir}" if split_dir is not None else f"split lists folder {folder}"
            raise FsbenchError(f"{given}: split list {folder / missing} is missing (see data/README.md)")
    if split_dir is None:
        return None
    raise FsbenchError(f"--split-dir {split_dir} does not exist (see data/README.md for the expected lists)")


def pairs_from_pixel_counts(counts: dict[str, dict[str, int]], classes: set[int], min_pixels: int = MIN_OBJECT_PIXELS) -> Pairs:
    """Pairs (image, class) of ``classes`` whose pixel count reaches ``min_pixels``, in image order.

    ``counts`` maps image id -> {class id (as text, JSON keys): pixel count}.
    """
    pairs: Pairs = []
    for image_id in sorted(counts):
        for class_text, pixels in sorted(counts[image_id].items(), key=lambda item: int(item[0])):
            if int(class_text) in classes and pixels >= min_pixels:
                pairs.append((image_id, int(class_text)))
    return pairs


def pairs_fingerprint(pairs_by_split: dict[str, Pairs]) -> str:
    """sha256 of the lists a run used: equal fingerprints mean the same (image, class) pairs."""
    digest = hashlib.sha256()
    for split in sorted(pairs_by_split):
        digest.update(split.encode())
        for image_id, class_id in pairs_by_split[split]:
            digest.update(f"{image_id}__{class_id}\n".encode())
    return digest.hexdigest()[:16]
