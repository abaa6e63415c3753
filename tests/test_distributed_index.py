"""Split index builds: merging pass states exactly, and `explorer index` under torchrun (gloo, CPU)
giving the same bytes as the one-process build, including after a rank was killed mid-build."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from explorer.index import exact_sum, pass_state
from explorer.index.merge import merge_states
from explorer.index.pass_state import PassState

D, L, B, TOP_N, N_BATCHES = 40, 12, 4, 5, 9


def activation_stream(seed: int = 0) -> list[torch.Tensor]:
    """N_BATCHES batches (B, L, D) of sparse activations, rounded to eighths so that ties abound."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(N_BATCHES):
        f = torch.round(torch.rand((B, L, D), generator=g) * 24) / 8
        f[torch.rand((B, L, D), generator=g) < 0.8] = 0.0
        f[0, 0, 3] = 1e-9  # far below the histogram, still summed and counted
        batches.append(f)
    return batches


def shard_state(batches: list[torch.Tensor], first_batch: int) -> dict[str, torch.Tensor]:
    run = PassState(D, L, TOP_N, torch.device("cpu"))
    run.edges = torch.from_numpy(np.geomspace(1e-2, 10, 51).astype(np.float32))
    for i, f in enumerate(batches):
        run.update(f.clone(), (first_batch + i) * B)
    return run.state_dict()


@pytest.mark.parametrize("cooccurrence", ["dense", "sparse"])
def test_merged_shards_equal_one_pass(monkeypatch, cooccurrence):
    if cooccurrence == "sparse":
        monkeypatch.setattr(pass_state, "COOC_DENSE_MAX", 0)
    batches = activation_stream()
    whole = shard_state(batches, 0)
    for n in (1, 2, 3):
        cuts = [k * N_BATCHES // n for k in range(n + 1)]
        states = [shard_state(batches[a:b], a) for a, b in zip(cuts, cuts[1:])]
        for order in (states, states[::-1]):
            merged = merge_states(order, L)
            assert set(merged) == set(whole)
            for key, value in whole.items():
                assert merged[key].dtype == value.dtype, key
                assert torch.equal(merged[key], value), f"{key} differs with {n} shards"


def test_merge_refuses_overlap_and_other_edges():
    batches = activation_stream()
    a = shard_state(batches[:3], 0)
    with pytest.raises(ValueError, match="overlap"):
        merge_states([a, a], L)
    b = shard_state(batches[3:], 3)
    b["edges"] = b["edges"] * 2
    with pytest.raises(ValueError, match="histogram edges"):
        merge_states([a, b], L)
    b = shard_state(batches[3:], 3)
    b["new_field"] = b["count"]
    with pytest.raises(ValueError, match="RULES"):
        merge_states([a, b], L)


def test_exact_sum_ignores_order():
    g = torch.Generator().manual_seed(1)
    values = (torch.rand(5000, generator=g) * 10.0 ** torch.randint(-6, 4, (5000,), generator=g)).float()
    index = torch.randint(0, 3, (5000,), generator=g)
    sums = []
    for perm in (torch.arange(5000), torch.randperm(5000, generator=g), torch.arange(4999, -1, -1)):
        limbs = exact_sum.zeros(3, torch.device("cpu"))
        for part in perm.split(700):
            exact_sum.add_values(limbs, index[part], values[part])
        sums.append(exact_sum.to_float(limbs))
    assert torch.equal(sums[0], sums[1]) and torch.equal(sums[0], sums[2])
    exact = [sum(float(v) for v, i in zip(values, index) if i == k) for k in range(3)]  # float64, one order
    assert torch.allclose(sums[0], torch.tensor(exact, dtype=torch.float64), rtol=1e-13, atol=0)
