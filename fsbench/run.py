"""One run: build benchmark, sampler and method from the parsed settings, train (fsbench.engine.fit),
evaluate (fsbench.engine.evaluate), and write the run folder. The CLI parses and calls ``execute``.

Every check that bad input can fail happens before the run folder is created; once it exists, its
status.json says whether the run is running, failed or was interrupted, and results.json - written
last - marks it finished (fsbench.run_folder).
"""
from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fsbench import PROJECT_ROOT, __version__
from fsbench.benchmark_options import BenchmarkOptions
from fsbench.checkpoint import FORMAT, save_checkpoint
from fsbench.engine import distributed
from fsbench.engine.batched import check_amp, resolve_amp
from fsbench.engine.data import resolve_nworker
from fsbench.engine.evaluate import EvaluationSettings, evaluate
from fsbench.engine.fit import FitSettings, fit
from fsbench.episode import LABEL_RULES
from fsbench.errors import FsbenchError, one_line
from fsbench.foreign import file_sha256
from fsbench.model_files import read_weights
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


@dataclass
class LoadedWeights:
    """--load's file: its state dict in fsbench's keys and the metadata a run needs (for a foreign
    checkpoint: its method, the settings its keys imply and its format)."""

    state: dict
    metadata: dict


def _read_load(args) -> LoadedWeights:
    """The --load file, fsbench's or a foreign format a method registered (fsbench.model_files)."""
    method_name, settings, state, record = read_weights(args.load, args.method)
    metadata = record.get("metadata") or {"format": record["format"], "method": method_name, "config": settings,
                                          "description": record.get("description")}
    if metadata.get("method") != args.method:
        raise FsbenchError(f"checkpoint {args.load} was made for method {metadata.get('method')!r}, not {args.method!r}")
    return LoadedWeights(state, metadata)


def _started_from(path: Path, metadata: dict) -> dict:
    """The --load file as results.json records it; a converted checkpoint adds the file it came from."""
    record = {"path": str(path), "format": metadata.get("format"), "sha256": file_sha256(path)}
    if metadata.get("converted_from"):
        record["converted_from"] = metadata["converted_from"]
    return record


def resolve_augment(augment: str, method_name: str, method_class, fine_tunes: bool) -> str:
    """--augment: "auto" is "dml" where an image-batch method fine-tunes a loaded checkpoint (measured
    on a 3-class custom set of 80 images from the demo's checkpoint: flips alone overfit, novel
    mIoU 53.4 -> 39.4; the DML repo's augmentations 53.4 -> 60.3; fsbench/perf/finetune.py) and
    "flip" otherwise, so that the measured from-scratch profiles are unchanged. Episode-trained
    methods refuse "dml"."""
    if augment == "auto":
        return "dml" if fine_tunes and not method_class.trains_on_episodes else "flip"
    if augment != "flip" and method_class.trains_on_episodes:
        able = ", ".join(name for name in METHODS.names() if not METHODS.get(name).trains_on_episodes)
        raise FsbenchError(f"--augment {augment} augments image batches; method {method_name!r} trains on episodes "
                           f"(methods that train on image batches: {able})")
    return augment


def _check_running_flags(args) -> None:
    if args.eval and args.load is None:
        raise FsbenchError("--eval needs --load CHECKPOINT (or drop --eval to train first)")
    for flag, value, low in (("--nworker", args.nworker if args.nworker is not None else 0, 0), ("--checkpoint-every", args.checkpoint_every, 0),
                             ("--val-every", args.val_every if args.val_every is not None else 0, 0), ("--val-episodes", args.val_episodes, 1),
                             ("--eval-bsz", args.eval_bsz, 1), ("--feature-cache-mb", args.feature_cache_mb, 0),
                             ("--image-cache-mb", args.image_cache_mb, 0)):
        if value < low:
            raise FsbenchError(f"{flag} must be at least {low}, got {value}")
    if args.vis is not None and (args.vis == 0 or args.vis < -1):
        raise FsbenchError(f"--vis N needs N of at least 1 (or no N for every episode), got {args.vis}")
    if args.labels not in LABEL_RULES:
        raise FsbenchError(f"unknown --labels {args.labels!r}; available: {', '.join(LABEL_RULES)}")


@dataclass
class Run:
    """Everything one run is made of, built and checked before its folder exists."""

    args: object
    resume: bool
    processes: distributed.Processes
    device: torch.device
    method: object
    benchmark: object
    sampler: EpisodeSampler
    transform: object
    task: str
    img_size: int
    original_size: bool
    train_steps: int
    identity: dict
    inherited: list
    started_from: dict | None
    checkpoint_metadata: dict | None
    run_dir: Path | None = None

    @property
    def writes(self) -> bool:
        """Only one process writes the run folder (rank 0 under torchrun)."""
        return self.processes.is_main


def execute(args, resume: bool = False) -> dict:
    """Train and/or evaluate as ``args`` say; returns results.json's content.

    With ``resume``, ``args.logpath`` is an unfinished run folder whose settings ``args`` repeats:
    training continues from its last checkpoint, then evaluation runs. Under torchrun every process
    calls this; rank 0 writes the folder.
    """
    if args.task == "gfss":  # generalized FSS: its own queries, supports and scores
        from fsbench.gfss.run import execute_gfss

        return execute_gfss(args, resume)
    if getattr(args, "train_classes", None) == "all":
        raise FsbenchError("--train-classes all (training on the test classes: the upper bound) applies to --task gfss only")
    processes = distributed.start(args.device)
    try:
        run = _build(args, resume, processes)
        return _execute(run)
    finally:
        distributed.stop()


def _build(args, resume: bool, processes: distributed.Processes) -> Run:
    _check_running_flags(args)
    method_class = METHODS.get(args.method)
    benchmark_class = BENCHMARKS.get(args.benchmark)
    protocol = get_protocol(args.protocol)
    device = resolve_device(args.device)
    if processes.active and device.type == "cuda":
        device = torch.device("cuda", processes.local_rank)

    loaded = _read_load(args) if args.load is not None else None
    checkpoint_metadata = loaded.metadata if loaded is not None else None
    options = BenchmarkOptions(
        protocol=protocol.name, split_dir=args.split_dir, class_split=args.class_split, skip_bad=args.skip_bad,
        layout=args.layout, folds=args.folds, fold_classes=args.fold_classes, all_classes=args.all_classes,
        vocab_config=getattr(args, "vocab_config", None) or BenchmarkOptions.vocab_config,
        out_as=getattr(args, "out_as", None) or BenchmarkOptions.out_as,
    )
    benchmark = benchmark_class(args.datapath, args.fold, options)
    inherited = records_of(checkpoint_metadata)
    if args.load is not None:
        if checkpoint_metadata.get("format") != FORMAT:
            print(f"fsbench: note: {args.load} ({checkpoint_metadata['format']}) does not record what it was trained on; "
                  f"fold {args.fold}'s test classes must not be among its training classes", flush=True)
        check_test_classes_unseen(inherited, benchmark, args.load)
    if args.weak and not method_class.supports_weak:
        able = ", ".join(name for name in METHODS.names() if METHODS.get(name).supports_weak) or "none"
        raise FsbenchError(f"method {args.method!r} cannot learn from class tags only (--weak): its supports need pixel "
                           f"labels or it has no presence from image-level supervision; methods that can: {able}")
    config = method_config(method_class, benchmark, args, checkpoint_metadata)
    if args.weak and args.lr is None and checkpoint_metadata is None:
        config = config.with_overrides({"lr": config.lr / 10}, args.method)  # iFSL: weak training at a tenth of the lr
    img_size = args.img_size or protocol.img_size(benchmark)
    args.amp = resolve_amp(args.amp, device, benchmark.quick and method_class.auto_bf16)
    check_amp(args.amp, device, method_class)
    args.nworker = resolve_nworker(args.nworker, device)
    transform = protocol.make_transform(img_size)
    task = args.task or ("fss" if args.way == 1 else "fscs")
    original_size = args.use_original_imgsize or protocol.score_original_size
    sampler = EpisodeSampler(
        benchmark, "test", way=args.way, shot=args.shot, queries=args.queries,
        episodes=args.episodes or protocol.episodes(benchmark), seed=args.seed, task=task,
        transform=transform, keep_original=original_size, replay=args.replay, boundary=args.boundary,
        image_cache_mb=args.image_cache_mb,
    )
    train_steps = 0 if args.eval else (config.train_steps if args.train_steps is None else args.train_steps)
    if train_steps < 0:
        raise FsbenchError(f"--train-steps must be at least 0, got {train_steps}")
    args.augment = resolve_augment(getattr(args, "augment", "auto"), args.method, method_class, fine_tunes=loaded is not None and train_steps > 0)

    torch.manual_seed(args.seed)
    method = method_class(config, device)
    if loaded is not None:
        method.load_state_dict({key: value.to(device) for key, value in loaded.state.items()})
    for source, records in getattr(method, "checkpoint_records", lambda: [])():  # members loaded from files
        check_test_classes_unseen(records, benchmark, source)
    identity = {
        "method": args.method, "backbone": config.backbone, "benchmark": args.benchmark, "fold": args.fold,
        "way": args.way, "shot": args.shot, "queries": args.queries, "task": task, "seed": args.seed,
        "protocol": protocol.name, "label_rule": args.labels, "replay": args.replay, "boundary": sampler.boundary,
        "weak": args.weak,
    }
    return Run(
        args=args, resume=resume, processes=processes, device=device, method=method, benchmark=benchmark, sampler=sampler,
        transform=transform, task=task, img_size=img_size, original_size=original_size, train_steps=train_steps,
        identity=identity, inherited=inherited, checkpoint_metadata=checkpoint_metadata,
        started_from=_started_from(args.load, checkpoint_metadata) if loaded else None,
    )


def _execute(run: Run) -> dict:
    args = run.args
    if run.resume:
        run_dir = Path(args.logpath)
    elif run.writes:
        name = f"{args.method}_{args.benchmark}_fold{args.fold}_{args.way}way{args.shot}shot"
        run_dir = new_run_dir(args.logpath, PROJECT_ROOT / "logs", name)
    else:
        run_dir = None
    run.run_dir = run_dir = Path(distributed.broadcast(str(run_dir) if run_dir is not None else None))
    if run.writes and not run.resume:
        write_json(run_dir / CONFIG, {
            "argv": list(args.argv),
            **run.identity,
            "img_size": run.img_size,
            "train_steps": run.train_steps,
            "device": str(run.device),
            "processes": run.processes.world,
            "amp": args.amp,
            "augment": args.augment if run.train_steps > 0 else None,
            "method_config": asdict(run.method.config),
            "benchmark_info": run.benchmark.describe(),
            "versions": {"fsbench": __version__, "torch": torch.__version__, "python": platform.python_version()},
        })
    if run.writes:
        set_status(run_dir, "running")
        print(f"Run folder: {run_dir}", flush=True)
    try:
        results = _train_and_evaluate(run)
    except KeyboardInterrupt:
        if run.writes:
            set_status(run_dir, "interrupted")
        raise
    except BaseException as error:
        message = one_line(error) if isinstance(error, FsbenchError) else f"{type(error).__name__}: {error}"
        if run.writes:
            set_status(run_dir, "failed", message.splitlines()[0] if message else type(error).__name__)
        raise
    if run.writes:
        set_status(run_dir, "finished")
    return results


def _train_and_evaluate(run: Run) -> dict:
    args, run_dir, benchmark = run.args, run.run_dir, run.benchmark
    started = time.perf_counter()
    trained_on = list(run.inherited)
    checkpoint = str(args.load) if args.load is not None else None
    loaded_steps = int((run.checkpoint_metadata or {}).get("step", 0))
    train_summary = None
    if run.train_steps > 0:
        validation = EvaluationSettings(device=run.device, nworker=0, progress=False, label_rule=args.labels, amp=args.amp,
                                        feature_cache_mb=0, weak=args.weak)
        val_every = args.val_every if args.val_every is not None else (run.train_steps // 5 if run.train_steps >= 5 else 0)
        settings = FitSettings(
            steps=run.train_steps, transform=run.transform, seed=args.seed, way=args.way, shot=args.shot, task=run.task,
            nworker=args.nworker, progress=not args.no_progress, checkpoint_every=args.checkpoint_every,
            validate_every=val_every, validation_episodes=args.val_episodes,
            validate=lambda trained, validation_sampler: evaluate(trained, validation_sampler, validation, {}),
            skip_bad=args.skip_bad, amp=args.amp, weak=args.weak, select_by=args.select_by or ("er" if args.weak else "last"),
            augment=args.augment,
            metadata={"method": args.method, "run": str(run_dir)},
        )
        train_summary = fit(run.method, benchmark, settings, run_dir, resume=run.resume)
        trained_on.append(training_record(benchmark, run.train_steps))
        checkpoint = str(run_dir / "model.safetensors")
        if run.writes:
            save_checkpoint(Path(checkpoint), run.method.state_dict(), {
                "method": args.method, "config": asdict(run.method.config), "benchmark": args.benchmark, "fold": args.fold,
                "step": run.train_steps + loaded_steps, "trained_on": trained_on, "started_from": run.started_from,
            })
    train_seconds = time.perf_counter() - started

    evaluation = EvaluationSettings(
        device=run.device, nworker=args.nworker, batch_size=args.eval_bsz, original_size=run.original_size,
        progress=not args.no_progress and run.processes.is_main, label_rule=args.labels, skip_bad=args.skip_bad,
        amp=args.amp, feature_cache_mb=args.feature_cache_mb, weak=args.weak,
    )
    if args.vis is not None:  # renders of the first N episodes
        from fsbench.vis import EpisodeRenderer

        evaluation.on_episode = EpisodeRenderer(run_dir / "vis", benchmark.class_names, None if args.vis == -1 else args.vis)
    scores = evaluate(run.method, run.sampler, evaluation, benchmark.class_names, run_dir=run_dir)
    results = {
        **run.identity,
        "episodes": scores["episodes"],
        "episode_fingerprint": run.sampler.fingerprint(),
        "miou": scores["miou"],
        "fbiou": scores["fbiou"],
        "er": scores["er"],
        "class_iou": scores["class_iou"],
        "eval_resolution": "original" if run.original_size else f"{run.img_size}x{run.img_size}",
        "checkpoint": checkpoint,
        "started_from": run.started_from,
        "trained_on": trained_on,
        "cross_domain": [record for record in trained_on if record.get("dataset", record.get("benchmark")) != benchmark.identity()],
        # Steps behind the evaluated weights: a loaded checkpoint's own steps count too.
        "train_steps": run.train_steps + loaded_steps,
        "train_s": round(train_seconds, 2),
        "training": None if train_summary is None else {
            "steps_done_here": train_summary.steps_done, "resumed": run.resume, "checkpoints": train_summary.checkpoints,
            "checkpoint_s": round(train_summary.checkpoint_seconds, 3), "skipped_items": train_summary.skipped_items,
            "selected": train_summary.selected, "augment": args.augment,
        },
        "elapsed_s": round(time.perf_counter() - started, 2),
        "amp": args.amp,
        "processes": run.processes.world,
        "eval_batch_size": args.eval_bsz,
        "feature_cache": scores["feature_cache"],
        "timing": scores["timing"],
        "skipped_episodes": scores["skipped_episodes"],
        "benchmark_info": benchmark.describe(),
    }
    if run.writes:
        write_json(run_dir / "results.json", results)
        from fsbench.tables import format_run_row

        print(format_run_row(results, args.format, run_dir / "episodes.csv"))
    return results
