"""Which process of a `torchrun` job this is, and the few collectives that training and
activation caching use.

torchrun starts one process per device and tells each its RANK, WORLD_SIZE and LOCAL_RANK
(the rank on its own machine) through the environment. Without torchrun those are unset
and `Ranks` is a single process, for which every collective is a no-op, so the callers
have one code path.

Public names: Ranks, SINGLE, start, finish, device_for.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Ranks wait at barriers while the others cache or train: longer than torch's 30-minute
# default, so that a rank with one more shard to cache is not taken for a dead one.
TIMEOUT = datetime.timedelta(hours=6)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: rank `rank` of `world`, `local_rank` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes the files every rank would otherwise write alike."""
        return self.rank == 0

    def part(self, n: int) -> range:
        """This rank's contiguous share of range(n); the shares differ in length by at most one."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace `tensor` by its sum over the ranks, in place; returns it."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace `tensor` by rank 0's, in place; returns it."""
        if self.world > 1:
            dist.broadcast(tensor, src=0)
        return tensor


SINGLE = Ranks()


def start() -> Ranks:
    """This process's Ranks; under torchrun (WORLD_SIZE > 1) the process group is joined
    first: NCCL when CUDA is present, else gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    ranks = Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    return ranks


def finish() -> None:
    """Leave the process group, if this process joined one (torch warns at exit otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def device_for(ranks: Ranks, requested: str) -> str:
    """The device this rank runs on: the one asked for, else under torchrun with CUDA the
    local rank's GPU (one process per GPU), else '' (cuda when available, else cpu)."""
    if requested or ranks.world == 1 or not torch.cuda.is_available():
        return requested
    return f"cuda:{ranks.local_rank}"
