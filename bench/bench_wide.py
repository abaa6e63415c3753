"""A wide SAE's index build: a synthetic 131,072-feature TopK SAE on the demo model.

    PYTHONPATH=. python bench/bench_wide.py [--d-sae 131072] [--k 64] [--windows 64] [--out /tmp/wide]

The SAE: decoder rows are random unit vectors, the encoder is their transpose after
whitening the input (measured on 8 windows), so every pre-activation has unit variance, and
each feature gets a bias b_i = spread * z_i (z_i standard normal): some features win the top-k
often and most rarely, as in a trained SAE (the densities printed span several decades). It is saved in SAELens format
under --out/sae, and indexed over the demo index's windows (real text) into --out/index,
which stays there for reuse (card and search latency: explorer's reader benches).

Printed: the density spread, pass / floor (target >= 0.85; also the forward + encode share of
the pass, timed inside it), the finalisation by step,
peak RSS, the pass state's bytes per feature, and bytes on disk per feature. Logit
effects (d_sae x vocab) and decoder neighbours (d_sae x d_sae) take long on a CPU at this
width; with --weight-stats sample (the default) each is timed on one chunk and extrapolated,
and the index gets none of them.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file

from explorer.corpus import Windows
from explorer.hooks import run_to_hook
from explorer.index import finalise
from explorer.index.format import N_LOGITS, N_NEIGHBOURS
from explorer.model import load_model
from explorer.sae import random_sae
from explorer.sae_files import load_sae, save_sae
from explorer.tl_processing import sae_space

from bench_index import measure, print_state_bytes  # bench/ is on sys.path when a script here runs

HOOK = "blocks.15.hook_resid_post"
DEMO_WINDOWS = Path("data/demo/index/windows.safetensors")


def demo_windows(n: int) -> Windows:
    """The first n windows of the committed demo index (real text)."""
    arrays = load_file(str(DEMO_WINDOWS))
    return Windows(arrays["tokens"][:n].astype(np.int32), arrays["doc_id"][:n], arrays["offset"][:n])


@torch.inference_mode()
def synthetic_sae(lm, d_sae: int, k: int, spread: float, windows: Windows, seed: int = 0):
    """A TopK SAE with random unit decoder rows, W_enc = W_dec.T, b_dec the mean activation and
    per-feature biases that spread the densities (see the module docstring)."""
    sae = random_sae(lm.d_model, d_sae, architecture="topk", k=k, hook_name=HOOK, model_name=lm.name, seed=seed)
    ids = torch.from_numpy(windows.tokens[:8].astype(np.int64))
    x = sae_space(lm.model, sae.cfg).to_sae(run_to_hook(lm.model, HOOK, ids))[:, 1:].reshape(-1, lm.d_model)  # no BOS
    sae.b_dec.copy_(x.mean(0))
    # Whitened input: a few directions of the residual stream carry most of its variance, and
    # random encoder rows aligned with them would win every token. After whitening each
    # feature's pre-activation has unit variance, so its bias alone sets its density.
    values, vectors = torch.linalg.eigh(torch.cov((x - sae.b_dec).T) + 1e-6 * torch.eye(lm.d_model))
    whiten = vectors @ torch.diag(values.clamp_min(1e-6).rsqrt()) @ vectors.T
    sae.W_enc.copy_(whiten @ sae.W_dec.T)
    z = torch.randn(d_sae, generator=torch.Generator().manual_seed(seed + 1))
    sae.b_enc.copy_(spread * z)
    return sae


@torch.inference_mode()
def densities(lm, sae, windows: Windows, batch_size: int) -> np.ndarray:
    counts = torch.zeros(sae.cfg.d_sae)
    for a in range(0, len(windows.tokens), batch_size):
        ids = torch.from_numpy(windows.tokens[a:a + batch_size].astype(np.int64))
        counts += (sae.encode(run_to_hook(lm.model, HOOK, ids)) > 0).flatten(0, 1).sum(0)
    return (counts / windows.tokens.size).numpy()


def sampled_neighbours(seconds: list[float]):
    """A stand-in for finalise._neighbours: times one chunk of the real computation, scales it
    to every row, and returns no neighbours."""
    def neighbours(sae, chunk: int = 512):
        d = sae.cfg.d_sae
        W = sae.W_dec.detach().float()
        W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
        t = time.perf_counter()
        finalise._ordered_topk(W[:chunk] @ W.T, N_NEIGHBOURS)
        seconds.append((time.perf_counter() - t) * d / chunk)
        none = {"method": "none (bench_wide timed one exact chunk)"}  # the manifest's record of it
        return np.full((d, N_NEIGHBOURS), -1, np.int32), np.zeros((d, N_NEIGHBOURS), np.float32), none
    return neighbours


def sampled_logit_effects(seconds: list[float]):
    """A stand-in for finalise._logit_effects: times one chunk of the real computation, scales
    it to every row, and returns empty logit effects."""
    real = finalise._logit_effects

    def logit_effects(lm, sae, chunk: int = 256):
        d = sae.cfg.d_sae
        part = random_sae(sae.cfg.d_in, chunk, hook_name=sae.cfg.hook_name)
        part.W_dec.data.copy_(sae.W_dec[:chunk])
        t = time.perf_counter()
        real(lm, part, chunk)
        seconds.append((time.perf_counter() - t) * d / chunk)
        empty = {f"logit_{w}_ids": np.full((d, N_LOGITS), -1, np.int32) for w in ("top", "bottom")}
        return empty | {f"logit_{w}_values": np.zeros((d, N_LOGITS), np.float32) for w in ("top", "bottom")}
    return logit_effects


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--d-sae", type=int, default=131072)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--windows", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--top-n", type=int, default=20)
    p.add_argument("--spread", type=float, default=0.5, help="bias spread, in pre-activation standard deviations")
    p.add_argument("--weight-stats", choices=("sample", "full"), default="sample",
                   help="logit effects and decoder neighbours: timed on one chunk (the index gets none), or full")
    p.add_argument("--out", default="/tmp/wide", help="folder for the SAE (sae/) and the index (index/)")
    args = p.parse_args()

    lm = load_model("demo", progress=False)
    windows = demo_windows(args.windows)
    out = Path(args.out)
    sae_dir = out / "sae"
    if (sae_dir / "cfg.json").is_file():
        sae = load_sae(sae_dir)
    else:
        sae = synthetic_sae(lm, args.d_sae, args.k, args.spread, windows)
        save_sae(sae, sae_dir)
    dens = densities(lm, sae, windows[: min(16, args.windows)], args.batch_size)
    alive = dens[dens > 0]
    q = np.quantile(alive, [0.1, 0.5, 0.9, 0.99]) if len(alive) else np.zeros(4)
    print(f"# {sae.cfg.d_sae:,} features, k={sae.cfg.k}, {len(windows)} windows x {windows.tokens.shape[1]}; "
          f"on {min(16, args.windows)} windows {len(alive):,} features fire, density p10/p50/p90/p99 "
          + "/".join(f"{v:.1e}" for v in q) + f", max {dens.max():.2f}")

    neighbour_s: list[float] = []
    logit_s: list[float] = []
    if args.weight_stats == "sample":
        finalise._neighbours = sampled_neighbours(neighbour_s)
        finalise._logit_effects = sampled_logit_effects(logit_s)
    m = measure(lm, sae, windows, args.batch_size, args.top_n, out / "index")
    n_tok, d = windows.tokens.size, sae.cfg.d_sae
    print(f"floor {n_tok / m['floor']:,.0f} tok/s, pass {n_tok / m['pass']:,.0f} tok/s: "
          f"pass / floor {m['floor'] / m['pass']:.3f} (target >= 0.85); in the pass, forward + encode "
          f"{m['floor_in_pass']:.1f} s of {m['pass']:.1f} s: {m['floor_in_pass'] / m['pass']:.3f}")
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in m["steps"].items())
    print(f"finalisation {m['total'] - m['pass']:.1f} s ({steps})"
          + (f"; sampled, not in the index: logit effects {logit_s[0]:.0f} s and neighbours {neighbour_s[0]:.0f} s "
             "for all rows" if neighbour_s else ""))
    print_state_bytes(m["state"])
    print(f"on disk {m['disk'] / d:,.0f} bytes/feature ({m['disk'] / 2**20:.0f} MiB) in {out / 'index'}")
    print(f"summary: d_sae {d:,} k {sae.cfg.k}: pass / floor {m['floor'] / m['pass']:.2f}, finalisation "
          f"{m['total'] - m['pass']:.0f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.1f} GiB, "
          f"{m['disk'] / d:,.0f} B/feature on disk")


if __name__ == "__main__":
    main()
