"""The feature index: every feature's statistics and examples, from one pass over a corpus.

`build_index(lm, sae, windows, out_dir)` streams token windows once through the model (up to
the SAE's hook only) and the SAE encoder, and writes a folder; `FeatureIndex.open(path,
tokenizer).card(feature)` reads one feature's `FeatureCard` from it, memory-mapped.

Public names: build_index, FeatureIndex, FeatureCard, Example, QuantileBin, IndexManifest,
IndexMismatchError, IndexFormatError, FORMAT_VERSION.

Per feature (a token fires a feature when its activation is > 0):
- count, density = count / n_tokens, max, and sum (mean = sum / count);
- a 50-bin histogram of the nonzero activations over log-spaced edges fixed before the pass:
  five decades below `hi`, where `hi` is the first batch's largest activation times 4 rounded
  up to a power of ten (or `hist_range`). The end bins are open (bin 0 also holds values below
  edges[0], bin 49 values above edges[-1]), so the counts sum to the firing count;
- the exact top-N examples in the total order (activation desc, window asc, position asc);
- 5 quantile groups over (0, max] with up to 5 random examples each (see Quantile groups);
- the 10 features it fires together with most, by Jaccard index C_ij / (C_ii + C_jj - C_ij)
  over tokens;
- from the weights alone: the top and bottom 10 logit effects W_dec[i] @ W_U (W_U =
  lm_head.weight.T; no LayerNorm, no bias) and the 10 nearest decoder rows by cosine.

Exact and mergeable (see shared/reference/scale-notes.md). Every running summary is one that
two shards combine into what a single pass gives: counts, sums and histograms add, maxima
take the max, top-N is the top-N of the union under a total order, samples are the bottom-k
of a hash of (feature, token), co-occurrence counts add. Nothing depends on batch order.

Keys. A float32 v > 0 has a bit pattern that, read as an int, orders like v. With
token = window * window_len + position, the top key bits(v) << 32 | (2^32 - 1 - token) is one
int64 ordered exactly by the total order above, so sorting it has no ties. The sample key
hash31(feature, token) << 32 | token is unique and random in its high bits.

Quantile groups. SAEDashboard's groups are equal-width over (0, max], but max is known only at
the end. So we keep, for every (feature, histogram bin), the 5 tokens with the smallest sample
keys: an exact, mergeable bottom-k sample. At the end each group boundary j * max / 5 moves to
the nearest histogram edge (at most a factor 10^0.05 = 1.12 away), so every group is a union
of whole bins. A group's examples are the 5 smallest sample keys among its bins' samples,
which is exactly the bottom-5 of all its tokens (a uniform sample without replacement), and
its fraction of the active tokens is exact from the histogram. Groups that get no bins are
left out (this happens when max lies below the histogram range).

Co-occurrence. C_ij counts the tokens where both i and j fire. It is accumulated from the pairs
of features active at each token (work ~ L0^2 per token, not d_sae^2): into a dense int32
matrix (upper triangle) when d_sae <= 8192 (256 MB), else into sorted sparse (pair, count) arrays.

Traces. Each stored example shows the feature's activation over its whole window, but a
window's activations exist only while its batch is in memory. So whenever an entry enters a
top-N or sample buffer, its (window, feature) trace is kept sparsely (positions and float16
values where > 0); traces no buffer refers to any more are pruned now and then and at the end.

BOS. Position 0 of a window is skipped (masked out of every statistic and trace) when it holds
the tokenizer's BOS token: its activations are outliers (the same context in every window,
often the corpus maximum), as SAEDashboard also masks special tokens.

Files. `manifest.json`; `features.safetensors` (per-feature arrays); `examples.safetensors`
(one flat example table, all of a feature's examples contiguous, and the sparse traces with
offsets); `windows.safetensors` (the tokens of every window an example uses, once; uint16 when
the vocabulary fits); `labels_auto.json`; and `labels_user.json` (user labels, carried over by
rebuilds). The folder is written aside and swapped in with os.replace.

Resume. Every `checkpoint_every` batches the running state goes to `<out_dir>.partial/`. A rerun
with the same inputs (model, hook, SAE, corpus, settings) continues from it; with different
inputs it refuses (IndexMismatchError) rather than mixing two corpora.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from explorer.files import write_json
from explorer.hooks import run_to_hook
from explorer.labels import auto_label
from explorer.tokens import token_strings

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
FEATURES_FILE = "features.safetensors"
EXAMPLES_FILE = "examples.safetensors"
WINDOWS_FILE = "windows.safetensors"
LABELS_AUTO_FILE = "labels_auto.json"
LABELS_USER_FILE = "labels_user.json"
STATE_FILE = "state.safetensors"
PARTIAL_SUFFIX = ".partial"

N_BINS = 50
HIST_DECADES = 5  # the histogram spans hi * 1e-5 .. hi: 10 bins per decade
HIST_HEADROOM = 4.0  # hi >= 4x the first batch's max, so later, larger maxima still get bins
N_QUANTILES = 5
SAMPLES_PER_BIN = 5
N_LOGITS = 10
N_NEIGHBOURS = 10
N_COOCCURRING = 10
COOC_DENSE_MAX = 8192  # a dense int32 d_sae^2 count matrix up to here (256 MB), sparse above
CHECKPOINT_EVERY = 50
N_KINDS = 1 + N_QUANTILES  # example groups per feature: top, then each quantile group

_MAX_PAIRS = 1 << 24  # co-occurrence pairs made at once (bounds memory for dense SAEs)
_LOW32 = 0xFFFFFFFF
_EMPTY = torch.iinfo(torch.int64).max  # key of an empty buffer slot
_SAMPLE_SEED = 0x2545F491
_REBUILD_HINT = "Fix: rebuild it with `explorer index` (or explorer.index.build_index)"


class IndexMismatchError(ValueError):
    """The index was built from another model, hook, SAE or corpus than the one in use."""


class IndexFormatError(ValueError):
    """An index file is missing, corrupt or of an unknown format version."""


# --------------------------------------------------------------------------- keys and small helpers


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash ([0, 2^32) -> [0, 2^32)) in int64 arithmetic; products stay < 2^59."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & _LOW32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _LOW32
    return (x >> 16) ^ x


def _top_keys(values: Tensor, tokens: Tensor) -> Tensor:
    """int64 keys, one per (value > 0, token): a larger key comes first in the total order
    (value desc, then token asc, i.e. window asc, then position asc)."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | (_LOW32 - tokens)


def _decode_top_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(values float32, tokens int64) from top keys."""
    values = (keys >> 32).to(torch.int32).view(torch.float32)
    return values, _LOW32 - (keys & _LOW32)


def _feature_salt(features: Tensor) -> Tensor:
    return _mix32((features + _SAMPLE_SEED) & _LOW32)


def _sample_keys(features: Tensor, tokens: Tensor, salt: Tensor | None = None) -> Tensor:
    """Unique int64 keys, random in their high 31 bits, fixed by (feature, token).
    `salt` = _feature_salt(arange(d_sae)) saves hashing the feature ids again."""
    salted = _feature_salt(features) if salt is None else salt[features]
    h = _mix32(tokens ^ salted)
    return ((h >> 1) << 32) | tokens


def _ordered_topk(values: Tensor, k: int, largest: bool = True) -> tuple[Tensor, Tensor]:
    """torch.topk over the last dim of 2-D `values`, ties going to the lower index (torch.topk
    leaves the order of ties unspecified). Returns (values, indices).

    A plain topk of k + 8 candidates, re-sorted stably by index then value, is exact for every
    row whose last candidate is below the k-th value; rows with longer ties are sorted whole."""
    n = values.shape[-1]
    k = min(k, n)
    signed = values if largest else -values
    m = min(n, k + 8)
    cand, idx = signed.topk(m, dim=-1)
    last = cand[:, -1]
    by_index = torch.sort(idx, dim=-1).indices
    cand, idx = cand.gather(-1, by_index), idx.gather(-1, by_index)
    order = torch.sort(cand, dim=-1, descending=True, stable=True).indices
    cand, idx = cand.gather(-1, order)[:, :k], idx.gather(-1, order)[:, :k]
    if m < n:
        tied = (last >= cand[:, -1]).nonzero().squeeze(1)
        if len(tied):  # rare: a tie runs past the candidates, so sort those rows whole
            full = torch.sort(signed[tied], dim=-1, descending=True, stable=True)
            cand[tied], idx[tied] = full.values[:, :k], full.indices[:, :k]
    return (cand if largest else -cand), idx


def _smallest_per_group(group: Tensor, keys: Tensor, k: int) -> Tensor:
    """Indices of the k smallest keys of each group, ordered by (group, key)."""
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    g = group[order]
    rank = torch.arange(len(g), device=g.device) - torch.searchsorted(g, g)
    return order[rank < k]


def _merge_smallest(buf: Tensor, group: Tensor, keys: Tensor,
                    payload_buf: Tensor | None = None, payload: Tensor | None = None) -> Tensor:
    """Keep in each row of `buf` (groups, k) the k smallest keys seen so far, ascending
    (_EMPTY marks an unused slot), after adding the entries (group, keys). `payload_buf` rows
    move with their keys. Returns the indices of the new entries that were kept."""
    src = (keys < buf[group, -1]).nonzero().squeeze(1)  # most entries lose to a full buffer
    if len(src) == 0:
        return src
    k = buf.shape[1]
    sel = _smallest_per_group(group[src], keys[src], k)  # only a group's k best new ones can stay
    src = src[sel]
    group, keys = group[src], keys[src]
    touched, counts = torch.unique_consecutive(group, return_counts=True)
    u, dev = len(touched), buf.device
    row = torch.arange(u, device=dev).repeat_interleave(counts)
    slot = torch.arange(len(group), device=dev) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    new_keys = torch.full((u, k), _EMPTY, dtype=buf.dtype, device=dev)
    new_keys[row, slot] = keys
    new_src = torch.full((u, k), -1, dtype=torch.int64, device=dev)
    new_src[row, slot] = src
    merged = torch.cat([buf[touched], new_keys], 1)  # (touched, 2k): two sorted halves
    order = merged.sort(dim=1).indices[:, :k]  # keys are unique, so the order is too (bar empty slots)
    buf[touched] = merged.gather(1, order)
    if payload_buf is not None:
        new_payload = torch.zeros((u, k), dtype=payload_buf.dtype, device=dev)
        new_payload[row, slot] = payload[src]
        payload_buf[touched] = torch.cat([payload_buf[touched], new_payload], 1).gather(1, order)
    kept = torch.cat([torch.full_like(new_src, -1), new_src], 1).gather(1, order)
    return kept[kept >= 0]


def _ragged_take(lens: Tensor, rows: Tensor) -> Tensor:
    """Flat indices of the items of `rows`, in that order, for ragged rows of lengths `lens`."""
    starts = torch.cumsum(lens, 0) - lens
    take = lens[rows]
    if int(take.sum()) == 0:
        return torch.zeros(0, dtype=torch.int64, device=lens.device)
    out_starts = torch.cumsum(take, 0) - take
    within = torch.arange(int(take.sum()), device=lens.device) - out_starts.repeat_interleave(take)
    return starts[rows].repeat_interleave(take) + within


def _active_pairs(t: Tensor, feat: Tensor, n_rows: int):
    """Yield (i, j), i < j, for every two features active at the same row; entries sorted by (t, feat).

    Rows are padded to the longest row's count c, and all c(c-1)/2 slot pairs are read at once:
    no per-entry work, good when rows are about as long (TopK SAEs). When padding would more
    than double the work, each entry is instead repeated once per later partner in its row."""
    per_row = torch.bincount(t, minlength=n_rows)
    n_pairs = int((per_row * (per_row - 1) // 2).sum())
    if n_pairs == 0:
        return
    c = int(per_row.max())
    ends = torch.cumsum(per_row, 0)
    starts = ends - per_row
    if n_rows * (c * (c - 1) // 2) <= 2 * n_pairs:
        padded = torch.full((n_rows, c), -1, dtype=feat.dtype, device=feat.device)
        padded[t, torch.arange(len(t), device=t.device) - starts[t]] = feat
        ii, jj = torch.triu_indices(c, c, 1, device=feat.device)
        step = max(1, _MAX_PAIRS // len(ii))
        for r in range(0, n_rows, step):
            i, j = padded[r:r + step, ii], padded[r:r + step, jj]  # (rows, c(c-1)/2)
            ok = j >= 0  # padding sits at the end of a row, so a valid j has a valid i
            yield i[ok], j[ok]
        return
    cum = torch.cumsum(per_row * (per_row - 1) // 2, 0)
    lo = 0
    while lo < n_rows:  # chunks of whole rows with at most _MAX_PAIRS pairs (at least one row)
        base = int(cum[lo - 1]) if lo else 0
        hi = max(int(torch.searchsorted(cum, base + _MAX_PAIRS, right=True)), lo + 1)
        e0, e1 = int(starts[lo]), int(ends[hi - 1])
        lo = hi
        arange = torch.arange(e1 - e0, device=t.device)
        n_rep = ends[t[e0:e1]] - e0 - arange - 1  # partners after each entry within its row
        total = int(n_rep.sum())
        if total == 0:
            continue
        first = arange.repeat_interleave(n_rep)
        within = torch.arange(total, device=t.device) - (torch.cumsum(n_rep, 0) - n_rep).repeat_interleave(n_rep)
        ff = feat[e0:e1]
        yield ff[first], ff[first + 1 + within]


def _corpus_hash(tokens: np.ndarray) -> str:
    arr = np.ascontiguousarray(tokens, dtype="<i4")
    digest = hashlib.sha256(f"int32{list(arr.shape)}".encode())
    digest.update(arr.tobytes())
    return digest.hexdigest()


def _weights_fingerprint(sae) -> str:
    """sha256 of the SAE's config and parameters, for SAEs that have no file fingerprint."""
    digest = hashlib.sha256(json.dumps(sae.cfg.to_dict(), sort_keys=True, default=str).encode())
    for name, p in sorted(sae.state_dict().items()):
        digest.update(name.encode() + b"\0")
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return "weights-" + digest.hexdigest()


def _hist_edges(hi: float) -> np.ndarray:
    """N_BINS + 1 log-spaced float32 edges from hi * 10^-HIST_DECADES to hi."""
    exps = np.linspace(math.log10(hi) - HIST_DECADES, math.log10(hi), N_BINS + 1)
    return (10.0 ** exps).astype(np.float32)


def _calibrated_hi(max_act: float) -> float:
    if not math.isfinite(max_act) or max_act <= 0:
        return 1.0
    return float(10.0 ** math.ceil(math.log10(max_act * HIST_HEADROOM)))


def _hist_bins(values: Tensor, edges: Tensor) -> Tensor:
    """Bin of each value > 0: k where edges[k] <= v < edges[k+1]; the end bins are open."""
    return torch.bucketize(values, edges[1:-1], right=True)


def _quantile_starts(vmax: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(d_sae, N_QUANTILES + 1) first bin of each quantile group (and N_BINS at the end):
    boundary j * max / N_QUANTILES moved to the nearest edge in log space."""
    log_lo = math.log10(float(edges[0]))
    step = (math.log10(float(edges[-1])) - log_lo) / N_BINS
    j = np.arange(1, N_QUANTILES)
    with np.errstate(divide="ignore"):
        bounds = np.log10(vmax.astype(np.float64)[:, None] * j[None, :] / N_QUANTILES)
    snapped = np.clip(np.rint((bounds - log_lo) / step), 0, N_BINS)
    snapped = np.where(np.isfinite(snapped), snapped, 0).astype(np.int64)
    snapped = np.maximum.accumulate(snapped, axis=1)
    d = len(vmax)
    return np.concatenate([np.zeros((d, 1), np.int64), snapped, np.full((d, 1), N_BINS, np.int64)], axis=1)


# --------------------------------------------------------------------------- running state


class _Traces:
    """Sparse traces keyed by window * d_sae + feature: positions and float16 values where > 0."""

    def __init__(self, device: torch.device):
        self.device = device
        self.chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.n_rows = 0
        self.prune_at = 1 << 16

    def add(self, keys: Tensor, dense: Tensor) -> None:
        """keys (n,), dense (n, seq) float32 activations."""
        mask = dense > 0
        lens = mask.sum(1)
        pos = mask.nonzero()[:, 1].to(torch.int32)
        vals = dense[mask].clamp(max=65504.0).to(torch.float16)
        self.chunks.append((keys, lens, pos, vals))
        self.n_rows += len(keys)

    def arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not self.chunks:
            z = torch.zeros(0, dtype=torch.int64, device=self.device)
            return z, z.clone(), z.to(torch.int32), z.to(torch.float16)
        if len(self.chunks) > 1:
            self.chunks = [tuple(torch.cat(parts) for parts in zip(*self.chunks))]
        return self.chunks[0]

    def keep_only(self, referenced: Tensor) -> None:
        """Drop every trace whose key is not in `referenced`, and sort by key."""
        keys, lens, pos, vals = self.arrays()
        rows = torch.isin(keys, referenced).nonzero().squeeze(1)
        rows = rows[torch.argsort(keys[rows])]
        items = _ragged_take(lens, rows)
        self.chunks = [(keys[rows], lens[rows], pos[items], vals[items])]
        self.n_rows = len(rows)
        self.prune_at = 2 * self.n_rows + (1 << 16)


class _SparseCounts:
    """Counts per int64 key, as sorted unique keys + counts; new keys wait in `pending`."""

    def __init__(self, device: torch.device):
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.counts = torch.zeros(0, dtype=torch.int64, device=device)
        self.pending: list[tuple[Tensor, Tensor]] = []
        self.n_pending = 0

    def add(self, keys: Tensor, counts: Tensor | None = None) -> None:
        if counts is None:
            keys, counts = torch.unique(keys, return_counts=True)
        self.pending.append((keys, counts))
        self.n_pending += len(keys)
        if self.n_pending > max(2 * len(self.keys), 1 << 22):
            self.compact()

    def compact(self) -> None:
        if not self.pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self.pending])
        counts = torch.cat([self.counts] + [c for _, c in self.pending])
        self.keys, inverse = torch.unique(keys, return_inverse=True)
        self.counts = torch.zeros(len(self.keys), dtype=torch.int64, device=keys.device).index_add_(0, inverse, counts)
        self.pending, self.n_pending = [], 0


class _Pass:
    """Everything the streaming pass keeps, on the SAE's device."""

    def __init__(self, d_sae: int, window_len: int, top_n: int, device: torch.device):
        self.d, self.L, self.top_n, self.device = d_sae, window_len, top_n, device
        i64 = {"dtype": torch.int64, "device": device}
        self.count = torch.zeros(d_sae, **i64)
        self.total = torch.zeros(d_sae, dtype=torch.float64, device=device)
        self.vmax = torch.zeros(d_sae, dtype=torch.float32, device=device)
        self.hist = torch.zeros(d_sae * N_BINS, **i64)
        self.top = torch.full((d_sae, top_n), _EMPTY, **i64)  # negated top keys, ascending
        self.samp = torch.full((d_sae * N_BINS, SAMPLES_PER_BIN), _EMPTY, **i64)  # (feature * N_BINS + bin, k)
        self.samp_vals = torch.zeros((d_sae * N_BINS, SAMPLES_PER_BIN), dtype=torch.float32, device=device)
        self.dense_cooc = d_sae <= COOC_DENSE_MAX
        self.cooc = torch.zeros((d_sae, d_sae) if self.dense_cooc else (0,), dtype=torch.int32, device=device)
        self.cooc_sparse = _SparseCounts(device)
        self.traces = _Traces(device)
        self.salt = _feature_salt(torch.arange(d_sae, device=device))
        self.edges: Tensor | None = None  # (N_BINS + 1,) float32, fixed at the first batch
        self.windows_done = 0
        self.n_tokens = 0

    def update(self, f: Tensor, first_window: int) -> None:
        """Fold in one batch: f (batch, seq, d_sae) float32 with masked positions zeroed."""
        B, L, d = f.shape
        flat = f.view(B * L, d)  # (tokens, d_sae)
        t, feat = (flat > 0).nonzero(as_tuple=True)  # sorted by token, then feature
        vals = flat[t, feat]
        tokens = first_window * L + t

        self.count += torch.bincount(feat, minlength=d)
        self.total.index_add_(0, feat, vals.to(torch.float64))
        self.vmax.scatter_reduce_(0, feat, vals, reduce="amax")
        cell = feat * N_BINS + _hist_bins(vals, self.edges)  # (feature, bin)
        self.hist += torch.bincount(cell, minlength=d * N_BINS)

        new_top = _merge_smallest(self.top, feat, -_top_keys(vals, tokens))
        new_samp = _merge_smallest(self.samp, cell, _sample_keys(feat, tokens, self.salt), self.samp_vals, vals)

        # Traces of every (window, feature) that just entered a buffer, while the batch is here.
        entered = torch.cat([new_top, new_samp])
        if len(entered):
            wf = torch.unique((tokens[entered] // L) * d + feat[entered])
            local = wf // d - first_window
            self.traces.add(wf, f[local, :, wf % d])
            if self.traces.n_rows > self.traces.prune_at:
                self.traces.keep_only(self.referenced())

        for i, j in _active_pairs(t, feat, B * L):
            if self.dense_cooc:
                self.cooc.view(-1).index_add_(0, i * d + j, torch.ones_like(i, dtype=torch.int32))
            else:
                self.cooc_sparse.add(i * d + j)

    def referenced(self) -> Tensor:
        """Sorted trace keys (window * d_sae + feature) that some buffer entry refers to."""
        feats = torch.arange(self.d, device=self.device)
        used = self.top != _EMPTY
        _, top_tok = _decode_top_keys(-self.top[used])
        top_wf = (top_tok // self.L) * self.d + feats[:, None].expand_as(self.top)[used]
        used = self.samp != _EMPTY
        samp_tok = self.samp[used] & _LOW32
        samp_feat = (torch.arange(self.d * N_BINS, device=self.device) // N_BINS)[:, None].expand_as(self.samp)[used]
        return torch.unique(torch.cat([top_wf, (samp_tok // self.L) * self.d + samp_feat]))

    def cooc_pairs(self) -> tuple[Tensor, Tensor]:
        """(keys i * d_sae + j with i < j, counts) of every co-occurring pair."""
        if self.dense_cooc:
            keys = self.cooc.view(-1).nonzero().squeeze(1)
            return keys, self.cooc.view(-1)[keys].to(torch.int64)
        self.cooc_sparse.compact()
        return self.cooc_sparse.keys, self.cooc_sparse.counts

    # -- checkpoints

    def state_dict(self) -> dict[str, Tensor]:
        self.traces.keep_only(self.referenced())
        keys, lens, pos, vals = self.traces.arrays()
        cooc_keys, cooc_counts = self.cooc_pairs()
        state = {"count": self.count, "total": self.total, "vmax": self.vmax, "hist": self.hist,
                 "top": self.top, "samp": self.samp, "samp_vals": self.samp_vals,
                 "cooc_keys": cooc_keys, "cooc_counts": cooc_counts, "trace_keys": keys,
                 "trace_lens": lens, "trace_pos": pos, "trace_vals": vals, "edges": self.edges}
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        s = {k: v.to(self.device) for k, v in state.items()}
        for name in ("count", "total", "vmax", "hist", "top", "samp", "samp_vals", "edges"):
            if getattr(self, name) is not None and getattr(self, name).shape != s[name].shape:
                raise IndexFormatError(f"checkpoint tensor {name} has shape {list(s[name].shape)}; "
                                       "delete the .partial folder")
            setattr(self, name, s[name])
        if self.dense_cooc:
            self.cooc.view(-1).index_add_(0, s["cooc_keys"], s["cooc_counts"].to(torch.int32))
        else:
            self.cooc_sparse = _SparseCounts(self.device)
            self.cooc_sparse.keys, self.cooc_sparse.counts = s["cooc_keys"], s["cooc_counts"]
        self.traces = _Traces(self.device)
        self.traces.chunks = [(s["trace_keys"], s["trace_lens"], s["trace_pos"], s["trace_vals"])]
        self.traces.n_rows = len(s["trace_keys"])


# --------------------------------------------------------------------------- build


def _identity(lm, sae, windows, fingerprint: str, settings: dict) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "model_name": lm.name,
        "hook_name": sae.cfg.hook_name,
        "sae_fingerprint": fingerprint,
        "corpus_hash": _corpus_hash(windows.tokens),
        "n_windows": int(windows.tokens.shape[0]),
        "window_len": int(windows.tokens.shape[1]),
        "d_sae": int(sae.cfg.d_sae),
        "settings": settings,
    }


def _save_checkpoint(partial: Path, run: _Pass, identity: dict) -> None:
    from safetensors.torch import save_file

    partial.mkdir(parents=True, exist_ok=True)
    meta = {"identity": json.dumps(identity, sort_keys=True), "windows_done": str(run.windows_done),
            "n_tokens": str(run.n_tokens)}
    tmp = partial / (STATE_FILE + ".tmp")
    save_file(run.state_dict(), str(tmp), metadata=meta)
    os.replace(tmp, partial / STATE_FILE)
    log.info("checkpoint after %d windows in %s", run.windows_done, partial)


def _load_checkpoint(partial: Path, run: _Pass, identity: dict) -> bool:
    from safetensors import safe_open

    file = partial / STATE_FILE
    if not file.is_file():
        return False
    try:
        with safe_open(str(file), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
        saved = json.loads(meta["identity"])
    except Exception as err:  # noqa: BLE001 - any unreadable checkpoint gets the same advice
        raise IndexFormatError(f"The partial build in {partial} cannot be read ({err}). "
                               f"Fix: delete {partial} and build again") from None
    if saved != identity:
        differ = sorted(k for k in set(saved) | set(identity) if saved.get(k) != identity.get(k))
        raise IndexMismatchError(
            f"A partial build in {partial} was made from other inputs (they differ in: {', '.join(differ)}), "
            f"so it cannot be resumed. Fix: rerun with the original model, SAE, windows and settings, "
            f"or delete {partial} to start over")
    run.load_state_dict(state)
    run.windows_done, run.n_tokens = int(meta["windows_done"]), int(meta["n_tokens"])
    log.info("resuming %s after %d windows", partial, run.windows_done)
    return True


@torch.inference_mode()
def build_index(
    lm,
    sae,
    windows,
    out_dir: str | Path,
    top_n: int = 20,
    batch_size: int = 16,
    sae_path_fingerprint: str | None = None,
    progress: bool = True,
    *,
    hist_range: tuple[float, float] | None = None,
    checkpoint_every: int = CHECKPOINT_EVERY,
    on_batch: Callable[[int], None] | None = None,
) -> Path:
    """Index `windows` (explorer.corpus.Windows) for every feature of `sae` on `lm`; returns out_dir.

    `sae_path_fingerprint` identifies the SAE in the manifest (pass sae_fingerprint(path));
    without it a hash of the SAE's weights is used. `hist_range` = (lo, hi) fixes the histogram
    edges (the same for every shard of a split build); by default they come from the first batch.
    `on_batch(batch_number)` runs after each batch (and its checkpoint): a progress hook.
    """
    tokens = np.asarray(windows.tokens)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"windows.tokens must be a non-empty (n, window) array, got shape {list(tokens.shape)}")
    if top_n < 1 or batch_size < 1 or checkpoint_every < 1:
        raise ValueError(f"top_n={top_n}, batch_size={batch_size}, checkpoint_every={checkpoint_every}: "
                         "all must be >= 1")
    n_windows, L = tokens.shape
    if n_windows * L >= _LOW32:
        raise ValueError(f"{n_windows} windows of {L} tokens exceed the 2^32 - 1 token ids of one index; "
                         "split the corpus into several indexes")
    if hist_range is not None and not 0 < hist_range[0] < hist_range[1]:
        raise ValueError(f"hist_range={hist_range}: use (lo, hi) with 0 < lo < hi")
    if not sae.cfg.hook_name:
        raise ValueError("the SAE has no hook_name; set it (e.g. blocks.15.hook_resid_post) before indexing")

    d = sae.cfg.d_sae
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise ValueError(f"{out} exists and is not a feature index; a rebuild replaces the whole folder. "
                         "Fix: pass a new folder, or an existing index folder to rebuild it")
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    fingerprint = sae_path_fingerprint or _weights_fingerprint(sae)
    bos = getattr(lm.tokenizer, "bos_token_id", None)
    settings = {"top_n": top_n, "batch_size": batch_size, "n_bins": N_BINS, "hist_decades": HIST_DECADES,
                "hist_range": list(hist_range) if hist_range else None, "n_quantiles": N_QUANTILES,
                "samples_per_bin": SAMPLES_PER_BIN, "skip_bos_token_id": bos,
                "cooccurrence": "dense" if d <= COOC_DENSE_MAX else "sparse"}
    identity = _identity(lm, sae, windows, fingerprint, settings)

    run = _Pass(d, L, top_n, sae.device)
    _load_checkpoint(partial, run, identity)
    if run.edges is None and hist_range is not None:
        edges = np.geomspace(hist_range[0], hist_range[1], N_BINS + 1).astype(np.float32)
        run.edges = torch.from_numpy(edges).to(sae.device)

    n_batches = math.ceil(n_windows / batch_size)
    bar = tqdm(total=int(n_windows * L), initial=run.windows_done * L, unit="tok", unit_scale=True,
               desc="indexing", disable=not progress)
    started, done_here = time.perf_counter(), 0
    for number in range(run.windows_done // batch_size, n_batches):
        lo, hi = number * batch_size, min((number + 1) * batch_size, n_windows)
        ids = torch.from_numpy(np.ascontiguousarray(tokens[lo:hi], dtype=np.int64)).to(lm.device)
        with lm.lock:
            x = run_to_hook(lm.model, sae.cfg.hook_name, ids)
        f = sae.encode(x.to(sae.device)).float()  # (batch, seq, d_sae)
        skip = (ids[:, 0] == bos) if bos is not None else torch.zeros(hi - lo, dtype=torch.bool)
        skip = skip.to(f.device)
        f[:, 0][skip] = 0.0
        if run.edges is None:
            run.edges = torch.from_numpy(_hist_edges(_calibrated_hi(float(f.max())))).to(f.device)
        run.update(f, lo)
        run.windows_done = hi
        run.n_tokens += (hi - lo) * L - int(skip.sum())
        done_here += (hi - lo) * L
        bar.update((hi - lo) * L)
        bar.set_postfix_str(f"{done_here / max(time.perf_counter() - started, 1e-9):,.0f} tok/s", refresh=False)
        last = number == n_batches - 1
        if ((number + 1) % checkpoint_every == 0 and not last) or (last and n_batches > checkpoint_every):
            _save_checkpoint(partial, run, identity)
        if on_batch is not None:
            on_batch(number)
    bar.close()

    manifest = dict(identity)
    manifest["n_tokens"] = run.n_tokens
    manifest["settings"] = {**settings, "hist_edges": [float(e) for e in run.edges.cpu()]}
    manifest["created"] = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    _write_index(out, run, lm, sae, windows, manifest)
    shutil.rmtree(partial, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- finalisation


@torch.inference_mode()
def _logit_effects(lm, sae, chunk: int = 256) -> dict[str, np.ndarray]:
    """Top and bottom N_LOGITS of W_dec[i] @ W_U per feature, W_U = lm_head.weight.T."""
    d = sae.cfg.d_sae
    out = {}
    for which in ("top", "bottom"):
        out[f"logit_{which}_ids"] = np.full((d, N_LOGITS), -1, np.int32)  # -1 pads
        out[f"logit_{which}_values"] = np.zeros((d, N_LOGITS), np.float32)
    head = lm.model.get_output_embeddings()
    if head is None or head.weight.shape[-1] != sae.cfg.d_in:
        log.warning("no unembedding of width %d: logit effects are left empty", sae.cfg.d_in)
        return out
    W = head.weight.detach().to(sae.device, torch.float32)  # (vocab, d_in): W_U.T
    W_dec = sae.W_dec.detach().float()
    k = min(N_LOGITS, W.shape[0])
    for a in range(0, d, chunk):
        effects = W_dec[a:a + chunk] @ W.T  # (chunk, vocab)
        for which, largest in (("top", True), ("bottom", False)):
            vals, ids = _ordered_topk(effects, k, largest=largest)
            out[f"logit_{which}_ids"][a:a + chunk, :k] = ids.cpu().numpy()
            out[f"logit_{which}_values"][a:a + chunk, :k] = vals.cpu().numpy()
    return out


@torch.inference_mode()
def _neighbours(sae, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """N_NEIGHBOURS nearest other features by decoder cosine: (ids, cosines), -1/0 padded."""
    d = sae.cfg.d_sae
    ids = np.full((d, N_NEIGHBOURS), -1, np.int32)
    cos = np.zeros((d, N_NEIGHBOURS), np.float32)
    k = min(N_NEIGHBOURS, d - 1)
    if k == 0:
        return ids, cos
    W = sae.W_dec.detach().float()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for a in range(0, d, chunk):
        sims = W[a:a + chunk] @ W.T  # (chunk, d_sae)
        rows = torch.arange(len(sims), device=sims.device)
        sims[rows, a + rows] = -math.inf  # not its own neighbour
        v, i = _ordered_topk(sims, k)
        ids[a:a + chunk, :k], cos[a:a + chunk, :k] = i.cpu().numpy(), v.cpu().numpy()
    return ids, cos


def _cooccurring(run: _Pass) -> tuple[np.ndarray, np.ndarray]:
    """N_COOCCURRING partners by Jaccard C_ij / (C_ii + C_jj - C_ij), ties to the lower id."""
    d = run.d
    keys, counts = run.cooc_pairs()
    i, j = keys // d, keys % d
    rows, cols, c = torch.cat([i, j]), torch.cat([j, i]), torch.cat([counts, counts]).double()
    jac = (c / (run.count[rows] + run.count[cols] - c).double()).float()
    bits = jac.view(torch.int32).to(torch.int64)
    order_key = -((bits << 32) | (_LOW32 - cols))  # smallest first == jaccard desc, then id asc
    chosen = _smallest_per_group(rows, order_key, N_COOCCURRING)
    r, slot = rows[chosen], torch.zeros_like(chosen)
    if len(r):
        slot = torch.arange(len(r), device=r.device) - torch.searchsorted(r, r)
    ids = np.full((d, N_COOCCURRING), -1, np.int32)
    vals = np.zeros((d, N_COOCCURRING), np.float32)
    r_np, s_np = r.cpu().numpy(), slot.cpu().numpy()
    ids[r_np, s_np] = cols[chosen].cpu().numpy()
    vals[r_np, s_np] = jac[chosen].cpu().numpy()
    return ids, vals


def _examples(run: _Pass) -> dict[str, np.ndarray]:
    """The flat example table: per feature its top examples, then each quantile group's."""
    d = run.d
    count, vmax = run.count.cpu().numpy(), run.vmax.cpu().numpy()
    hist = run.hist.view(d, N_BINS).cpu().numpy()
    edges = run.edges.cpu().numpy()

    # Top examples: kind 0, rank = slot in the sorted buffer.
    top = -run.top.cpu()
    used = (top != -_EMPTY).numpy()
    top_vals, top_tok = _decode_top_keys(top)
    t_feat = np.broadcast_to(np.arange(d)[:, None], used.shape)[used]
    t_tok, t_val = top_tok.numpy()[used], top_vals.numpy()[used]
    t_rank = np.broadcast_to(np.arange(used.shape[1])[None, :], used.shape)[used]

    # Quantile groups: group of each bin, then the SAMPLES_PER_BIN smallest sample keys per group.
    starts = _quantile_starts(vmax, edges)  # (d, N_QUANTILES + 1)
    bin_group = (np.arange(N_BINS)[None, None, :] >= starts[:, 1:-1, None]).sum(1)  # (d, N_BINS)
    skeys = run.samp.view(d, N_BINS * SAMPLES_PER_BIN).cpu().numpy()  # (d_sae, bins * k)
    svals = run.samp_vals.view(d, N_BINS * SAMPLES_PER_BIN).cpu().numpy()
    valid = skeys != _EMPTY
    s_feat = np.broadcast_to(np.arange(d)[:, None], valid.shape)[valid]
    s_group = np.repeat(bin_group, SAMPLES_PER_BIN, axis=1)[valid]
    s_key, s_val = skeys[valid], svals[valid]
    chosen = _smallest_per_group(torch.from_numpy(s_feat * N_QUANTILES + s_group),
                                 torch.from_numpy(s_key), SAMPLES_PER_BIN).numpy()
    q_feat, q_kind = s_feat[chosen], 1 + s_group[chosen]
    q_tok, q_val = s_key[chosen] & _LOW32, s_val[chosen]

    feat = np.concatenate([t_feat, q_feat]).astype(np.int64)
    kind = np.concatenate([np.zeros(len(t_feat), np.int64), q_kind])
    tok = np.concatenate([t_tok, q_tok]).astype(np.int64)
    val = np.concatenate([t_val, q_val]).astype(np.float32)
    # Top examples keep their rank; quantile examples show strongest first (ties: token asc).
    sub = np.where(kind == 0, np.concatenate([t_rank, np.zeros(len(q_feat), np.int64)]), 0)
    order = np.lexsort((tok, -val.astype(np.float64), sub, kind, feat))
    feat, kind, tok, val = feat[order], kind[order], tok[order], val[order]
    ptr = np.searchsorted(feat * N_KINDS + kind, np.arange(d * N_KINDS + 1))

    q_low = np.zeros((d, N_QUANTILES), np.float32)
    q_high = np.zeros((d, N_QUANTILES), np.float32)
    q_frac = np.zeros((d, N_QUANTILES), np.float32)
    q_valid = np.zeros((d, N_QUANTILES), np.uint8)
    cum = np.concatenate([np.zeros((d, 1), np.int64), np.cumsum(hist, axis=1)], axis=1)
    for g in range(N_QUANTILES):
        a, b = starts[:, g], starts[:, g + 1]
        in_group = cum[np.arange(d), b] - cum[np.arange(d), a]
        q_valid[:, g] = in_group > 0  # groups holding no token are left out
        q_low[:, g] = np.where(a == 0, 0.0, edges[np.minimum(a, N_BINS)])
        q_high[:, g] = np.where(b == N_BINS, vmax, np.minimum(edges[np.minimum(b, N_BINS)], vmax))
        q_frac[:, g] = in_group / np.maximum(count, 1)
    return {"ex_feature": feat, "ex_kind": kind, "ex_token": tok, "ex_activation": val, "ex_ptr": ptr,
            "q_low": q_low, "q_high": q_high, "q_fraction": q_frac, "q_valid": q_valid}


def _auto_labels(text: _TokenText, peak_ids: np.ndarray, logit_ids: np.ndarray) -> list[str]:
    """explorer.labels.auto_label for every feature. Tokens go in as raw text, except pieces of
    a UTF-8 character (which decode to U+FFFD), which go in as their display string (<0xE2>)."""
    def readable(ids: np.ndarray) -> list[str]:
        return [raw if "\ufffd" not in raw else shown for raw, shown in zip(text.texts(ids), text.shown(ids))]

    peaks = readable(peak_ids[peak_ids >= 0])  # row-major: grouped by feature
    ends = np.cumsum((peak_ids >= 0).sum(1))
    labels = []
    for f in range(len(peak_ids)):
        promoted = logit_ids[f][logit_ids[f] >= 0][:3]
        labels.append(auto_label(peaks[ends[f] - (peak_ids[f] >= 0).sum():ends[f]], readable(promoted)))
    return labels


def _write_index(out: Path, run: _Pass, lm, sae, windows, manifest: dict) -> None:
    from safetensors.numpy import save_file

    d, L = run.d, run.L
    ex = _examples(run)
    window = ex["ex_token"] // L
    position = (ex["ex_token"] % L).astype(np.int32)

    # Traces: the ones the final examples use, sorted by key; each example points at one.
    wf = torch.from_numpy(np.unique(window * d + ex["ex_feature"])).to(run.device)
    run.traces.keep_only(wf)
    t_keys, t_lens, t_pos, t_vals = (x.cpu().numpy() for x in run.traces.arrays())
    ex_trace = np.searchsorted(t_keys, window * d + ex["ex_feature"])
    if len(t_keys) != len(wf) or not np.array_equal(t_keys[ex_trace], window * d + ex["ex_feature"]):
        raise RuntimeError("internal error: an example's activation trace was not kept")
    trace_ptr = np.concatenate([[0], np.cumsum(t_lens)]).astype(np.int64)

    # Windows used by any example, each once.
    used_windows = np.unique(window)
    vocab = max(int(getattr(lm.model.config, "vocab_size", 0) or 0), len(lm.tokenizer))
    token_dtype = np.uint16 if vocab < 65536 else np.int32
    win_tokens = np.asarray(windows.tokens)[used_windows].astype(token_dtype)

    logits = _logit_effects(lm, sae)
    nb_ids, nb_cos = _neighbours(sae)
    co_ids, co_jac = _cooccurring(run)

    top_mask = ex["ex_kind"] == 0
    peak_ids = np.full((d, run.top_n), -1, np.int32)
    top_rows = np.flatnonzero(top_mask)
    rank = top_rows - ex["ex_ptr"][ex["ex_feature"][top_rows] * N_KINDS]
    peak_ids[ex["ex_feature"][top_rows], rank] = np.asarray(windows.tokens)[window[top_rows], position[top_rows]]

    features = {
        "count": run.count.cpu().numpy(), "act_sum": run.total.cpu().numpy(), "act_max": run.vmax.cpu().numpy(),
        "hist_counts": run.hist.view(d, N_BINS).cpu().numpy(), "hist_edges": run.edges.cpu().numpy(),
        "q_low": ex["q_low"], "q_high": ex["q_high"], "q_fraction": ex["q_fraction"], "q_valid": ex["q_valid"],
        **logits, "neighbour_ids": nb_ids, "neighbour_cos": nb_cos, "cooc_ids": co_ids, "cooc_jaccard": co_jac,
        "peak_token_ids": peak_ids,
    }
    examples = {
        "ex_ptr": ex["ex_ptr"].astype(np.int64), "ex_window": window.astype(np.int64), "ex_position": position,
        "ex_activation": ex["ex_activation"], "ex_trace": ex_trace.astype(np.int64), "trace_ptr": trace_ptr,
        "trace_pos": t_pos.astype(np.int16 if L < 32768 else np.int32), "trace_val": t_vals.astype(np.float16),
    }
    win = {"window_ids": used_windows.astype(np.int64), "tokens": win_tokens,
           "doc_id": np.asarray(windows.doc_id, np.int64)[used_windows],
           "offset": np.asarray(windows.offset, np.int64)[used_windows]}

    labels = _auto_labels(_TokenText(lm.tokenizer), peak_ids, logits["logit_top_ids"])

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for name, arrays in ((FEATURES_FILE, features), (EXAMPLES_FILE, examples), (WINDOWS_FILE, win)):
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp / name))
        (tmp / LABELS_AUTO_FILE).write_text(json.dumps({"method": "explorer.labels.auto_label", "labels": labels},
                                                       ensure_ascii=False, indent=0))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        if (out / LABELS_USER_FILE).is_file():  # user labels outlive rebuilds
            shutil.copy2(out / LABELS_USER_FILE, tmp / LABELS_USER_FILE)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        aside = None
        if out.exists():
            aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, aside / "index")
        os.replace(tmp, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Example:
    window: int
    position: int  # the example's token inside the window
    activation: float  # exact (float32) activation at that token
    token_ids: list[int]
    tokens: list[str]  # display strings (explorer.tokens.token_strings)
    texts: list[str]  # raw decoded text per token
    values: list[float]  # this feature's activation at every token of the window (float16-rounded)


@dataclass(frozen=True)
class QuantileBin:
    low: float
    high: float
    fraction: float  # share of the feature's active tokens in this bin
    examples: list[Example]


@dataclass(frozen=True)
class FeatureCard:
    feature: int
    label: str  # the user's label if set, else the automatic one
    auto_label: str
    density: float  # share of indexed tokens where the feature fires (> 0)
    max_activation: float
    mean_activation: float  # over the tokens where it fires
    n_tokens: int  # tokens indexed
    hist_edges: list[float]  # N_BINS + 1 edges; the first and last bins are open-ended
    hist_counts: list[int]
    top_logits: list[tuple[str, float]]  # display string, W_dec[i] @ W_U
    bottom_logits: list[tuple[str, float]]
    top_examples: list[Example]
    quantiles: list[QuantileBin]
    neighbours: list[tuple[int, float]]  # (feature, decoder cosine)
    cooccurring: list[tuple[int, float]]  # (feature, jaccard)

    def to_dict(self) -> dict:
        """Plain JSON-ready types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class IndexManifest:
    format_version: int
    model_name: str
    hook_name: str
    sae_fingerprint: str
    corpus_hash: str
    n_windows: int
    window_len: int
    n_tokens: int
    d_sae: int
    settings: dict = field(default_factory=dict)
    created: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> IndexManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class _TokenText:
    """Cached raw text and display string per token id.

    A card reads ~45 windows of 128 tokens: the lookups are C-level (set
    difference, map over dict.__getitem__), which keeps them near 1 ms."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}
        self._shown: dict[int, str] = {}

    def _ids(self, ids) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # plain ints
        missing = sorted(set(ids).difference(self._texts))
        if missing:
            texts, shown = token_strings(self.tokenizer, missing)
            self._texts.update(zip(missing, texts))
            self._shown.update(zip(missing, shown))
        return ids

    def texts(self, ids) -> list[str]:
        return list(map(self._texts.__getitem__, self._ids(ids)))

    def shown(self, ids) -> list[str]:
        return list(map(self._shown.__getitem__, self._ids(ids)))


_FEATURE_KEYS = ("count", "act_sum", "act_max", "hist_counts", "hist_edges", "q_low", "q_high", "q_fraction",
                 "q_valid", "logit_top_ids", "logit_top_values", "logit_bottom_ids", "logit_bottom_values",
                 "neighbour_ids", "neighbour_cos", "cooc_ids", "cooc_jaccard", "peak_token_ids")
_EXAMPLE_KEYS = ("ex_ptr", "ex_window", "ex_position", "ex_activation", "ex_trace",
                 "trace_ptr", "trace_pos", "trace_val")
_WINDOW_KEYS = ("window_ids", "tokens", "doc_id", "offset")
SEARCH_BY = ("label", "top_token", "logit_token")


def _open_tensors(file: Path, keys: tuple[str, ...]):
    from safetensors import safe_open

    if not file.is_file():
        raise IndexFormatError(f"The index file {file} is missing. {_REBUILD_HINT}")
    try:
        handle = safe_open(str(file), framework="np")
    except Exception as err:  # noqa: BLE001 - safetensors raises several types for a bad file
        raise IndexFormatError(f"The index file {file} is corrupt ({err}). {_REBUILD_HINT}") from None
    missing = sorted(set(keys) - set(handle.keys()))
    if missing:
        raise IndexFormatError(f"The index file {file} lacks {missing}; it is from another version or damaged. "
                               f"{_REBUILD_HINT}")
    return handle


class FeatureIndex:
    """A built index, read lazily from memory-mapped safetensors files. Thread-safe for reading."""

    def __init__(self, path: Path, manifest: IndexManifest, tokenizer, features, examples, windows, auto_labels):
        self.path = path
        self.manifest = manifest
        self.d_sae = manifest.d_sae
        self._features, self._examples, self._windows = features, examples, windows
        self._auto = auto_labels
        self._text = _TokenText(tokenizer)
        self._lock = threading.Lock()
        self._user = self._read_user_labels()
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, path: str | Path, tokenizer) -> FeatureIndex:
        path = Path(path).expanduser()
        manifest_file = path / MANIFEST_FILE
        if not manifest_file.is_file():
            raise IndexFormatError(f"No feature index at {path} (no {MANIFEST_FILE}). {_REBUILD_HINT}, "
                                   "or pass the folder that holds manifest.json")
        try:
            raw = json.loads(manifest_file.read_text())
            manifest = IndexManifest.from_dict(raw)
        except (ValueError, TypeError) as err:
            raise IndexFormatError(f"{manifest_file} is not a valid index manifest ({err}). {_REBUILD_HINT}") from None
        if manifest.format_version != FORMAT_VERSION:
            raise IndexFormatError(f"The index at {path} has format version {manifest.format_version}, but this "
                                   f"version of the explorer reads version {FORMAT_VERSION}. {_REBUILD_HINT}")
        features = _open_tensors(path / FEATURES_FILE, _FEATURE_KEYS)
        examples = _open_tensors(path / EXAMPLES_FILE, _EXAMPLE_KEYS)
        windows = _open_tensors(path / WINDOWS_FILE, _WINDOW_KEYS)
        if features.get_slice("count").get_shape() != [manifest.d_sae]:
            raise IndexFormatError(f"{path / FEATURES_FILE} does not hold {manifest.d_sae} features. {_REBUILD_HINT}")
        try:
            auto = json.loads((path / LABELS_AUTO_FILE).read_text(encoding="utf-8"))["labels"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("%s is missing or unreadable; features have no automatic labels", path / LABELS_AUTO_FILE)
            auto = []
        if len(auto) != manifest.d_sae:
            auto = [""] * manifest.d_sae
        return cls(path, manifest, tokenizer, features, examples, windows, auto)

    # -- whole-index arrays (small: one number per feature), loaded on first use

    def _array(self, handle, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = handle.get_tensor(name)
        return self._cache[name]

    def max_activations(self) -> np.ndarray:
        return self._array(self._features, "act_max")

    def densities(self) -> np.ndarray:
        return self._array(self._features, "count") / max(self.manifest.n_tokens, 1)

    # -- labels

    def _user_file(self) -> Path:
        return self.path / LABELS_USER_FILE

    def _read_user_labels(self) -> dict[int, str]:
        try:
            raw = json.loads(self._user_file().read_text(encoding="utf-8"))
            return {int(k): str(v) for k, v in raw.get("labels", {}).items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError):
            log.warning("%s is unreadable; user labels are ignored until it is fixed or removed", self._user_file())
            return {}

    def _check_feature(self, feature) -> int:
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < self.d_sae:
            raise ValueError(f"Feature {feature!r} does not exist: this index has features 0..{self.d_sae - 1}")
        return int(feature)

    def label(self, feature: int) -> str:
        """The user's label when set, else the automatic one."""
        feature = self._check_feature(feature)
        return self._user.get(feature) or self._auto[feature]

    def set_label(self, feature: int, text: str) -> None:
        """Set a user label (empty text removes it), in labels_user.json; rebuilds keep it."""
        feature = self._check_feature(feature)
        text = (text or "").strip()
        with self._lock:
            labels = self._read_user_labels()  # another process may have written meanwhile
            if text:
                labels[feature] = text
            else:
                labels.pop(feature, None)
            body = {"labels": {str(k): v for k, v in sorted(labels.items())}}
            write_json(self._user_file(), body)
            self._user = labels

    # -- search

    def search(self, query: str, by: str = "label", limit: int = 20) -> list[int]:
        """Features whose label / top-example peak tokens / promoted logit tokens contain
        `query` (case-insensitive substring), best first.

        label: exact match, then prefix, then earliest match; top_token: most top examples
        peaking on a matching token, then max activation; logit_token: best rank of a
        matching promoted token, then its logit."""
        if by not in SEARCH_BY:
            raise ValueError(f"search by {by!r} is not supported; use one of {', '.join(SEARCH_BY)}")
        q = (query or "").strip().casefold()
        if not q or limit <= 0:
            return []
        if by == "label":
            hits = []
            for f in range(self.d_sae):
                text = self.label(f).casefold()
                at = text.find(q)
                if at >= 0:
                    hits.append((0 if text == q else 1 if at == 0 else 2, at, f))
            return [f for *_, f in sorted(hits)[:limit]]
        name = "peak_token_ids" if by == "top_token" else "logit_top_ids"
        ids = self._array(self._features, name)
        present = np.unique(ids[ids >= 0])
        matching = present[[q in t.strip().casefold() for t in self._text.texts(present)]]
        hit = np.isin(ids, matching) & (ids >= 0)
        n_hits = hit.sum(1)
        found = np.flatnonzero(n_hits)
        if by == "top_token":
            order = np.lexsort((found, -self.max_activations()[found].astype(np.float64), -n_hits[found]))
        else:
            first = hit.argmax(1)[found]
            value = self._array(self._features, "logit_top_values")[found, first]
            order = np.lexsort((found, -value.astype(np.float64), first))
        return [int(f) for f in found[order][:limit]]

    # -- cards

    def check_matches(self, model_name: str | None, hook_name: str, sae_fingerprint: str | None) -> None:
        """Raise IndexMismatchError unless the index was built for this model, hook and SAE
        (a None model name or fingerprint is not checked)."""
        m = self.manifest
        wrong = []
        if model_name is not None and model_name != m.model_name:
            wrong.append(f"the loaded model is {model_name!r}")
        if hook_name != m.hook_name:
            wrong.append(f"the SAE reads hook {hook_name}")
        if sae_fingerprint is not None and sae_fingerprint != m.sae_fingerprint:
            wrong.append(f"the loaded SAE is {sae_fingerprint[:16]}")
        if wrong:
            raise IndexMismatchError(
                f"The index at {self.path} was built for hook {m.hook_name} of model {m.model_name!r} with SAE "
                f"{m.sae_fingerprint[:16]}, but {' and '.join(wrong)}. Fix: rebuild the index with `explorer index` "
                "for this model and SAE, or load the model and SAE it was built with")

    def _row(self, handle, name: str, i: int) -> np.ndarray:
        return handle.get_slice(name)[i]

    def card(self, feature: int) -> FeatureCard:
        """Everything the app shows for one feature."""
        f = self._check_feature(feature)
        F = self._features
        count = int(self._array(F, "count")[f])
        total = float(self._array(F, "act_sum")[f])
        top_logits = self._logits(f, "top")
        bottom_logits = self._logits(f, "bottom")
        ptr = self._row(self._examples, "ex_ptr", slice(f * N_KINDS, (f + 1) * N_KINDS + 1))
        examples = self._read_examples(int(ptr[0]), int(ptr[-1]))
        groups = [examples[int(ptr[k] - ptr[0]):int(ptr[k + 1] - ptr[0])] for k in range(N_KINDS)]
        q_valid, q_low = self._row(F, "q_valid", f), self._row(F, "q_low", f)
        q_high, q_frac = self._row(F, "q_high", f), self._row(F, "q_fraction", f)
        quantiles = [QuantileBin(float(q_low[g]), float(q_high[g]), float(q_frac[g]), groups[1 + g])
                     for g in range(N_QUANTILES) if q_valid[g]]
        return FeatureCard(
            feature=f, label=self.label(f), auto_label=self._auto[f],
            density=count / max(self.manifest.n_tokens, 1),
            max_activation=float(self._array(F, "act_max")[f]),
            mean_activation=total / count if count else 0.0,
            n_tokens=self.manifest.n_tokens,
            hist_edges=[float(e) for e in self._array(F, "hist_edges")],
            hist_counts=[int(c) for c in self._row(F, "hist_counts", f)],
            top_logits=top_logits, bottom_logits=bottom_logits,
            top_examples=groups[0], quantiles=quantiles,
            neighbours=self._pairs(f, "neighbour_ids", "neighbour_cos"),
            cooccurring=self._pairs(f, "cooc_ids", "cooc_jaccard"),
        )

    def _logits(self, f: int, which: str) -> list[tuple[str, float]]:
        ids = self._row(self._features, f"logit_{which}_ids", f)
        vals = self._row(self._features, f"logit_{which}_values", f)
        keep = ids >= 0
        return list(zip(self._text.shown(ids[keep]), (float(v) for v in vals[keep])))

    def _pairs(self, f: int, ids_name: str, vals_name: str) -> list[tuple[int, float]]:
        ids, vals = self._row(self._features, ids_name, f), self._row(self._features, vals_name, f)
        return [(int(i), float(v)) for i, v in zip(ids, vals) if i >= 0]

    def _read_examples(self, a: int, b: int) -> list[Example]:
        if b <= a:
            return []
        E, W = self._examples, self._windows
        windows = self._row(E, "ex_window", slice(a, b))
        positions = self._row(E, "ex_position", slice(a, b))
        acts = self._row(E, "ex_activation", slice(a, b))
        traces = self._row(E, "ex_trace", slice(a, b))
        rows = np.searchsorted(self._array(W, "window_ids"), windows)
        tokens = {int(r): self._row(W, "tokens", int(r)) for r in np.unique(rows)}
        trace_ptr = E.get_slice("trace_ptr")
        trace_pos, trace_val = E.get_slice("trace_pos"), E.get_slice("trace_val")
        L = self.manifest.window_len
        out = []
        for w, p, v, r, t in zip(windows, positions, acts, rows, traces):
            ids = tokens[int(r)].tolist()
            lo, hi = trace_ptr[int(t):int(t) + 2]
            values = np.zeros(L, np.float32)
            values[trace_pos[int(lo):int(hi)].astype(np.int64)] = trace_val[int(lo):int(hi)]
            out.append(Example(window=int(w), position=int(p), activation=float(v), token_ids=ids,
                               tokens=self._text.shown(ids), texts=self._text.texts(ids), values=values.tolist()))
        return out
