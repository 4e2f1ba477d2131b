"""The periodic training checkpoint that --resume reads: model, optimiser, stage, step and RNG states.

One safetensors file (tensors) with JSON metadata (everything else), written atomically: a run
killed at any moment, kill -9 included, leaves either the previous complete checkpoint or the new
one, never a torn file. Nothing is pickled. The learning-rate schedule needs no state: it is a pure
function of the step (fsbench.engine.plan.Schedule), and so are the batches and the per-step seeds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fsbench.checkpoint import TRAINING_STATE_FORMAT, load_checkpoint, save_checkpoint
from fsbench.errors import FsbenchError

FILE_NAME = "training_state.safetensors"


@dataclass
class TrainingState:
    """Where a run stands: ``stage`` index, ``step`` updates done in it, and the tensors to restore."""

    stage: int
    step: int
    model: dict[str, Tensor]
    optimiser: dict  # torch optimiser state_dict
    rng: Tensor  # torch CPU generator state (uint8)


def _split_optimiser_state(state_dict: dict) -> tuple[dict[str, Tensor], dict]:
    """A torch optimiser state_dict -> (tensors keyed "optimiser/<param>/<name>", JSON-able rest)."""
    tensors, scalars = {}, {}
    for parameter, entries in state_dict["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"optimiser/{parameter}/{name}"] = value
            else:
                scalars.setdefault(str(parameter), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _join_optimiser_state(tensors: dict[str, Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, parameter, name = key.split("/", 2)
        state.setdefault(int(parameter), {})[name] = value
    for parameter, entries in rest["scalars"].items():
        state.setdefault(int(parameter), {}).update(entries)
    return {"state": state, "param_groups": rest["param_groups"]}


def save_training_state(run_dir: Path, state: TrainingState, metadata: dict) -> Path:
    """Write the run's training checkpoint atomically; ``metadata`` records what run it belongs to."""
    tensors = {f"model/{key}": value for key, value in state.model.items()}
    optimiser_tensors, optimiser_rest = _split_optimiser_state(state.optimiser)
    tensors.update(optimiser_tensors)
    tensors["rng/torch"] = state.rng
    path = Path(run_dir) / FILE_NAME
    save_checkpoint(
        path,
        tensors,
        {**metadata, "stage": state.stage, "step": state.step, "optimiser": optimiser_rest},
        format=TRAINING_STATE_FORMAT,
    )
    return path


def load_training_state(run_dir: Path) -> tuple[TrainingState, dict] | None:
    """The run's training checkpoint and its metadata, or None when the run never wrote one."""
    path = Path(run_dir) / FILE_NAME
    if not path.is_file():
        return None
    tensors, metadata = load_checkpoint(path, "cpu", format=TRAINING_STATE_FORMAT)
    try:
        model = {key[len("model/"):]: value for key, value in tensors.items() if key.startswith("model/")}
        optimiser = _join_optimiser_state({k: v for k, v in tensors.items() if k.startswith("optimiser/")}, metadata["optimiser"])
        state = TrainingState(int(metadata["stage"]), int(metadata["step"]), model, optimiser, tensors["rng/torch"])
    except (KeyError, ValueError, TypeError) as error:
        raise FsbenchError(f"{path} is a damaged training checkpoint ({error})") from None
    return state, metadata


def rng_state() -> Tensor:
    return torch.get_rng_state()
