"""Co-occurrence counting (explorer.index.cooccurrence) against brute force: its exact forms, the
memory bound, the approximate form's error bound and merges; the pass state's scan for active entries and its sizes."""

import numpy as np
import pytest
import torch

from explorer.index import cooccurrence
from explorer.index.cooccurrence import Cooccurrence, merge
from explorer.index.pass_state import PassState, active_entries

D = 60
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def random_batch(rng, n_rows: int, d: int = D, skew: float = 1.5):
    """Entries (t, feat) sorted by (t, feat): ragged rows (0 to 25 features), popular low ids."""
    p = 1.0 / np.arange(1, d + 1) ** skew
    p /= p.sum()
    rows = [np.sort(rng.choice(d, size=rng.integers(0, 26), replace=False, p=p)) for _ in range(n_rows)]
    t = torch.tensor(np.concatenate([np.full(len(r), i) for i, r in enumerate(rows)]), dtype=torch.int64)
    feat = torch.tensor(np.concatenate(rows), dtype=torch.int64)
    return t, feat, rows


def brute(batches, d: int = D) -> np.ndarray:
    C = np.zeros((d, d), np.int64)
    for _, _, rows in batches:
        for r in rows:
            C[np.ix_(r, r)] += 1
    np.fill_diagonal(C, 0)
    return C


def as_matrix(co: Cooccurrence, d: int = D) -> np.ndarray:
    rows, cols, counts = co.directed()
    C = np.zeros((d, d), np.int64)
    C[rows.numpy(), cols.numpy()] = counts.numpy()
    return C


def batches(seed: int, n: int, n_rows: int = 40, d: int = D):
    rng = np.random.default_rng(seed)
    return [random_batch(rng, n_rows, d) for _ in range(n)]


@pytest.mark.parametrize("form", ["scattered", "product", "sparse"])
def test_exact_forms_equal_brute_force(form, monkeypatch):
    if form != "sparse":  # the choice between the two dense ways is by cost; force each
        monkeypatch.setattr(cooccurrence, "PRODUCT_CELLS_PER_PAIR", 10**9 if form == "product" else 0)
    data = batches(0, 6)
    co = Cooccurrence(D, torch.device("cpu"), dense=form != "sparse")
    for t, feat, rows in data:
        co.add(t, feat, len(rows))
    assert co.mode == ("exact-sparse" if form == "sparse" else "exact-dense")
    np.testing.assert_array_equal(as_matrix(co), brute(data))


def test_checkpoint_round_trip_and_exact_merge_equal_one_pass():
    data = batches(1, 6)
    whole = Cooccurrence(D, torch.device("cpu"), dense=False)
    parts = [Cooccurrence(D, torch.device("cpu"), dense=dense) for dense in (True, False)]
    for n, (t, feat, rows) in enumerate(data):
        whole.add(t, feat, len(rows))
        parts[n % 2].add(t, feat, len(rows))
    merged = merge(parts[0].state_dict(), parts[1].state_dict(), D)
    for key, value in whole.state_dict().items():
        assert torch.equal(merged[key], value), key
    reloaded = Cooccurrence(D, torch.device("cpu"), dense=True)
    reloaded.load_state_dict(merged)
    np.testing.assert_array_equal(as_matrix(reloaded), brute(data))


def test_memory_stays_bounded_and_counts_within_the_stated_error(monkeypatch):
    """A long stream past EXACT_MAX_PAIRS: the stored entries stop growing at d * SUMMARY_SIZE
    (plus the pending buffer), no count is high, none is low by more than lost[i], and lost[i]
    is at most N_i / (SUMMARY_SIZE + 1)."""
    d, size = 120, 6
    monkeypatch.setattr(cooccurrence, "EXACT_MAX_PAIRS", 300)
    monkeypatch.setattr(cooccurrence, "SUMMARY_SIZE", size)
    monkeypatch.setattr(cooccurrence, "_PENDING_MIN", 1000)
    co = Cooccurrence(d, torch.device("cpu"), dense=False)
    data = batches(2, 50, n_rows=25, d=d)
    largest = []
    for t, feat, rows in data:
        co.add(t, feat, len(rows))
        largest.append(len(co.keys) + co.n_pending)
    assert co.mode == "approximate" and co.description.startswith("approximate (Misra-Gries, 6 partners")
    bound = d * size + 2 * max(d * size, 1000)  # summaries, and pending up to one compaction
    assert max(largest) <= bound
    true = brute(data, d)
    est = as_matrix(co, d)
    lost = co.lost.numpy()
    assert (est <= true).all()
    assert (true - est <= lost[:, None]).all()
    partner_firings = true.sum(1)
    assert (lost <= partner_firings / (size + 1)).all()
    assert ((est > 0).sum(1) <= size).all()
    assert lost.max() > 0  # the bound was needed: some counts were cut

    # Two shards' summaries merge with their bounds added, the same guarantees holding.
    halves = [Cooccurrence(d, torch.device("cpu"), dense=False) for _ in range(2)]
    for n, (t, feat, rows) in enumerate(data):
        halves[n % 2].add(t, feat, len(rows))
    m = merge(halves[0].state_dict(), halves[1].state_dict(), d)
    assert int(m["cooc_approximate"]) == 1
    merged = Cooccurrence(d, torch.device("cpu"), dense=False)
    merged.load_state_dict(m)
    est = as_matrix(merged, d)
    assert (est <= true).all() and (true - est <= m["cooc_lost"].numpy()[:, None]).all()
    assert (m["cooc_lost"].numpy() <= partner_firings / (size + 1)).all()


def test_pass_state_bytes_per_feature():
    """The fixed part of the state: what bench/bench_index.py prints per feature."""
    run = PassState(100, 16, 20, torch.device("cpu"), max_tokens=40 * 16)
    run.edges = torch.linspace(0.1, 1.0, 51)
    sizes = run.bytes_per_feature()
    assert sizes["hist"] == 50 * 4  # int32 counts: this corpus cannot overflow them
    assert sizes["top"] == 20 * 8
    assert sum(v for k, v in sizes.items() if k != "cooc") < 3500  # the dense matrix: 4 (d_sae + 1)^2
    assert sizes["cooc"] == (4 * 101 * 101 + 8 * 100) / 100
    assert PassState(100, 16, 20, torch.device("cpu"), max_tokens=2**31).bytes_per_feature()["hist"] == 50 * 8


@pytest.mark.parametrize("n, d, density", [(64, 1001, 0.004), (16, 4608, 0.005), (37, 1001, 0.01), (10, 640, 0.6)])
def test_active_entries_equal_a_full_scan(n, d, density):
    """The grouped scan finds exactly the entries > 0, in (row, feature) order: with negatives,
    -0.0 and NaNs, groups that span two rows (d = 1001), sizes that are no whole number of
    groups (37 x 1001: the plain scan) and dense rows (0.6: the plain scan)."""
    g = torch.Generator().manual_seed(n * d)
    flat = torch.randn(n, d, generator=g) * (torch.rand(n, d, generator=g) < density)
    flat.view(-1)[:3] = torch.tensor([float("nan"), 0.5, -0.0])  # a NaN beside a positive in one group
    flat.view(-1)[-70:-64] = -1.0
    got = active_entries(flat)
    want = (flat > 0).nonzero(as_tuple=True)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert len(want[0]) > 0
