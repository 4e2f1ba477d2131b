"""Running under torchrun (PyTorch's launcher): process group, sharding, reductions.

``torchrun --nproc_per_node N main.py ...`` (and multi-node through its rendezvous) starts N
processes with RANK / WORLD_SIZE / LOCAL_RANK in the environment. Evaluation episodes are sharded by
index (rank r takes r, r + N, r + 2N, ...: no padding, no duplicates, unlike DistributedSampler),
metric counters are summed across processes and the per-episode rows gathered, so rank 0 writes
one results.json and episodes.csv equal to a single process's. Training wraps each stage's loss in
DistributedDataParallel and gives every rank its share of each batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fsbench.errors import FsbenchError


@dataclass(frozen=True)
class Processes:
    """This process's place: ``rank`` of ``world`` (world 1: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


SINGLE = Processes()
_current = SINGLE


def current() -> Processes:
    return _current


def start(device_name: str) -> Processes:
    """Join torchrun's process group when launched by torchrun; otherwise a single process.

    The backend is NCCL for CUDA devices and gloo on the CPU; each process uses the GPU of its
    LOCAL_RANK.
    """
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        _current = SINGLE
        return _current
    if not dist.is_available():
        raise FsbenchError("torchrun started several processes but this torch has no torch.distributed")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _current = Processes(rank=rank, world=world, local_rank=local_rank)
    return _current


def stop() -> None:
    global _current
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


def shard(count: int, processes: Processes | None = None) -> list[int]:
    """The indices 0..count-1 this process handles: rank, rank + world, ... (no padding)."""
    processes = processes or current()
    return list(range(processes.rank, count, processes.world))


def sum_across(tensors: list[torch.Tensor]) -> None:
    """In-place sum of each tensor over every process (a no-op in a single process)."""
    if not current().active:
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def gather(item):
    """[every process's ``item``] in rank order (a one-item list in a single process)."""
    if not current().active:
        return [item]
    items = [None] * current().world
    dist.all_gather_object(items, item)
    return items


def broadcast(item):
    """Rank 0's ``item``, on every process."""
    if not current().active:
        return item
    holder = [item]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def barrier() -> None:
    if current().active:
        dist.barrier()
