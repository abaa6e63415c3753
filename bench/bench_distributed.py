"""`explorer index` under torchrun (gloo, CPU) with 1, 2, 3 ranks: wall time, the merge's share, peak RSS per rank.

    python bench/bench_distributed.py [--windows 64] [--ranks 1 2 3] [--reps 1] [--batch-windows 16]

Each run is the whole command as a user starts it, `torchrun --standalone --nproc_per_node=N -m
explorer.cli index ...` on the demo model and demo SAE, over random-token windows: process
start-up and model loading on every rank included. The ranks share the machine's cores (each
gets cores / N torch threads), so little speedup is expected on a small machine; what matters
is the cost of splitting: the gather-and-merge time on rank 0 (from the manifest's
`distributed` record; "wait" is rank 0's wait for the slowest shard before it) and the memory
each rank holds (peak RSS up to the merge, measured in each rank). Every
index is checked to be byte-identical to the first configuration's. Configurations alternate
within each repetition, so drift on a shared machine hits them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_index import random_windows  # bench/ is on sys.path when run as a script

from explorer.corpus import save_windows
from explorer.model import resolve_source

ROOT = Path(__file__).resolve().parents[1]
INDEX_FILES = ("features.safetensors", "examples.safetensors", "windows.safetensors", "labels_auto.json")


def build(n: int, windows_file: Path, out: Path, batch_windows: int) -> tuple[float, dict]:
    """(wall seconds, the manifest's distributed record) of one torchrun build with n ranks."""
    threads = max(1, (os.cpu_count() or 1) // n)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "explorer.cli", "index", "--windows", str(windows_file), "--out", str(out),
           "--batch-windows", str(batch_windows), "--force"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{n} ranks failed:\n{done.stderr[-3000:]}")
    return wall, json.loads((out / "manifest.json").read_text())["distributed"]


def same_files(a: Path, b: Path) -> bool:
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in INDEX_FILES)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=64, help="number of windows to index")
    p.add_argument("--window-len", type=int, default=128)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 3], help="world sizes to compare")
    p.add_argument("--reps", type=int, default=1, help="repetitions of every configuration (median shown)")
    p.add_argument("--batch-windows", type=int, default=16)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-dist-"))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, tmp: Path) -> None:
    from transformers import AutoTokenizer

    windows_file = tmp / "windows.safetensors"
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("demo")[0])  # the demo model's, as `explorer index` uses
    save_windows(random_windows(tokenizer, args.windows, args.window_len), windows_file)
    walls: dict[int, list[float]] = {n: [] for n in args.ranks}
    merges: dict[int, list[float]] = {n: [] for n in args.ranks}
    waits: dict[int, list[float]] = {n: [] for n in args.ranks}
    rss: dict[int, list[int]] = {}
    identical = {n: True for n in args.ranks}
    for _ in range(args.reps):
        for n in args.ranks:
            wall, record = build(n, windows_file, tmp / f"ranks-{n}", args.batch_windows)
            walls[n].append(wall)
            merges[n].append(record["gather_merge_seconds"])
            waits[n].append(record["wait_seconds"])
            rss[n] = [max(a, b) for a, b in zip(rss.get(n, record["peak_rss_bytes"]), record["peak_rss_bytes"])]
            identical[n] &= same_files(tmp / f"ranks-{args.ranks[0]}", tmp / f"ranks-{n}")  # first built

    print(f"{args.windows} windows x {args.window_len} tokens, demo model + demo SAE, batches of "
          f"{args.batch_windows} windows, {args.reps} rep(s), {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(f"{'ranks':>5} {'wall s':>8} {'speed':>7} {'merge s':>8} {'merge %':>8} {'wait s':>7} {'peak RSS MiB per rank':<28} same bytes")
    first = 1 if 1 in args.ranks else args.ranks[0]  # the baseline: one rank when it ran
    base = statistics.median(walls[first])
    for n in args.ranks:
        wall, merge = statistics.median(walls[n]), statistics.median(merges[n])
        per_rank = " ".join(f"{r / 2**20:.0f}" for r in rss[n])
        print(f"{n:>5} {wall:8.1f} {base / wall:6.2f}x {merge:8.2f} {100 * merge / wall:7.1f}% {statistics.median(waits[n]):7.1f} {per_rank:<28} "
              f"{'yes' if identical[n] else 'NO'}")
    last = max(args.ranks)
    print(f"summary: {last} ranks vs {first}: {base / statistics.median(walls[last]):.2f}x speed, "
          f"merge {statistics.median(merges[last]):.2f} s = {100 * statistics.median(merges[last]) / statistics.median(walls[last]):.1f}% "
          f"of wall, peak RSS max {max(rss[last]) / 2**20:.0f} MiB/rank, bytes identical: "
          f"{'yes' if all(identical.values()) else 'NO'}")


if __name__ == "__main__":
    main()
