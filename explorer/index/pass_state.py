"""The streaming pass state: every running summary the index keeps while activations stream by.

`PassState(d_sae, window_len, top_n, device)` folds in one batch of SAE activations at a time
(`update`), and saves to / loads from a flat dict of tensors (`state_dict`,
`load_state_dict`) for checkpoints. It holds no model code: it sees only activations and
token numbers, so it is the unit that a split build merges across shards or ranks. Turning it
into index files is `explorer.index.finalise`.

Exact and mergeable (see shared/reference/scale-notes.md). Every running summary is one that
two shards combine into what a single pass gives: counts, sums and histograms add (sums in
fixed point, explorer.index.exact_sum, so that no grouping changes a bit), maxima take the
max, top-N is the top-N of the union under a total order, samples are the bottom-k of a hash
of (feature, token), co-occurrence counts add. Nothing depends on batch order.
explorer.index.merge holds one merge rule per state_dict key.

Keys. A float32 v > 0 has a bit pattern that, read as an int, orders like v. With
token = window * window_len + position, the top key bits(v) << 32 | (2^32 - 1 - token) is one
int64 ordered exactly by the total order (activation desc, window asc, position asc), so
sorting it has no ties. The top-N buffer keeps the negated keys ascending, and
`_merge_smallest` is the top-N merge. The sample key hash31(feature, token) << 32 | token is
unique and random in its high bits.

Quantile samples. Quantile groups are equal-width over (0, max], but max is known only at the
end. So we keep, for every (feature, histogram bin), the SAMPLES_PER_BIN tokens with the
smallest sample keys: an exact, mergeable bottom-k sample, from which the finalisation draws
each group's examples.

Co-occurrence. C_ij counts the tokens where both i and j fire (explorer.index.cooccurrence):
exact in a dense int32 matrix when d_sae <= COOC_DENSE_MAX (256 MB), exact in sorted sparse
(pair, count) arrays up to a stated number of distinct pairs, approximate (with a per-feature
error bound) above it.

Source mix. With `track_sources(n)`, the pass also sums each feature's activation per corpus
source (`source_limbs`, fixed point like `total`, indexed feature * n + source): sums add, so
it merges too (state key "source_mass").

Traces. Each stored example shows the feature's activation over its whole window, but a
window's activations exist only while its batch is in memory. So whenever an entry enters a
top-N or sample buffer, its (window, feature) trace is kept sparsely (positions and float16
values where > 0); traces no buffer refers to any more are pruned now and then and at the end.
"""

from __future__ import annotations

import torch
from torch import Tensor

import explorer.index.exact_sum as exact_sum
from explorer.index.cooccurrence import Cooccurrence
from explorer.index.format import N_BINS, SAMPLES_PER_BIN, IndexFormatError

COOC_DENSE_MAX = 8192  # a dense int32 d_sae^2 count matrix up to here (256 MB), sparse above

LOW32 = 0xFFFFFFFF
EMPTY = torch.iinfo(torch.int64).max  # key of an empty buffer slot
_SAMPLE_SEED = 0x2545F491
# Traces are pruned once they pass twice what was referenced at the last pruning plus this many
# rows (tens of MB): finding the referenced ones scans both buffers (33M slots at 131k features).
PRUNE_MIN = 1 << 20
_GROUP = 64  # activations per group in active_entries' first look


# --------------------------------------------------------------------------- keys


def _mix32(x: Tensor) -> Tensor:
    """A 32-bit integer hash ([0, 2^32) -> [0, 2^32)) in int64 arithmetic; products stay < 2^59."""
    x = ((x >> 16) ^ x) * 0x45D9F3B & LOW32
    x = ((x >> 16) ^ x) * 0x45D9F3B & LOW32
    return (x >> 16) ^ x


def _top_keys(values: Tensor, tokens: Tensor) -> Tensor:
    """int64 keys, one per (value > 0, token): a larger key comes first in the total order
    (value desc, then token asc, i.e. window asc, then position asc)."""
    bits = values.contiguous().view(torch.int32).to(torch.int64)
    return (bits << 32) | (LOW32 - tokens)


def decode_top_keys(keys: Tensor) -> tuple[Tensor, Tensor]:
    """(values float32, tokens int64) from top keys."""
    values = (keys >> 32).to(torch.int32).view(torch.float32)
    return values, LOW32 - (keys & LOW32)


def _feature_salt(features: Tensor) -> Tensor:
    return _mix32((features + _SAMPLE_SEED) & LOW32)


def _sample_keys(features: Tensor, tokens: Tensor, salt: Tensor | None = None) -> Tensor:
    """Unique int64 keys, random in their high 31 bits, fixed by (feature, token).
    `salt` = _feature_salt(arange(d_sae)) saves hashing the feature ids again."""
    salted = _feature_salt(features) if salt is None else salt[features]
    h = _mix32(tokens ^ salted)
    return ((h >> 1) << 32) | tokens


def active_entries(flat: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, features) of the entries > 0 of `flat` (n, d), sorted by (row, feature). On a CPU
    a max over each _GROUP values finds the groups holding any, and only those are tested one
    by one: a vectorised max reads a wide sparse batch (1 GB at 131k features) several times
    faster than `flat > 0` writes a mask of it and nonzero scans that."""
    n, d = flat.shape
    if flat.device.type != "cpu" or flat.numel() % _GROUP or not flat.is_contiguous():
        return (flat > 0).nonzero(as_tuple=True)
    groups = flat.view(-1, _GROUP)
    top = groups.amax(1)
    candidates = ((top > 0) | top.isnan()).nonzero().squeeze(1)  # amax passes NaN on, hiding any positive
    if len(candidates) > len(groups) // 4:  # dense activations (ReLU SAEs): nothing to skip
        return (flat > 0).nonzero(as_tuple=True)
    hit = (groups[candidates] > 0).nonzero()
    at = candidates[hit[:, 0]] * _GROUP + hit[:, 1]
    return at // d, at % d


def _hist_bins(values: Tensor, edges: Tensor) -> Tensor:
    """Bin of each value > 0: k where edges[k] <= v < edges[k+1]; the end bins are open."""
    return torch.bucketize(values, edges[1:-1], right=True)


# --------------------------------------------------------------------------- bottom-k buffers


def smallest_per_group(group: Tensor, keys: Tensor, k: int) -> Tensor:
    """Indices of the k smallest keys of each group, ordered by (group, key)."""
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    g = group[order]
    rank = torch.arange(len(g), device=g.device) - torch.searchsorted(g, g)
    return order[rank < k]


def _merge_smallest(buf: Tensor, group: Tensor, keys: Tensor,
                    payload_buf: Tensor | None = None, payload: Tensor | None = None) -> Tensor:
    """Keep in each row of `buf` (groups, k) the k smallest keys seen so far, ascending
    (EMPTY marks an unused slot), after adding the entries (group, keys). `payload_buf` rows
    move with their keys. Returns the indices of the new entries that were kept."""
    src = (keys < buf[group, -1]).nonzero().squeeze(1)  # most entries lose to a full buffer
    if len(src) == 0:
        return src
    k = buf.shape[1]
    sel = smallest_per_group(group[src], keys[src], k)  # only a group's k best new ones can stay
    src = src[sel]
    group, keys = group[src], keys[src]
    touched, counts = torch.unique_consecutive(group, return_counts=True)
    u, dev = len(touched), buf.device
    row = torch.arange(u, device=dev).repeat_interleave(counts)
    slot = torch.arange(len(group), device=dev) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts)
    new_keys = torch.full((u, k), EMPTY, dtype=buf.dtype, device=dev)
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


def referenced_traces(top: Tensor, samples: Tensor, window_len: int) -> Tensor:
    """Sorted trace keys (window * d_sae + feature) that an entry of the top buffer (d_sae, top_n)
    or the sample buffer (d_sae * N_BINS, SAMPLES_PER_BIN) refers to."""
    d, L, dev = top.shape[0], window_len, top.device
    used = top != EMPTY
    _, top_tok = decode_top_keys(-top[used])
    top_wf = (top_tok // L) * d + torch.arange(d, device=dev)[:, None].expand_as(top)[used]
    used = samples != EMPTY
    samp_tok = samples[used] & LOW32
    samp_feat = (torch.arange(d * N_BINS, device=dev) // N_BINS)[:, None].expand_as(samples)[used]
    return torch.unique(torch.cat([top_wf, (samp_tok // L) * d + samp_feat]))


def _batch_traces(t: Tensor, feat: Tensor, vals: Tensor, entered: Tensor, shape: tuple[int, int, int],
                  first_window: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(keys, lens, positions, values) of the trace of each (window, feature) that an active
    entry in `entered` belongs to. Built from the batch's active entries (t, feat, vals, sorted
    by (token, feature)), not from the dense batch: at 131k features a trace's values lie
    scattered over the whole GB of it."""
    n_windows, L, d = shape
    local = (t // L) * d + feat  # window within the batch * d_sae + feature
    keys = torch.unique(local[entered])
    wanted = torch.zeros(n_windows * d, dtype=torch.bool, device=t.device)
    wanted[keys] = True
    rows = wanted[local].nonzero().squeeze(1)
    rows = rows[torch.sort(local[rows], stable=True).indices]  # stable: positions stay ascending
    lens = torch.unique_consecutive(local[rows], return_counts=True)[1]
    values = vals[rows].clamp(max=65504.0).to(torch.float16)
    return keys + first_window * d, lens, (t[rows] % L).to(torch.int32), values


# --------------------------------------------------------------------------- growing stores


class _Traces:
    """Sparse traces keyed by window * d_sae + feature: positions and float16 values where > 0."""

    def __init__(self, device: torch.device):
        self.device = device
        self.chunks: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
        self.n_rows = 0
        self.prune_at = PRUNE_MIN

    def add(self, keys: Tensor, lens: Tensor, positions: Tensor, values: Tensor) -> None:
        """Rows of traces: keys (n,), lens (n,), then positions int32 and float16 values, ragged."""
        self.chunks.append((keys, lens, positions, values))
        self.n_rows += len(keys)

    def arrays(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(keys, lens, positions, values): one row per trace, positions and values ragged."""
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
        self.prune_at = 2 * self.n_rows + PRUNE_MIN


# --------------------------------------------------------------------------- the pass state

# state_dict key -> attribute, for the tensors saved as they are. The keys are the checkpoint
# format (state.safetensors), so they stay as they are when attributes are renamed.
_SAVED_AS_IS = {"count": "count", "total": "total_limbs", "vmax": "vmax", "hist": "hist", "top": "top",
                "samp": "samples", "samp_vals": "sample_values", "edges": "edges"}


class PassState:
    """Everything the streaming pass keeps, on the SAE's device."""

    def __init__(self, d_sae: int, window_len: int, top_n: int, device: torch.device,
                 max_tokens: int | None = None):
        """`max_tokens`: the most tokens this state will see (the corpus size); below 2^31 the
        histogram counts, which can at most reach it, are int32."""
        self.d_sae, self.window_len, self.top_n, self.device = d_sae, window_len, top_n, device
        i64 = {"dtype": torch.int64, "device": device}
        self.count = torch.zeros(d_sae, **i64)
        self.total_limbs = exact_sum.zeros(d_sae, device)  # (2, d_sae): sums of activations
        self.vmax = torch.zeros(d_sae, dtype=torch.float32, device=device)
        small = max_tokens is not None and max_tokens < 2**31
        self.hist = torch.zeros(d_sae * N_BINS, dtype=torch.int32 if small else torch.int64, device=device)
        self.top = torch.full((d_sae, top_n), EMPTY, **i64)  # negated top keys, ascending
        self.samples = torch.full((d_sae * N_BINS, SAMPLES_PER_BIN), EMPTY, **i64)  # (feature * N_BINS + bin, k)
        self.sample_values = torch.zeros((d_sae * N_BINS, SAMPLES_PER_BIN), dtype=torch.float32, device=device)
        self.cooc = Cooccurrence(d_sae, device, dense=d_sae <= COOC_DENSE_MAX)
        self.traces = _Traces(device)
        self.edges: Tensor | None = None  # (N_BINS + 1,) float32, fixed at the first batch
        self.windows_done = 0
        self.n_tokens = 0
        self.source_limbs: Tensor | None = None  # (2, d_sae * n_sources) once track_sources is called
        self.n_sources = 0

    def track_sources(self, n_sources: int) -> None:
        """Also sum each feature's activation per corpus source (ids 0..n_sources-1)."""
        self.n_sources = n_sources
        self.source_limbs = exact_sum.zeros(self.d_sae * n_sources, self.device)

    @property
    def source_mass(self) -> Tensor | None:
        """(d_sae * n_sources,) float64 activation sums per (feature, source), or None."""
        return None if self.source_limbs is None else exact_sum.to_float(self.source_limbs)

    def update(self, f: Tensor, first_window: int, source: Tensor | None = None) -> None:
        """Fold in one batch: f (batch, seq, d_sae) float32 with masked positions zeroed;
        `source` (batch, seq) int64 source ids, when sources are tracked."""
        B, L, d = f.shape
        flat = f.view(B * L, d)  # (tokens, d_sae)
        t, feat = active_entries(flat)  # sorted by token, then feature
        vals = flat[t, feat]
        tokens = first_window * L + t

        self.count += torch.bincount(feat, minlength=d)
        exact_sum.add_values(self.total_limbs, feat, vals)
        self.vmax.scatter_reduce_(0, feat, vals, reduce="amax")
        if self.source_limbs is not None and source is not None:
            exact_sum.add_values(self.source_limbs, feat * self.n_sources + source.reshape(-1)[t], vals)
        cell = feat * N_BINS + _hist_bins(vals, self.edges)  # (feature, bin)
        self.hist += torch.bincount(cell, minlength=d * N_BINS).to(self.hist.dtype)

        new_top = _merge_smallest(self.top, feat, -_top_keys(vals, tokens))
        new_samp = _merge_smallest(self.samples, cell, _sample_keys(feat, tokens),
                                   self.sample_values, vals)

        # Traces of every (window, feature) that just entered a buffer, while the batch is here.
        entered = torch.cat([new_top, new_samp])
        if len(entered):
            self.traces.add(*_batch_traces(t, feat, vals, entered, (B, L, d), first_window))
            if self.traces.n_rows > self.traces.prune_at:
                self.traces.keep_only(self.referenced())

        self.cooc.add(t, feat, B * L)

    @property
    def total(self) -> Tensor:
        """(d_sae,) float64 sum of each feature's activations."""
        return exact_sum.to_float(self.total_limbs)

    def referenced(self) -> Tensor:
        """Sorted trace keys (window * d_sae + feature) that some buffer entry refers to."""
        return referenced_traces(self.top, self.samples, self.window_len)

    def bytes_per_feature(self) -> dict[str, float]:
        """Memory of each part of the state (named as in state_dict) divided by d_sae."""
        tensors = {key: getattr(self, attr) for key, attr in _SAVED_AS_IS.items()}
        sizes = {key: t.numel() * t.element_size() for key, t in tensors.items() if t is not None}
        sizes["cooc"] = self.cooc.nbytes()
        sizes["trace"] = sum(t.numel() * t.element_size() for t in self.traces.arrays())
        return {key: size / self.d_sae for key, size in sizes.items()}

    # -- checkpoints

    def state_dict(self) -> dict[str, Tensor]:
        """The whole state as CPU tensors (traces pruned to the referenced ones first)."""
        self.traces.keep_only(self.referenced())
        keys, lens, pos, vals = self.traces.arrays()
        state = {key: getattr(self, attr) for key, attr in _SAVED_AS_IS.items()}
        state.update({**self.cooc.state_dict(), "trace_keys": keys,
                      "trace_lens": lens, "trace_pos": pos, "trace_vals": vals})
        if self.source_limbs is not None:
            state["source_mass"] = self.source_limbs
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        s = {k: v.to(self.device) for k, v in state.items()}
        for key, attr in _SAVED_AS_IS.items():
            if getattr(self, attr) is not None and getattr(self, attr).shape != s[key].shape:
                raise IndexFormatError(f"checkpoint tensor {key} has shape {list(s[key].shape)}; "
                                       "delete the .partial folder")
            setattr(self, attr, s[key])
        self.cooc.load_state_dict(s)
        self.traces = _Traces(self.device)
        self.traces.chunks = [(s["trace_keys"], s["trace_lens"], s["trace_pos"], s["trace_vals"])]
        self.traces.n_rows = len(s["trace_keys"])
        if self.source_limbs is not None:
            if s.get("source_mass") is None or s["source_mass"].shape != self.source_limbs.shape:
                raise IndexFormatError("checkpoint lacks the per-source sums this build keeps; delete the .partial folder")
            self.source_limbs = s["source_mass"]
