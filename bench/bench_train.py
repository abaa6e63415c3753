"""SAE training past one process, on the demo model (CPU: gloo).

    python bench/bench_train.py [--windows 48] [--hooks blocks.5.hook_resid_post,...] [--steps 20]

1. Several hooks in one pass: the seconds to cache the activations of every hook in --hooks
   from one forward per batch (cache_hooks), against one pass per hook (cache_activations,
   each pass stopping at its hook). Repeated --reps times, alternating, so drift on a shared
   machine hits both sides; the ratio is separate / one pass.
2. Data parallel: `torchrun --nproc_per_node=N` training of one SAE on the cache of the last
   hook for --steps steps: 2 processes of --threads / 2 threads each, against 1 process with
   --threads threads (the same cores) and 1 process with --threads / 2 (one process's share).
   Wall time includes starting the processes; step time is the training loop's own (train.py
   logs it). Each runs in a fresh output folder, and the largest weight difference between
   the 2-process SAE and each 1-process one is printed (float32 rounding only).

On a 2-core machine data parallelism can only share out the same two cores, so expect
little speedup here; it is meant for one process per GPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
STEP_RATE = re.compile(r"(\d+) steps at ([\d.]+) steps/s")


def cache_ratio(args, work: Path) -> tuple[float, float]:
    """(seconds for one pass over every hook, seconds for one pass per hook), summed over the reps."""
    from explorer.activation_cache import cache_activations, cache_hooks
    from explorer.model import load_model

    from bench_index import random_windows  # bench/ is on sys.path when a script here runs

    lm = load_model("demo", progress=False)
    windows = random_windows(lm.tokenizer, args.windows, args.window_len)
    together, apart = [], []
    for rep in range(args.reps):
        start = time.perf_counter()
        cache_hooks(lm, {h: work / f"one-{rep}" / h for h in args.hooks}, windows, batch_size=args.batch_windows,
                    progress=False)
        together.append(time.perf_counter() - start)
        start = time.perf_counter()
        for h in args.hooks:
            cache_activations(lm, h, windows, work / f"sep-{rep}" / h, batch_size=args.batch_windows, progress=False)
        apart.append(time.perf_counter() - start)
        print(f"rep {rep}: one pass {together[-1]:.1f} s, {len(args.hooks)} passes {apart[-1]:.1f} s", flush=True)
    shutil.copytree(work / "one-0" / args.hooks[-1], work / "cache")
    return sum(together), sum(apart)


def launch(args, work: Path, nproc: int, threads: int) -> tuple[float, float]:
    """(wall seconds, seconds per step) of `nproc` processes of `threads` threads training together."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EXPLORER_THREADS": str(threads),
           # the workers import this checkout's explorer, as this script does
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           __file__, "--worker", str(work / "cache"), str(work / f"sae-{nproc}x{threads}"), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--threads", str(threads)]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    _, rate = STEP_RATE.findall(done.stdout + done.stderr)[0]
    return wall, 1 / float(rate)


def max_abs_diff(a: Path, b: Path) -> float:
    """The largest difference between two saved SAEs' weights."""
    from safetensors.torch import load_file

    one, two = (load_file(str(p / "sae_weights.safetensors")) for p in (a, b))
    return max((one[k] - two[k]).abs().max().item() for k in one)


def worker(cache_dir: str, out_dir: str, steps: int, batch_size: int, threads: int) -> None:
    """One torchrun process: train together with the others on the cache."""
    from explorer import distributed
    from explorer.activation_cache import ActivationCache
    from explorer.train import TrainConfig, train_sae
    from explorer.train_distributed import Ranks

    torch.set_num_threads(threads)
    with distributed.session("cpu") as dist:
        ranks = Ranks.of(dist)
        logging.basicConfig(level=logging.INFO if ranks.main else logging.WARNING, format="%(message)s")
        cfg = TrainConfig(out_dir=out_dir, batch_size=batch_size, n_tokens=steps * batch_size,
                          checkpoint_every=10_000, b_dec_samples=batch_size, lr_warmup_steps=0)
        train_sae(cfg, ActivationCache(cache_dir), progress=False, ranks=ranks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=48, help="random windows to cache")
    p.add_argument("--window-len", type=int, default=128)
    p.add_argument("--batch-windows", type=int, default=16)
    p.add_argument("--hooks", default="blocks.5.hook_resid_post,blocks.15.hook_resid_post,blocks.25.hook_resid_post",
                   help="comma-separated; the SAE of part 2 trains on the last one")
    p.add_argument("--reps", type=int, default=2, help="alternating repetitions of part 1")
    p.add_argument("--steps", type=int, default=20, help="training steps in part 2")
    p.add_argument("--batch-size", type=int, default=1024, help="tokens per step in part 2 (at most the cache's)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads in all, both runs")
    p.add_argument("--worker", nargs=2, metavar=("CACHE", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(*args.worker, args.steps, args.batch_size, args.threads)
    args.hooks = args.hooks.split(",")
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        one, apart = cache_ratio(args, work)
        tokens = args.windows * (args.window_len - 1)
        print(f"caching {len(args.hooks)} hooks, {tokens} tokens, {args.reps} reps: one pass {one:.1f} s, "
              f"one pass per hook {apart:.1f} s ({apart / one:.2f}x)")
        half = max(1, args.threads // 2)
        shapes = [(1, args.threads), (1, half), (2, half)]
        runs = {(n, t): launch(args, work, n, t) for n, t in shapes}
        for (n, t), (wall, step) in runs.items():
            print(f"{n} process(es) x {t} thread(s): wall {wall:.1f} s, {step * 1000:.0f} ms/step")
        diff = max(max_abs_diff(work / f"sae-{n}x{t}", work / f"sae-2x{half}") for n, t in shapes[:2])
    (wall_all, step_all), (wall_half, step_half), (wall2, step2) = (runs[shape] for shape in shapes)
    print(f"SUMMARY multi-hook caching {apart / one:.2f}x faster than one pass per hook ({len(args.hooks)} hooks); "
          f"2 gloo processes vs 1 with {args.threads} threads: step time {step_all / step2:.2f}x, wall "
          f"{wall_all / wall2:.2f}x; vs 1 with {half}: step time {step_half / step2:.2f}x, wall {wall_half / wall2:.2f}x "
          f"({args.steps} steps of {args.batch_size} tokens, d_sae {8 * 576}); weights differ by at most {diff:.2g}")


if __name__ == "__main__":
    main()
