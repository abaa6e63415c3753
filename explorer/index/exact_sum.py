"""Sums of float32 activations that give the same bits in any order: fixed-point int64 limbs.

A float64 sum depends on the order of its terms, so a build split over ranks (each summing its
shard, rank 0 adding the shard sums) would not match the one-process build bit for bit. Here
each value becomes an integer number of 2^-(HIGH_SHIFT + LOW_BITS) units, split into two int64
limbs: `high` counts whole 2^-HIGH_SHIFT units and `low` the LOW_BITS bits below them.
Integer addition is associative, so any grouping of the same values gives the same limbs, and
`to_float` turns limbs into the same float64.

Precision: bits below 2^-52 of each value are dropped (2e-16 absolute, far below a float32
activation's own rounding). Range: the high limb holds sums below 2^63 units, i.e. below
2^(63 - HIGH_SHIFT) = 8.8e12 per feature.

`limbs` is a (2, n) int64 tensor: row 0 the high limb, row 1 the low limb (0 <= low < 2^LOW_BITS
after `carry`).
"""

from __future__ import annotations

import torch
from torch import Tensor

HIGH_SHIFT = 20
LOW_BITS = 32


def zeros(n: int, device: torch.device) -> Tensor:
    """(2, n) int64 limbs of n zero sums."""
    return torch.zeros((2, n), dtype=torch.int64, device=device)


def add_values(limbs: Tensor, index: Tensor, values: Tensor) -> None:
    """limbs[:, index[i]] += values[i] for float32 values >= 0, in place, exactly."""
    scaled = values.to(torch.float64) * 2.0 ** HIGH_SHIFT  # exact: a power-of-two scaling
    high = scaled.floor()
    low = ((scaled - high) * 2.0 ** LOW_BITS).floor()  # scaled - floor(scaled) is exact too
    limbs[0].index_add_(0, index, high.to(torch.int64))
    limbs[1].index_add_(0, index, low.to(torch.int64))
    carry(limbs)


def carry(limbs: Tensor) -> None:
    """Move the low limb's overflow into the high limb, in place: 0 <= low < 2^LOW_BITS after.
    A batch adds under 2^31 values to a low limb, so it cannot overflow between carries."""
    over = limbs[1] >> LOW_BITS
    limbs[0] += over
    limbs[1] -= over << LOW_BITS


def to_float(limbs: Tensor) -> Tensor:
    """(n,) float64 sums; the same limbs always give the same bits."""
    return limbs[0].to(torch.float64) * 2.0 ** -HIGH_SHIFT + limbs[1].to(torch.float64) * 2.0 ** -(HIGH_SHIFT + LOW_BITS)
