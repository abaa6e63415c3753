"""Ranks: this process's share of a torchrun job, as SAE training and activation caching see
it, with the collectives they use.

explorer.distributed finds the job (torchrun's RANK, WORLD_SIZE, LOCAL_RANK) and starts its
process group (`session`); `Ranks.of` wraps the `Dist` it yields. `SINGLE`, a process on its
own, makes every collective a no-op, so the callers have one code path.

Public names: Ranks, SINGLE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as td

from explorer import distributed
from explorer.distributed import Dist


@dataclass(frozen=True)
class Ranks:
    """Rank `rank` of `world` processes; `dist` is the job's process group (None alone)."""

    rank: int = 0
    world: int = 1
    dist: Dist | None = None

    @classmethod
    def of(cls, dist: Dist | None) -> Ranks:
        if dist is None or dist.world_size == 1:
            return SINGLE
        return cls(dist.rank, dist.world_size, dist)

    @property
    def main(self) -> bool:
        """Rank 0 writes the files every rank would otherwise write alike."""
        return self.rank == 0

    def part(self, n: int) -> range:
        """This rank's contiguous share of range(n); the shares differ in length by at most one."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def barrier(self) -> None:
        if self.dist is not None:
            distributed.barrier(self.dist)

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace `tensor` (on the job's device) by its sum over the ranks, in place; returns it."""
        if self.dist is not None:
            td.all_reduce(tensor)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Replace `tensor` (on the job's device) by rank 0's, in place; returns it."""
        if self.dist is not None:
            td.broadcast(tensor, src=0)
        return tensor


SINGLE = Ranks()
