"""Metrics against hand-worked cases and an independent loop-based reference."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fsbench.episode import Prediction
from fsbench.metrics import FSSIoU, PresenceScore


def reference_scores(batches, class_ids):
    """Plain-Python FSS protocol: per class, sum I and U over all queries; FB-IoU from binary sums."""
    inter = {c: 0 for c in class_ids}
    union = {c: 0 for c in class_ids}
    fb_i, fb_u = [0, 0], [0, 0]
    for pred, target, ways in batches:
        for q in range(pred.shape[0]):
            p, t = pred[q].numpy(), target[q].numpy()
            valid = t != 255
            for n, c in enumerate(ways[q].tolist()):
                pn, tn = (p == n + 1) & valid, (t == n + 1) & valid
                inter[c] += int((pn & tn).sum())
                union[c] += int((pn | tn).sum())
            for row, (pb, tb) in enumerate(((p == 0, t == 0), (p > 0, t > 0))):
                pb, tb = pb & valid, tb & valid
                fb_i[row] += int((pb & tb).sum())
                fb_u[row] += int((pb | tb).sum())
    ious = [inter[c] / union[c] if union[c] else 0.0 for c in class_ids]
    return 100 * float(np.mean(ious)), 100 * (fb_i[0] / fb_u[0] + fb_i[1] / fb_u[1]) / 2


def test_hand_worked_one_way():
    # Two episodes of class 7: mIoU uses sum I / sum U, NOT the mean of per-episode IoUs.
    pred_a = torch.tensor([[[1, 1, 0, 0]]])
    target_a = torch.tensor([[[1, 0, 0, 0]]])  # I=1 U=2
    pred_b = torch.tensor([[[1, 1, 1, 1]]])
    target_b = torch.tensor([[[1, 1, 1, 255]]])  # ignore pixel excluded: I=3 U=3
    metric = FSSIoU([7])
    metric.update(pred_a, target_a, torch.tensor([[7]]))
    metric.update(pred_b, target_b, torch.tensor([[7]]))
    scores = metric.compute()
    assert scores["miou"] == pytest.approx(100 * 4 / 5)  # per-episode mean would give 75
    # Background: a: pred bg {2,3}, gt bg {1,2,3}: I=2 U=3; b: I=0 U=0 -> bg IoU 2/3; fg I=4 U=5.
    assert scores["fbiou"] == pytest.approx(100 * (2 / 3 + 4 / 5) / 2)
    assert scores["class_iou"][7] == pytest.approx(80.0)


def test_absent_class_false_positives_count():
    # FS-CS: way 1 (class 3) absent in the query but predicted on two pixels: I=0, U=2.
    metric = FSSIoU([3, 4])
    pred = torch.tensor([[[1, 1, 2, 0]]])
    target = torch.tensor([[[0, 0, 2, 2]]])
    metric.update(pred, target, torch.tensor([[3, 4]]))
    scores = metric.compute()
    assert scores["class_iou"][3] == 0.0
    assert scores["class_iou"][4] == pytest.approx(50.0)
    assert scores["miou"] == pytest.approx(25.0)


@pytest.mark.parametrize("way", [1, 2, 3])
def test_random_against_reference_and_accumulation(way):
    generator = torch.Generator().manual_seed(way)
    class_ids = [2, 5, 9, 11, 13]
    batches = []
    for _ in range(12):
        q = 2
        pred = torch.randint(0, way + 1, (q, 9, 11), generator=generator)
        target = torch.randint(0, way + 1, (q, 9, 11), generator=generator)
        target[torch.rand(target.shape, generator=generator) < 0.1] = 255
        ways = torch.stack([torch.tensor(class_ids)[torch.randperm(5, generator=generator)[:way]] for _ in range(q)])
        batches.append((pred, target, ways))
    expected_miou, expected_fbiou = reference_scores(batches, class_ids)

    per_episode = FSSIoU(class_ids)
    for pred, target, ways in batches:
        per_episode.update(pred, target, ways)
    at_once = FSSIoU(class_ids)
    at_once.update(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]), torch.cat([b[2] for b in batches]))
    halves = [FSSIoU(class_ids), FSSIoU(class_ids)]
    for position, (pred, target, ways) in enumerate(batches):
        halves[position % 2].update(pred, target, ways)
    merged = halves[0].merge(halves[1])

    for metric in (per_episode, at_once, merged):
        scores = metric.compute()
        assert scores["miou"] == pytest.approx(expected_miou, abs=1e-9)
        assert scores["fbiou"] == pytest.approx(expected_fbiou, abs=1e-9)


def test_unknown_class_is_an_error():
    with pytest.raises(ValueError):
        FSSIoU([1, 2]).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[3]]))


def test_exact_ratio():
    score = PresenceScore()
    scores = torch.tensor([[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]])
    truth = torch.tensor([[True, False], [True, False], [False, False]])
    predicted = score.update(scores, truth)
    assert predicted.tolist() == [[True, False], [True, True], [False, False]]
    assert score.compute()["er"] == pytest.approx(100 * 2 / 3)
    other = PresenceScore()
    other.update(torch.tensor([[0.1, 0.1]]), torch.tensor([[True, False]]))
    assert score.merge(other).compute()["er"] == pytest.approx(50.0)


def test_prediction_labels_threshold_and_argmax():
    probs = torch.tensor([[[[0.2, 0.7, 0.6]], [[0.4, 0.6, 0.9]]]])  # [Q=1, N=2, H=1, W=3]
    # threshold: the best way where its probability >= 0.5, else background.
    assert Prediction(probs, torch.zeros(1, 2)).labels("threshold").tolist() == [[[0, 1, 2]]]
    # argmax over [background, ways] with an explicit background map (ties go to the lower index).
    background = torch.tensor([[[0.5, 0.7, 0.1]]])
    assert Prediction(probs, torch.zeros(1, 2), bg_probs=background).labels().tolist() == [[[0, 0, 2]]]
    # Without one, background is the rest of the mass: 1 - (0.3 + 0.2) = 0.5 beats 0.3 and ties 0.5 -> 0.
    shares = torch.tensor([[[[0.3, 0.5, 0.1]], [[0.2, 0.0, 0.05]]]])
    assert Prediction(shares, torch.zeros(1, 2)).labels().tolist() == [[[0, 0, 0]]]
    assert Prediction(shares, torch.zeros(1, 2)).labels("threshold").tolist() == [[[0, 1, 0]]]


def test_prediction_resizing_in_log_space_matches_upsampled_logits():
    # HSNet upsamples logits and takes the argmax: in log-probability space the same labels come out.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, 5, 7, generator=generator) * 3
    expected = torch.nn.functional.interpolate(logits, size=(23, 31), mode="bilinear", align_corners=True).argmax(dim=1)
    probabilities = logits.softmax(dim=1)
    prediction = Prediction.from_probabilities(probabilities[:, 1:], bg_probs=probabilities[:, 0],
                                               upsampling="log_probabilities", align_corners=True)
    assert torch.equal(prediction.resized((23, 31)).labels(), expected)
