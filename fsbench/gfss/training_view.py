"""The upper bound's training data (``--train-classes all``): the benchmark seen as if every class were
a training class, so that the engine trains on base and novel classes alike. Everything else (names,
fold, identity, description) is the wrapped benchmark's."""
from __future__ import annotations

from torch import Tensor


class AllClassesTraining:
    """Wraps a Benchmark with supports_gfss: its "train" split holds every class on the training images
    (labelled_pairs / load_labelled); its "test" split is unchanged."""

    def __init__(self, benchmark):
        self.benchmark = benchmark
        self._images_by_class: dict[int, list[str]] | None = None

    def __getattr__(self, name: str):
        return getattr(self.benchmark, name)

    def classes(self, split: str) -> list[int]:
        if split == "train":
            return sorted(set(self.benchmark.classes("train")) | set(self.benchmark.classes("test")))
        return self.benchmark.classes(split)

    def pairs(self, split: str) -> list[tuple[str, int]]:
        return self.benchmark.labelled_pairs("train") if split == "train" else self.benchmark.pairs(split)

    def images_of_class(self, split: str, class_id: int) -> list[str]:
        if split != "train":
            return self.benchmark.images_of_class(split, class_id)
        if self._images_by_class is None:
            self._images_by_class = {}
            for image_id, pair_class in self.pairs("train"):
                self._images_by_class.setdefault(pair_class, []).append(image_id)
        return self._images_by_class.get(class_id, [])

    def load(self, image_id: str, split: str) -> tuple[Tensor, Tensor]:
        return self.benchmark.load_labelled(image_id, split) if split == "train" else self.benchmark.load(image_id, split)
