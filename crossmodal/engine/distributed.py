"""Data-parallel training across processes started by torchrun (env:// rendezvous).

    torchrun --nproc_per_node 4 -m cli teach configs/cifar100/resnet56.yaml

Every process builds the same Task, the engine wraps it in DistributedDataParallel (so
`Task.forward`, the whole training step, runs under DDP), and `BlockDistributedSampler` makes
the global batch of B = world * b samples exactly the batch a single process with batch B sees:
rank r takes the contiguous slice [r*b, (r+1)*b) of it. With a BatchNorm-free model, N processes
therefore follow the same trajectory as one (tested); with BatchNorm, per-rank batch statistics
differ from the single-process ones unless `engine.sync_bn` (CUDA) is on.

`optim.batch_size` is the global batch and `optim.lr` is never rescaled with the world size.
Logging and checkpoints happen on rank 0 only. The rank/world and collective helpers that also
work (as no-ops) in a single process live one floor down, in crossmodal.distributed.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from crossmodal.errors import ConfigError


@dataclass
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # launched by torchrun: a process group is joined (also with one process)

    @property
    def is_main(self) -> bool:
        """True on the process that logs and writes checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment (WORLD_SIZE, RANK, MASTER_ADDR) is set, also for a 1-process job.

    `torchrun --nproc_per_node 1` thus runs the DDP path (process group, DistributedDataParallel), which
    checks that path on a one-GPU machine; a plain `python -m cli ...` stays single-process.
    """
    return all(key in os.environ for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR"))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the torchrun job (NCCL on CUDA, gloo otherwise), or return a single-process DistInfo."""
    if not launched_by_torchrun():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), distributed=True)


def cleanup_distributed(synchronize: bool = False) -> None:
    """Leave the process group if one was joined.

    `synchronize` (for a job that ended normally) waits at a barrier first, so no rank tears its connections
    down while another is still in its last collective: gloo ranks that left unsynchronised have been seen to
    abort with "terminate called without an active exception". After a failure the other ranks may never
    arrive (torchrun ends them), so the group is left at once."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_job(device: torch.device):
    """Join the torchrun job for the length of a task (`run_teach`, `run_distill`) and leave it afterwards.

    The task entry points own the process group, so a Python user under torchrun is cleaned up
    exactly like the CLI. A group that was already joined when the block starts (by the caller) is
    the caller's: it is used and left in place. Outside torchrun this is a no-op.
    """
    joined_here = launched_by_torchrun() and not dist.is_initialized()
    ended_normally = False
    try:
        yield init_distributed(device)
        ended_normally = True
    finally:
        if joined_here:
            cleanup_distributed(synchronize=ended_normally)


def launch_rank() -> int:
    """This process's rank in the torchrun job (0 outside one), from torchrun's environment.

    Readable before a process group is joined and after it is left (e.g. to print one line per job).
    """
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of epoch `epoch`: a permutation of range(n) that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class BlockDistributedSampler(torch.utils.data.Sampler[int]):
    """Yields this rank's slice of every global batch of an epoch's (seed, epoch) permutation.

    The epoch is cut into global batches of `global_batch` samples (an incomplete last batch is
    dropped so every rank runs the same number of equal-sized steps); rank r yields samples
    [r*b, (r+1)*b) of each, with b = global_batch / world_size. Set the epoch with `set_epoch`.
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True, max_batches: int | None = None):
        if global_batch % world_size:
            raise ConfigError(f"optim.batch_size {global_batch} is not divisible by the {world_size} DDP processes")
        if num_samples < global_batch:
            raise ConfigError(f"optim.batch_size {global_batch} is larger than the training split "
                              f"({num_samples} samples)")
        self.num_samples, self.global_batch = num_samples, global_batch
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.local_batch = global_batch // world_size
        self.num_batches = num_samples // global_batch
        if max_batches is not None:
            self.num_batches = min(self.num_batches, max_batches)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose permutation is yielded next."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.local_batch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = epoch_permutation(self.num_samples, self.seed, self.epoch)
        else:
            order = torch.arange(self.num_samples)
        batches = order[: self.num_batches * self.global_batch].view(self.num_batches, self.global_batch)
        mine = batches[:, self.rank * self.local_batch:(self.rank + 1) * self.local_batch]  # (steps, b)
        return iter(mine.reshape(-1).tolist())


class ShardSampler(torch.utils.data.Sampler[int]):
    """Evaluation: rank r yields the contiguous shard r of range(n) (shards differ by at most one sample)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        bounds = [num_samples * r // world_size for r in range(world_size + 1)]
        self.start, self.stop = bounds[rank], bounds[rank + 1]

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))
