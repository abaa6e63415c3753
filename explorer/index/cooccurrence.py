"""Co-occurrence counts: on how many tokens two features fire together, in bounded memory.

`Cooccurrence(d_sae, device, dense)` folds in the active (token, feature) entries of one batch
at a time (`add`) and gives the finalisation every counted pair in both directions
(`directed`). Three representations; `mode` says which one holds the counts (the manifest
records it as settings["cooccurrence"]):

- "exact-dense" (d_sae <= pass_state.COOC_DENSE_MAX): an int32 matrix with a row and a column
  per feature and one for padding, 256 MB at 8,192 features; only cells i < j are used.
- "exact-sparse" (wider SAEs): sorted unique int64 keys i * d_sae + j (i < j) and their counts,
  while there are at most EXACT_MAX_PAIRS distinct pairs (16 bytes each: 512 MB). A batch's pair
  keys wait unsummed (8 bytes each) until more of them wait than max(stored pairs,
  _PENDING_MIN); then one sort sums them all in (`compact`), not one sort per batch. When that
  happens decides the batch at which the form turns approximate, so past the bound the
  summaries depend on _PENDING_MIN (within the same stated error bound).
- "approximate": past that bound, each feature keeps a Misra-Gries summary of at most
  SUMMARY_SIZE partners (Misra & Gries 1982; merged as in Agarwal et al., "Mergeable
  summaries", 2012). A pair (i, j) is counted in i's summary and in j's. A summary over its
  size takes its (SUMMARY_SIZE + 1)-th largest count c off each of its counts and drops those
  that reach 0: every such step takes at least (SUMMARY_SIZE + 1) * c off the summary's total,
  so a count is never high and low by at most lost[i] <= N_i / (SUMMARY_SIZE + 1), N_i being
  the partner firings feature i saw. `lost` keeps that bound per feature. Two summaries merge
  by adding counts, then the same step; their bounds add. Memory: d_sae * SUMMARY_SIZE entries
  plus a pending buffer of the same order, whatever the corpus.

Work. A token with c active features makes c(c-1)/2 pairs. Rows (tokens) of similar length
are padded into blocks; the dense form adds each diagonal offset of a block in one vectorised
op, the sparse forms gather a block's pairs at once by its upper-triangle indices. When a batch's pairs outweigh a dense matrix product (a few %
density: ReLU and JumpReLU SAEs, TopK ones from about 50 of 4,608), the dense counts come from
A^T A of the batch's 0/1 activity matrix A over the upper block triangle instead: exact, in
int8 with int32 sums on a CPU (torch._int_mm), in float32 elsewhere (counts < 2^24 tokens).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

EXACT_MAX_PAIRS = 1 << 25  # distinct pairs counted exactly in sparse form (16 bytes each)
SUMMARY_SIZE = 256  # partners per feature in the approximate form
# A pair scattered into the count matrix costs about as much as this many multiply-adds of an
# int8 matrix product on a CPU (measured on a 2-core machine with AMX: 10,000 to 6,700 from 32 to
# 96 active features per token; with 4,608 features the product is used from about 50).
PRODUCT_CELLS_PER_PAIR = 8000
_PRODUCT_BLOCK = 512  # feature rows per product block
_BLOCK_SHRINK = 0.8  # rows padded into one block are at least this fraction of its longest
_PAIRS_AT_ONCE = 1 << 22  # pair keys made at a time (32 MB, and a few temporaries as large)
_PENDING_MIN = 1 << 24  # keys pending before a compaction at least (128 MB raw): a few batches summed in one sort

MODES = ("exact-dense", "exact-sparse", "approximate")


def row_blocks(t: Tensor, feat: Tensor, n_rows: int, pad: int) -> Iterator[Tensor]:
    """Blocks (rows, c) of the features active at each row (entries sorted by (t, feat)), each
    row ascending and padded at its end with `pad`; longest rows first, rows with fewer than
    two features left out."""
    per_row = torch.bincount(t, minlength=n_rows)
    lens, rows = torch.sort(per_row, descending=True, stable=True)
    n = int((lens >= 2).sum())
    if n == 0:
        return
    rank = torch.empty_like(rows)
    rank[rows] = torch.arange(n_rows, device=t.device)
    keep = per_row[t] >= 2
    tk = t[keep]
    within = torch.arange(len(t), device=t.device)[keep] - (torch.cumsum(per_row, 0) - per_row)[tk]
    padded = torch.full((n, int(lens[0])), pad, dtype=feat.dtype, device=feat.device)
    padded[rank[tk], within] = feat[keep]
    neg = -lens[:n].contiguous()  # ascending, for searchsorted
    a = 0
    while a < n:
        c = int(lens[a])
        b = max(a + 1, int(torch.searchsorted(neg, -math.ceil(_BLOCK_SHRINK * c), right=True)))
        yield padded[a:b, :c]
        a = b


def pair_keys(t: Tensor, feat: Tensor, n_rows: int, d_sae: int) -> Iterator[Tensor]:
    """int64 keys i * d_sae + j, i < j, of every two features active at the same row, in chunks
    of about _PAIRS_AT_ONCE: one gather per block of rows, by the block's upper-triangle pairs."""
    for block in row_blocks(t, feat, n_rows, d_sae):
        rows, c = block.shape
        first, second = torch.triu_indices(c, c, 1, device=block.device)
        padded = bool((block[:, -1] == d_sae).any())  # padding sits at the end of a row
        step = max(1, _PAIRS_AT_ONCE // len(first))
        for a in range(0, rows, step):
            part = block[a:a + step]
            keys = torch.add(part[:, second], part[:, first], alpha=d_sae)
            yield keys[part[:, second] < d_sae] if padded else keys.view(-1)


def both_ways(keys: Tensor, counts: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """Keys i * d_sae + j of unordered pairs -> keys of (i, j) and (j, i), each with its count."""
    return torch.cat([keys, (keys % d_sae) * d_sae + keys // d_sae]), torch.cat([counts, counts])


def add_counts(keys: Tensor, counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Sorted unique keys and the summed counts of each (`counts` None: one per key). A stable
    sort of integers is a radix sort on a CPU, faster than torch.unique's."""
    if len(keys) == 0:
        return keys, torch.zeros(0, dtype=torch.int64, device=keys.device)
    keys, order = torch.sort(keys, stable=True)
    last = torch.ones(len(keys), dtype=torch.bool, device=keys.device)
    torch.ne(keys[1:], keys[:-1], out=last[:-1])
    ends = last.nonzero().squeeze(1)  # the last place of each key
    upto = ends + 1 if counts is None else torch.cumsum(counts[order], 0)[ends]
    return keys[ends], torch.diff(upto, prepend=upto.new_zeros(1))


def reduce_summaries(keys: Tensor, counts: Tensor, lost: Tensor, d_sae: int) -> tuple[Tensor, Tensor]:
    """The Misra-Gries step on every summary (row = key // d_sae) holding more than
    SUMMARY_SIZE partners: subtract its (SUMMARY_SIZE + 1)-th largest count, drop counts <= 0.
    `keys` sorted unique; adds what was subtracted to `lost` (d_sae,) in place."""
    rows = keys // d_sae
    order = torch.sort(counts, descending=True, stable=True).indices
    order = order[torch.sort(rows[order], stable=True).indices]  # by row, then count desc
    r = rows[order]
    rank = torch.arange(len(r), device=r.device) - torch.searchsorted(r, r)
    cut = torch.zeros(d_sae, dtype=torch.int64, device=keys.device)
    at = rank == SUMMARY_SIZE
    cut[r[at]] = counts[order][at]
    lost += cut
    counts = counts - cut[rows]
    kept = counts > 0
    return keys[kept], counts[kept]


class Cooccurrence:
    """Pair counts of one pass (see the module docstring for the three forms)."""

    def __init__(self, d_sae: int, device: torch.device, dense: bool):
        self.d_sae, self.device = d_sae, device
        self.mode = "exact-dense" if dense else "exact-sparse"
        w = d_sae + 1  # a padding row and column
        self.matrix = torch.zeros((w, w) if dense else (0, 0), dtype=torch.int32, device=device)
        self.key_dtype = torch.int32 if w * w < 2**31 else torch.int64
        self.keys = torch.zeros(0, dtype=torch.int64, device=device)
        self.counts = torch.zeros(0, dtype=torch.int64, device=device)
        self.lost = torch.zeros(d_sae, dtype=torch.int64, device=device)
        self.pending: list[tuple[Tensor, Tensor | None]] = []  # counts None: one per key
        self.n_pending = 0
        self._one = torch.ones(1, dtype=torch.int32, device=device)

    @property
    def description(self) -> str:
        """What the manifest records: the mode, and for the approximate one its error bound
        (after folding in what is pending, which may pass the exact bound)."""
        self.compact()
        if self.mode != "approximate":
            return self.mode
        return (f"approximate (Misra-Gries, {SUMMARY_SIZE} partners per feature; a count is never high and "
                f"low by at most {int(self.lost.max())} tokens)")

    # -- counting

    def add(self, t: Tensor, feat: Tensor, n_rows: int) -> None:
        """Count the pairs of features active at the same row; entries sorted by (t, feat)."""
        if self.mode == "exact-dense":
            per_row = torch.bincount(t, minlength=n_rows)
            n_pairs = int((per_row * (per_row - 1) // 2).sum())
            if n_pairs * PRODUCT_CELLS_PER_PAIR > n_rows * self.d_sae ** 2 // 2:
                self._add_product(t, feat, n_rows)
            else:
                self._add_scattered(t, feat, n_rows)
            return
        for keys in pair_keys(t, feat, n_rows, self.d_sae):
            # Exact counts are summed only at compact(): one sort of many batches' keys, not one each.
            counts = None
            if self.mode == "approximate":
                keys, counts = both_ways(*add_counts(keys), self.d_sae)
            self.pending.append((keys, counts))
            self.n_pending += len(keys)
        if self.n_pending > max(len(self.keys), _PENDING_MIN):
            self.compact()

    def _add_scattered(self, t: Tensor, feat: Tensor, n_rows: int) -> None:
        w = self.d_sae + 1
        flat = self.matrix.view(-1)
        for block in row_blocks(t, feat.to(self.key_dtype), n_rows, self.d_sae):
            c = block.shape[1]
            for o in range(1, c):  # pairs with the padding land in its column, never read
                keys = torch.add(block[:, o:], block[:, :c - o], alpha=w).reshape(-1)
                flat.index_add_(0, keys, self._one.expand(len(keys)))

    def _add_product(self, t: Tensor, feat: Tensor, n_rows: int) -> None:
        d = self.d_sae
        # int8 products with int32 sums on a CPU: exact, and 5x float32's speed. torch._int_mm is
        # private: a torch without it takes the float32 product (exact too, below 2^24 tokens).
        cpu = self.device.type == "cpu" and hasattr(torch, "_int_mm")
        active_t = torch.zeros((d, n_rows), dtype=torch.int8 if cpu else torch.float32, device=self.device)
        active_t[feat, t] = 1  # transposed: each block's rows are one contiguous slice
        for a in range(0, d, _PRODUCT_BLOCK):
            rows, cols = active_t[a:a + _PRODUCT_BLOCK], active_t[a:].T
            block = torch._int_mm(rows, cols) if cpu else rows @ cols
            self.matrix[a:min(a + _PRODUCT_BLOCK, d), a:d] += block.to(torch.int32)  # lower cells unused

    def compact(self) -> None:
        """Fold the pending counts in; past EXACT_MAX_PAIRS, switch to the approximate form."""
        if not self.pending:
            return
        keys = torch.cat([self.keys] + [k for k, _ in self.pending])
        counts = torch.cat([self.counts] + [torch.ones_like(k) if c is None else c for k, c in self.pending])
        self.pending, self.n_pending = [], 0
        self.keys, self.counts = add_counts(keys, counts)
        if self.mode == "exact-sparse" and len(self.keys) > EXACT_MAX_PAIRS:
            self.mode = "approximate"
            self.keys, self.counts = add_counts(*both_ways(self.keys, self.counts, self.d_sae))
        if self.mode == "approximate":
            self.keys, self.counts = reduce_summaries(self.keys, self.counts, self.lost, self.d_sae)

    def nbytes(self) -> int:
        """Memory held now: the matrix or the stored and pending entries, and the bounds."""
        tensors = [self.matrix, self.keys, self.counts, self.lost] + [t for pair in self.pending for t in pair if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    # -- reading

    def pairs(self) -> tuple[Tensor, Tensor]:
        """Exact forms: (keys i * d_sae + j with i < j, counts); approximate: (keys row * d_sae
        + partner, counts) of every summary entry."""
        if self.mode == "exact-dense":
            upper = torch.triu(self.matrix[:self.d_sae, :self.d_sae], 1).reshape(-1)
            keys = upper.nonzero().squeeze(1)
            return keys, upper[keys].to(torch.int64)
        self.compact()
        return self.keys, self.counts

    def directed(self) -> tuple[Tensor, Tensor, Tensor]:
        """(rows, partners, counts): each counted pair once from each side (exact forms), or
        each summary entry (approximate)."""
        keys, counts = self.pairs()
        if self.mode != "approximate":
            keys, counts = both_ways(keys, counts, self.d_sae)
        return keys // self.d_sae, keys % self.d_sae, counts

    # -- checkpoints

    def state_dict(self) -> dict[str, Tensor]:
        keys, counts = self.pairs()
        return {"cooc_keys": keys, "cooc_counts": counts, "cooc_lost": self.lost,
                "cooc_approximate": torch.tensor(int(self.mode == "approximate"))}

    def load_state_dict(self, s: dict[str, Tensor]) -> None:
        keys, counts = s["cooc_keys"].to(self.device), s["cooc_counts"].to(self.device)
        self.lost = s["cooc_lost"].to(self.device).clone()
        if int(s["cooc_approximate"]):
            self.mode = "approximate"
        if self.mode == "exact-dense":
            self.matrix.zero_()
            self.matrix[keys // self.d_sae, keys % self.d_sae] = counts.to(torch.int32)
        else:
            self.keys, self.counts = keys, counts
            self.pending, self.n_pending = [], 0


def merge(a: dict[str, Tensor], b: dict[str, Tensor], d_sae: int) -> dict[str, Tensor]:
    """The co-occurrence state of two disjoint shards together (their state_dict entries):
    exact when both are exact and the union stays within EXACT_MAX_PAIRS, else the summaries'
    merge (exact counts count as summaries with nothing lost)."""
    approximate = bool(int(a["cooc_approximate"]) or int(b["cooc_approximate"]))
    parts = []
    for s in (a, b):
        keys, counts = s["cooc_keys"], s["cooc_counts"].to(torch.int64)
        if approximate and not int(s["cooc_approximate"]):
            keys, counts = both_ways(keys, counts, d_sae)
        parts.append((keys, counts))
    keys, counts = add_counts(torch.cat([parts[0][0], parts[1][0]]), torch.cat([parts[0][1], parts[1][1]]))
    lost = a["cooc_lost"] + b["cooc_lost"]
    if not approximate and len(keys) > EXACT_MAX_PAIRS:
        approximate = True
        keys, counts = add_counts(*both_ways(keys, counts, d_sae))
    if approximate:
        keys, counts = reduce_summaries(keys, counts, lost, d_sae)
    return {"cooc_keys": keys, "cooc_counts": counts, "cooc_lost": lost,
            "cooc_approximate": torch.tensor(int(approximate))}
