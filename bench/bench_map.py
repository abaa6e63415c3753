"""Feature map numbers: build time (explorer.feature_map.compute_map) and the map page's chart
latency, at the demo SAE's width and at a large synthetic width.

The large SAE is synthetic: `--clusters` random unit directions in d_in dimensions, each
feature one of them plus Gaussian noise (a decoder with cluster structure, as trained ones
have). Page latency is the server side of the Feature map page: choosing the points to draw
(explorer.feature_map.shown_points), hover strings, the plotly figure (ui/map_chart.py) and
its JSON, which is what Streamlit sends to the browser; the browser's WebGL drawing is not
in it.

    python bench/bench_map.py                       # 4,608 (demo SAE) and 131,072 features
    python bench/bench_map.py --widths 4608 --reps 3
    python bench/bench_map.py --widths 4608 --reuse-demo-map   # page latency only, from data/demo/index
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.feature_map import MAX_POINTS, compute_map, load_map, shown_points
from ui.map_chart import map_figure


def decoder(width: int, d_in: int, clusters: int, seed: int) -> np.ndarray:
    """The demo SAE's W_dec at its width, else a synthetic clustered one."""
    from safetensors.numpy import load_file

    demo = load_file(str(ROOT / "data/demo/sae/sae_weights.safetensors"))["W_dec"].astype(np.float32)
    if width == len(demo):
        return demo
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, d_in)).astype(np.float32)
    W = centres[rng.integers(0, clusters, width)]
    W += 0.5 * rng.normal(size=W.shape).astype(np.float32)
    return W


def page_seconds(fmap, density: np.ndarray, reps: int) -> float:
    """Median seconds of what the page does per draw, without Streamlit itself."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        shown = shown_points(density, MAX_POINTS)
        hover = [f"#{f} label of feature {f}" for f in shown]
        fig = map_figure(fmap, shown, hover, np.log10(density[shown] + 1e-9), "log10 density",
                         grid=len(shown) < fmap.d_sae)
        fig.to_json()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[4608, 131072])
    ap.add_argument("--d-in", type=int, default=576, help="width of the synthetic decoder rows (the demo model's)")
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3, help="page draws timed per width (median)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-demo-map", action="store_true",
                    help="at the demo width, time the page on data/demo/index's stored map and build nothing")
    args = ap.parse_args()

    if not args.reuse_demo_map:
        t = time.perf_counter()
        import umap  # noqa: F401  (numba: imported once, timed apart)
        print(f"import umap: {time.perf_counter() - t:.1f} s", flush=True)
    rows = []
    for width in args.widths:
        stored = load_map(ROOT / "data/demo/index") if args.reuse_demo_map else None
        if stored is not None and stored.d_sae == width:
            fmap, build = stored, float("nan")
        else:
            W = decoder(width, args.d_in, args.clusters, args.seed)
            t = time.perf_counter()
            fmap = compute_map(W, seed=args.seed)
            build = time.perf_counter() - t
        density = np.random.default_rng(args.seed).random(width) ** 3  # the page only ranks and colours by it
        page = page_seconds(fmap, density, args.reps)
        drawn = min(width, MAX_POINTS)
        rows.append((width, fmap.params.method, build, page, drawn))
        print(f"{width:,} features: {fmap.params.method} build {build:.1f} s; page {page * 1000:.0f} ms "
              f"({drawn:,} points drawn)", flush=True)
    print("summary: " + "; ".join(f"{w:,} features {m} build {b:.0f} s, page {p * 1000:.0f} ms ({n:,} points)"
                                  for w, m, b, p, n in rows))


if __name__ == "__main__":
    main()
