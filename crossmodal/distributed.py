"""Where this process stands in a torch.distributed job, and the two collectives the library needs.

The ground floor for engine and losses alike: every helper is a no-op in a single process (no
process group), so library code (CRD's memory update, the engine's metric sums) calls them
unconditionally. Joining and leaving the job (torchrun) is the engine's (crossmodal.engine.distributed).
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, or (0, 1) when no process group is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather_concat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (same shape on every rank) from all ranks along dim 0, in rank order; no grad."""
    _, world = rank_and_world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)  # (world * B, ...)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over ranks (in place, also returned); identity in a single process."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
