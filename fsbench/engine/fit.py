"""fit: run a method's training stages - optimiser, schedule, clipping, accumulation, padding, logging,
validation, periodic checkpoints and resume - so that no method writes a training loop.

Determinism: every batch is a pure function of (seed, stage, position) (fsbench.engine.data), the
learning rate a pure function of the step (Schedule), and before every update the global torch RNG
and the loss's generator are seeded from (seed, stage, step). So a run resumed from a checkpoint
makes exactly the updates an uninterrupted run makes: on CPU the final weights are equal.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from fsbench.engine import distributed
from fsbench.engine.batched import autocast
from fsbench.engine.curves import TrainLog
from fsbench.engine.data import BaseClassImageStream, SkippedItem, episode_batches, image_batches
from fsbench.engine.padding import pad_batch, pad_episode
from fsbench.engine.plan import StepContext, TrainingContext, TrainingStage
from fsbench.checkpoint import load_checkpoint, save_checkpoint
from fsbench.engine.training_state import TrainingState, load_training_state, rng_state, save_training_state
from fsbench.errors import FsbenchError
from fsbench.sampler import EpisodeSampler

# Validation episodes come from the training classes with this offset on the run's seed, so they are
# other episodes than the ones trained on (images of the training split may recur).
VALIDATION_SEED_OFFSET = 7919


@dataclass
class FitSettings:
    """How long and on what a method trains (its Config says how: lr, losses, schedule...).

    Attributes:
        steps: the training budget in optimiser updates, which the method splits over its stages.
        checkpoint_every: write the resumable training state every this many updates (and at the
            end of every stage); 0 = only at stage ends.
        validate_every: validate on ``validation_episodes`` held-out episodes of the TRAINING classes
            every this many updates (0 = never); the test fold's classes are never used.
        validate: callable(method, sampler) -> {"miou", "er"}; the evaluation loop, injected so that
            fit does not depend on how evaluation reports.
    """

    steps: int
    transform: Callable
    seed: int = 0
    way: int = 1
    shot: int = 1
    task: str = "fss"
    nworker: int = 0
    progress: bool = True
    checkpoint_every: int = 500
    validate_every: int = 0
    validation_episodes: int = 100
    validate: Callable | None = None
    skip_bad: bool = False
    log_every: int = 1
    amp: str = "off"  # mixed precision of the forward passes: "off", "bf16" or "fp16" (with loss scaling)
    # Augmentation of image batches (fsbench.engine.augment): "flip", or "dml" (the DML repo's
    # shift-scale-rotate and colour jitter, for fine-tuning on small data). Episodes are not augmented.
    augment: str = "flip"
    # Class tags only (--weak): training episodes lose their pixel labels before the loss sees them.
    weak: bool = False
    # Model selection: keep the weights of the best validation "miou" or "er" (iFSL selects weak
    # models by ER), or "last" (the final weights).
    select_by: str = "last"
    metadata: dict = field(default_factory=dict)  # written into the training checkpoint
    on_step: Callable[[int, dict], None] | None = None  # called with (global step, logged row) after each update


@dataclass
class FitSummary:
    steps_done: int = 0
    skipped_items: int = 0
    seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    checkpoints: int = 0
    validation: list = field(default_factory=list)  # [(step, {"miou", "er"})]
    selected: dict | None = None  # {"step", "metric", "value"} of the weights kept by select_by


SELECTIONS = ("last", "miou", "er")
BEST_NAME = "best_model.safetensors"


class _BestWeights:
    """Model selection by a validation score: the best weights so far, kept in the run folder (so a
    resumed run still knows them) and restored when training ends."""

    def __init__(self, metric: str, run_dir: Path | None, resume: bool):
        self.metric, self.run_dir = metric, run_dir
        self.value, self.step, self.state = None, None, None
        if metric != "last" and resume and run_dir is not None and (run_dir / BEST_NAME).is_file():
            self.state, metadata = load_checkpoint(run_dir / BEST_NAME)
            self.value, self.step = metadata["value"], metadata["step"]

    def offer(self, method, step: int, scores: dict) -> None:
        if self.metric == "last" or (self.value is not None and scores[self.metric] <= self.value):
            return
        self.value, self.step = scores[self.metric], step
        self.state = {key: value.detach().cpu().clone() for key, value in method.state_dict().items()}
        if self.run_dir is not None:
            save_checkpoint(self.run_dir / BEST_NAME, self.state, {"metric": self.metric, "value": self.value, "step": step})

    def restore(self, method) -> dict | None:
        if self.state is None:
            return None
        method.load_state_dict({key: value.to(method.device) for key, value in self.state.items()})
        return {"step": self.step, "metric": self.metric, "value": self.value}


def step_seed(seed: int, stage: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, stage, step, 0x57E9]).generate_state(1)[0])


def fit(method, benchmark, settings: FitSettings, run_dir: Path | None, resume: bool = False) -> FitSummary:
    """Train ``method`` on ``benchmark``'s base classes; with ``resume``, continue from run_dir's
    training checkpoint (the method must have been built with the same settings)."""
    summary = FitSummary()
    started = time.perf_counter()
    context = TrainingContext(
        steps=settings.steps, base_classes=benchmark.classes("train"), way=settings.way, shot=settings.shot,
        task=settings.task, seed=settings.seed, weak=settings.weak, image_batches=_image_batches(method, benchmark, settings),
    )
    stages: list[TrainingStage] = [stage for stage in method.training_stages(context) if stage.steps > 0]
    if settings.weak and any(stage.data == "images" for stage in stages):
        raise FsbenchError(f"method {method.registry_name!r} declared a stage on dense image labels for a --weak run")
    if settings.select_by not in SELECTIONS:
        raise FsbenchError(f"unknown --select-by {settings.select_by!r}; available: {', '.join(SELECTIONS)}")
    if settings.select_by != "last" and not (settings.validate_every and settings.validate):
        raise FsbenchError(f"--select-by {settings.select_by} needs validation (--val-every N)")
    processes = distributed.current()
    writes = run_dir is not None and processes.is_main  # under torchrun only rank 0 writes files
    best = _BestWeights(settings.select_by, run_dir if writes else None, resume)
    saved = load_training_state(run_dir) if resume and run_dir is not None else None
    if resume and saved is None:
        print(f"fsbench: {run_dir} has no training checkpoint yet; training from the start", flush=True)
    start_stage, start_step = 0, 0
    if saved is not None:
        state, _ = saved
        start_stage, start_step = state.stage, state.step
        method.load_state_dict({key: value.to(method.device) for key, value in state.model.items()})
        torch.set_rng_state(state.rng)
    offsets = np.cumsum([0] + [stage.steps for stage in stages]).tolist()
    log = TrainLog(run_dir, resume_from_step=offsets[start_stage] + start_step if saved else None) if writes else None
    total = offsets[-1]
    bar = tqdm(total=total, initial=offsets[start_stage] + start_step, desc=f"train {method.registry_name}",
               disable=not settings.progress or not processes.is_main, dynamic_ncols=True)
    scaler = torch.amp.GradScaler(method.device.type) if settings.amp == "fp16" else None
    image_stream = None
    for stage_index, stage in enumerate(stages):
        if stage_index < start_stage:
            continue
        fresh = saved is None or stage_index != start_stage
        if stage.enter is not None:
            stage.enter()
        if fresh and stage.initialise is not None:
            stage.initialise()
        groups = stage.parameter_groups()
        optimiser = stage.optimiser.build(groups)
        if not fresh:
            optimiser.load_state_dict(saved[0].optimiser)
        clipped = [parameter for group in groups if group.clip for parameter in group.parameters]
        base_rates = [group["lr"] for group in optimiser.param_groups]
        first = 0 if fresh else start_step
        if stage.data == "images":
            image_stream = image_stream or BaseClassImageStream(benchmark, settings.transform, settings.seed, skip_bad=settings.skip_bad,
                                                                augment=settings.augment)
            loader = image_batches(image_stream, min(stage.batch_size, len(image_stream)), first, stage.steps,
                                   settings.nworker, method.device.type == "cuda", processes)
        else:
            sampler = EpisodeSampler(
                benchmark, "train", way=settings.way, shot=settings.shot,
                episodes=stage.steps * stage.batch_size * processes.world,
                seed=settings.seed + stage_index, task=settings.task, transform=settings.transform,
            )
            loader = episode_batches(sampler, stage.batch_size, first, stage.steps, settings.nworker, settings.skip_bad, processes)
        _set_modes(method, stage)
        loss = _distributed_loss(method, stage) if processes.active else stage.loss
        for step, batch in zip(range(first, stage.steps), loader):
            factor = stage.schedule.factor(step, stage.steps)
            for group, base in zip(optimiser.param_groups, base_rates):
                group["lr"] = base * factor
            seed = step_seed(settings.seed, stage_index, step)
            scalars, skipped = single_update(method, stage, optimiser, batch, seed, step, clipped, loss, settings.amp, scaler, settings.weak)
            summary.skipped_items += skipped
            global_step = offsets[stage_index] + step + 1
            row = {"step": global_step, "stage": stage.name, "stage_step": step + 1, "lr": optimiser.param_groups[0]["lr"], **(scalars or {})}
            if settings.validate_every and settings.validate and global_step % settings.validate_every == 0:
                row.update(_validate(method, benchmark, settings, stage, summary, global_step))
                best.offer(method, global_step, summary.validation[-1][1])
            if log is not None and (global_step % settings.log_every == 0 or "val_miou" in row):
                log.append(row)
            if settings.on_step is not None:
                settings.on_step(global_step, row)
            bar.set_postfix({key: f"{value:.4g}" for key, value in row.items() if key in ("loss", "lr")}, refresh=False)
            bar.update(1)
            summary.steps_done += 1
            at_end = step + 1 == stage.steps
            if writes and (at_end or (settings.checkpoint_every and global_step % settings.checkpoint_every == 0)):
                checkpoint_started = time.perf_counter()
                state = TrainingState(stage_index, step + 1, method.state_dict(), optimiser.state_dict(), rng_state())
                save_training_state(run_dir, state, settings.metadata)
                summary.checkpoint_seconds += time.perf_counter() - checkpoint_started
                summary.checkpoints += 1
    bar.close()
    summary.selected = best.restore(method)
    method.eval()
    if log is not None:
        log.plot()
    summary.seconds = time.perf_counter() - started
    if summary.skipped_items:
        print(f"fsbench: skipped {summary.skipped_items} training item(s) with a bad file (--skip-bad)", flush=True)
    return summary


def _image_batches(method, benchmark, settings: FitSettings):
    """TrainingContext.image_batches for this run (see there)."""

    def batches(count: int, batch_size: int, seed: int):
        stream = BaseClassImageStream(benchmark, settings.transform, seed, flip=False, skip_bad=settings.skip_bad)
        count = min(count, len(stream))
        for start in range(0, count, batch_size):
            items = [item for item in (stream[position] for position in range(start, min(start + batch_size, count))) if item is not None]
            if not items:
                continue
            images = torch.stack([image for image, _ in items]).to(method.device)
            labels = torch.stack([label for _, label in items]).to(method.device)
            yield pad_batch(images, labels, tuple(method.valid_size(*images.shape[-2:])))

    return batches


def _set_modes(method, stage: TrainingStage) -> None:
    method.train()
    modules = method.modules()
    for name in stage.eval_modules:
        if name not in modules:
            raise ValueError(f"stage {stage.name!r} keeps unknown module {name!r} in eval mode")
        modules[name].eval()


def single_update(method, stage: TrainingStage, optimiser, batch, seed: int, step: int = 0, clipped: list | None = None,
                  loss=None, amp: str = "off", scaler=None, weak: bool = False) -> tuple[dict | None, int]:
    """One optimiser update of ``stage`` on ``batch`` (an image batch, or a list of episodes whose
    gradients are accumulated), with the torch RNG and the loss's generator seeded from ``seed``.

    ``loss`` is the stage's loss or its DistributedDataParallel wrapper; ``amp`` the autocast mode;
    ``scaler`` a GradScaler for fp16. Returns (the scalars to log, or None when every item was
    skipped and nothing was updated; the number of items skipped).
    """
    torch.manual_seed(seed)
    context = StepContext(step=step, generator=torch.Generator().manual_seed(seed), weak=weak)
    optimiser.zero_grad(set_to_none=True)
    scalars, skipped = _accumulate(method, stage, batch, context, loss or stage.loss, amp, scaler)
    if scalars is not None:
        if scaler is not None:
            scaler.unscale_(optimiser)
        if stage.clip_grad_norm is not None and clipped:
            torch.nn.utils.clip_grad_norm_(clipped, stage.clip_grad_norm)
        if scaler is not None:
            scaler.step(optimiser)
            scaler.update()
        else:
            optimiser.step()
    return scalars, skipped


class _StageLoss(nn.Module):
    """A stage's loss as a module holding the method's modules, so DistributedDataParallel can wrap
    it: its forward is the loss, and backward all-reduces the gradients of the trained parameters."""

    def __init__(self, method, stage: TrainingStage):
        super().__init__()
        self.parts = nn.ModuleDict(method.modules())
        self.stage = stage

    def forward(self, batch, context: StepContext) -> dict:
        return self.stage.loss(batch, context)


def _distributed_loss(method, stage: TrainingStage):
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [method.device.index or 0] if method.device.type == "cuda" else None
    # Some stages leave registered parameters unused in a step (e.g. a way a query lacks).
    return DistributedDataParallel(_StageLoss(method, stage), device_ids=device_ids, find_unused_parameters=True)


def _backward(loss: torch.Tensor, scaler) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _accumulate(method, stage: TrainingStage, batch, context: StepContext, loss, amp: str, scaler) -> tuple[dict | None, int]:
    """Backward the loss of one update; returns (scalars to log, or None when nothing was trained;
    items skipped)."""
    device = method.device
    if stage.data == "images":
        if batch is None:  # every image of the batch was bad and skipped
            return None, stage.batch_size
        images, labels, skipped = batch
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        images, labels = pad_batch(images, labels, tuple(method.valid_size(*images.shape[-2:])))
        with autocast(device, amp):
            outputs = loss((images, labels), context)
        _backward(outputs["loss"].float(), scaler)
        return _scalars(outputs), skipped
    episodes = [episode for episode in batch if not isinstance(episode, SkippedItem)]
    if context.weak:
        episodes = [episode.with_class_tags_only() for episode in episodes]
    skipped = len(batch) - len(episodes)
    if not episodes:
        return None, skipped
    totals: dict[str, float] = {}
    for position, episode in enumerate(episodes):
        episode = episode.to(device)
        episode = pad_episode(episode, tuple(method.valid_size(*episode.query_images.shape[-2:])))
        # Under DDP, gradients are all-reduced once per update: after the last episode's backward.
        last = position == len(episodes) - 1
        synchronising = loss.no_sync() if hasattr(loss, "no_sync") and not last else nullcontext()
        with synchronising:
            with autocast(device, amp):
                outputs = loss(episode, context)
            _backward(outputs["loss"].float() / len(episodes), scaler)
        for key, value in _scalars(outputs).items():
            totals[key] = totals.get(key, 0.0) + value / len(episodes)
    return totals, skipped


def _scalars(outputs: dict) -> dict[str, float]:
    if "loss" not in outputs:
        raise FsbenchError("a training stage's loss must return a dict with a 'loss' entry")
    return {key: float(value.detach()) if torch.is_tensor(value) else float(value) for key, value in outputs.items()}


def _validate(method, benchmark, settings: FitSettings, stage: TrainingStage, summary: FitSummary, global_step: int) -> dict:
    sampler = EpisodeSampler(
        benchmark, "train", way=settings.way, shot=settings.shot, episodes=settings.validation_episodes,
        seed=settings.seed + VALIDATION_SEED_OFFSET, task=settings.task, transform=settings.transform,
    )
    scores = settings.validate(method, sampler)
    summary.validation.append((global_step, scores))
    _set_modes(method, stage)
    return {"val_miou": round(scores["miou"], 4), "val_er": round(scores["er"], 4)}
