"""Running under torchrun: which rank this process is, and the few collectives a split job needs.

`from_env()` reads torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK) and gives None for a
plain process, which then never touches torch.distributed. `session(device)` starts the process
group for the block: NCCL with one process per GPU (cuda:LOCAL_RANK) when CUDA is used, else
gloo on the CPU. It yields a `Dist` (rank, world size, device, backend).

Collectives, all of them blocking and bounded by TIMEOUT:
- `from_rank0(dist, compute)`: rank 0 runs `compute` and every rank gets its JSON-able result;
  when it raises a ValueError (the errors users cause), every other rank raises RankFailed with
  the same message, so all ranks stop with one clear line rather than wait on each other.
- `send_bytes` / `recv_bytes`: one rank's payload to another (safetensors bytes, never pickle).
- `barrier`.
A rank that dies outright (killed, crashed) is torchrun's to handle: its agent stops the others.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

# How long a rank waits in one collective before giving up. A split index build waits for the
# slowest shard and then for rank 0's merge and write, which take minutes at most on equal shards;
# two hours leaves room for very wide SAEs and still ends a job whose partner hangs.
TIMEOUT = _dt.timedelta(hours=2)


class RankFailed(ValueError):
    """Another rank stopped on an error; the message is its message."""


@dataclass(frozen=True)
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str  # "gloo" or "nccl"


def from_env() -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) when torchrun started this process, else None."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise ValueError(f"RANK={os.environ['RANK']!r}, WORLD_SIZE={os.environ['WORLD_SIZE']!r} are not numbers. "
                         "Fix: start the command with torchrun, or unset RANK and WORLD_SIZE") from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world}). "
                         "Fix: start the command with torchrun, or unset RANK and WORLD_SIZE")
    return rank, world, local


def pick_device(device: str | None, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK unless the CPU is asked for (or there is no CUDA): one GPU per process."""
    if device is not None and not device.startswith("cuda"):
        return torch.device(device)
    if not torch.cuda.is_available():
        if device is not None:
            raise ValueError(f"--device {device} under torchrun, but this machine has no CUDA. Fix: use --device cpu")
        return torch.device("cpu")
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs here. "
                         "Fix: start at most one process per GPU (--nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextmanager
def session(device: str | None = None) -> Iterator[Dist]:
    """The process group of this torchrun job, for the block. `device` as --device takes it."""
    import torch.distributed as td

    rank, world, local = from_env() or (0, 1, 0)
    dev = pick_device(device, local)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    td.init_process_group(backend, timeout=TIMEOUT, **({"device_id": dev} if dev.type == "cuda" else {}))
    try:
        yield Dist(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend)
    finally:
        td.destroy_process_group()


def _wire(dist: Dist) -> torch.device:
    return dist.device if dist.backend == "nccl" else torch.device("cpu")  # NCCL moves CUDA tensors only


def _broadcast_bytes(dist: Dist, data: bytes | None) -> bytes:
    import torch.distributed as td

    size = torch.tensor([len(data) if data is not None else 0], dtype=torch.int64, device=_wire(dist))
    td.broadcast(size, src=0)
    buf = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_wire(dist)) if dist.rank == 0
           else torch.empty(int(size), dtype=torch.uint8, device=_wire(dist)))
    td.broadcast(buf, src=0)
    return bytes(buf.cpu().numpy())


def from_rank0(dist: Dist, compute: Callable[[], object]):
    """`compute()` on rank 0, its result (JSON-able) on every rank; see the module docstring."""
    message = None
    if dist.rank == 0:
        try:
            message = {"value": compute()}
        except ValueError as err:
            _broadcast_bytes(dist, json.dumps({"error": str(err)}).encode())
            raise
    reply = json.loads(_broadcast_bytes(dist, json.dumps(message).encode() if dist.rank == 0 else None))
    if "error" in reply:
        raise RankFailed(f"rank 0 stopped: {reply['error']}")
    return reply["value"]


def send_bytes(dist: Dist, data: bytes, dst: int = 0) -> None:
    import torch.distributed as td

    td.send(torch.tensor([len(data)], dtype=torch.int64, device=_wire(dist)), dst=dst)
    td.send(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(_wire(dist)), dst=dst)


def recv_bytes(dist: Dist, src: int) -> bytes:
    import torch.distributed as td

    size = torch.zeros(1, dtype=torch.int64, device=_wire(dist))
    td.recv(size, src=src)
    buf = torch.empty(int(size), dtype=torch.uint8, device=_wire(dist))
    td.recv(buf, src=src)
    return bytes(buf.cpu().numpy())


def barrier(dist: Dist) -> None:
    import torch.distributed as td

    td.barrier(**({"device_ids": [dist.device.index]} if dist.backend == "nccl" else {}))


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
