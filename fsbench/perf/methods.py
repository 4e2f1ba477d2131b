"""The methods table on `shapes`: per method and fold, trained (default budget) vs untrained.

    python -m fsbench.perf.methods [--methods dml_knn panet mtl_unet] [--folds 0 1 2 3] [--episodes 1000]

Per method and fold it trains with the method's default budget - an episodic method twice, once on
1-way 1-shot FS-S episodes (evaluated at 1-way 1-shot and, from the same checkpoint, 1-way 5-shot)
and once on 2-way 1-shot FS-CS episodes (evaluated at 2-way 1-shot); a method whose training never
sees episodes (dml_knn) once, for all three - and evaluates every setting at --train-steps 0 on the
same episodes. Runs go through the CLI, so each leaves its usual run folder under --logs; the table
with confidence intervals is then `python main.py --table '<logs>/*'`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

SETTINGS = (  # (label, way, shot, name of the training run whose checkpoint it evaluates)
    ("1-way 1-shot", 1, 1, "train-1way"),
    ("1-way 5-shot", 1, 5, "train-1way"),
    ("2-way 1-shot", 2, 1, "train-2way"),
)


def _run(argv: list[str], run_dir: Path) -> dict:
    from fsbench.cli import main

    if main([*argv, "--logpath", str(run_dir)]) != 0:
        raise SystemExit(f"run failed: {' '.join(argv)}")
    return json.loads((run_dir / "results.json").read_text())


def method_rows(method: str, fold: int, episodes: int, nworker: int, logs: Path) -> list[list]:
    from fsbench.registry import METHODS

    episodic = METHODS.get(method).trains_on_episodes
    common = ["--method", method, "--fold", str(fold), "--episodes", str(episodes), "--no-progress", "--nworker", str(nworker)]
    trained: dict[str, dict] = {}
    rows = []
    for label, way, shot, training in SETTINGS:
        setting = [*common, "--way", str(way), "--shot", str(shot)]
        run_dir = logs / f"{method}-fold{fold}-{way}way{shot}shot"
        training = training if episodic else "train"
        if training not in trained:  # train on this setting's episodes, evaluate it at once
            result = _run(setting, run_dir)
            trained[training] = {"checkpoint": result["checkpoint"], "train_s": result["train_s"]}
        else:
            result = _run([*setting, "--eval", "--load", trained[training]["checkpoint"]], run_dir)
        untrained = _run([*setting, "--train-steps", "0"], logs / f"{method}-fold{fold}-{way}way{shot}shot-untrained")
        assert result["episode_fingerprint"] == untrained["episode_fingerprint"]
        rows.append([method, fold, label,
                     *(f"{result[key]:.1f}" for key in ("miou", "fbiou", "er")),
                     *(f"{untrained[key]:.1f}" for key in ("miou", "fbiou", "er")),
                     f"{result['miou'] - untrained['miou']:+.1f}",
                     f"{trained[training]['train_s']:.0f}", f"{result['timing']['total_s']:.0f}"])
    return rows


def write_table(method_names: list[str], folds: list[int], rows_of, headers: list[str], logs: Path) -> None:
    """Rows of every (method, fold) from rows_of(method, fold), the table printed after each (partial
    tables survive a stop) and written to <logs>/table.md."""
    from tabulate import tabulate

    rows = []
    for method in method_names:
        for fold in folds:
            rows.extend(rows_of(method, fold))
            print(tabulate(rows, headers=headers, tablefmt="github"), flush=True)
    (logs / "table.md").write_text(tabulate(rows, headers=headers, tablefmt="github") + "\n")
    print(f"table written to {logs / 'table.md'}")


HEADERS = ["method", "fold", "setting", "mIoU", "FB-IoU", "ER", "mIoU@0", "FB-IoU@0", "ER@0", "gain", "train s", "eval s"]


def main(argv: list[str] | None = None) -> None:
    import methods  # noqa: F401  (registers the methods that method_rows looks up)

    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.methods", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["dml_knn", "panet", "mtl_unet"])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--nworker", type=int, default=0)
    parser.add_argument("--logs", default="logs/perf-methods")
    args = parser.parse_args(argv)
    logs = Path(args.logs) / time.strftime("%Y%m%d-%H%M%S")
    write_table(args.methods, args.folds, lambda method, fold: method_rows(method, fold, args.episodes, args.nworker, logs), HEADERS, logs)


if __name__ == "__main__":
    main()
