"""N-way masks: an episode's other classes are ignored in a support mask; the query's 255 band is
ignored in FS-S and background in FS-CS (as iFSL's code scores it) unless --boundary says otherwise."""
from __future__ import annotations

import pytest
import torch

from benchmarks.base import Benchmark
from fsbench.sampler import EpisodeSampler
from fsbench.transforms import AspectResizePad, SquashResize

HEIGHT, WIDTH = 4, 6


def _label(left: int, right: int) -> torch.Tensor:
    """[4, 6]: columns 0-1 class ``left``, column 2 the 255 band, 3-4 class ``right``, 5 background."""
    label = torch.zeros(HEIGHT, WIDTH, dtype=torch.int64)
    label[:, 0:2] = left
    label[:, 2] = 255
    label[:, 3:5] = right
    return label


class TwoClassImages(Benchmark):
    """Every image shows two of classes 1, 2, 3 side by side: image "<left><right>_<n>"."""

    registry_name = "two_class_images"
    IMAGES = [f"{left}{right}_{n}" for left, right in ((1, 2), (2, 3), (3, 1)) for n in range(4)]

    @property
    def class_names(self) -> dict[int, str]:
        return {1: "one", 2: "two", 3: "three"}

    def classes(self, split: str) -> list[int]:
        return [1, 2, 3]

    def pairs(self, split: str) -> list[tuple[str, int]]:
        return [(image, int(image[position])) for image in self.IMAGES for position in (0, 1)]

    def load(self, image_id: str, split: str):
        return torch.zeros(3, HEIGHT, WIDTH, dtype=torch.uint8), _label(int(image_id[0]), int(image_id[1]))


def _expected_support(image_id: str, way_class: int, episode_classes: tuple[int, ...]) -> torch.Tensor:
    """Hand rule: 1 on the way's class, 255 on the band and on the episode's other classes, else 0."""
    left, right = int(image_id[0]), int(image_id[1])
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.int64)
    for columns, class_id in ((slice(0, 2), left), (slice(3, 5), right)):
        mask[:, columns] = 1 if class_id == way_class else 255 if class_id in episode_classes else 0
    mask[:, 2] = 255
    return mask


@pytest.mark.parametrize("way,task", [(1, "fss"), (2, "fss"), (2, "fscs"), (3, "fscs")])
def test_support_masks_ignore_the_other_ways(way, task):
    sampler = EpisodeSampler(TwoClassImages("unused", 0), "test", way=way, shot=2, episodes=30, task=task, transform=SquashResize(8))
    sampler.transform = lambda image, label: (image.float(), label)  # keep the 4x6 labels as drawn
    others_seen = 0
    for index in range(len(sampler)):
        episode = sampler[index]
        classes = tuple(episode.class_ids.tolist())
        for way_index, ids in enumerate(episode.support_ids):
            for shot_index, image_id in enumerate(ids):
                expected = _expected_support(image_id, classes[way_index], classes)
                assert torch.equal(episode.support_masks[way_index, shot_index], expected), (index, image_id)
                others_seen += bool(set(map(int, image_id[:2])) - {classes[way_index]} & set(classes))
    assert (others_seen > 0) == (way > 1)  # the rule was exercised where it applies


@pytest.mark.parametrize("task,boundary,band", [("fss", None, 255), ("fscs", None, 0), ("fss", "background", 0), ("fscs", "ignore", 255)])
def test_query_boundary_band(task, boundary, band):
    sampler = EpisodeSampler(TwoClassImages("unused", 0), "test", way=1, shot=1, episodes=6, task=task, boundary=boundary, keep_original=True)
    sampler.transform = lambda image, label: (image.float(), label)
    assert sampler.boundary == (boundary or {"fss": "ignore", "fscs": "background"}[task])
    for index in range(len(sampler)):
        episode = sampler[index]
        assert episode.query_masks[0, :, 2].unique().tolist() == [band]
        assert episode.query_original_masks[0][:, 2].unique().tolist() == [band]
        assert episode.query_masks[0, :, 5].unique().tolist() == [0]


def test_padding_stays_ignored_when_the_band_is_background():
    # PFENet's transform pads with 255: padding is no boundary, so it is never scored.
    sampler = EpisodeSampler(TwoClassImages("unused", 0), "test", way=2, shot=1, episodes=4, task="fscs", transform=AspectResizePad(12), keep_original=True)
    episode = sampler[0]
    padded_rows = episode.query_masks[0, 8:]  # 4x6 -> 8x12 content, rows 8..11 are padding
    assert padded_rows.unique().tolist() == [255]
    assert (episode.query_masks[0, :8] != 255).all()  # the band itself became background
    scoring = episode.query_original_masks[0]
    assert scoring[:HEIGHT].ne(255).all() and scoring[HEIGHT:].eq(255).all()
