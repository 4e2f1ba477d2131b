"""One run: build benchmark, sampler and method from the parsed settings, train (fsbench.engine.fit),
evaluate (fsbench.engine.evaluate), and write the run folder. The CLI parses and calls ``execute``.

Every check that bad input can fail happens before the run folder is created; once it exists, its
status.json says whether the run is running, failed or was interrupted, and results.json - written
last - marks it finished (fsbench.run_folder).
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from fsbench import PROJECT_ROOT, __version__
from fsbench.benchmark_options import BenchmarkOptions
from fsbench.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from fsbench.engine.evaluate import EvaluationSettings, evaluate
from fsbench.engine.fit import FitSettings, fit
from fsbench.episode import LABEL_RULES
from fsbench.errors import FsbenchError, one_line
from fsbench.foreign import file_sha256
from fsbench.protocols import get_protocol
from fsbench.provenance import check_test_classes_unseen, records_of, training_record
from fsbench.registry import BENCHMARKS, METHODS
from fsbench.run_folder import CONFIG, new_run_dir, set_status, write_json
from fsbench.sampler import EpisodeSampler


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise FsbenchError("--device cuda was asked for but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def method_config(method_class, benchmark, args, checkpoint_metadata: dict | None):
    """The method's config: its defaults (quick profile on quick benchmarks), a checkpoint's
    settings when one is loaded, then the flags the user set."""
    config = method_class.Config.quick() if benchmark.quick else method_class.Config()
    overrides = {"backbone": args.backbone, "pretrained": args.pretrained, "lr": args.lr, "batch_size": args.bsz, "loss": args.loss,
                 "members": getattr(args, "members", None)}
    if checkpoint_metadata is not None:
        saved = checkpoint_metadata.get("config", {})
        for key in ("backbone", "embedding_dim"):
            if overrides.get(key) is not None and key in saved and overrides[key] != saved[key]:
                raise FsbenchError(f"checkpoint {args.load} was made for {key} {saved[key]!r}, not {overrides[key]!r}")
        known = {name for name in asdict(config)}
        # Weights come from the checkpoint, so ImageNet weights need not (and should not) be loaded.
        config = config.with_overrides({**{k: v for k, v in saved.items() if k in known}, "pretrained": False}, args.method)
        overrides["pretrained"] = None
    return config.with_overrides(overrides, args.method).with_settings(args.set or [], args.method)


def _check_running_flags(args) -> None:
    if args.eval and args.load is None:
        raise FsbenchError("--eval needs --load CHECKPOINT (or drop --eval to train first)")
    for flag, value, low in (("--nworker", args.nworker, 0), ("--checkpoint-every", args.checkpoint_every, 0),
                             ("--val-every", args.val_every if args.val_every is not None else 0, 0), ("--val-episodes", args.val_episodes, 1)):
        if value < low:
            raise FsbenchError(f"{flag} must be at least {low}, got {value}")
    if args.vis is not None and (args.vis == 0 or args.vis < -1):
        raise FsbenchError(f"--vis N needs N of at least 1 (or no N for every episode), got {args.vis}")
    if args.labels not in LABEL_RULES:
        raise FsbenchError(f"unknown --labels {args.labels!r}; available: {', '.join(LABEL_RULES)}")


def execute(args, resume: bool = False) -> dict:
    """Train and/or evaluate as ``args`` say; returns results.json's content.

    With ``resume``, ``args.logpath`` is an unfinished run folder whose settings ``args`` repeats:
    training continues from its last checkpoint, then evaluation runs.
    """
    if args.task == "gfss":  # generalized FSS: its own queries, supports and scores
        from fsbench.gfss.run import execute_gfss

        return execute_gfss(args, resume)
    if getattr(args, "train_classes", None) == "all":
        raise FsbenchError("--train-classes all (training on the test classes: the upper bound) applies to --task gfss only")
    _check_running_flags(args)
    method_class = METHODS.get(args.method)
    benchmark_class = BENCHMARKS.get(args.benchmark)
    protocol = get_protocol(args.protocol)
    device = resolve_device(args.device)

    checkpoint_metadata = read_metadata(args.load) if args.load is not None else None
    if checkpoint_metadata is not None and checkpoint_metadata.get("method") != args.method:
        raise FsbenchError(f"checkpoint {args.load} was made for method {checkpoint_metadata.get('method')!r}, not {args.method!r}")
    options = BenchmarkOptions(
        protocol=protocol.name, split_dir=args.split_dir, class_split=args.class_split, skip_bad=args.skip_bad,
        layout=args.layout, folds=args.folds, fold_classes=args.fold_classes,
        vocab_config=getattr(args, "vocab_config", None) or BenchmarkOptions.vocab_config,
        out_as=getattr(args, "out_as", None) or BenchmarkOptions.out_as,
    )
    benchmark = benchmark_class(args.datapath, args.fold, options)
    inherited = records_of(checkpoint_metadata)
    if args.load is not None:
        check_test_classes_unseen(inherited, benchmark, args.load)
    config = method_config(method_class, benchmark, args, checkpoint_metadata)
    img_size = args.img_size or protocol.img_size(benchmark)
    transform = protocol.make_transform(img_size)
    task = args.task or ("fss" if args.way == 1 else "fscs")
    original_size = args.use_original_imgsize or protocol.score_original_size
    sampler = EpisodeSampler(
        benchmark, "test", way=args.way, shot=args.shot, queries=args.queries,
        episodes=args.episodes or protocol.episodes(benchmark), seed=args.seed, task=task,
        transform=transform, keep_original=original_size, replay=args.replay, boundary=args.boundary,
    )
    train_steps = 0 if args.eval else (config.train_steps if args.train_steps is None else args.train_steps)
    if train_steps < 0:
        raise FsbenchError(f"--train-steps must be at least 0, got {train_steps}")

    torch.manual_seed(args.seed)
    method = method_class(config, device)
    if args.load is not None:
        state, _ = load_checkpoint(args.load, device)
        method.load_state_dict(state)
    for source, records in getattr(method, "checkpoint_records", lambda: [])():  # members loaded from files
        check_test_classes_unseen(records, benchmark, source)
    started_from = {"path": str(args.load), "sha256": file_sha256(args.load)} if args.load is not None else None

    if resume:
        run_dir = Path(args.logpath)
    else:
        run_dir = new_run_dir(args.logpath, PROJECT_ROOT / "logs", f"{args.method}_{args.benchmark}_fold{args.fold}_{args.way}way{args.shot}shot")
    identity = {
        "method": args.method, "backbone": config.backbone, "benchmark": args.benchmark, "fold": args.fold,
        "way": args.way, "shot": args.shot, "queries": args.queries, "task": task, "seed": args.seed,
        "protocol": protocol.name, "label_rule": args.labels, "replay": args.replay, "boundary": sampler.boundary,
    }
    if not resume:
        write_json(run_dir / CONFIG, {
            "argv": list(args.argv),
            **identity,
            "img_size": img_size,
            "train_steps": train_steps,
            "device": str(device),
            "method_config": asdict(config),
            "benchmark_info": benchmark.describe(),
            "versions": {"fsbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
        })
    set_status(run_dir, "running")
    print(f"Run folder: {run_dir}", flush=True)
    try:
        results = _train_and_evaluate(
            args, run_dir, resume, method, benchmark, sampler, transform, task, train_steps, original_size, device,
            identity, img_size, inherited, started_from, checkpoint_metadata,
        )
    except KeyboardInterrupt:
        set_status(run_dir, "interrupted")
        raise
    except BaseException as error:
        message = one_line(error) if isinstance(error, FsbenchError) else f"{type(error).__name__}: {error}"
        set_status(run_dir, "failed", message.splitlines()[0] if message else type(error).__name__)
        raise
    set_status(run_dir, "finished")
    return results


def _train_and_evaluate(args, run_dir, resume, method, benchmark, sampler, transform, task, train_steps, original_size,
                        device, identity, img_size, inherited, started_from, checkpoint_metadata) -> dict:
    started = time.perf_counter()
    trained_on = list(inherited)
    checkpoint = str(args.load) if args.load is not None else None
    train_summary = None
    if train_steps > 0:
        evaluation = EvaluationSettings(device=device, nworker=0, progress=False, label_rule=args.labels)
        val_every = args.val_every if args.val_every is not None else (train_steps // 5 if train_steps >= 5 else 0)
        settings = FitSettings(
            steps=train_steps, transform=transform, seed=args.seed, way=args.way, shot=args.shot, task=task,
            nworker=args.nworker, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
            validate_every=val_every, validation_episodes=args.val_episodes,
            validate=lambda trained, validation_sampler: evaluate(trained, validation_sampler, evaluation, {}),
            skip_bad=args.skip_bad, metadata={"method": args.method, "run": str(run_dir)},
        )
        train_summary = fit(method, benchmark, settings, run_dir, resume=resume)
        trained_on.append(training_record(benchmark, train_steps))
        checkpoint = str(run_dir / "model.safetensors")
        save_checkpoint(Path(checkpoint), method.state_dict(), {
            "method": args.method, "config": asdict(method.config), "benchmark": args.benchmark, "fold": args.fold,
            "step": train_steps + int((checkpoint_metadata or {}).get("step", 0)), "trained_on": trained_on,
            "started_from": started_from,
        })
    train_seconds = time.perf_counter() - started

    evaluation = EvaluationSettings(
        device=device, nworker=args.nworker, batch_size=1, original_size=original_size, progress=not args.no_progress,
        label_rule=args.labels, skip_bad=args.skip_bad,
    )
    if args.vis is not None:  # renders of the first N episodes
        from fsbench.vis import EpisodeRenderer

        evaluation.on_episode = EpisodeRenderer(run_dir / "vis", benchmark.class_names, None if args.vis == -1 else args.vis)
    scores = evaluate(method, sampler, evaluation, benchmark.class_names, run_dir=run_dir)
    results = {
        **identity,
        "episodes": scores["episodes"],
        "episode_fingerprint": sampler.fingerprint(),
        "miou": scores["miou"],
        "fbiou": scores["fbiou"],
        "er": scores["er"],
        "class_iou": scores["class_iou"],
        "eval_resolution": "original" if original_size else f"{img_size}x{img_size}",
        "checkpoint": checkpoint,
        "started_from": started_from,
        "trained_on": trained_on,
        "cross_domain": [record for record in trained_on if record.get("dataset", record.get("benchmark")) != benchmark.identity()],
        # Steps behind the evaluated weights: a loaded checkpoint's own steps count too.
        "train_steps": train_steps + int((checkpoint_metadata or {}).get("step", 0)),
        "train_s": round(train_seconds, 2),
        "training": None if train_summary is None else {
            "steps_done_here": train_summary.steps_done, "resumed": resume, "checkpoints": train_summary.checkpoints,
            "checkpoint_s": round(train_summary.checkpoint_seconds, 3), "skipped_items": train_summary.skipped_items,
        },
        "elapsed_s": round(time.perf_counter() - started, 2),
        "timing": scores["timing"],
        "skipped_episodes": scores["skipped_episodes"],
        "benchmark_info": benchmark.describe(),
    }
    write_json(run_dir / "results.json", results)
    from fsbench.tables import format_run_row

    print(format_run_row(results, args.format, run_dir / "episodes.csv"))
    return results

