"""Renders: one PNG per requested episode query, panels at the query's resolution with the right colours."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fsbench.cli import main
from fsbench.episode import Episode, Prediction
from fsbench.transforms import normalise
from fsbench.vis import GAP, IGNORE_INDEX, save_episode_renders, way_colour

WAY, SHOT, QUERIES, HEIGHT, WIDTH = 2, 3, 2, 36, 52  # not square, so a transposed panel cannot pass
GREY = 100  # every image is this grey, so expected panels can be written down by hand


def grey_images(*leading: int) -> torch.Tensor:
    return normalise(torch.full((3, HEIGHT, WIDTH), GREY / 255.0)).expand(*leading, 3, HEIGHT, WIDTH).clone()


def make_episode() -> tuple[Episode, Prediction]:
    support_masks = torch.zeros(WAY, SHOT, HEIGHT, WIDTH, dtype=torch.long)
    support_masks[0, :, 2:10, 3:20] = 1
    support_masks[1, :, 20:30, 30:45] = 1
    query_masks = torch.zeros(QUERIES, HEIGHT, WIDTH, dtype=torch.long)
    query_masks[:, 5:15, 5:25] = 1
    query_masks[:, 0, :] = IGNORE_INDEX
    fg_probs = torch.zeros(QUERIES, WAY, HEIGHT, WIDTH)
    fg_probs[:, 1, 10:20, 30:40] = 0.9  # way 2 predicted in a 10 x 10 square
    episode = Episode(
        support_images=grey_images(WAY, SHOT), support_masks=support_masks, query_images=grey_images(QUERIES),
        query_masks=query_masks, class_ids=torch.tensor([4, 9]), query_presence=torch.tensor([[True, False]] * QUERIES),
        index=12, query_ids=["val/1", "val/2"], support_ids=[["a", "b", "c"], ["d", "e", "f"]],
    )
    return episode, Prediction(fg_probs, fg_probs.flatten(2).amax(-1))


def expected_prediction_panel() -> np.ndarray:
    """Grey, with the predicted 10 x 10 square tinted half-way to way 2's colour and outlined in it."""
    panel = np.full((HEIGHT, WIDTH, 3), GREY, dtype=np.float32)
    colour = np.array(way_colour(1), dtype=np.float32)
    panel[10:20, 30:40] = np.round(0.5 * GREY + 0.5 * colour)
    panel[10, 30:40] = panel[19, 30:40] = panel[10:20, 30] = panel[10:20, 39] = colour
    return panel.astype(np.uint8)


def find_panel(canvas: np.ndarray, panel: np.ndarray, left: int) -> int | None:
    """Top row at which ``panel`` sits in ``canvas`` with its left edge at ``left``, or None."""
    for top in range(canvas.shape[0] - panel.shape[0] + 1):
        if np.array_equal(canvas[top : top + panel.shape[0], left : left + panel.shape[1]], panel):
            return top
    return None


def test_one_png_per_query_named_with_episode_query_and_iou(tmp_path):
    episode, prediction = make_episode()
    paths = save_episode_renders(tmp_path / "vis", episode, prediction, {4: "red circle", 9: "blue square"}, [0.0, 57.25])
    assert [path.name for path in paths] == ["episode0012_query0_iou0.0.png", "episode0012_query1_iou57.2.png"]
    assert sorted(path.name for path in (tmp_path / "vis").iterdir()) == sorted(path.name for path in paths)
    for path in paths:
        canvas = np.array(Image.open(path).convert("RGB"))
        # K supports, ground truth and prediction side by side, each at the query's resolution.
        assert canvas.shape[1] == (SHOT + 2) * WIDTH + (SHOT + 3) * GAP
        assert canvas.shape[0] > WAY * HEIGHT
        prediction_left = GAP + (SHOT + 1) * (WIDTH + GAP)
        assert find_panel(canvas, expected_prediction_panel(), prediction_left) is not None


def test_ground_truth_panel_shows_ways_and_ignore(tmp_path):
    episode, prediction = make_episode()
    path = save_episode_renders(tmp_path, episode, prediction, {4: "red circle", 9: "blue square"}, [10.0, 10.0])[0]
    canvas = np.array(Image.open(path).convert("RGB"))
    truth_left = GAP + SHOT * (WIDTH + GAP)
    top = find_panel(canvas, expected_prediction_panel(), truth_left + WIDTH + GAP)
    panel = canvas[top : top + HEIGHT, truth_left : truth_left + WIDTH].astype(int)
    colour = np.array(way_colour(0))
    assert (panel[8, 10] == np.round(0.5 * GREY + 0.5 * colour)).all()  # inside way 1's object
    assert (panel[0, 40] == round(0.4 * GREY + 0.6 * 255)).all()  # ignore row, whitened
    assert (panel[30, 10] == GREY).all()  # background untouched
    assert way_colour(0) != way_colour(1) and len({way_colour(n) for n in range(40)}) == 40


def test_cli_vis_renders_only_the_first_n_episodes_and_table_reads_the_run(tiny_datapath, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # CPU-cheap: the untrained model, 2 episodes at 32 px, renders for the first one only.
    arguments = ["--datapath", str(tiny_datapath), "--logpath", str(run_dir), "--train-steps", "0", "--episodes", "2",
                 "--img-size", "32", "--nworker", "0", "--no-progress", "--vis", "1"]
    assert main(arguments) == 0
    renders = sorted((run_dir / "vis").iterdir())
    assert [path.name[:18] for path in renders] == ["episode0000_query0"]
    assert Image.open(renders[0]).size[0] == 3 * 32 + 4 * GAP
    results = json.loads((run_dir / "results.json").read_text())
    printed = capsys.readouterr().out
    assert f"{results['miou']:.1f}" in printed and "1-way 1-shot fold 0" in printed

    assert main(["--table", str(run_dir), "--format", "csv"]) == 0
    assert str(results["miou"]) in capsys.readouterr().out
    assert main([*arguments[:3], str(tmp_path / "other"), *arguments[4:-1], "0"]) == 1
    assert "--vis" in capsys.readouterr().err


@pytest.mark.parametrize("pattern", ["missing_folder_*"])
def test_cli_table_error_is_one_line(tmp_path, capsys, pattern):
    assert main(["--table", str(tmp_path / pattern)]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("fsbench: error:") and "\n" not in error and "matches no run folder" in error
