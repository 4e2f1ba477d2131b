"""The Benchmark interface: which classes a fold holds, which images show a class, how to load one.

A benchmark does no sampling (that is fsbench.sampler) and no resizing (fsbench.transforms).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from torch import Tensor

from fsbench.benchmark_options import BenchmarkOptions  # noqa: F401  (benchmarks import it from here)
from fsbench.errors import FsbenchError
from fsbench.replay import ReplayLists

SPLITS = ("train", "test")


class Benchmark(ABC):
    """Indexing and loading of one dataset for one fold.

    Split "train" holds the fold's base classes on the dataset's training images; split "test" holds
    the fold's novel classes on its validation/test images. Class ids are the dataset's own (a label
    map's pixel values); 0 is background and 255 is ignore.
    """

    registry_name: str = "benchmark"
    num_folds: int = 4
    default_img_size: int = 400
    default_episodes: int = 1000
    # True for the embedded synthetic data: methods then use their quick (CPU-friendly) profile.
    quick: bool = False
    # Per protocol name, defaults that differ from the ones above, e.g. {"pfenet": {"episodes": 5000,
    # "img_size": 473}}: how a benchmark states a paper's settings without the core naming it.
    protocol_defaults: dict[str, dict[str, int]] = {}
    # How the sampler draws a query: "pair" - the (image, class) pairs in a fixed permutation (each
    # pair once per len(pairs) episodes); "class" - a class uniformly, then one of its images, for
    # datasets whose classes differ in size by orders of magnitude (COCO: HSNet and iFSL draw so).
    query_draw: str = "pair"

    def __init__(self, datapath: Path, fold: int, options: BenchmarkOptions | None = None):
        if not 0 <= fold < self.num_folds:
            raise FsbenchError(
                f"fold {fold} is out of range for benchmark {self.registry_name!r} "
                f"(folds 0..{self.num_folds - 1})"
            )
        self.datapath = Path(datapath)
        self.fold = fold
        self.options = options or BenchmarkOptions()

    # --- what subclasses provide -------------------------------------------------------------
    @property
    @abstractmethod
    def class_names(self) -> dict[int, str]:
        """Dataset class id -> readable name, for every class of the dataset."""

    @abstractmethod
    def classes(self, split: str) -> list[int]:
        """Sorted class ids of ``split`` for this fold."""

    @abstractmethod
    def pairs(self, split: str) -> list[tuple[str, int]]:
        """(image id, class id) pairs that may serve as a query of that class, in a fixed order."""

    @abstractmethod
    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        """(image [3, H, W] uint8, label map [H, W] int64 of dataset class ids, 255 = ignore).

        In the train split, pixels of the fold's novel classes are returned as background.
        """

    # --- derived ------------------------------------------------------------------------------
    def images_of_class(self, split: str, class_id: int) -> list[str]:
        """Image ids of ``split`` that contain ``class_id`` (in pairs order)."""
        index = getattr(self, "_images_by_class", None)
        if index is None:
            index = self._images_by_class = {}
        if split not in index:
            by_class: dict[int, list[str]] = {}
            for image_id, class_id_of_pair in self.pairs(split):
                by_class.setdefault(class_id_of_pair, []).append(image_id)
            index[split] = by_class
        return index[split].get(class_id, [])

    def identity(self) -> str:
        """What makes two benchmarks the same data for the checkpoint guard: the registry name (a
        benchmark over user data adds which dataset)."""
        return self.registry_name

    def replay_lists(self, split: str) -> ReplayLists:
        """The standard lists another codebase's loader reads, in its order (for ``--replay``).

        Benchmarks that have such lists override this; the others refuse in one line.
        """
        raise FsbenchError(f"benchmark {self.registry_name!r} has no HSNet or iFSL lists to replay (--replay needs pascal, coco or fss with their standard lists)")

    def describe(self) -> dict:
        """Facts about the data a run used, recorded in results.json."""
        return {"benchmark": self.registry_name, "fold": self.fold, "protocol": self.options.protocol, "query_draw": self.query_draw}
