"""Load and read costs of the demo workspace (the committed SAE and index), against their targets.

    python bench/bench_demo.py [--loads 3] [--cards 200]

1. loading the demo model from its safetensors cache, once it has been converted
   and read once in this process (so the OS file cache is warm, as on an app restart):
   median over --loads loads (target < 5 s; converting the GGUF takes about a minute);
2. FeatureIndex.card() on the committed demo index, p50 / p95 over --cards random
   features, each read once (target p50 < 50 ms).
These figures were assertions in the demo tests; on a shared 2-core machine a busy
neighbour could fail them, so they are measured here instead.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import numpy as np
import torch

from explorer.model import load_model
from explorer.workspace import open_workspace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loads", type=int, default=3, help="cached model loads to time")
    p.add_argument("--cards", type=int, default=200, help="random features whose card is read")
    args = p.parse_args()

    ws = open_workspace("demo", progress=False)  # converts the model on a first run
    print(f"# {ws.describe()}")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    loads = []
    for _ in range(args.loads):
        start = time.perf_counter()
        load_model("demo", progress=False)
        loads.append(time.perf_counter() - start)
    print(f"1. cached demo model load: median {statistics.median(loads):.2f} s over {len(loads)} loads "
          f"(max {max(loads):.2f} s; target < 5 s)")

    features = random.Random(0).sample(range(ws.index.d_sae), min(args.cards, ws.index.d_sae))
    lat = []
    for f in features:
        start = time.perf_counter()
        ws.index.card(f)
        lat.append((time.perf_counter() - start) * 1e3)
    print(f"2. demo index card(): p50 {statistics.median(lat):.2f} ms, p95 {np.percentile(lat, 95):.2f} ms "
          f"over {len(lat)} features (target p50 < 50 ms)")


if __name__ == "__main__":
    main()
