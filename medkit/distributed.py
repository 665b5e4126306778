"""Data-parallel training over processes (torchrun, accelerate's launcher): the few helpers
the training loop, the feature cache and the run folder need.

Started by `torchrun --nproc_per_node N …` (or `accelerate launch`), each process reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment; `init_from_env()` joins the process
group (NCCL on GPUs, gloo on CPUs) and pins one GPU per process. Then:

- every rank draws the same global batch (same generator, same seed) and trains on its
  share of it (`shard`); the method's gradients are summed over ranks after each backward,
  each rank's loss weighted by its share of the batch, so a step equals one process's step
  on the whole global batch (what DistributedDataParallel does, weighted exactly when the
  last batch does not split evenly; the trainable parameters are few, so one all-reduce
  per parameter costs nothing);
- the feature cache is built by rank 0 while the others wait, then read by all;
- only rank 0 writes checkpoints, histories and results.csv rows.

Methods that reshape each step's gradient (ProGrad's projection) or whose loss couples the
images of a batch are refused under more than one process: their per-rank gradients do
not add up to the one-process gradient.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterable, Iterator, Sequence

import torch


def active() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_available() and torch.distributed.is_initialized() else 0


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Whether a launcher (torchrun, accelerate) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "cpu") -> str:
    """Join the launcher's process group once; returns the device this rank trains on
    (`cuda:LOCAL_RANK` on GPUs). Without a launcher: nothing, `device` unchanged."""
    if not launched():
        return device
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return device


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand out to workers (one each): CUDA_VISIBLE_DEVICES's, or all."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return (listed or [str(i) for i in range(n)])[:n]


def barrier() -> None:
    if active():
        torch.distributed.barrier()


def shard(indices: Sequence[int]) -> list[int]:
    """This rank's contiguous share of a global batch's indices (possibly empty)."""
    if not active():
        return list(indices)
    return [int(i) for i in torch.tensor_split(torch.as_tensor(list(indices), dtype=torch.long), world_size())[rank()]]


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks (a rank with no share contributes zeros)."""
    if not active():
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad, op=torch.distributed.ReduceOp.SUM)


def sum_values(*values: float) -> list[float]:
    """Scalars summed over ranks (losses weighted by share, hit counts)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def broadcast_parameters(params: Iterable[torch.nn.Parameter]) -> None:
    """Rank 0's trainable parameters everywhere (they are built from one seed, but a run
    resumed from a checkpoint or initialised from data must start alike on every rank)."""
    if not active():
        return
    with torch.no_grad():
        for p in params:
            torch.distributed.broadcast(p.data, src=0)


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (builds a cache entry), the others after it (read it)."""
    if not active():
        yield
        return
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


class ShardedBatches(torch.utils.data.Sampler):
    """The global batches one process would draw (`RandomSampler(generator)` → batches of
    `batch_size`), each cut to this rank's share: every rank loads only its own images."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator | None, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.generator, self.shuffle = n, batch_size, generator, shuffle

    def __iter__(self):
        order = (torch.randperm(self.n, generator=self.generator).tolist() if self.shuffle else list(range(self.n)))
        for start in range(0, self.n, self.batch_size):
            yield shard(order[start:start + self.batch_size])

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)


__all__ = ["ShardedBatches", "active", "barrier", "broadcast_parameters", "init_from_env", "is_main", "launched",
           "main_first", "rank", "shard", "sum_gradients", "sum_values", "visible_gpus", "world_size"]
