"""Command line: parse flags and dispatch (a run: fsbench.run; tables: fsbench.tables). Any error ends in
one line on stderr and a non-zero exit; --debug shows the traceback instead."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fsbench import PROJECT_ROOT
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


def _members(text: str) -> tuple[str, ...]:
    members = tuple(part.strip() for part in text.split(",") if part.strip())
    if len(members) != 2:
        raise argparse.ArgumentTypeError(f"expected two members A,B, got {text!r}")
    return members


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
    what.add_argument("--task", choices=("fss", "fscs", "gfss"), help="fss: the query holds the class; fscs: iFSL's FS-CS (default: fss for 1-way, fscs for N-way); gfss: generalized FSS, base and novel classes in every query")
    what.add_argument("--episodes", type=int, help="evaluation episodes (default: the protocol's, e.g. 1000)")
    what.add_argument("--seed", type=int, default=0)
    what.add_argument("--protocol", default="hsnet", help="evaluation protocol (default hsnet)")
    what.add_argument("--split-dir", type=Path, help="folder of standard split lists, where a benchmark reads them")
    what.add_argument("--class-split", default="interleaved", help="COCO-20i class split: interleaved (default) or contiguous")
    what.add_argument("--use_original_imgsize", action="store_true", help="score at each query's original size")
    what.add_argument("--labels", default="argmax", help="labels from probabilities: argmax over [background, ways] (default, iFSL/HSNet) or threshold (a way where its probability >= 0.5)")
    what.add_argument("--layout", default="auto", help="coco_json layout: auto, separate_json, unified or separate")
    what.add_argument("--folds", type=int, help="coco_json: number of folds over the categories (default 4)")
    what.add_argument("--fold-classes", type=_fold_classes, help='coco_json: novel class ids per fold, e.g. "1,2;3,4"')
    what.add_argument("--all-classes", action="store_true", help="coco_json: train on every category (no held-out fold), e.g. to fine-tune for deployment")
    what.add_argument("--replay", choices=("hsnet", "ifsl"), help="test on exactly the episodes of HSNet's or iFSL's test loader (needs their split lists)")
    what.add_argument("--boundary", choices=("ignore", "background"), help="query-mask ignore pixels (255): ignore (default for fss) or background (default for fscs, as iFSL's code)")
    what.add_argument("--vocab-config", metavar="NNN", help="cityscapes: out-of-vocabulary configuration 000..008 (default 008: all eight thing classes)")
    what.add_argument("--out-as", choices=("void", "background"), help="cityscapes: what out-of-vocabulary classes become in training labels (default void)")
    what.add_argument("--train-classes", choices=("base", "all"), help="gfss: train on the base classes (default) or on every class (the upper bound)")

    model = parser.add_argument_group("method settings (unset = the method's default)")
    model.add_argument("--backbone")
    model.add_argument("--pretrained", type=_boolean, help="ImageNet weights for the backbone (true/false)")
    model.add_argument("--lr", type=float)
    model.add_argument("--bsz", type=int, help="training batch size")
    model.add_argument("--loss", help="segmentation loss, for methods that have one")
    model.add_argument("--train-steps", type=int, help="training steps (0 = evaluate the initialised model)")
    model.add_argument("--img-size", type=int, help="square input size (default: the benchmark's)")
    model.add_argument("--members", type=_members, metavar="A,B", help="combine: two members, each a registered method or a checkpoint (.safetensors)")
    model.add_argument("--weak", action="store_true", help="train from class tags only (iFSL's weak labels): presence, never a mask; lr / 10 unless --lr")
    model.add_argument("--augment", choices=("auto", "flip", "dml"), default="auto",
                       help="training images of dml_knn / supervised: flip, or dml = rootvisionai/dml_segmentation's "
                            "shift-scale-rotate, RGB shift and brightness/contrast; auto (default): dml when fine-tuning a --load checkpoint, else flip")
    model.add_argument("--select-by", choices=("last", "miou", "er"), help="keep the weights of the best validation score (default: last; er with --weak, as iFSL)")
    model.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other method setting, e.g. --set k=32 --set embedding_dim=128 (repeatable)")

    run = parser.add_argument_group("running")
    run.add_argument("--eval", action="store_true", help="evaluate only (with --load)")
    run.add_argument("--load", type=Path, help="fsbench checkpoint (.safetensors) to start from")
    run.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    run.add_argument("--nworker", type=int, help="data loader worker processes (default: 0 on the CPU, where workers compete with the network's threads; 2 on a GPU)")
    run.add_argument("--logpath", type=Path, help="run folder to create (default: a new folder under logs/)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an unfinished run from its last checkpoint, with its settings")
    run.add_argument("--checkpoint-every", type=int, default=500, metavar="N", help="write a resumable training checkpoint every N steps (default 500; 0: stage ends only)")
    run.add_argument("--val-every", type=int, metavar="N", help="validate on held-out episodes of the training classes every N steps (default: 5 times per run; 0: never)")
    run.add_argument("--val-episodes", type=int, default=50, metavar="N", help="validation episodes (default 50)")
    run.add_argument("--skip-bad", action="store_true", help="skip image/mask pairs found broken (while indexing, training or evaluating); the count is reported")
    run.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    run.add_argument("--eval-bsz", type=int, default=1, metavar="B", help="episodes evaluated together, their images encoded in one forward pass (default 1)")
    run.add_argument("--amp", default="auto", choices=("auto", "off", "bf16", "fp16"),
                     help="mixed precision of training and evaluation forward passes (auto: bf16 for the quick profile on a device with native bf16, else off; fp16 needs CUDA)")
    run.add_argument("--feature-cache-mb", type=float, default=1024, metavar="MB", help="evaluation: per-image encoding cache, so an image is encoded once (default 1024; 0: off)")
    run.add_argument("--image-cache-mb", type=float, default=1024, metavar="MB", help="decoded-image cache per loader process (default 1024, about 500 images at 400 px; 0: off)")

    # --- reporting (issue 5): renders, paper tables ---
    report = parser.add_argument_group("reporting")
    report.add_argument("--vis", type=int, nargs="?", const=-1, metavar="N",
                        help="render the first N episodes (all without N) into the run's vis/ folder")
    report.add_argument("--table", nargs="+", metavar="RUN", help="print a table of finished runs (folders or globs) and exit")
    report.add_argument("--format", default="markdown", choices=("markdown", "latex", "csv"), help="table format (default markdown)")
    return parser


def _resume_arguments(run_dir: Path, running: list[str]) -> argparse.Namespace:
    """The settings a run was started with (its config.json argv) plus this call's running flags."""
    from fsbench.run_folder import CONFIG, is_finished

    if not (Path(run_dir) / CONFIG).is_file():
        raise FsbenchError(f"--resume {run_dir}: not a run folder (no {CONFIG})")
    if is_finished(run_dir):
        raise FsbenchError(f"--resume {run_dir}: the run is finished (it has results.json); nothing to resume")
    try:
        recorded = json.loads((Path(run_dir) / CONFIG).read_text())["argv"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FsbenchError(f"--resume {run_dir}: cannot read the settings in {CONFIG} ({error})") from None
    # The recorded settings win, except where the machine may differ: device, workers, progress bars.
    args = build_parser().parse_args([*recorded, *running])
    args.logpath, args.argv = Path(run_dir), recorded
    return args


def _running_flags(argv: list[str]) -> list[str]:
    """The flags of ``argv`` that only say how to run (kept when resuming), with their values."""
    kept, position = [], 0
    while position < len(argv):
        flag = argv[position]
        name = flag.split("=", 1)[0]
        if name in ("--device", "--nworker", "--eval-bsz") and "=" not in flag and position + 1 < len(argv):
            kept += argv[position : position + 2]
            position += 2
            continue
        if name in ("--device", "--nworker", "--eval-bsz", "--no-progress", "--debug"):
            kept.append(flag)
        position += 1
    return kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("predict", "export", "convert"):  # subcommands with their own parsers
        import methods  # noqa: F401  (registers the methods and their checkpoint readers)
        from fsbench.workflows_cli import main as workflows_main

        return workflows_main(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        if args.table:  # tables of finished runs; nothing is trained or evaluated
            from fsbench.tables import main_table

            print(main_table(args.table, args.format), end="")
            return 0
        import benchmarks  # noqa: F401  (registers the benchmarks)
        import methods  # noqa: F401  (registers the methods)
        from fsbench.run import execute

        if args.resume is not None:
            execute(_resume_arguments(args.resume, _running_flags(argv)), resume=True)
        else:
            execute(args)
    except KeyboardInterrupt:
        print("fsbench: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one line for the user; --debug shows the traceback
        if args.debug:
            raise
        if isinstance(error, FsbenchError):
            message = one_line(error)
        else:
            location = _innermost_frame(error)
            message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''} ({location}; run with --debug for the traceback)"
        print(f"fsbench: error: {message}", file=sys.stderr)
        return 1
    return 0


def _innermost_frame(error: BaseException) -> str:
    """file:line of the frame that raised, relative to the project when it is ours."""
    import traceback

    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "no traceback"
    frame = frames[-1]
    path = Path(frame.filename)
    try:
        path = path.relative_to(PROJECT_ROOT)
    except ValueError:
        pass
    return f"at {path}:{frame.lineno}"


if __name__ == "__main__":
    raise SystemExit(main())
