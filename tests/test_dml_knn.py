"""dml_knn pieces against independent computations: kNN, competing ways, Proxy-Anchor, pixel sampling, proxies train."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fsbench.episode import Episode
from fsbench.errors import FsbenchError
from fsbench.losses import proxy_anchor_loss
from fsbench.engine.fit import FitSettings, fit
from fsbench.transforms import SquashResize
from methods.dml_knn import DMLKNN, DMLKNNConfig, knn_label_shares, sample_pixels


def test_knn_matches_brute_force_and_is_chunk_invariant():
    generator = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(300, 16, generator=generator), dim=1)
    references = F.normalize(torch.randn(120, 16, generator=generator), dim=1)
    labels = torch.randint(0, 3, (120,), generator=generator)  # 0 = background, 1 and 2 = two ways
    expected = []
    for query in queries:  # brute force: sort all similarities, count each label among the top 7
        order = sorted(range(120), key=lambda r: -float(query @ references[r]))
        expected.append([sum(int(labels[r]) == label for r in order[:7]) / 7 for label in range(3)])
    for chunk in (1, 17, 300, 1000):
        result = knn_label_shares(queries, references, labels, 3, k=7, chunk_size=chunk)
        assert torch.allclose(result, torch.tensor(expected), atol=1e-6)
    # k larger than the reference set: each label's share of all references.
    everything = knn_label_shares(queries, references, labels, 3, k=1000, chunk_size=64)
    assert torch.allclose(everything, torch.bincount(labels, minlength=3).float().div(120).expand(300, 3))
    # No references at all (every support mask empty): no votes for anything.
    assert knn_label_shares(queries, references[:0], labels[:0], 3, k=7, chunk_size=64).abs().max() == 0


def test_ways_compete_for_query_pixels():
    # Embeddings on a circle: background at 0 degrees, way 2's support object at 60, the query's
    # object (way 1's class) at 90, exactly way 1's support object. Judged alone, way 2's kNN would
    # find the query object nearer its positives (60) than its negatives (0) and call way 2 present;
    # in one kNN over both ways the query object's neighbours are way 1's pixels, so only way 1 is.
    size = 16
    angles = torch.zeros(2, 1, size, size)  # support "images": one angle per pixel
    support_masks = torch.zeros(2, 1, size, size, dtype=torch.long)
    angles[0, 0, 4:12, 4:12], support_masks[0, 0, 4:12, 4:12] = 90.0, 1
    angles[1, 0, 4:12, 4:12], support_masks[1, 0, 4:12, 4:12] = 60.0, 1
    query_angles = torch.zeros(1, size, size)
    query_angles[0, 2:10, 2:10] = 90.0
    query_masks = (query_angles == 90).long()

    def as_images(angle: torch.Tensor) -> torch.Tensor:  # [..., H, W] degrees -> [..., 3, H, W]
        radians = torch.deg2rad(angle)
        return torch.stack([radians.cos(), radians.sin(), torch.zeros_like(radians)], dim=-3)

    episode = Episode(
        support_images=as_images(angles), support_masks=support_masks,
        query_images=as_images(query_angles), query_masks=query_masks,
        class_ids=torch.tensor([1, 2]), query_presence=torch.tensor([[True, False]]),
    )
    method = DMLKNN(tiny_config(k=16, knn_stride=1), "cpu").eval()
    method.embed = lambda images: F.normalize(images, dim=1)  # the pixel's point on the circle
    prediction = method.predict(episode.without_query_labels())
    assert torch.equal(prediction.presence >= 0.5, torch.tensor([[True, False]]))
    assert torch.equal(prediction.labels(), query_masks)
    # Way 2 alone (a 1-way episode with its support) does claim the object: competition is what decides.
    alone = Episode(
        support_images=episode.support_images[1:], support_masks=support_masks[1:],
        query_images=episode.query_images, query_masks=torch.zeros_like(query_masks),
        class_ids=torch.tensor([2]), query_presence=torch.tensor([[False]]),
    )
    assert method.predict(alone.without_query_labels()).presence.item() == 1.0


def test_proxy_anchor_matches_the_formula():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(10, 4, generator=generator)
    proxies = torch.randn(3, 4, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0, 1, 1])  # class 2 has no positives
    alpha, delta = 32.0, 0.1
    cos = F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).t()
    positive_terms, negative_terms = [], []
    for p in range(3):
        pos = [math.exp(-alpha * (cos[i, p] - delta)) for i in range(10) if labels[i] == p]
        neg = [math.exp(alpha * (cos[i, p] + delta)) for i in range(10) if labels[i] != p]
        if pos:
            positive_terms.append(math.log(1 + sum(pos)))
        negative_terms.append(math.log(1 + sum(neg)))
    expected = sum(positive_terms) / len(positive_terms) + sum(negative_terms) / 3
    assert proxy_anchor_loss(embeddings, labels, proxies, alpha, delta).item() == pytest.approx(expected, rel=1e-5)


def test_sample_pixels_is_class_balanced_and_skips_ignore():
    labels = torch.zeros(1, 20, 20, dtype=torch.long)
    labels[0, :2, :2] = 3  # 4 pixels of class 3, 396 background
    labels[0, 10:, :] = 255
    embeddings = torch.arange(400, dtype=torch.float).view(1, 1, 20, 20)
    _, sampled_labels = sample_pixels(embeddings, labels, 40, torch.Generator().manual_seed(0))
    assert 255 not in sampled_labels.tolist()
    assert (sampled_labels == 3).sum() == 4  # every class-3 pixel, despite being 1% of the image


def test_sample_pixels_skips_an_image_with_no_valid_pixel():
    labels = torch.full((3, 6, 6), 255, dtype=torch.long)
    labels[0, :3] = 1  # image 0: 18 pixels of class 1; image 1: all ignore; image 2: 36 background
    labels[2] = 0
    embeddings = torch.arange(3 * 36, dtype=torch.float).view(3, 1, 6, 6)  # value = flat pixel index
    sampled, sampled_labels = sample_pixels(embeddings, labels, 10, torch.Generator().manual_seed(0))
    values = sampled.squeeze(1).long()
    assert len(values) == 20  # 10 draws from each of the two images that have pixels
    assert set(values[:10].tolist()) <= set(range(18)) and set(values[10:].tolist()) <= set(range(72, 108))
    assert sampled_labels.tolist() == [1] * 10 + [0] * 10


def tiny_config(**changes):
    config = DMLKNNConfig.quick()
    return DMLKNNConfig(**{**config.__dict__, "batch_size": 2, **changes})


def train(method, benchmark, steps: int, **settings) -> None:
    fit(method, benchmark, FitSettings(steps=steps, transform=SquashResize(64), progress=False, **settings), run_dir=None)


def test_proxies_are_trained(tiny_shapes):
    # The original implementation's proxies never reached the optimiser; here they must move
    # between optimisation steps (snapshots after step 0 and after step 1).
    method = DMLKNN(tiny_config(), "cpu")
    snapshots = []
    train(method, tiny_shapes, 2, on_step=lambda step, row: snapshots.append(method.proxies.weight.detach().clone()))
    assert method.proxies.weight.shape == (len(tiny_shapes.classes("train")) + 1, 64)
    assert len(snapshots) == 2 and not torch.allclose(snapshots[0], snapshots[1])


def test_frozen_encoder_keeps_weights_and_statistics_while_the_decoder_learns(tiny_shapes):
    method = DMLKNN(tiny_config(freeze_encoder=True), "cpu")
    encoder_before = {key: value.clone() for key, value in method.network.encoder.state_dict().items()}
    decoder_before = {key: value.clone() for key, value in method.network.decoder.state_dict().items()}
    train(method, tiny_shapes, 2)
    encoder_after, decoder_after = method.network.encoder.state_dict(), method.network.decoder.state_dict()
    # Weights and batch-norm running statistics alike.
    assert all(torch.equal(encoder_before[key], encoder_after[key]) for key in encoder_before)
    assert any(not torch.equal(decoder_before[key], decoder_after[key]) for key in decoder_before)


def test_encoder_depth_follows_the_decoder_widths():
    method = DMLKNN(tiny_config(decoder_channels=(32, 16, 16)), "cpu")
    assert len(method.network.encoder.out_channels) == 4  # the input and three stages
    assert method.valid_size(100, 130) == (104, 136)  # multiples of 2^3
    assert method.embed(torch.zeros(1, 3, 64, 72)).shape == (1, 64, 64, 72)


def test_learning_rate_decays_along_a_cosine_to_zero(tiny_shapes):
    method = DMLKNN(tiny_config(), "cpu")
    rates = []
    train(method, tiny_shapes, 4, on_step=lambda step, row: rates.append(row["lr"]))
    # The rate of update s (0-based) of 4: lr * (1 + cos(pi s / 4)) / 2, reaching 0 after the last.
    assert rates == pytest.approx([1e-3 * (1 + math.cos(math.pi * done / 4)) / 2 for done in (0, 1, 2, 3)])


def test_empty_support_mask_predicts_nothing(tiny_shapes):
    from fsbench.sampler import EpisodeSampler

    method = DMLKNN(tiny_config(), "cpu").eval()
    episode = EpisodeSampler(tiny_shapes, "test", episodes=2, transform=SquashResize(64))[0]
    episode.support_masks.zero_()
    prediction = method.predict(episode)
    assert prediction.fg_probs.max() == 0 and prediction.presence.max() == 0


def test_training_ignores_way_shot_and_task(tiny_shapes):
    # trains_on_episodes = False lets one dml_knn checkpoint serve every setting (fsbench.perf.methods
    # relies on it): training for 2-way FS-CS must give bit-identical weights to 1-way 1-shot FS-S.
    assert not DMLKNN.trains_on_episodes
    states = []
    for way, shot, task in ((1, 1, "fss"), (2, 5, "fscs")):
        torch.manual_seed(0)
        method = DMLKNN(tiny_config(), "cpu")
        train(method, tiny_shapes, 2, way=way, shot=shot, task=task)
        states.append(method.state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_metric_loss_is_float32_under_bf16_autocast():
    # Under --amp bf16 the network runs in bf16 but the Proxy-Anchor loss must not: alpha 32 turns
    # bf16's cosine error into 0.1 in each exponent. The loss equals a float32 computation on the
    # same (bf16-produced) embeddings.
    from fsbench.engine.plan import StepContext

    torch.manual_seed(0)
    method = DMLKNN(tiny_config(), "cpu")
    method.proxies.resize(4)
    method.proxies.weight.data.copy_(F.normalize(torch.randn(4, 64), dim=1))
    images = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 4, (2, 32, 32))
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = method.metric_loss((images, labels), StepContext(step=0, generator=torch.Generator().manual_seed(5)))["loss"]
        embeddings = method.network(images)
    assert embeddings.dtype == torch.bfloat16 and loss.dtype == torch.float32
    sampled, sampled_labels = sample_pixels(embeddings.float(), labels, method.config.pixels_per_image, torch.Generator().manual_seed(5))
    expected = proxy_anchor_loss(sampled, sampled_labels, method.proxies.weight, method.config.alpha, method.config.delta)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_channels_last_network_embeds_as_the_default_layout_and_saves_plain_tensors(tmp_path):
    # channels_last is a layout, not a model: the same weights in NCHW give the same embeddings up to
    # float rounding, and a checkpoint written from the NHWC network loads into an NCHW one.
    from fsbench.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    nhwc = DMLKNN(tiny_config(channels_last=True), "cpu").eval()
    nchw = DMLKNN(tiny_config(channels_last=False), "cpu").eval()
    weight = nhwc.network.encoder.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert nchw.network.encoder.conv1.weight.is_contiguous()
    save_checkpoint(tmp_path / "model.safetensors", nhwc.state_dict(), {})
    state, _ = load_checkpoint(tmp_path / "model.safetensors", "cpu")
    nchw.load_state_dict(state)
    images = torch.randn(2, 3, 64, 64)
    assert torch.allclose(nhwc.embed(images), nchw.embed(images), atol=1e-5)


def test_train_crop_trains_on_one_random_window_of_the_images_and_their_labels(monkeypatch):
    # The network sees one window of the batch per step, and the loss samples pixels of the same
    # window of the labels; the window moves from step to step.
    import methods.dml_knn as dml_knn
    from fsbench.engine.plan import StepContext

    torch.manual_seed(0)
    method = DMLKNN(tiny_config(train_crop=16), "cpu")
    method.proxies.resize(4)
    images, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2, 32, 32))
    seen_images, seen_labels = [], []
    method.network.register_forward_hook(lambda module, inputs, output: seen_images.append(inputs[0]))
    real_sample_pixels = dml_knn.sample_pixels
    monkeypatch.setattr(dml_knn, "sample_pixels", lambda e, l, *rest: (seen_labels.append(l), real_sample_pixels(e, l, *rest))[1])
    windows = set()
    for step in range(6):
        method.metric_loss((images, labels), StepContext(step=step, generator=torch.Generator().manual_seed(step)))
        assert seen_images[-1].shape == (2, 3, 16, 16)
        matches = [(top, left) for top in range(17) for left in range(17)
                   if torch.equal(seen_images[-1], images[..., top : top + 16, left : left + 16])]
        assert len(matches) == 1
        top, left = matches[0]
        assert torch.equal(seen_labels[-1], labels[..., top : top + 16, left : left + 16])
        windows.add(matches[0])
    assert len(windows) > 1


def test_train_crop_must_suit_the_network():
    with pytest.raises(FsbenchError, match="train_crop 20 .* multiple of 8"):
        DMLKNN(tiny_config(train_crop=20), "cpu")
