"""Many users, one model: the scheduler's throughput and latency at N concurrent users.

    python bench/bench_serving.py [--users 1 2 4 8] [--rows 1] [--tokens 32] [--reps 3] [--sae data/demo/sae]

Each user asks for one steered completion (`--rows 1`, as a client of a steering
preset through `explorer serve` does) or a steering pair (`--rows 2`: the
unclamped and the clamped row, as the app's Generate button asks for), with its
own prompt and feature, `--tokens` new tokens per row, greedy, no stop at end of
text. N users start at once (a barrier) and stream their tokens through
`steering.stream_rows`, so every step of every user goes through the model's one
scheduler.

Reported per N: the median wall time of its rounds (the Ns take turns, after one
untimed round each), throughput (generated tokens per second) relative to one user, and p50/p95 over users and reps of the time to the first
token and to the last. Before timing, every user's completions are generated
alone; each concurrent run must equal them token for token (mismatches are
counted in the output). The last line reads `throughput at 4 users: X.XX x one user`.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import threading
import time

import torch

from explorer.steering import GenerationSettings, Intervention, generate_rows, stream_rows
from explorer.workspace import open_workspace

PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "The capital of France is",
    "Explain how photosynthesis works to a child.",
    "Once upon a time, in a small village by the sea, there lived",
    "List three reasons to learn a second language:",
    "def fibonacci(n):",
    "My favourite recipe for a rainy day is",
    "The history of the printing press begins in",
]
FEATURES = [0, 11, 42, 123, 512, 1024, 2048, 4000]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def user_job(i: int, n_rows: int) -> tuple[str, list[list[Intervention]]]:
    steered = [Intervention(FEATURES[i % len(FEATURES)], "clamp", 10.0)]
    return PROMPTS[i % len(PROMPTS)], [steered] if n_rows == 1 else [[], steered]


def one_user(lm, sae, i, n_rows, settings, start: threading.Barrier, out: dict) -> None:
    prompt, rows = user_job(i, n_rows)
    tokens: list[list[int]] = [[] for _ in rows]
    start.wait()
    t0 = time.perf_counter()
    first = None
    with contextlib.closing(stream_rows(lm, sae, prompt, rows, settings)) as steps:
        for step in steps:
            first = first or time.perf_counter() - t0
            for row, token in zip(tokens, step):
                if token is not None:
                    row.append(token)
    out[i] = (first, time.perf_counter() - t0, tokens)


def round_of(lm, sae, n: int, n_rows: int, settings) -> tuple[float, dict]:
    """N users at once: (wall seconds, user -> (first token s, last token s, tokens))."""
    out: dict = {}
    start = threading.Barrier(n + 1)
    threads = [threading.Thread(target=one_user, args=(lm, sae, i, n_rows, settings, start, out)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--rows", type=int, choices=(1, 2), default=1,
                   help="completions per user: 1 steered (an API client), 2 a steering pair (the app's Generate)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens per row")
    p.add_argument("--reps", type=int, default=3, help="timed rounds per N (after one warm-up round per N)")
    p.add_argument("--sae", default=None, help="SAE folder (default: the demo SAE)")
    args = p.parse_args()
    if 4 not in args.users or 1 not in args.users:
        p.error("--users must include 1 and 4 (the summary compares them)")
    args.users = sorted(set(args.users))

    ws = open_workspace("demo", sae=args.sae, progress=False)
    lm, sae = ws.lm, ws.sae
    print(f"# {ws.describe()}; Linear weights: {lm.layout}")
    print(f"# {args.rows} row(s) per user, {args.tokens} new tokens per row")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    settings = GenerationSettings(max_new_tokens=args.tokens, stop_at_eos=False)
    alone = {}
    for i in range(max(args.users)):
        prompt, rows = user_job(i, args.rows)
        alone[i] = [c.token_ids for c in generate_rows(lm, sae, prompt, rows, settings)]
    # One untimed round per N first: oneDNN makes its kernels for each new batch shape
    # on first use, which a server pays once, not per request.
    for n in args.users:
        round_of(lm, sae, n, args.rows, settings)

    per_user_tokens = args.rows * args.tokens
    walls: dict[int, list[float]] = {n: [] for n in args.users}
    firsts: dict[int, list[float]] = {n: [] for n in args.users}
    lasts: dict[int, list[float]] = {n: [] for n in args.users}
    mismatches = checked = 0
    for _ in range(args.reps):  # the Ns take turns, so a busy spell on a shared machine hits all of them
        for n in args.users:
            wall, out = round_of(lm, sae, n, args.rows, settings)
            walls[n].append(wall)
            for i, (first, last, tokens) in out.items():
                firsts[n].append(first)
                lasts[n].append(last)
                mismatches += tokens != alone[i]
                checked += 1
    throughput: dict[int, float] = {}
    print(f"{'users':>5} {'wall s':>7} {'tok/s':>7} {'x one':>6} {'first p50':>9} {'first p95':>9} "
          f"{'last p50':>8} {'last p95':>8}")
    for n in args.users:
        wall = statistics.median(walls[n])
        throughput[n] = n * per_user_tokens / wall
        print(f"{n:>5} {wall:>7.2f} {throughput[n]:>7.1f} {throughput[n] / throughput[1]:>6.2f} "
              f"{percentile(firsts[n], .5):>9.3f} {percentile(firsts[n], .95):>9.3f} "
              f"{percentile(lasts[n], .5):>8.2f} {percentile(lasts[n], .95):>8.2f}")
    for n in args.users:
        ratio = throughput[n] / throughput[1]
        target = {4: 0.85, 8: 0.6}.get(n)
        print(f"# {n} users: {ratio:.2f} x one user's throughput = {ratio / n:.2f} x N"
              + (f" (target >= {target} x N)" if target else ""))
    print(f"# users whose completions differ from the same user alone: {mismatches} of {checked}")
    print(f"throughput at 4 users: {throughput[4] / throughput[1]:.2f} x one user")


if __name__ == "__main__":
    main()
