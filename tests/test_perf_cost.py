"""python -m fsbench.perf.cost: parameter counts and MACs per episode."""
import segmentation_models_pytorch as smp
import torch
from torch.utils.flop_counter import FlopCounterMode

import methods  # noqa: F401  (registers the methods)
from fsbench.perf.cost import measure


def test_counts_match_an_independently_built_network():
    figures = measure("dml_knn", "resnet18", size=64, shot=1, way=1)
    network = smp.UnetPlusPlus(encoder_name="resnet18", encoder_weights=None, decoder_channels=(256, 128, 64, 32, 16), classes=512)
    assert figures["total"] == figures["learnable"] == sum(p.numel() for p in network.parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        network(torch.zeros(2, 3, 64, 64))  # the support and the query image
    network_gmac = counter.get_total_flops() / 2e9
    # The episode adds the kNN's similarity products to the two network passes: every query pixel
    # (knn_stride 1) against the references, 1000 positives (max_positive_samples, of the 32x32 = 1024
    # foreground pixels) and all 3072 background pixels (fewer than 20 per positive), 512-d.
    knn_gmac = 64 * 64 * (1000 + 3072) * 512 / 1e9
    assert abs(figures["gmac"] - (network_gmac + knn_gmac)) < 0.01 * figures["gmac"]
