"""way_wins: the diagnostic that tells class recognition from mere object finding."""
from __future__ import annotations

import torch

from fsbench.perf.discrimination import way_wins


def _masks() -> torch.Tensor:
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 1  # way 0's class: 4 pixels
    masks[0, 2:, 2:] = 2  # way 1's class: 4 pixels
    masks[0, 0, 3] = 255
    return masks


def test_an_oracle_wins_every_pixel():
    masks = _masks()
    fg_probs = torch.stack([(masks == 1).float(), (masks == 2).float()], dim=1)
    assert way_wins(fg_probs, masks) == (8, 8)


def test_identical_ways_win_nothing_and_a_swap_loses_everything():
    masks = _masks()
    objects = ((masks == 1) | (masks == 2)).float()
    assert way_wins(torch.stack([objects, objects], dim=1), masks) == (0, 8)
    swapped = torch.stack([(masks == 2).float(), (masks == 1).float()], dim=1)
    assert way_wins(swapped, masks) == (0, 8)


def test_three_ways_count_against_the_strongest_other_way():
    masks = _masks()
    fg_probs = torch.zeros(1, 3, 4, 4)
    fg_probs[:, 0] = 0.6  # way 0 is everywhere at 0.6
    fg_probs[0, 1, 2:, 2:] = 0.7  # way 1 beats it on its own pixels
    fg_probs[0, 2, 0, 0] = 0.9  # way 2 beats way 0 on one of way 0's pixels
    assert way_wins(fg_probs, masks) == (3 + 4, 8)
