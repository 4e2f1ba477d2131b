"""The generalized-FSS table (base + novel classes in one query) with trained members, per configuration.

    python -m fsbench.perf.gfss cityscapes --datapath D [--fake] [--configs 000 004 008] [--train-steps 200]
    python -m fsbench.perf.gfss shapes [--configs 0 1] [--train-steps 1000]

For each configuration (a Cityscapes vocabulary configuration, or a shapes fold: base = its
training classes, novel = the fold) it trains `combine` with its two default members - `supervised`
on the in-vocabulary classes and `panet` on episodes of those classes, both at their quick profiles -
and scores both members and every combination rule on the same queries (one support set of --shot
images per novel class). The upper bound (`supervised --train-classes all`) is trained once on the
first configuration and scored on each. `--fake` first writes a fake Cityscapes tree in the real
layout (fsbench/fixtures/cityscapes.py: --images train images and a quarter as many val, 2048x1024
unless --fake-size). Finally `python main.py --table` renders the runs (rows per approach, columns
all / in / out / hm with bootstrap intervals, and every rule minus each member with paired p-values)
into <work>/table.md.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

from fsbench.perf.methods import _run


def main(argv: list[str] | None = None) -> None:
    import benchmarks  # noqa: F401  (registers the benchmarks)
    import methods  # noqa: F401  (registers the methods)
    from fsbench.cli import main as cli

    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.gfss", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=("cityscapes", "shapes"))
    parser.add_argument("--datapath", default="data")
    parser.add_argument("--configs", nargs="+", help="vocabulary configurations (cityscapes, default 000 004 008) or folds (shapes, default 0)")
    parser.add_argument("--train-steps", type=int, help="budget of each member (default: cityscapes 200, shapes 1000)")
    parser.add_argument("--shot", type=int, help="support images per novel class (default: cityscapes 5, shapes 1)")
    parser.add_argument("--episodes", type=int, help="queries scored (default: all of cityscapes' val images; shapes 300)")
    parser.add_argument("--img-size", type=int, help="default: cityscapes 128 (a CPU budget), shapes 128")
    parser.add_argument("--fake", action="store_true", help="write a fake Cityscapes tree under --datapath first")
    parser.add_argument("--images", type=int, default=60, help="train images of the fake tree")
    parser.add_argument("--fake-size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--work", default="logs/perf-gfss")
    args = parser.parse_args(argv)
    city = args.benchmark == "cityscapes"
    configs = args.configs or (["000", "004", "008"] if city else ["0"])
    steps = args.train_steps or (200 if city else 1000)
    shot = args.shot or (5 if city else 1)
    work = Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    if args.fake:
        from fsbench.fixtures.cityscapes import make_cityscapes

        height, width = args.fake_size
        make_cityscapes(Path(args.datapath), train=args.images, val=max(1, args.images // 4), height=height, width=width)
    common = ["--task", "gfss", "--benchmark", args.benchmark, "--datapath", args.datapath, "--shot", str(shot),
              "--img-size", str(args.img_size or 128), "--nworker", "0", "--no-progress", "--val-every", "0", "--seed", "0"]
    if args.episodes:
        common += ["--episodes", str(args.episodes)]
    elif not city:
        common += ["--episodes", "300"]
    # Off shapes the members need their CPU profiles asked for; supervised's upper bound likewise.
    quick = ["--set", "quick_profile=true"] if city else []
    upper_quick = ["--backbone", "resnet18", "--set", "pretrained=false", "--set", "decoder_channels=128,64,32,16,16",
                   "--set", "optimiser=adam", "--lr", "0.001", "--set", "weight_decay=0", "--set", "schedule=constant",
                   "--set", "foreground_weight=10"] if city else []
    upper_checkpoint = None
    for config in configs:
        where = ["--vocab-config", config] if city else ["--fold", config]
        _run([*common, *where, "--method", "combine", "--members", "supervised,panet", *quick, "--train-steps", str(steps)],
             work / f"combine_{config}")
        if upper_checkpoint is None:
            result = _run([*common, *where, "--method", "supervised", "--train-classes", "all", *upper_quick, "--train-steps", str(steps)],
                          work / f"upper_{config}")
            upper_checkpoint = result["checkpoint"]
        else:
            _run([*common, *where, "--method", "supervised", "--train-classes", "all", "--eval", "--load", upper_checkpoint],
                 work / f"upper_{config}")
    rendered = io.StringIO()
    with contextlib.redirect_stdout(rendered):
        code = cli(["--table", str(work / "*")])
    if code != 0:
        raise SystemExit("rendering the table failed")
    (work / "table.md").write_text(rendered.getvalue())
    print(rendered.getvalue())


if __name__ == "__main__":
    main()
