"""The index reader and the weight-only finalisation steps at 131,072 and 1,048,576 features.

    python bench/bench_width.py [--widths 131072 1048576] [--out /tmp/bench_width] [--cards 1000]

Reader. For each width it writes a synthetic index in the real on-disk format (the arrays of
explorer.index.format, labels_auto.json as the build writes it, a manifest with checksums):
2,000 windows of 128 random demo-vocabulary tokens, 20 top examples and 5 x 5 quantile
examples per feature (as the demo index has), automatic labels taken in turn from the committed
demo index. Then, in a fresh process (so its memory is its own), it times what the app does:
FeatureIndex.open, the first card, 1,000 random cards, label / top-token / logit-token search
over several query words (the first search builds its structure and is reported apart), and
the resident memory (RSS) after each. Targets at 131k: card p95 <= 50 ms, search p95 <= 100 ms,
opening (open + first card + first search) <= 3 s.

Finalisation (--finalise). Decoder neighbours through faiss (explorer.neighbours) on a
synthetic decoder whose rows split the demo SAE's 4,608 directions (each row: a demo row plus
as much random noise, normalised: cosine ~0.7 to its parent, as wide SAEs split the features of
narrow ones): k-means and adding all rows are timed whole, the search on --search-rows rows and
scaled to all; recall@10 against the exact search on 1,000 random rows. Logit effects
(W_dec @ W_U, demo unembedding, 576 x 49,152) timed on 4,096 rows and scaled. Each line states
what is measured and what is scaled.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.files import replacing_dir  # noqa: E402
from explorer.index.format import (  # noqa: E402
    EXAMPLE_ARRAYS,
    EXAMPLES_FILE,
    FEATURE_ARRAYS,
    FEATURES_FILE,
    FORMAT_VERSION,
    LABELS_AUTO_FILE,
    MANIFEST_FILE,
    N_BINS,
    N_COOCCURRING,
    N_KINDS,
    N_LOGITS,
    N_NEIGHBOURS,
    N_QUANTILES,
    SAMPLES_PER_BIN,
    WINDOW_ARRAYS,
    WINDOWS_FILE,
)
from explorer.index.integrity import file_records, manifest_text  # noqa: E402

DEMO_INDEX = ROOT / "data" / "demo" / "index"
DEMO_SAE = ROOT / "data" / "demo" / "sae" / "sae_weights.safetensors"
QUERIES = ["the", "code", "‘in’", "→ ‘:’", "number", "python", "ing", "zzyzx"]
TRACES_PER_FEATURE = 4  # examples of one feature share these activation traces
TRACE_LEN = 8  # nonzero activations per trace


def _save(file: Path, arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
    from safetensors.numpy import save_file

    assert set(arrays) == set(names), sorted(set(arrays) ^ set(names))
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(file))


def write_synthetic_index(out: Path, d_sae: int, n_windows: int = 2000, window_len: int = 128, vocab: int = 49152,
                          top_n: int = 20, labels: list[str] | None = None, seed: int = 0) -> Path:
    """An index folder of width `d_sae` in the real format, with random contents."""
    rng = np.random.default_rng(seed)
    d, L = d_sae, window_len
    per_feature = top_n + N_QUANTILES * SAMPLES_PER_BIN
    n_ex = d * per_feature
    n_tokens = n_windows * L
    count = rng.integers(per_feature, max(per_feature + 1, n_tokens // 50), d).astype(np.int64)
    act_max = rng.gamma(2.0, 5.0, d).astype(np.float32) + 1
    edges = np.logspace(-3, 2, N_BINS + 1).astype(np.float32)
    hist = rng.multinomial(1, np.ones(N_BINS) / N_BINS, size=d).astype(np.int64) * count[:, None]

    def ids(shape, high):
        return rng.integers(0, high, shape).astype(np.int32)

    q_low = np.sort(rng.random((d, N_QUANTILES), dtype=np.float32), axis=1) * act_max[:, None]
    features = {
        "count": count, "act_sum": count * act_max.astype(np.float64) / 3, "act_max": act_max,
        "hist_counts": hist, "hist_edges": edges, "q_low": q_low, "q_high": q_low + 0.1,
        "q_fraction": np.full((d, N_QUANTILES), 1 / N_QUANTILES, np.float32),
        "q_valid": np.ones((d, N_QUANTILES), np.uint8),
        "logit_top_ids": ids((d, N_LOGITS), vocab), "logit_top_values": np.sort(rng.random((d, N_LOGITS)), 1)[:, ::-1].astype(np.float32),
        "logit_bottom_ids": ids((d, N_LOGITS), vocab), "logit_bottom_values": -rng.random((d, N_LOGITS), dtype=np.float32),
        "neighbour_ids": ids((d, N_NEIGHBOURS), d), "neighbour_cos": rng.random((d, N_NEIGHBOURS), dtype=np.float32),
        "cooc_ids": ids((d, N_COOCCURRING), d), "cooc_jaccard": rng.random((d, N_COOCCURRING), dtype=np.float32),
        "peak_token_ids": ids((d, top_n), vocab),
    }
    # Examples: top_n in group 0, SAMPLES_PER_BIN in each quantile group, per feature.
    sizes = np.tile([top_n] + [SAMPLES_PER_BIN] * N_QUANTILES, d)
    ex_ptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    feature_of = np.repeat(np.arange(d, dtype=np.int64), per_feature)
    n_traces = d * TRACES_PER_FEATURE
    examples = {
        "ex_ptr": ex_ptr, "ex_window": np.sort(rng.integers(0, n_windows, n_ex)),
        "ex_position": rng.integers(0, L, n_ex).astype(np.int32),
        "ex_activation": rng.random(n_ex, dtype=np.float32),
        "ex_trace": feature_of * TRACES_PER_FEATURE + rng.integers(0, TRACES_PER_FEATURE, n_ex),
        "trace_ptr": np.arange(n_traces + 1, dtype=np.int64) * TRACE_LEN,
        "trace_pos": rng.integers(0, L, n_traces * TRACE_LEN).astype(np.int16),
        "trace_val": rng.random(n_traces * TRACE_LEN, dtype=np.float32).astype(np.float16),
    }
    tokens = rng.integers(0, vocab, (n_windows, L)).astype(np.uint16 if vocab < 65536 else np.int32)
    windows = {"window_ids": np.arange(n_windows, dtype=np.int64), "tokens": tokens,
               "doc_id": np.arange(n_windows, dtype=np.int64), "offset": np.zeros(n_windows, np.int64)}
    labels = labels or [f"feature {i}" for i in range(64)]
    auto = [labels[i % len(labels)] for i in range(d)]
    manifest = {"format_version": FORMAT_VERSION, "model_name": "demo", "hook_name": "blocks.15.hook_resid_post",
                "sae_fingerprint": f"synthetic-{d}", "corpus_hash": "synthetic", "n_windows": n_windows,
                "window_len": L, "n_tokens": n_tokens, "d_sae": d,
                "settings": {"top_n": top_n, "synthetic": True}, "created": ""}
    with replacing_dir(out) as tmp:
        _save(tmp / FEATURES_FILE, features, FEATURE_ARRAYS)
        _save(tmp / EXAMPLES_FILE, examples, EXAMPLE_ARRAYS)
        _save(tmp / WINDOWS_FILE, windows, WINDOW_ARRAYS)
        (tmp / LABELS_AUTO_FILE).write_text(json.dumps({"method": "synthetic", "labels": auto}, ensure_ascii=False,
                                                       indent=0), encoding="utf-8")
        (tmp / MANIFEST_FILE).write_text(manifest_text({**manifest, "files": file_records(tmp)}), encoding="utf-8")
    return out


def rss_mb() -> float:
    """Resident memory not backed by a file (RssAnon): what the reader holds. The mapped index
    files' pages (RssFile) are the OS page cache, reported apart."""
    return _status("RssAnon")


def _status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def measure_reader(path: Path, n_cards: int, baseline: Path | None = None) -> dict:
    """What the app does with the index at `path`, timed; run in its own process."""
    from transformers import AutoTokenizer

    from explorer.index import FeatureIndex
    from explorer.model import prepare_demo_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_demo_model(progress=False))
    out = {"rss_before_mb": rss_mb(), "rss_file_before_mb": _status("RssFile")}
    start = time.perf_counter()
    ix = FeatureIndex.open(path, tokenizer)
    out["open_ms"] = (time.perf_counter() - start) * 1000
    out["rss_open_mb"] = rss_mb()
    start = time.perf_counter()
    ix.card(0)
    out["first_card_ms"] = (time.perf_counter() - start) * 1000
    # Cards alternate with cards of the small baseline index, so that the load of a shared
    # machine hits both alike: their ratio is what width costs a card.
    base = FeatureIndex.open(baseline, tokenizer) if baseline else None
    times, base_times = [], []
    for f in np.random.default_rng(1).integers(0, ix.d_sae, n_cards):
        start = time.perf_counter()
        ix.card(int(f))
        times.append(time.perf_counter() - start)
        if base is not None:
            start = time.perf_counter()
            base.card(int(f) % base.d_sae)
            base_times.append(time.perf_counter() - start)
    out["card_p50_ms"], out["card_p95_ms"] = pct(times, 50), pct(times, 95)
    if base is not None:
        out["baseline_card_p50_ms"], out["baseline_card_p95_ms"] = pct(base_times, 50), pct(base_times, 95)
    out["rss_cards_mb"] = rss_mb()
    for by in ("label", "top_token", "logit_token"):
        start = time.perf_counter()
        ix.search(QUERIES[0], by=by)
        out[f"first_{by}_search_ms"] = (time.perf_counter() - start) * 1000
        times = []
        for _ in range(3):
            for q in QUERIES:
                start = time.perf_counter()
                ix.search(q, by=by, limit=20)
                times.append(time.perf_counter() - start)
        out[f"{by}_search_p50_ms"], out[f"{by}_search_p95_ms"] = pct(times, 50), pct(times, 95)
    out["rss_search_mb"] = rss_mb()
    out["rss_file_mb"] = _status("RssFile")
    out["app_open_ms"] = out["open_ms"] + out["first_card_ms"] + out["first_label_search_ms"]
    return out


def synthetic_decoder(n: int, seed: int = 0):
    """(n, 576) unit rows, each a demo SAE decoder row plus as much random noise."""
    import torch
    from safetensors.numpy import load_file

    from explorer.neighbours import normalised

    parents = normalised(torch.from_numpy(load_file(str(DEMO_SAE))["W_dec"]))
    g = torch.Generator().manual_seed(seed)
    W = torch.empty(n, parents.shape[1])
    for a in range(0, n, 65536):  # in pieces: the noise of 1M rows at once is 2.3 GB
        b = min(n, a + 65536)
        W[a:b] = normalised(parents[torch.randint(0, len(parents), (b - a,), generator=g)]
                            + normalised(torch.randn(b - a, parents.shape[1], generator=g)))
    return W


def measure_finalise(n: int, search_rows: int) -> dict:
    import faiss
    import torch

    from explorer.neighbours import _best, exact_neighbours_of, ivf_settings, recall

    out = {}
    W = synthetic_decoder(n)
    k = N_NEIGHBOURS
    s = ivf_settings(n, k)
    out["ivf"] = dataclasses.asdict(s)
    X = np.ascontiguousarray(W.numpy())
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(X.shape[1]), X.shape[1], s.nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.spherical, index.cp.niter, index.cp.seed = True, s.niter, s.seed
    sample = np.sort(np.random.default_rng(s.seed).choice(n, s.train_rows, replace=False))
    start = time.perf_counter()
    index.train(X[sample])
    out["faiss_train_s"] = time.perf_counter() - start
    start = time.perf_counter()
    index.add(X)
    out["faiss_add_s"] = time.perf_counter() - start
    index.nprobe = s.nprobe
    rows = np.random.default_rng(2).choice(n, max(search_rows, 1000), replace=False)
    start = time.perf_counter()
    sims, cand = index.search(X[rows], s.candidates)
    found, _ = _best(rows, cand, sims, k)
    out["faiss_search_s_measured"] = time.perf_counter() - start
    out["faiss_search_rows"] = len(rows)
    out["faiss_search_s_all_rows"] = out["faiss_search_s_measured"] * n / len(rows)
    out["faiss_total_s"] = out["faiss_train_s"] + out["faiss_add_s"] + out["faiss_search_s_all_rows"]
    start = time.perf_counter()
    exact = exact_neighbours_of(W, rows[:1000], k, chunk=200)
    out["exact_1000_rows_s"] = time.perf_counter() - start
    out["exact_all_rows_s_scaled"] = out["exact_1000_rows_s"] * n / 1000
    out["recall_at_10"] = recall(found[:1000], exact)
    # logit effects: W_dec @ W_U over the demo vocabulary, 4,096 rows timed
    vocab = 49152
    W_U = torch.randn(vocab, W.shape[1])
    start = time.perf_counter()
    for a in range(0, 4096, 256):
        effects = W[a:a + 256] @ W_U.T
        effects.topk(N_LOGITS, dim=1)
        (-effects).topk(N_LOGITS, dim=1)
    out["logit_4096_rows_s"] = time.perf_counter() - start
    out["logit_all_rows_s_scaled"] = out["logit_4096_rows_s"] * n / 4096
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[131072, 1048576])
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_width"))
    p.add_argument("--windows", type=int, default=2000)
    p.add_argument("--cards", type=int, default=1000)
    p.add_argument("--finalise", action="store_true", help="also time neighbours (faiss) and logit effects")
    p.add_argument("--search-rows", type=int, default=8192, help="rows the faiss search is timed on")
    p.add_argument("--baseline", type=int, default=4096, help="width of the small index cards alternate with (0: none)")
    p.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child process's job
    p.add_argument("--baseline-path", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--measure-finalise", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure_reader(args.measure, args.cards, args.baseline_path)))
        return
    if args.measure_finalise:
        print(json.dumps(measure_finalise(args.measure_finalise, args.search_rows)))
        return
    labels = json.loads((DEMO_INDEX / LABELS_AUTO_FILE).read_text(encoding="utf-8"))["labels"]
    summary = []
    base = None
    if args.baseline:
        base = args.out / f"index-{args.baseline}"
        if not (base / MANIFEST_FILE).is_file():
            write_synthetic_index(base, args.baseline, n_windows=args.windows, labels=labels)
    for d in args.widths:
        path = args.out / f"index-{d}"
        start = time.perf_counter()
        if not (path / MANIFEST_FILE).is_file():
            write_synthetic_index(path, d, n_windows=args.windows, labels=labels)
        print(f"[{d:,}] synthetic index at {path}: {time.perf_counter() - start:.1f} s to write, "
              f"{sum(f.stat().st_size for f in path.iterdir()) / 1e9:.2f} GB", flush=True)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        child = [sys.executable, __file__, "--cards", str(args.cards), "--measure", str(path)]
        if base is not None:
            child += ["--baseline-path", str(base)]
        r = json.loads(subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout)
        print(f"[{d:,}] " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
        summary.append(f"{d:,}: open {r['open_ms']:.0f} ms, app open {r['app_open_ms']:.0f} ms, card p95 "
                       f"{r['card_p95_ms']:.0f} ms (x{r['card_p50_ms'] / r.get('baseline_card_p50_ms', float('nan')):.2f} the "
                       f"{args.baseline:,}-feature index's p50), label search p95 {r['label_search_p95_ms']:.0f} ms, RSS +"
                       f"{r['rss_search_mb'] - r['rss_before_mb']:.0f} MB anon")
        if args.finalise:
            child = [sys.executable, __file__, "--search-rows", str(args.search_rows), "--measure-finalise", str(d)]
            r = json.loads(subprocess.run(child, check=True, capture_output=True, text=True, env=env).stdout)
            print(f"[{d:,}] finalise: " + json.dumps(r), flush=True)
            summary[-1] += (f"; neighbours (faiss) {r['faiss_total_s']:.0f} s, recall@10 {r['recall_at_10']:.3f}, "
                            f"logit effects {r['logit_all_rows_s_scaled']:.0f} s")
    print("SUMMARY " + " | ".join(summary))


if __name__ == "__main__":
    main()
