"""Feature-index build throughput against its floor, on the demo model, in one process.

    python bench/bench_index.py [--windows 64] [--sae PATH | --d-sae 4608] [--windows-file F]
    python bench/bench_index.py --l0 32 64 128 256   # the demo SAE as TopK with each k, one run

The floor is what any index build must do: the forward pass to the SAE's hook plus the SAE
encode, over the same windows in the same batches. The build does that plus every per-feature
statistic (target: pass tokens/s >= 0.85 x the floor's). The floor runs before and after the
build and the two are averaged, so drift on a shared machine hits both sides; the forward and
encode inside the pass are also timed (the same seconds as the pass, so steadier under load).
Also printed: the one-off finalisation by step, peak RSS, the pass state's memory per feature
(each part: PassState.bytes_per_feature), bytes on disk per feature, and FeatureIndex.card()
latency p50/p95 over 200 random features (target p50 < 50 ms). With --l0, for each k: the
floor and the pass timed batch by batch in turn (the pass = each batch's floor work +
PassState.update), no build.
Run from the repository root with PYTHONPATH=. so that this checkout's explorer is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from explorer.index import build as build_module
from explorer.index import finalise
from explorer.index.pass_state import PassState
from explorer.model import load_model
from explorer.sae import SAE, random_sae
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


FINALISE_STEPS = ("_examples", "_logit_effects", "_neighbours", "_cooccurring", "_auto_labels")


STEPS: dict[str, float] = {}  # seconds per finalisation step of the last build
STATES: list[dict[str, float]] = []  # memory of each part of the pass state per feature, per build


def instrument_finalise(steps: dict[str, float] = STEPS, states: list = STATES) -> None:
    """Time each finalisation step into `steps` and keep the finished pass state's tensor sizes
    in `states` (wraps module functions once: a bench-only hook)."""
    if getattr(build_module.write_index, "instrumented", False):
        return
    for name in FINALISE_STEPS:
        fn = getattr(finalise, name)

        def timed(*a, _fn=fn, _name=name, **kw):
            t = time.perf_counter()
            out = _fn(*a, **kw)
            steps[_name.strip("_")] = steps.get(_name.strip("_"), 0.0) + time.perf_counter() - t
            return out
        setattr(finalise, name, timed)
    write = build_module.write_index

    def capturing(out, run, *a, **kw):
        states.append(run.bytes_per_feature())
        t = time.perf_counter()
        write(out, run, *a, **kw)
        steps["write_index (all)"] = time.perf_counter() - t
    capturing.instrumented = True
    build_module.write_index = capturing


def measure(lm, sae, windows: Windows, batch_size: int, top_n: int, out: Path) -> dict:
    """Floor (before and after), pass and finalisation seconds, the state's bytes, disk bytes."""
    floor(lm, sae, windows.tokens[:batch_size], batch_size)  # warm-up
    floor_before = floor(lm, sae, windows.tokens, batch_size)
    STEPS.clear()
    instrument_finalise()
    stamps: list[float] = []
    # The CLI hashes the SAE's files before it builds; the same hash of the weights here, so
    # that the pass times the pass (0.9 s of a 131k-feature SAE's weights) and the manifest is unchanged.
    fingerprint = build_module._weights_fingerprint(sae)
    encode, encoding = build_module._encode_batch, [0.0]

    def timed_encode(*a, **kw):  # the floor's work inside the pass, timed in the same seconds
        t = time.perf_counter()
        out = encode(*a, **kw)
        encoding[0] += time.perf_counter() - t
        return out
    build_module._encode_batch = timed_encode
    start = time.perf_counter()
    try:
        build_index(lm, sae, windows, out, top_n=top_n, batch_size=batch_size, progress=False, force=True,
                    sae_path_fingerprint=fingerprint, on_batch=lambda _: stamps.append(time.perf_counter()))
    finally:
        build_module._encode_batch = encode
    total = time.perf_counter() - start
    floor_after = floor(lm, sae, windows.tokens, batch_size)
    return {"floor_before": floor_before, "floor_after": floor_after, "floor": (floor_before + floor_after) / 2,
            "floor_in_pass": encoding[0],
            "pass": stamps[-1] - start, "total": total, "steps": dict(STEPS), "state": STATES[-1],
            "disk": sum(f.stat().st_size for f in out.iterdir() if f.is_file())}


def print_state_bytes(state: dict[str, float]) -> None:
    """The pass state's memory per feature at the end of the pass, part by part."""
    parts = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(state.items(), key=lambda kv: -kv[1]) if v)
    print(f"pass state:                        {sum(state.values()):9,.0f} bytes/feature ({parts})")


def topk_variant(sae, k: int):
    """The same weights as a TopK SAE keeping k features per token."""
    variant = SAE(dataclasses.replace(sae.cfg, architecture="topk", k=k))
    variant.load_state_dict(sae.state_dict(), strict=False)
    return variant.to(sae.device)


@torch.inference_mode()
def interleaved(lm, sae, windows: Windows, batch_size: int, top_n: int) -> tuple[float, float]:
    """(floor seconds, pass seconds) with each batch's floor work (forward to hook + encode)
    timed right before its fold into a pass state: drift on a shared machine hits both alike."""
    tokens = windows.tokens
    n, L = tokens.shape
    run = PassState(sae.cfg.d_sae, L, top_n, sae.device, max_tokens=tokens.size)
    floor_s = pass_s = 0.0
    for a in range(0, n, batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(tokens[a:a + batch_size], dtype=np.int64)).to(lm.device)
        start = time.perf_counter()
        f = sae.encode(run_to_hook(lm.model, sae.cfg.hook_name, ids).to(sae.device)).float()
        f[:, 0] = 0.0  # BOS, as the build masks it
        middle = time.perf_counter()
        if run.edges is None:
            run.edges = torch.from_numpy(build_module._hist_edges(build_module._calibrated_hi(float(f.max()))))
        run.update(f, a)
        floor_s += middle - start
        pass_s += time.perf_counter() - start
    return floor_s, pass_s


def l0_table(lm, sae, windows: Windows, args) -> None:
    """pass / floor for the SAE as TopK with each k in args.l0, interleaved per batch."""
    ratios = []
    for k in args.l0:
        variant = topk_variant(sae, k)
        interleaved(lm, variant, windows[: args.batch_size], args.batch_size, args.top_n)  # warm-up
        floor_s, pass_s = interleaved(lm, variant, windows, args.batch_size, args.top_n)
        ratios.append(floor_s / pass_s)
        print(f"L0 {k:4d}: floor {floor_s:7.2f} s, pass {pass_s:7.2f} s (floor + folding each batch in), "
              f"pass / floor {ratios[-1]:.3f}")
    print("pass / floor by L0: " + ", ".join(f"{k}: {r:.2f}" for k, r in zip(args.l0, ratios)) + " (target >= 0.85)")


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
    p.add_argument("--l0", type=int, nargs="+", default=None,
                   help="one build per k with the SAE as TopK keeping k features (default SAE: the demo's)")
    args = p.parse_args()

    lm = load_model("demo", device=args.device, progress=False)
    if args.l0 and not args.sae:
        args.sae = "data/demo/sae"
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

    with tempfile.TemporaryDirectory() as tmp:
        if args.l0:
            l0_table(lm, sae, windows, args)
            return
        out = Path(args.out) if args.out else Path(tmp) / "index"
        m = measure(lm, sae, windows, args.batch_size, args.top_n, out)
        ix = FeatureIndex.open(out, lm.tokenizer)
        rng = np.random.default_rng(1)
        ix.card(0)
        lat = []
        for f in rng.integers(0, ix.d_sae, size=200):
            t = time.perf_counter()
            ix.card(int(f))
            lat.append((time.perf_counter() - t) * 1e3)

    floor_s, pass_s, total = m["floor"], m["pass"], m["total"]
    print(f"floor  (forward to hook + encode): {n_tok / floor_s:9,.0f} tok/s  "
          f"({m['floor_before']:.2f} s before, {m['floor_after']:.2f} s after the build)")
    print(f"index pass:                        {n_tok / pass_s:9,.0f} tok/s  ({pass_s:.2f} s)")
    print(f"ratio pass / floor:                {floor_s / pass_s:9.3f}   (target >= 0.85)")
    print(f"  in the pass, forward + encode:   {m['floor_in_pass']:9.2f} s of {pass_s:.2f} s: "
          f"{m['floor_in_pass'] / pass_s:.3f} (the same seconds: load on a shared machine hits both)")
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in m["steps"].items())
    print(f"finalisation (weights, files):     {total - pass_s:9.2f} s   ({steps})")
    print(f"peak RSS:                          {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:9,.0f} MiB")
    print_state_bytes(m["state"])
    print(f"on disk:                           {m['disk'] / ix.d_sae:9,.0f} bytes/feature ({m['disk'] / 2**20:.1f} MiB)")
    print(f"card() latency:                    p50 {statistics.median(lat):.2f} ms, "
          f"p95 {np.percentile(lat, 95):.2f} ms over {len(lat)} features (target p50 < 50 ms)")


if __name__ == "__main__":
    main()
