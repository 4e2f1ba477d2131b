"""Strong vs weak vs untrained on FS-CS episodes (iFSL's table on `shapes`), per method and fold.

    python -m fsbench.perf.fscs [--methods pfenet panet] [--folds 0 1 2 3] [--ways 1 2] [--episodes 200]

Per method and fold it trains twice at the method's default budget on 1-way 1-shot FS-CS episodes
(the query holds the support class or not; iFSL trains at 1 way and tests at N): once with masks
(strong) and once with class tags only (`--weak`). Each checkpoint and the untrained model
(`--train-steps 0`) are evaluated on the same N-way 1-shot FS-CS episodes for every N in --ways.
A weak model is scored as it trained, without support masks, and so is its baseline "untrained
(tags)"; rows give mIoU and ER for each, the weak model's ER gain over that baseline and the
training times. Every run leaves its usual folder under --logs, so
`python main.py --table '<logs>/*'` gives the same numbers with confidence intervals.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from fsbench.perf.methods import _run, write_table

HEADERS = ["method", "fold", "way", "untrained mIoU", "untrained ER", "strong mIoU", "strong ER",
           "untrained (tags) mIoU", "untrained (tags) ER", "weak mIoU", "weak ER", "weak ER - untrained (tags)",
           "strong train s", "weak train s"]


def method_rows(method: str, fold: int, ways: list[int], episodes: int, logs: Path, train_steps: int | None = None) -> list[list]:
    budget = [] if train_steps is None else ["--train-steps", str(train_steps)]
    common = ["--method", method, "--benchmark", "shapes", "--fold", str(fold), "--task", "fscs", "--shot", "1",
              "--no-progress", "--nworker", "0"]
    # The training runs evaluate themselves on the 1-way episodes; other ways load their checkpoints.
    trained = {}
    # Weak runs keep their default model selection by validation ER (iFSL's); strong runs keep the last weights.
    for variant, flags in (("strong", ["--val-every", "0"]), ("weak", ["--weak"])):
        trained[variant] = _run([*common, "--way", "1", "--episodes", str(episodes), *budget, *flags], logs / f"{method}-fold{fold}-{variant}-1way")
    rows = []
    for way in ways:
        setting = [*common, "--way", str(way), "--episodes", str(episodes)]
        results = {"untrained": _run([*setting, "--train-steps", "0"], logs / f"{method}-fold{fold}-untrained-{way}way"),
                   # the weak model's baseline: the same untrained network, also without support masks
                   "untrained-tags": _run([*setting, "--train-steps", "0", "--weak"], logs / f"{method}-fold{fold}-untrained-tags-{way}way")}
        for variant in ("strong", "weak"):
            if way == 1:
                results[variant] = trained[variant]
                continue
            weak = ["--weak"] if variant == "weak" else []  # a weak model is scored as it was trained: no support masks
            results[variant] = _run([*setting, *weak, "--eval", "--load", trained[variant]["checkpoint"]],
                                    logs / f"{method}-fold{fold}-{variant}-{way}way")
        fingerprints = {result["episode_fingerprint"] for result in results.values()}
        assert len(fingerprints) == 1, "the three runs must score the same episodes"
        rows.append([method, fold, way,
                     *(f"{results[variant][key]:.1f}" for variant in ("untrained", "strong", "untrained-tags", "weak") for key in ("miou", "er")),
                     f"{results['weak']['er'] - results['untrained-tags']['er']:+.1f}",
                     f"{trained['strong']['train_s']:.0f}", f"{trained['weak']['train_s']:.0f}"])
    return rows


def main(argv: list[str] | None = None) -> None:
    import methods  # noqa: F401  (registers the methods)

    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.fscs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["pfenet", "panet"])
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--ways", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--train-steps", type=int, help="training budget (default: each method's own)")
    parser.add_argument("--logs", default="logs/perf-fscs")
    args = parser.parse_args(argv)
    logs = Path(args.logs) / time.strftime("%Y%m%d-%H%M%S")
    write_table(args.methods, args.folds, lambda method, fold: method_rows(method, fold, args.ways, args.episodes, logs, args.train_steps),
                HEADERS, logs)


if __name__ == "__main__":
    main()
