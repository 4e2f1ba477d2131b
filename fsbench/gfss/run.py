"""One generalized FSS run (``--task gfss``): benchmark -> task (queries, supports) -> fit -> every
approach scored -> results.json + gfss_queries.csv. fsbench.run dispatches here; what the two share
(method settings, devices, flag checks, run folders, checkpoints) is fsbench.run's.

Training is the ordinary one: the method trains on the fold's base classes (``--train-classes
base``), or on every class for the upper bound (``--train-classes all``); training episodes, where a
method has them, are FS-S episodes of those classes (``--way``, ``--shot``).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from fsbench import PROJECT_ROOT, __version__
from fsbench.benchmark_options import BenchmarkOptions
from fsbench.checkpoint import FORMAT, save_checkpoint
from fsbench.engine.batched import check_amp, resolve_amp
from fsbench.engine.data import resolve_nworker
from fsbench.engine.evaluate import EvaluationSettings, evaluate
from fsbench.engine.fit import FitSettings, fit
from fsbench.errors import FsbenchError, one_line
from fsbench.foreign import file_sha256
from fsbench.gfss.approaches import approaches, primary_approach
from fsbench.gfss.evaluate import GFSSEvaluationSettings, evaluate_gfss
from fsbench.gfss.task import GFSSTask
from fsbench.gfss.training_view import AllClassesTraining
from fsbench.protocols import get_protocol
from fsbench.provenance import check_test_classes_unseen, records_of, training_record
from fsbench.registry import BENCHMARKS, METHODS
from fsbench.run import _check_running_flags, _read_load, method_config, resolve_device
from fsbench.run_folder import CONFIG, new_run_dir, set_status, write_json

TRAIN_CLASSES = ("base", "all")
PROTOCOL_REFERENCE = (
    "GFS-Seg (Tian et al., CVPR 2022): all evaluation images are queries; one support set of K training images per novel class "
    "(no other novel class where possible) per seed, shared by all queries; class-accumulated IoU; background scored with the base classes"
)


def _check_gfss_flags(args) -> None:
    for flag, value in (("--replay", args.replay), ("--vis", args.vis)):
        if value is not None:
            raise FsbenchError(f"{flag} does not apply to --task gfss")
    if args.weak:
        raise FsbenchError("--weak does not apply to --task gfss: its support set and scores are dense masks")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise FsbenchError("--task gfss runs in one process (its one support set is shared by every query); start it without torchrun")
    if args.labels != "argmax":
        raise FsbenchError("--task gfss labels each pixel by the argmax over its classes; --labels threshold does not apply")
    if (args.train_classes or "base") not in TRAIN_CLASSES:
        raise FsbenchError(f"unknown --train-classes {args.train_classes!r}; available: {', '.join(TRAIN_CLASSES)}")
    if args.episodes is not None and args.episodes < 1:
        raise FsbenchError(f"--episodes must be at least 1, got {args.episodes}")


def execute_gfss(args, resume: bool = False) -> dict:
    """Train and/or evaluate a generalized FSS run as ``args`` say; returns results.json's content."""
    _check_running_flags(args)
    _check_gfss_flags(args)
    method_class = METHODS.get(args.method)
    benchmark_class = BENCHMARKS.get(args.benchmark)
    protocol = get_protocol(args.protocol)
    device = resolve_device(args.device)
    train_classes = args.train_classes or "base"

    loaded = _read_load(args) if args.load is not None else None  # fsbench's or a registered foreign format
    checkpoint_metadata = loaded.metadata if loaded is not None else None
    options = BenchmarkOptions(
        protocol=protocol.name, split_dir=args.split_dir, class_split=args.class_split, skip_bad=args.skip_bad,
        layout=args.layout, folds=args.folds, fold_classes=args.fold_classes, all_classes=args.all_classes,
        vocab_config=args.vocab_config or BenchmarkOptions.vocab_config, out_as=args.out_as or BenchmarkOptions.out_as,
    )
    benchmark = benchmark_class(args.datapath, args.fold, options)
    training_benchmark = AllClassesTraining(benchmark) if train_classes == "all" else benchmark
    args.amp = resolve_amp(args.amp, device, benchmark.quick and METHODS.get(args.method).auto_bf16)
    check_amp(args.amp, device, METHODS.get(args.method))
    args.nworker = resolve_nworker(args.nworker, device)
    inherited = records_of(checkpoint_metadata)
    if args.load is not None and train_classes == "base":
        if checkpoint_metadata.get("format") != FORMAT:
            print(f"fsbench: note: {args.load} ({checkpoint_metadata['format']}) does not record what it was trained on; "
                  "the novel classes must not be among its training classes", flush=True)
        check_test_classes_unseen(inherited, benchmark, args.load)
    config = method_config(method_class, benchmark, args, checkpoint_metadata)
    img_size = args.img_size or protocol.img_size(benchmark)
    transform = protocol.make_transform(img_size)
    original_size = args.use_original_imgsize or protocol.score_original_size
    task = GFSSTask(benchmark, args.shot, args.seed, args.episodes, transform, keep_original=original_size)
    train_steps = 0 if args.eval else (config.train_steps if args.train_steps is None else args.train_steps)
    if train_steps < 0:
        raise FsbenchError(f"--train-steps must be at least 0, got {train_steps}")

    torch.manual_seed(args.seed)
    method = method_class(config, device)
    if loaded is not None:
        method.load_state_dict({key: value.to(device) for key, value in loaded.state.items()})
    if train_classes == "base":
        for source, records in getattr(method, "checkpoint_records", lambda: [])():
            check_test_classes_unseen(records, benchmark, source)
    started_from = ({"path": str(args.load), "format": checkpoint_metadata.get("format"), "sha256": file_sha256(args.load)}
                    if loaded is not None else None)

    run_dir = Path(args.logpath) if resume else new_run_dir(
        args.logpath, PROJECT_ROOT / "logs", f"{args.method}_{args.benchmark}_fold{args.fold}_gfss{args.shot}shot"
    )
    configuration = f"config {benchmark.configuration}" if hasattr(benchmark, "configuration") else f"fold {args.fold}"
    identity = {
        "method": args.method, "backbone": getattr(config, "backbone", None) or "", "benchmark": args.benchmark, "fold": args.fold,
        "configuration": configuration, "way": args.way, "shot": args.shot, "queries": args.queries, "task": "gfss", "seed": args.seed,
        "protocol": protocol.name, "train_classes": train_classes, "amp": args.amp,
    }
    if not resume:
        write_json(run_dir / CONFIG, {
            "argv": list(args.argv), **identity, "img_size": img_size, "train_steps": train_steps, "device": str(device),
            "method_config": asdict(config), "benchmark_info": benchmark.describe(),
            "versions": {"fsbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
        })
    set_status(run_dir, "running")
    print(f"Run folder: {run_dir}", flush=True)
    try:
        results = _train_and_evaluate(args, run_dir, resume, method, benchmark, training_benchmark, task, transform, train_steps,
                                      original_size, device, identity, img_size, inherited, started_from, checkpoint_metadata)
    except KeyboardInterrupt:
        set_status(run_dir, "interrupted")
        raise
    except BaseException as error:
        message = one_line(error) if isinstance(error, FsbenchError) else f"{type(error).__name__}: {error}"
        set_status(run_dir, "failed", message.splitlines()[0] if message else type(error).__name__)
        raise
    set_status(run_dir, "finished")
    return results


def _train_and_evaluate(args, run_dir, resume, method, benchmark, training_benchmark, task, transform, train_steps, original_size,
                        device, identity, img_size, inherited, started_from, checkpoint_metadata) -> dict:
    started = time.perf_counter()
    trained_on = list(inherited)
    checkpoint = str(args.load) if args.load is not None else None
    training_task = "fss" if args.way == 1 else "fscs"
    train_summary = None
    if train_steps > 0:
        evaluation = EvaluationSettings(device=device, nworker=0, progress=False, amp=args.amp, feature_cache_mb=0)
        val_every = args.val_every if args.val_every is not None else (train_steps // 5 if train_steps >= 5 else 0)
        settings = FitSettings(
            steps=train_steps, transform=transform, seed=args.seed, way=args.way, shot=args.shot, task=training_task,
            nworker=args.nworker, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
            validate_every=val_every, validation_episodes=args.val_episodes,
            validate=lambda trained, validation_sampler: evaluate(trained, validation_sampler, evaluation, {}),
            skip_bad=args.skip_bad, amp=args.amp, select_by=args.select_by or "last",
            metadata={"method": args.method, "run": str(run_dir)},
        )
        train_summary = fit(method, training_benchmark, settings, run_dir, resume=resume)
        trained_on.append(training_record(training_benchmark, train_steps))
        checkpoint = str(run_dir / "model.safetensors")
        save_checkpoint(Path(checkpoint), method.state_dict(), {
            "method": args.method, "config": asdict(method.config), "benchmark": args.benchmark, "fold": args.fold,
            "step": train_steps + int((checkpoint_metadata or {}).get("step", 0)), "trained_on": trained_on,
            "started_from": started_from,
        })
    train_seconds = time.perf_counter() - started

    settings = GFSSEvaluationSettings(device=device, nworker=args.nworker, batch_size=args.eval_bsz, amp=args.amp,
                                      original_size=original_size, progress=not args.no_progress)
    scores = evaluate_gfss(method, task, settings, benchmark.class_names, run_dir=run_dir)
    described = approaches(method, args.method, identity["train_classes"])
    approach_scores = {key: {**described[key], **scores["approaches"][key]} for key in described}
    primary = approach_scores[primary_approach(method)]
    results = {
        **identity,
        "episodes": scores["queries"],
        "episode_fingerprint": task.fingerprint(),
        "protocol_reference": PROTOCOL_REFERENCE,
        **task.describe(),
        "miou_all": primary["miou_all"],
        "miou_in": primary["miou_in"],
        "miou_out": primary["miou_out"],
        "hmean": primary["hmean"],
        "mean": primary["mean"],
        "class_iou": primary["class_iou"],
        "primary_approach": primary_approach(method),
        "approaches": approach_scores,
        "combination": method.combination_info() if hasattr(method, "combination_info") else None,
        "eval_resolution": "original" if original_size else f"{img_size}x{img_size}",
        "checkpoint": checkpoint,
        "started_from": started_from,
        "trained_on": trained_on,
        "train_steps": train_steps + int((checkpoint_metadata or {}).get("step", 0)),
        "train_s": round(train_seconds, 2),
        "training": None if train_summary is None else {
            "steps_done_here": train_summary.steps_done, "resumed": resume, "checkpoints": train_summary.checkpoints,
            "skipped_items": train_summary.skipped_items, "selected": train_summary.selected,
        },
        "elapsed_s": round(time.perf_counter() - started, 2),
        "timing": scores["timing"],
        "benchmark_info": benchmark.describe(),
    }
    write_json(run_dir / "results.json", results)
    from fsbench.gfss.table import format_gfss_run

    print(format_gfss_run(run_dir))
    return results
