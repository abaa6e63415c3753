"""The feature index against brute force on a tiny model: every statistic, resume, labels, search."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_model

from explorer.corpus import Windows
from explorer.hooks import run_to_hook
from explorer.index import FeatureIndex, IndexFormatError, IndexMismatchError, build_index, pass_state
from explorer.index.finalise import _ordered_topk
from explorer.index.cooccurrence import pair_keys
from explorer.index.pass_state import _hist_bins, _sample_keys
from explorer.sae import random_sae
from explorer.tokens import token_strings

HOOK = "blocks.1.hook_resid_post"
D_SAE, N_WIN, L, BATCH, TOP_N = 64, 40, 16, 16, 20
BOS = 257
FILES = ("features.safetensors", "examples.safetensors", "windows.safetensors", "labels_auto.json")


def make_windows() -> Windows:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(N_WIN, L)).astype(np.int32)
    tokens[:, 0] = BOS
    tokens[7, 0] = 65  # a window that does not start with BOS keeps its position 0
    tokens[20] = tokens[3]  # a duplicate window: every activation ties with another token's
    tokens[30, :4] = tokens[9, :4]  # a shared prefix: ties at a few positions
    return Windows(tokens, np.arange(N_WIN, dtype=np.int64), np.zeros(N_WIN, dtype=np.int64))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = tiny_model()
    sae = random_sae(32, D_SAE, architecture="topk", k=8, hook_name=HOOK, seed=1)
    windows = make_windows()
    root = tmp_path_factory.mktemp("index")
    path = build_index(lm, sae, windows, root / "idx", top_n=TOP_N, batch_size=BATCH,
                       sae_path_fingerprint="sae-abc", progress=False)
    # Brute force: the same batches through the same functions, then dense bookkeeping.
    with torch.inference_mode():
        acts = []
        for a in range(0, N_WIN, BATCH):
            ids = torch.from_numpy(windows.tokens[a:a + BATCH]).long()
            acts.append(sae.encode(run_to_hook(lm.model, HOOK, ids)).float())
        dense = torch.cat(acts).numpy().copy()  # (windows, seq, d_sae)
    dense[windows.tokens[:, 0] == BOS, 0, :] = 0.0  # BOS positions are skipped
    return lm, sae, windows, path, dense, FeatureIndex.open(path, lm.tokenizer)


def active(dense, f):
    """(value, window, position) of every token where feature f fires."""
    w, p = np.nonzero(dense[:, :, f] > 0)
    return dense[w, p, f], w, p


def test_manifest_and_files(setup):
    lm, _, windows, path, _, ix = setup
    m = ix.manifest
    assert (m.model_name, m.hook_name, m.sae_fingerprint, m.d_sae) == (lm.name, HOOK, "sae-abc", D_SAE)
    assert (m.n_windows, m.window_len) == (N_WIN, L)
    assert m.n_tokens == N_WIN * L - int((windows.tokens[:, 0] == BOS).sum())
    assert len(m.corpus_hash) == 64 and m.settings["top_n"] == TOP_N
    for name in FILES + ("manifest.json",):
        assert (path / name).is_file()
    assert not Path(str(path) + ".partial").exists()


def test_top_examples_equal_brute_force(setup):
    *_, dense, ix = setup
    tied = 0
    for f in range(D_SAE):
        v, w, p = active(dense, f)
        order = np.lexsort((p, w, -v.astype(np.float64)))[:TOP_N]  # value desc, window asc, position asc
        expected = [(int(w[i]), int(p[i]), float(v[i])) for i in order]
        got = [(e.window, e.position, e.activation) for e in ix.card(f).top_examples]
        assert got == expected, f"feature {f}"
        tied += len(set(v[order])) < len(order)
    assert tied > 0  # the duplicated window really exercises the tiebreak


def test_density_max_mean_and_histogram(setup):
    *_, dense, ix = setup
    flat = dense.reshape(-1, D_SAE)
    counts = (flat > 0).sum(0)
    np.testing.assert_allclose(ix.densities(), counts / ix.manifest.n_tokens)
    np.testing.assert_array_equal(ix.max_activations(), flat.max(0))
    for f in range(D_SAE):
        card = ix.card(f)
        assert sum(card.hist_counts) == counts[f]
        v = flat[:, f][flat[:, f] > 0]
        edges = torch.tensor(card.hist_edges, dtype=torch.float32)
        bins = _hist_bins(torch.from_numpy(v), edges).numpy()
        np.testing.assert_array_equal(card.hist_counts, np.bincount(bins, minlength=50))
        if counts[f]:
            assert card.mean_activation == pytest.approx(float(v.astype(np.float64).mean()), rel=1e-6)


def test_quantile_samples_fall_in_their_bins_and_are_the_hash_bottom_k(setup):
    *_, dense, ix = setup
    checked = 0
    for f in range(D_SAE):
        card = ix.card(f)
        v, w, p = active(dense, f)
        total = 0.0
        for i, q in enumerate(card.quantiles):
            last = i == len(card.quantiles) - 1
            inside = (v >= q.low) & ((v <= q.high) if last else (v < q.high)) & (v > 0)
            assert q.fraction == pytest.approx(inside.sum() / len(v), abs=1e-6)
            total += q.fraction
            for e in q.examples:
                assert q.low <= e.activation <= q.high and e.activation == dense[e.window, e.position, f]
            tokens = torch.from_numpy((w[inside] * L + p[inside]).astype(np.int64))
            keys = _sample_keys(torch.full_like(tokens, f), tokens).numpy()
            chosen = np.argsort(keys)[:5]
            expected = {(int(w[inside][i]), int(p[inside][i])) for i in chosen}
            assert expected == {(e.window, e.position) for e in q.examples}
            checked += 1
        if len(v):
            assert total == pytest.approx(1.0, abs=1e-5)
    assert checked > D_SAE  # several groups per feature


def test_traces_reproduce_window_activations(setup):
    *_, dense, ix = setup
    for f in range(0, D_SAE, 3):
        card = ix.card(f)
        for e in card.top_examples + [e for q in card.quantiles for e in q.examples]:
            np.testing.assert_allclose(e.values, dense[e.window, :, f], rtol=1e-3, atol=1e-6)
            assert len(e.token_ids) == len(e.tokens) == len(e.texts) == L


def test_logit_effects_equal_direct_computation(setup):
    lm, sae, *_, ix = setup
    effects = (sae.W_dec.detach() @ lm.model.lm_head.weight.detach().T).numpy()  # W_dec @ W_U
    _, shown = token_strings(lm.tokenizer, list(range(effects.shape[1])))
    for f in range(D_SAE):
        card = ix.card(f)
        top = np.argsort(-effects[f], kind="stable")[:10]
        bottom = np.argsort(effects[f], kind="stable")[:10]
        assert [t for t, _ in card.top_logits] == [shown[i] for i in top]
        assert [t for t, _ in card.bottom_logits] == [shown[i] for i in bottom]
        np.testing.assert_allclose([v for _, v in card.top_logits], effects[f, top], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([v for _, v in card.bottom_logits], effects[f, bottom], rtol=1e-5, atol=1e-6)


def test_neighbours_by_decoder_cosine(setup):
    _, sae, *_, ix = setup
    W = sae.W_dec.detach().numpy().astype(np.float64)
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    cos = W @ W.T
    np.fill_diagonal(cos, -np.inf)
    for f in range(D_SAE):
        expected = np.argsort(-cos[f], kind="stable")[:10]
        got = ix.card(f).neighbours
        assert [i for i, _ in got] == expected.tolist()
        np.testing.assert_allclose([c for _, c in got], cos[f, expected], atol=1e-5)


def brute_jaccard(dense):
    fires = (dense.reshape(-1, D_SAE) > 0).astype(np.int64)
    C = fires.T @ fires
    n = np.diag(C)
    with np.errstate(invalid="ignore", divide="ignore"):
        J = C / (n[:, None] + n[None, :] - C)
    J = np.nan_to_num(J)
    np.fill_diagonal(J, 0)
    return J


def test_cooccurrence_matches_brute_force(setup):
    *_, dense, ix = setup
    J = brute_jaccard(dense)
    for f in range(D_SAE):
        expected = [int(j) for j in np.argsort(-J[f], kind="stable")[:10] if J[f, j] > 0]
        got = ix.card(f).cooccurring
        assert [j for j, _ in got] == expected
        np.testing.assert_allclose([v for _, v in got], J[f, expected], rtol=1e-6)


def test_sparse_cooccurrence_path_gives_the_same_index(setup, tmp_path, monkeypatch):
    lm, sae, windows, path, *_ = setup
    monkeypatch.setattr(pass_state, "COOC_DENSE_MAX", 0)
    sparse = build_index(lm, sae, windows, tmp_path / "sparse", top_n=TOP_N, batch_size=BATCH,
                         sae_path_fingerprint="sae-abc", progress=False)
    for name in FILES:
        assert (sparse / name).read_bytes() == (path / name).read_bytes(), name
    assert json.loads((sparse / "manifest.json").read_text())["settings"]["cooccurrence"] == "exact-sparse"


def test_approximate_cooccurrence_is_flagged_and_never_overcounts(setup, tmp_path, monkeypatch):
    """Past the exact bound: the manifest states the bound, the card and its HTML say
    "approximate", and no Jaccard index is above the exact one."""
    from explorer.index import cooccurrence
    from explorer.render import card_html

    lm, sae, windows, _, dense, ix = setup
    monkeypatch.setattr(pass_state, "COOC_DENSE_MAX", 0)
    monkeypatch.setattr(cooccurrence, "EXACT_MAX_PAIRS", 100)
    monkeypatch.setattr(cooccurrence, "SUMMARY_SIZE", 12)
    approx = FeatureIndex.open(build_index(lm, sae, windows, tmp_path / "approx", top_n=TOP_N, batch_size=BATCH,
                                           sae_path_fingerprint="sae-abc", progress=False), lm.tokenizer)
    assert approx.manifest.settings["cooccurrence"].startswith("approximate (Misra-Gries, 12 partners per feature")
    J = brute_jaccard(dense)
    assert not ix.card(3).cooccurrence_approximate
    for f in range(D_SAE):
        card = approx.card(f)
        assert card.cooccurrence_approximate
        for j, v in card.cooccurring:
            assert v <= J[f, j] * (1 + 1e-6)
    assert "Jaccard, approximate" in card_html(approx.card(0)).related
    assert "approximate" not in card_html(ix.card(0)).related


def test_index_folder_is_readable_by_everyone_and_leaves_no_temp_files(setup):
    path = setup[3]
    assert path.stat().st_mode & 0o777 == 0o755
    assert {f.name: f.stat().st_mode & 0o777 for f in path.iterdir()} == \
        {name: 0o644 for name in (*FILES, "manifest.json")}
    assert sorted(p.name for p in path.parent.iterdir()) == ["idx"]


def test_resume_after_interruption_gives_identical_files(setup, tmp_path):
    lm, sae, windows, *_ = setup
    out = tmp_path / "resumed"

    def stop_at_third(number):
        if number == 2:
            raise KeyboardInterrupt

    kwargs = {"top_n": TOP_N, "batch_size": 8, "sae_path_fingerprint": "sae-abc", "progress": False}
    reference = build_index(lm, sae, windows, tmp_path / "reference", **kwargs)
    with pytest.raises(KeyboardInterrupt):
        build_index(lm, sae, windows, out, checkpoint_every=2, on_batch=stop_at_third, **kwargs)
    partial = Path(str(out) + ".partial")
    assert (partial / "state.safetensors").is_file() and not out.exists()
    with pytest.raises(IndexMismatchError, match="top_n|settings"):
        build_index(lm, sae, windows, out, **{**kwargs, "top_n": 5})
    seen = []
    build_index(lm, sae, windows, out, checkpoint_every=2, on_batch=seen.append, **kwargs)
    assert seen[0] == 2  # resumed after the two checkpointed batches
    assert not partial.exists()
    for name in FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    strip = lambda p: {k: v for k, v in json.loads((p / "manifest.json").read_text()).items() if k != "created"}
    assert strip(out) == strip(reference)


def test_check_matches(setup):
    lm, *_, ix = setup
    ix.check_matches(lm.name, HOOK, "sae-abc")
    ix.check_matches(None, HOOK, None)
    with pytest.raises(IndexMismatchError, match=r"sae-abc.*other-sae.*Fix: rebuild"):
        ix.check_matches(lm.name, HOOK, "other-sae")
    with pytest.raises(IndexMismatchError, match="blocks.2.hook_resid_post"):
        ix.check_matches(lm.name, "blocks.2.hook_resid_post", "sae-abc")
    with pytest.raises(IndexMismatchError, match="other-model"):
        ix.check_matches("other-model", HOOK, "sae-abc")


def test_user_labels_persist_and_survive_rebuild(setup, tmp_path):
    lm, sae, windows, *_ = setup
    kwargs = {"top_n": 4, "batch_size": BATCH, "sae_path_fingerprint": "sae-abc", "progress": False}
    path = build_index(lm, sae, windows, tmp_path / "idx", **kwargs)
    ix = FeatureIndex.open(path, lm.tokenizer)
    auto = ix.label(5)
    ix.set_label(5, "  Quokka detector ")
    assert ix.label(5) == "Quokka detector" and ix.card(5).label == "Quokka detector"
    assert ix.card(5).auto_label == auto
    assert FeatureIndex.open(path, lm.tokenizer).label(5) == "Quokka detector"
    build_index(lm, sae, windows, path, **kwargs)
    again = FeatureIndex.open(path, lm.tokenizer)
    assert again.label(5) == "Quokka detector"
    assert again.search("quokka") == [5]
    again.set_label(5, "")
    assert FeatureIndex.open(path, lm.tokenizer).label(5) == auto


def test_search(setup):
    *_, ix = setup
    f = 11
    card = ix.card(f)
    peak = card.top_examples[0].texts[card.top_examples[0].position]
    assert f in ix.search(peak, by="top_token", limit=64)
    for g in ix.search(peak, by="top_token"):
        assert any(peak.strip().casefold() in e.texts[e.position].casefold() for e in ix.card(g).top_examples)
    # A feature whose strongest promoted token is a letter (byte tokens can be whitespace or
    # half a UTF-8 character, which are not searchable text).
    f, text = next((g, t) for g in range(D_SAE) for t in [ix.card(g).top_logits[0][0]] if t.isalpha())
    hits = ix.search(text, by="logit_token", limit=64)
    assert f in hits
    for g in hits:
        assert any(text.casefold() in t.casefold() for t, _ in ix.card(g).top_logits)
    assert ix.search(ix.label(f), by="label")[0] in [g for g in range(D_SAE) if ix.label(g) == ix.label(f)]
    assert ix.search("   ") == []
    with pytest.raises(ValueError, match="label, top_token, logit_token"):
        ix.search("x", by="colour")


def test_card_errors_and_every_card_reads(setup):  # latency: bench/bench_index.py
    *_, ix = setup
    for bad in (-1, D_SAE, 3.0, "3"):
        with pytest.raises(ValueError, match=f"0..{D_SAE - 1}"):
            ix.card(bad)
    for f in range(D_SAE):
        card = ix.card(f)
    d = card.to_dict()
    assert json.loads(json.dumps(d)) == d and d["feature"] == D_SAE - 1


def test_open_errors(setup, tmp_path):
    lm, _, _, path, *_ = setup
    with pytest.raises(IndexFormatError, match="No feature index"):
        FeatureIndex.open(tmp_path / "nothing", lm.tokenizer)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("examples.safetensors", "windows.safetensors"):
        (broken / name).write_bytes((path / name).read_bytes())
    # Without recorded sizes (an index built before they were), as tests/test_index_integrity.py checks those.
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / "features.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(IndexFormatError, match="corrupt.*rebuild"):
        FeatureIndex.open(broken, lm.tokenizer)
    (broken / "features.safetensors").unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        FeatureIndex.open(broken, lm.tokenizer)


def test_bad_inputs(setup, tmp_path):
    lm, sae, windows, *_ = setup
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not an index")
    with pytest.raises(ValueError, match="not a feature index"):
        build_index(lm, sae, windows, tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / "notes.txt").is_file()
    with pytest.raises(ValueError, match="top_n"):
        build_index(lm, sae, windows, tmp_path / "x", top_n=0, progress=False)
    with pytest.raises(ValueError, match="non-empty"):
        build_index(lm, sae, windows[:0], tmp_path / "x", progress=False)


@pytest.mark.parametrize("largest", [True, False])
def test_ordered_topk_breaks_ties_by_lower_index(largest):
    rng = np.random.default_rng(0)
    values = rng.integers(-3, 4, size=(50, 40)).astype(np.float32)  # many ties, some longer than k + 8
    values[0] = 1.0
    got_v, got_i = _ordered_topk(torch.from_numpy(values), 10, largest=largest)
    expected = np.argsort(-values if largest else values, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(got_i.numpy(), expected)
    np.testing.assert_array_equal(got_v.numpy(), np.take_along_axis(values, expected, 1))


@pytest.mark.parametrize("ragged", [False, True])
def test_active_pairs_both_paths(ragged):
    rng = np.random.default_rng(1)
    rows = [sorted(rng.choice(30, size=4, replace=False)) for _ in range(20)]
    if ragged:  # rows of other lengths go into blocks of their own
        rows[5] = list(range(30))
        rows[6] = []
    t = torch.tensor([r for r, fs in enumerate(rows) for _ in fs], dtype=torch.int64)
    feat = torch.tensor([f for fs in rows for f in fs], dtype=torch.int64)
    got = sorted(divmod(int(k), 30) for keys in pair_keys(t, feat, len(rows), 30) for k in keys)
    expected = sorted((a, b) for fs in rows for x, a in enumerate(fs) for b in fs[x + 1:])
    assert got == expected


def test_standard_sae_matches_brute_force(setup, tmp_path):
    """A ReLU SAE fires on about half its features per token: dense rows, many ties at none."""
    lm, _, windows, *_ = setup
    sae = random_sae(32, D_SAE, architecture="standard", hook_name=HOOK, seed=2)
    ix = FeatureIndex.open(build_index(lm, sae, windows, tmp_path / "std", top_n=5, batch_size=BATCH,
                                       progress=False), lm.tokenizer)
    with torch.inference_mode():
        dense = torch.cat([sae.encode(run_to_hook(lm.model, HOOK, torch.from_numpy(windows.tokens[a:a + BATCH]).long()))
                           for a in range(0, N_WIN, BATCH)]).numpy().copy()
    dense[windows.tokens[:, 0] == BOS, 0, :] = 0.0
    J = brute_jaccard(dense)
    for f in range(D_SAE):
        v, w, p = active(dense, f)
        order = np.lexsort((p, w, -v.astype(np.float64)))[:5]
        card = ix.card(f)
        assert [(e.window, e.position, e.activation) for e in card.top_examples] == \
            [(int(w[i]), int(p[i]), float(v[i])) for i in order]
        expected = [int(j) for j in np.argsort(-J[f], kind="stable")[:10] if J[f, j] > 0]
        assert [j for j, _ in card.cooccurring] == expected
        assert sum(card.hist_counts) == len(v)
