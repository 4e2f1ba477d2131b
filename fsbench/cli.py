"""Command line: parse flags, build benchmark / sampler / method, train and/or evaluate, write the run."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import torch

from fsbench import PROJECT_ROOT, __version__
from fsbench.errors import FsbenchError, one_line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        print(f"fsbench: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _fold_classes(text: str) -> list[list[int]]:
    try:
        folds = [[int(value) for value in part.split(",") if value.strip()] for part in text.split(";")]
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected class ids like "1,2;3,4", got {text!r}') from None
    if not all(folds):
        raise argparse.ArgumentTypeError(f"every fold needs at least one class id, got {text!r}")
    return folds


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="main.py", description="fsbench: train and evaluate few-shot segmentation methods on episodes.")
    what = parser.add_argument_group("what to run")
    what.add_argument("--method", default="dml_knn", help="registered method (default dml_knn)")
    what.add_argument("--benchmark", default="shapes", help="registered benchmark (default shapes, embedded)")
    what.add_argument("--datapath", type=Path, default=PROJECT_ROOT / "data", help="folder holding the datasets (default data/)")
    what.add_argument("--fold", type=int, default=0)
    what.add_argument("--way", type=int, default=1)
    what.add_argument("--shot", type=int, default=1)
    what.add_argument("--queries", type=int, default=1, help="queries per episode")
    what.add_argument("--task", choices=("fss", "fscs"), help="fss: the query holds the class; fscs: iFSL's FS-CS (default: fss for 1-way, fscs for N-way)")
    what.add_argument("--episodes", type=int, help="evaluation episodes (default: the protocol's, e.g. 1000)")
    what.add_argument("--seed", type=int, default=0)
    what.add_argument("--protocol", default="hsnet", help="evaluation protocol (default hsnet)")
    what.add_argument("--split-dir", type=Path, help="folder of standard split lists, where a benchmark reads them")
    what.add_argument("--class-split", default="interleaved", help="COCO-20i class split: interleaved (default) or contiguous")
    what.add_argument("--use_original_imgsize", action="store_true", help="score at each query's original size")
    what.add_argument("--skip-bad", action="store_true", help="skip image/mask pairs found broken while indexing (the count is reported)")
    what.add_argument("--layout", default="auto", help="coco_json layout: auto, separate_json, unified or separate")
    what.add_argument("--folds", type=int, help="coco_json: number of folds over the categories (default 4)")
    what.add_argument("--fold-classes", type=_fold_classes, help='coco_json: novel class ids per fold, e.g. "1,2;3,4"')

    model = parser.add_argument_group("method settings (unset = the method's default)")
    model.add_argument("--backbone")
    model.add_argument("--pretrained", type=_boolean, help="ImageNet weights for the backbone (true/false)")
    model.add_argument("--lr", type=float)
    model.add_argument("--bsz", type=int, help="training batch size")
    model.add_argument("--loss", help="segmentation loss, for methods that have one")
    model.add_argument("--train-steps", type=int, help="training steps (0 = evaluate the initialised model)")
    model.add_argument("--img-size", type=int, help="square input size (default: the benchmark's)")

    run = parser.add_argument_group("running")
    run.add_argument("--eval", action="store_true", help="evaluate only (with --load)")
    run.add_argument("--load", type=Path, help="fsbench checkpoint (.safetensors) to start from")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--nworker", type=int, default=2, help="data loader workers")
    run.add_argument("--logpath", type=Path, help="run folder to create (default: a new folder under logs/)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")

    # --- reporting (issue 5): renders, paper tables ---
    report = parser.add_argument_group("reporting")
    report.add_argument("--vis", type=int, nargs="?", const=-1, metavar="N",
                        help="render the first N episodes (all without N) into the run's vis/ folder")
    report.add_argument("--table", nargs="+", metavar="RUN", help="print a table of finished runs (folders or globs) and exit")
    report.add_argument("--format", default="markdown", choices=("markdown", "latex", "csv"), help="table format (default markdown)")
    return parser


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise FsbenchError("--device cuda was asked for but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def new_run_dir(args, logs_root: Path) -> Path:
    """A folder that did not exist before: never overwrite an earlier run."""
    if args.logpath is not None:
        if args.logpath.exists():
            raise FsbenchError(f"run folder {args.logpath} already exists; runs are never overwritten")
        args.logpath.mkdir(parents=True)
        return args.logpath
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{args.method}_{args.benchmark}_fold{args.fold}_{args.way}way{args.shot}shot_{stamp}"
    for attempt in range(1000):
        candidate = logs_root / (base if attempt == 0 else f"{base}-{attempt}")
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            return candidate
        except FileExistsError:
            continue
    raise FsbenchError(f"could not create a new run folder under {logs_root}")


def _method_config(method_class, benchmark, args, checkpoint_metadata: dict | None):
    """The method's config: its defaults (quick profile on quick benchmarks), a checkpoint's
    settings when one is loaded, then the flags the user set."""
    config_class = method_class.Config
    config = config_class.quick() if benchmark.quick else config_class()
    overrides = {"backbone": args.backbone, "pretrained": args.pretrained, "lr": args.lr, "batch_size": args.bsz, "loss": args.loss}
    if checkpoint_metadata is not None:
        saved = checkpoint_metadata.get("config", {})
        for key in ("backbone", "embedding_dim"):
            if overrides.get(key) is not None and key in saved and overrides[key] != saved[key]:
                raise FsbenchError(f"checkpoint {args.load} was made for {key} {saved[key]!r}, not {overrides[key]!r}")
        known = {name for name in asdict(config)}
        # Weights come from the checkpoint, so ImageNet weights need not (and should not) be loaded.
        config = config.with_overrides({**{k: v for k, v in saved.items() if k in known}, "pretrained": False}, args.method)
        overrides["pretrained"] = None
    return config.with_overrides(overrides, args.method)


def run(args) -> dict:
    import benchmarks  # noqa: F401  (registers the benchmarks)
    import methods  # noqa: F401  (registers the methods)
    from benchmarks.base import BenchmarkOptions
    from fsbench.checkpoint import load_checkpoint, read_metadata, save_checkpoint
    from fsbench.evaluate import EvaluationSettings, evaluate, write_json
    from fsbench.foreign import import_foreign_checkpoint, is_torch_pickle
    from fsbench.protocols import get_protocol
    from fsbench.registry import BENCHMARKS, METHODS
    from fsbench.sampler import EpisodeSampler
    from fsbench.train import TrainSettings

    method_class = METHODS.get(args.method)
    benchmark_class = BENCHMARKS.get(args.benchmark)
    protocol = get_protocol(args.protocol)
    device = resolve_device(args.device)
    if args.eval and args.load is None:
        raise FsbenchError("--eval needs --load CHECKPOINT (or drop --eval to train first)")
    if args.nworker < 0:
        raise FsbenchError(f"--nworker must be at least 0, got {args.nworker}")
    if args.vis is not None and (args.vis == 0 or args.vis < -1):
        raise FsbenchError(f"--vis N needs N of at least 1 (or no N for every episode), got {args.vis}")

    # Everything that can fail on bad input is checked before the run folder is created.
    # A torch pickle is another codebase's release: the method maps it (fsbench.foreign), nothing is unpickled.
    foreign = import_foreign_checkpoint(method_class, args.load) if args.load is not None and is_torch_pickle(args.load) else None
    checkpoint_metadata = (foreign.as_metadata(args.method) if foreign else read_metadata(args.load)) if args.load is not None else None
    if checkpoint_metadata is not None and checkpoint_metadata.get("method") != args.method:
        raise FsbenchError(f"checkpoint {args.load} was made for method {checkpoint_metadata.get('method')!r}, not {args.method!r}")
    options = BenchmarkOptions(
        protocol=protocol.name, split_dir=args.split_dir, class_split=args.class_split, skip_bad=args.skip_bad,
        layout=args.layout, folds=args.folds, fold_classes=args.fold_classes,
    )
    benchmark = benchmark_class(args.datapath, args.fold, options)
    config = _method_config(method_class, benchmark, args, checkpoint_metadata)
    img_size = args.img_size or protocol.img_size(benchmark)
    transform = protocol.make_transform(img_size)
    task = args.task or ("fss" if args.way == 1 else "fscs")
    original_size = args.use_original_imgsize or protocol.score_original_size
    sampler = EpisodeSampler(
        benchmark,
        "test",
        way=args.way,
        shot=args.shot,
        queries=args.queries,
        episodes=args.episodes or protocol.episodes(benchmark),
        seed=args.seed,
        task=task,
        transform=transform,
        keep_original=original_size,
    )
    train_steps = 0 if args.eval else (config.train_steps if args.train_steps is None else args.train_steps)
    if train_steps < 0:
        raise FsbenchError(f"--train-steps must be at least 0, got {train_steps}")

    torch.manual_seed(args.seed)
    method = method_class(config, device)
    if args.load is not None:
        state = foreign.state if foreign else load_checkpoint(args.load, device)[0]
        method.load_state_dict(state)

    run_dir = new_run_dir(args, PROJECT_ROOT / "logs")
    # What identifies the run; written into both config.json and results.json.
    identity = {
        "method": args.method,
        "backbone": config.backbone,
        "benchmark": args.benchmark,
        "fold": args.fold,
        "way": args.way,
        "shot": args.shot,
        "queries": args.queries,
        "task": task,
        "seed": args.seed,
        "protocol": protocol.name,
    }
    settings_record = {
        "argv": sys.argv[1:],
        **identity,
        "img_size": img_size,
        "train_steps": train_steps,
        "device": str(device),
        "method_config": asdict(config),
        "benchmark_info": benchmark.describe(),
        "foreign_checkpoint": foreign.provenance if foreign else None,
        "versions": {"fsbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
    }
    write_json(run_dir / "config.json", settings_record)
    print(f"Run folder: {run_dir}")

    started = time.perf_counter()
    checkpoint = str(args.load) if args.load is not None else None
    if train_steps > 0:
        train_settings = TrainSettings(
            steps=train_steps,
            batch_size=config.batch_size,
            seed=args.seed,
            nworker=args.nworker,
            transform=transform,
            way=args.way,
            shot=args.shot,
            task=task,
            progress=not args.no_progress,
        )
        method.fit(benchmark, train_settings)
        checkpoint = str(run_dir / "model.safetensors")
        save_checkpoint(
            Path(checkpoint),
            method.state_dict(),
            {"method": args.method, "config": asdict(config), "benchmark": args.benchmark, "fold": args.fold, "step": train_steps},
        )
    train_seconds = time.perf_counter() - started

    evaluation = EvaluationSettings(
        device=device, nworker=args.nworker, batch_size=1, original_size=original_size, progress=not args.no_progress
    )
    if args.vis is not None:  # reporting: renders of the first N episodes
        from fsbench.vis import EpisodeRenderer

        evaluation.on_episode = EpisodeRenderer(run_dir / "vis", benchmark.class_names, None if args.vis == -1 else args.vis)
    scores = evaluate(method, sampler, evaluation, benchmark.class_names, run_dir=run_dir)
    results = {
        **identity,
        "episodes": len(sampler),
        "episode_fingerprint": sampler.fingerprint(),
        "miou": scores["miou"],
        "fbiou": scores["fbiou"],
        "er": scores["er"],
        "class_iou": scores["class_iou"],
        "eval_resolution": "original" if original_size else f"{img_size}x{img_size}",
        "checkpoint": checkpoint,
        "foreign_checkpoint": foreign.provenance if foreign else None,
        # Steps behind the evaluated weights: a loaded checkpoint's own steps count too.
        "train_steps": train_steps + int((checkpoint_metadata or {}).get("step", 0)),
        "train_s": round(train_seconds, 2),
        "elapsed_s": round(time.perf_counter() - started, 2),
        "timing": scores["timing"],
        "benchmark_info": benchmark.describe(),
    }
    write_json(run_dir / "results.json", results)
    # reporting: the run's own row, in the format --table would print it
    from fsbench.tables import format_run_row

    print(format_run_row(results, args.format, run_dir / "episodes.csv"))
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.table:  # reporting: tables of finished runs; nothing is trained or evaluated
            from fsbench.tables import main_table

            print(main_table(args.table, args.format), end="")
            return 0
        run(args)
    except FsbenchError as error:
        print(f"fsbench: error: {one_line(error)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fsbench: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
