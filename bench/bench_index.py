"""Feature-index build throughput against its floor, on the demo model, in one process.

    python bench/bench_index.py [--windows 64] [--sae PATH | --d-sae 4608] [--windows-file F]

The floor is what any index build must do: the forward pass to the SAE's hook plus the SAE
encode, over the same windows in the same batches. The build does that plus every per-feature
statistic (target: pass tokens/s >= 0.85 x the floor's). The floor runs before and after the
build and the two are averaged, so drift on a shared machine hits both sides.
Also printed: the one-off finalisation (weight-only stats, files), peak RSS, bytes on disk per
feature, and FeatureIndex.card() latency p50/p95 over 200 random features (target p50 < 50 ms).
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from explorer.corpus import Windows, load_windows
from explorer.hooks import run_to_hook
from explorer.index import FeatureIndex, build_index
from explorer.model import load_model
from explorer.sae import random_sae
from explorer.sae_files import load_sae

HOOK = "blocks.15.hook_resid_post"


def random_windows(tokenizer, n: int, length: int, seed: int = 0) -> Windows:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, len(tokenizer), size=(n, length)).astype(np.int32)
    if tokenizer.bos_token_id is not None:
        tokens[:, 0] = tokenizer.bos_token_id
    return Windows(tokens, np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64))


@torch.inference_mode()
def floor(lm, sae, tokens: np.ndarray, batch_size: int) -> float:
    """Seconds for forward-to-hook + encode over every window."""
    start = time.perf_counter()
    for a in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(tokens[a:a + batch_size], dtype=np.int64)).to(lm.device)
        f = sae.encode(run_to_hook(lm.model, sae.cfg.hook_name, ids).to(sae.device))
        if f.is_cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--windows", type=int, default=64, help="number of windows to index")
    p.add_argument("--window-len", type=int, default=128)
    p.add_argument("--windows-file", default=None,
                   help="windows from explorer.corpus.save_windows (else random tokens)")
    p.add_argument("--sae", default=None, help="SAE folder (default: a random topk SAE)")
    p.add_argument("--d-sae", type=int, default=4608, help="width of the random SAE")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--top-n", type=int, default=20)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default=None, help="index folder (default: a temporary one)")
    args = p.parse_args()

    lm = load_model("demo", device=args.device, progress=False)
    if args.sae:
        sae = load_sae(args.sae, device=lm.device)
    else:
        sae = random_sae(lm.d_model, args.d_sae, architecture="topk", k=32, hook_name=HOOK, model_name=lm.name)
        sae = sae.to(lm.device)
    if args.windows_file:
        windows = load_windows(args.windows_file)[: args.windows]
    else:
        windows = random_windows(lm.tokenizer, args.windows, args.window_len)
    n_tok = windows.tokens.size
    print(f"# {lm.name} on {lm.device}, {sae.cfg.architecture} SAE d_sae={sae.cfg.d_sae} at {sae.cfg.hook_name}; "
          f"{len(windows)} windows x {windows.tokens.shape[1]} = {n_tok:,} tokens, batch {args.batch_size}")
    cpu = platform.processor() or platform.machine()
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")

    floor(lm, sae, windows.tokens[: args.batch_size], args.batch_size)  # warm-up
    floor_before = floor(lm, sae, windows.tokens, args.batch_size)

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "index"
        stamps: list[float] = []
        start = time.perf_counter()
        build_index(lm, sae, windows, out, top_n=args.top_n, batch_size=args.batch_size, progress=False,
                    on_batch=lambda _: stamps.append(time.perf_counter()))
        total = time.perf_counter() - start
        pass_s = stamps[-1] - start
        floor_after = floor(lm, sae, windows.tokens, args.batch_size)
        floor_s = (floor_before + floor_after) / 2

        size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
        ix = FeatureIndex.open(out, lm.tokenizer)
        rng = np.random.default_rng(1)
        ix.card(0)
        lat = []
        for f in rng.integers(0, ix.d_sae, size=200):
            t = time.perf_counter()
            ix.card(int(f))
            lat.append((time.perf_counter() - t) * 1e3)

    print(f"floor  (forward to hook + encode): {n_tok / floor_s:9,.0f} tok/s  "
          f"({floor_before:.2f} s before, {floor_after:.2f} s after the build)")
    print(f"index pass:                        {n_tok / pass_s:9,.0f} tok/s  ({pass_s:.2f} s)")
    print(f"ratio pass / floor:                {floor_s / pass_s:9.3f}   (target >= 0.85)")
    print(f"finalisation (weights, files):     {total - pass_s:9.2f} s   (whole build {n_tok / total:,.0f} tok/s)")
    print(f"peak RSS:                          {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:9,.0f} MiB")
    print(f"on disk:                           {size / ix.d_sae:9,.0f} bytes/feature ({size / 2**20:.1f} MiB)")
    print(f"card() latency:                    p50 {statistics.median(lat):.2f} ms, "
          f"p95 {np.percentile(lat, 95):.2f} ms over {len(lat)} features (target p50 < 50 ms)")


if __name__ == "__main__":
    main()
