"""Parameters and multiply-accumulates per episode, per method and backbone.

    python -m fsbench.perf.cost [--methods hsnet asnet asnethm] [--backbones vgg16 resnet50 resnet101]
                                [--size 400] [--shot 1] [--way 1]

For each method and backbone it builds the network with random weights (nothing is downloaded),
counts learnable parameters (those that training updates: requires_grad) and all parameters, and
runs one episode of `--size` x `--size` images through the method's own `predict` under
torch.utils.flop_counter.FlopCounterMode. MACs are the counted FLOPs / 2: convolutions, matrix
products and their batched forms (the operations that carry the cost; element-wise work, pooling and
interpolation are not counted, as in the papers' figures). A method whose prediction trains
(mtl_unet's inner loop) counts that backward work too, since it is part of its episode.
"""
from __future__ import annotations

import argparse

import torch

DEFAULT_METHODS = ["hsnet", "asnet", "asnethm"]
DEFAULT_BACKBONES = ["vgg16", "resnet50", "resnet101"]


def synthetic_episode(size: int, shot: int, way: int):
    """An N-way K-shot episode of [size x size] random images; each way's support foreground is a
    centred square covering a quarter of the image."""
    from fsbench.episode import Episode

    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(way, shot, size, size, dtype=torch.long)
    masks[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return Episode(
        support_images=torch.randn(way, shot, 3, size, size, generator=generator),
        support_masks=masks,
        query_images=torch.randn(1, 3, size, size, generator=generator),
        query_masks=torch.zeros(1, size, size, dtype=torch.long),
        class_ids=torch.arange(1, way + 1),
        query_presence=torch.ones(1, way, dtype=torch.bool),
        query_original_sizes=torch.tensor([[size, size]]),
    )


def measure(method_name: str, backbone: str, size: int, shot: int, way: int) -> dict:
    """{'learnable': int, 'total': int, 'gmac': float, 'valid_size': (h, w)} for one method and backbone."""
    from torch.utils.flop_counter import FlopCounterMode

    from fsbench.engine.padding import predict_padded
    from fsbench.registry import METHODS

    method_class = METHODS.get(method_name)
    config = method_class.Config().with_overrides({"backbone": backbone, "pretrained": False}, method_name)
    method = method_class(config, "cpu")
    parameters = [parameter for module in method.modules().values() for parameter in module.parameters()]
    for module in method.modules().values():
        module.eval()
    # predict_padded: the engine's own path (pad to the method's valid size, predict, crop back).
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        predict_padded(method, synthetic_episode(size, shot, way))
    return {
        "learnable": sum(parameter.numel() for parameter in parameters if parameter.requires_grad),
        "total": sum(parameter.numel() for parameter in parameters),
        "gmac": counter.get_total_flops() / 2e9,
        "valid_size": method.valid_size(size, size),
    }


def main(argv: list[str] | None = None) -> None:
    from tabulate import tabulate

    import methods  # noqa: F401  (registers the methods)

    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("--backbones", nargs="+", default=DEFAULT_BACKBONES)
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--shot", type=int, default=1)
    parser.add_argument("--way", type=int, default=1)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for method_name in args.methods:
        for backbone in args.backbones:
            figures = measure(method_name, backbone, args.size, args.shot, args.way)
            rows.append([method_name, backbone, f"{figures['learnable'] / 1e6:.3f}M", f"{figures['total'] / 1e6:.2f}M",
                         f"{figures['gmac']:.1f}", "x".join(map(str, figures["valid_size"]))])
    print(tabulate(rows, headers=["method", "backbone", "learnable params", "all params", "GMAC per episode", "input"], tablefmt="github"))
    print(f"{args.way}-way {args.shot}-shot, one query, {args.size}x{args.size} (padded to each method's valid size)")


if __name__ == "__main__":
    main()
