"""Merging pass states: the `PassState.state_dict()`s of disjoint shards of one corpus, combined
into exactly the state_dict one pass over all of them gives (explorer.index.pass_state).

`merge_states(states, window_len)` folds the states pairwise, left to right; every rule is
associative and commutative, so neither the order of the shards nor how many there are changes
a bit. Each state_dict key (or group of keys that move together) has one rule in RULES; a key
without a rule is an error, so a new PassState field cannot be silently dropped from a split
build: whoever adds a field adds its rule here (and a case to tests/test_distributed_index.py).

The shards must cover disjoint windows and share histogram edges; the merged traces are those
that the merged top-N and sample buffers still refer to, sorted by key, as `state_dict` leaves
them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

import explorer.index.cooccurrence as cooccurrence
import explorer.index.exact_sum as exact_sum
from explorer.index.pass_state import _Traces, referenced_traces

State = dict[str, Tensor]


def _add(a: Tensor, b: Tensor) -> Tensor:
    return a + b


def _add_sums(a: Tensor, b: Tensor) -> Tensor:
    """Fixed-point limbs (explorer.index.exact_sum) add as integers, then carry."""
    limbs = a + b
    exact_sum.carry(limbs)
    return limbs


def _same_edges(a: Tensor, b: Tensor) -> Tensor:
    if not torch.equal(a, b):
        raise ValueError("the shards were binned with different histogram edges, so their histograms "
                         "cannot be added. Fix: build every shard with the same edges (hist_range)")
    return a


def _smallest_per_row(a: Tensor, b: Tensor, *payload: Tensor) -> tuple[Tensor, ...]:
    """Each row's k smallest keys of a and b together, ascending (EMPTY sorts last), with the
    payload rows (a_payload, b_payload, ...) moved alongside. Keys of disjoint shards are unique."""
    keys = torch.cat([a, b], 1)  # (rows, 2k)
    order = keys.sort(dim=1, stable=True).indices[:, :a.shape[1]]
    moved = [torch.cat([pa, pb], 1).gather(1, order) for pa, pb in zip(payload[0::2], payload[1::2])]
    return (keys.gather(1, order), *moved)


def _top(a: State, b: State) -> State:
    (top,) = _smallest_per_row(a["top"], b["top"])  # negated top keys: smallest = best
    return {"top": top}


def _samples(a: State, b: State) -> State:
    samp, vals = _smallest_per_row(a["samp"], b["samp"], a["samp_vals"], b["samp_vals"])
    return {"samp": samp, "samp_vals": vals}


def _cooccurrence(a: State, b: State) -> State:
    """Exact counts add; approximate summaries merge with their error bounds added."""
    return cooccurrence.merge(a, b, d_sae=len(a["count"]))


TRACE_KEYS = ("trace_keys", "trace_lens", "trace_pos", "trace_vals")


def _traces(a: State, b: State, merged: State, window_len: int) -> State:
    """Both shards' traces, less those the merged buffers no longer refer to."""
    keys = torch.cat([a["trace_keys"], b["trace_keys"]])
    if len(torch.unique(keys)) != len(keys):
        raise ValueError("two shards hold traces of the same window, so they overlap. "
                         "Fix: merge the states of disjoint shards of the corpus only")
    traces = _Traces(keys.device)
    traces.chunks = [tuple(torch.cat([a[k], b[k]]) for k in TRACE_KEYS)]
    traces.keep_only(referenced_traces(merged["top"], merged["samp"], window_len))
    return dict(zip(TRACE_KEYS, traces.arrays()))


def _each(rule: Callable[[Tensor, Tensor], Tensor], key: str) -> Callable[[State, State], State]:
    return lambda a, b: {key: rule(a[key], b[key])}


# (keys, rule): the rule takes the two states and returns the merged values of its keys.
RULES: list[tuple[tuple[str, ...], Callable[[State, State], State]]] = [
    (("count",), _each(_add, "count")),
    (("total",), _each(_add_sums, "total")),
    (("vmax",), _each(torch.maximum, "vmax")),
    (("hist",), _each(_add, "hist")),
    (("edges",), _each(_same_edges, "edges")),
    (("top",), _top),
    (("samp", "samp_vals"), _samples),
    (("cooc_keys", "cooc_counts", "cooc_lost", "cooc_approximate"), _cooccurrence),
]
# Traces come last: which survive depends on the merged top and sample buffers.
# Optional keys: in both states or in neither (a build over a corpus that names its sources).
OPTIONAL_RULES: list[tuple[tuple[str, ...], Callable[[State, State], State]]] = [
    (("source_mass",), _each(_add_sums, "source_mass")),  # per (feature, source) sums: they add
]


def merge_pair(a: State, b: State, window_len: int) -> State:
    """The state of shards a and b together (CPU tensors, as PassState.state_dict gives them)."""
    known = {k for keys, _ in RULES for k in keys} | set(TRACE_KEYS)
    optional = [(keys, rule) for keys, rule in OPTIONAL_RULES if all(k in a for k in keys)]
    for keys, _ in OPTIONAL_RULES:
        if any(k in a for k in keys) != any(k in b for k in keys):
            raise ValueError(f"one shard's state has {list(keys)} and the other's has not: they were built from "
                             "different windows files. Fix: build every shard from the same windows")
    for state in (a, b):
        unknown = sorted(set(state) - known - {k for keys, _ in optional for k in keys})
        missing = sorted(known - set(state))
        if unknown or missing:
            raise ValueError(f"cannot merge a pass state with keys {unknown} unknown / {missing} missing: "
                             "each key needs one rule in explorer.index.merge.RULES")
    merged: State = {}
    for _, rule in RULES + optional:
        merged.update(rule(a, b))
    merged.update(_traces(a, b, merged, window_len))
    return merged


def merge_states(states: list[State], window_len: int) -> State:
    """The state of all `states` (disjoint shards) together; a single state comes back as it is."""
    if not states:
        raise ValueError("no pass states to merge")
    merged = states[0]
    for state in states[1:]:
        merged = merge_pair(merged, state, window_len)
    return merged
