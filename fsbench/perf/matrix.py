"""The real-settings matrix, timed: every method x benchmark x protocol at real image sizes.

    python -m fsbench.perf.matrix [--methods ...] [--episodes 3] [--keep DIR]

Each cell trains one step and evaluates ``--episodes`` episodes with tiny networks
(fsbench.fixtures.real_settings) on generated trees in the real layouts (VOC 500x375, COCO 640x480,
FSS-1000 224x224, custom 640x480; shapes 128x128), under HSNet's protocol (400x400) and PFENet's
(473 Pascal / 641 COCO, aspect kept, scored at the original size). Prints ok / the error, and the
seconds per evaluated episode (inside the method and in total) from each run's results.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
from pathlib import Path

from tabulate import tabulate

BENCHMARKS = ("shapes", "pascal", "coco", "fss", "coco_json")


def main() -> None:
    import benchmarks  # noqa: F401  (registers the benchmarks)
    import methods  # noqa: F401  (registers the methods)
    from benchmarks.shapes import generate
    from fsbench.cli import main as cli_main
    from fsbench.fixtures.real_settings import PROTOCOLS, cell_arguments, make_real_trees
    from fsbench.registry import METHODS

    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.matrix", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS.names())
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="keep the trees and runs in this folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="fsbench-matrix-") as temporary:
        root = args.keep or Path(temporary)
        datapaths = make_real_trees(root / "data")
        generate(root / "data" / "shapes_root" / "shapes", images_per_split={"train": 160, "val": 200})
        datapaths["shapes"] = root / "data" / "shapes_root"
        rows = []
        for method in args.methods:
            for benchmark in BENCHMARKS:
                for protocol in PROTOCOLS:
                    run_dir = root / "runs" / f"{method}_{benchmark}_{protocol}"
                    arguments = cell_arguments(method, benchmark, datapaths[benchmark], protocol, run_dir)
                    arguments[arguments.index("--episodes") + 1] = str(args.episodes)
                    errors = io.StringIO()
                    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
                        code = cli_main(arguments)
                    if code != 0:
                        rows.append([method, benchmark, protocol, "FAILED: " + errors.getvalue().strip()[-120:], "", "", ""])
                        continue
                    results = json.loads((run_dir / "results.json").read_text())
                    timing = results["timing"]
                    rows.append([
                        method, benchmark, protocol, "ok", results["eval_resolution"],
                        round(timing["predict_s"] / results["episodes"], 3), round(timing["total_s"] / results["episodes"], 3),
                    ])
        print(tabulate(rows, headers=["method", "benchmark", "protocol", "status", "scored at", "s/episode (method)", "s/episode (total)"],
                       tablefmt="github"))


if __name__ == "__main__":
    main()
