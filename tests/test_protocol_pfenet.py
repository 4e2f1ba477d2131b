"""The pfenet protocol: aspect-preserving resize with padding, original-size scoring that lines up,
per-benchmark episode counts and sizes; one-line errors from loader workers."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.coco import Coco
from fsbench.fixtures import make_voc
from benchmarks.fss import Fss1000
from benchmarks.pascal import Pascal
from benchmarks.shapes import Shapes
from fsbench.episode import Prediction, collate_episodes
from fsbench.errors import FsbenchError, one_line
from fsbench.protocols import get_protocol
from fsbench.sampler import EpisodeSampler
from fsbench.transforms import IMAGENET_MEAN, IMAGENET_STD, AspectResizePad


def test_resize_keeps_aspect_pads_bottom_right_and_ignores_padding():
    transform = AspectResizePad(80)
    image = torch.full((3, 60, 100), 255, dtype=torch.uint8)
    label = torch.ones(60, 100, dtype=torch.int64)
    resized, resized_label = transform(image, label)
    assert transform.resized_shape(60, 100) == (48, 80) and transform.resized_shape(100, 61) == (80, 48)
    assert resized.shape == (3, 80, 80) and resized_label.shape == (80, 80)
    assert (resized_label[:48] == 1).all() and (resized_label[48:] == 255).all()
    black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    white = torch.tensor([(1 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert torch.allclose(resized[:, 60, 10], black) and torch.allclose(resized[:, 10, 10], white, atol=1e-5)
    canvas = transform.scoring_label(label)
    assert canvas.shape == (100, 100) and (canvas[:60] == 1).all() and (canvas[60:] == 255).all()


def test_episode_counts_and_sizes_per_benchmark(tmp_path):
    pfenet, hsnet = get_protocol("pfenet"), get_protocol("hsnet")
    assert (pfenet.episodes(Pascal), pfenet.img_size(Pascal)) == (5000, 473)
    assert (pfenet.episodes(Coco), pfenet.img_size(Coco)) == (20000, 641)
    assert (hsnet.episodes(Pascal), hsnet.img_size(Coco)) == (1000, 400)
    assert pfenet.score_original_size and not hsnet.score_original_size
    assert pfenet.episodes(Fss1000) == 2400 and pfenet.episodes(Shapes) == Shapes.default_episodes
    with pytest.raises(FsbenchError, match="unknown protocol 'panet'; available: hsnet, pfenet"):
        get_protocol("panet")


def test_original_size_scoring_lines_up_with_the_padded_prediction(tmp_path):
    # Non-square VOC images (100 x 160 -> 40 x 64 content, no rounding to 8); a "perfect" method
    # returns the resized query mask as its probabilities.
    make_voc(tmp_path, train=4, val=30, height=100, width=160)
    benchmark = Pascal(tmp_path, 0)
    sampler = EpisodeSampler(benchmark, "test", episodes=6, transform=AspectResizePad(64), keep_original=True)
    aligned, stretched = [0, 0], [0, 0]  # foreground intersection, union over all episodes

    def accumulate(totals, predicted, target):
        valid = target != 255
        totals[0] += int(((predicted == 1) & (target == 1) & valid).sum())
        totals[1] += int((((predicted == 1) | (target == 1)) & valid).sum())

    for index in range(len(sampler)):
        episode = sampler[index]
        probs = (episode.query_masks == 1).float().unsqueeze(1)
        prediction = Prediction(probs, probs.amax(dim=(2, 3)))
        target = episode.query_original_masks[0]
        assert target.shape == (160, 160)  # the square canvas, padding ignored
        accumulate(aligned, prediction.resized(tuple(target.shape)).labels()[0], target)
        # What scoring would give if the padded square were stretched onto the unpadded label.
        unpadded = target[:100]
        accumulate(stretched, prediction.resized((100, 160)).labels()[0], unpadded)
    # Only edge pixels can disagree after a 64 -> 160 upsampling; stretching loses far more.
    assert aligned[0] / aligned[1] > 0.95 > 0.8 > stretched[0] / stretched[1]


def test_worker_errors_become_one_line(tmp_path):
    make_voc(tmp_path, train=4, val=30)
    benchmark = Pascal(tmp_path, 0)
    sampler = EpisodeSampler(benchmark, "test", episodes=1, transform=AspectResizePad(32))
    for image_id in {image for image, _ in benchmark.pairs("test")}:
        path = tmp_path / f"VOC2012/JPEGImages/{image_id}.jpg"
        path.write_bytes(path.read_bytes()[:200])
    loader = DataLoader(sampler, batch_size=1, num_workers=1, collate_fn=collate_episodes)
    with pytest.raises(FsbenchError) as caught:
        next(iter(loader))
    message = one_line(caught.value)
    assert "\n" in str(caught.value) and "\n" not in message
    assert message.startswith("cannot decode image ") and "corrupt or truncated" in message
