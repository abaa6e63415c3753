"""Where a feature fires: source ids through windows, the pass, the index and the card."""

import json

import numpy as np
import pytest
import torch
from tiny import byte_tokenizer, tiny_model

from explorer.corpus import (
    Document,
    Windows,
    load_windows,
    read_documents,
    save_windows,
    tokenize_windows,
)
from explorer.hooks import run_to_hook
from explorer.index import FeatureIndex, build_index
from explorer.render import card_html, source_mix_html
from explorer.sae import random_sae

HOOK = "blocks.1.hook_resid_post"
D_SAE, N_WIN, L = 48, 24, 16


def test_jsonl_rows_name_their_source(tmp_path):
    rows = [{"text": "a", "source": "austen:Emma:1"}, {"text": "b"}, {"text": "c", "source": "bugs"}]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = list(read_documents(tmp_path / "c.jsonl"))
    assert [d.source_name for d in docs] == ["austen", "", "bugs"]
    assert docs[0].source == f"{tmp_path / 'c.jsonl'}:1"  # the location stays what it was


def test_every_token_gets_its_documents_source():
    tok = byte_tokenizer()
    docs = [Document(i, f"d{i}", text, name) for i, (text, name) in
            enumerate([("x" * 9, "zeta"), ("y" * 3, "alpha"), ("z" * 20, "zeta"), ("w" * 30, "mid")])]
    w = tokenize_windows(docs, tok, window=8)
    assert w.source_names == ("alpha", "mid", "zeta")  # sorted
    # The stream, rebuilt by hand: each document's bytes then eos, BOS + 7 tokens per window.
    expected = np.concatenate([np.full(len(d.text) + 1, w.source_names.index(d.source_name)) for d in docs])
    body = expected[: len(w) * 7].reshape(len(w), 7)
    assert np.array_equal(w.source[:, 1:], body) and np.array_equal(w.source[:, 0], body[:, 0])
    assert w[2:4].source_names == w.source_names and np.array_equal(w[2:4].source, w.source[2:4])


def test_no_sources_without_names():
    w = tokenize_windows([Document(0, "d", "q" * 40)], byte_tokenizer(), window=8)
    assert w.source is None and w.source_names == ()


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_sources_round_trip_and_old_files_load(tmp_path, suffix):
    rng = np.random.default_rng(0)
    w = Windows(rng.integers(0, 9, (5, 4)).astype(np.int32), np.arange(5), np.zeros(5, np.int64),
                rng.integers(0, 2, (5, 4)).astype(np.uint8), ("fiction", "tracebacks é"))
    save_windows(w, tmp_path / f"w{suffix}")
    back = load_windows(tmp_path / f"w{suffix}")
    assert back.source_names == w.source_names and np.array_equal(back.source, w.source)
    save_windows(Windows(w.tokens, w.doc_id, w.offset), tmp_path / f"old{suffix}")
    assert load_windows(tmp_path / f"old{suffix}").source is None


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    lm = tiny_model()
    sae = random_sae(32, D_SAE, architecture="topk", k=6, hook_name=HOOK, seed=3)
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 256, size=(N_WIN, L)).astype(np.int32)
    source = np.repeat(rng.integers(0, 3, size=(N_WIN, 4)), 4, axis=1).astype(np.uint8)  # runs of 4 tokens
    windows = Windows(tokens, np.arange(N_WIN), np.zeros(N_WIN, np.int64), source, ("code", "prose", "verse"))
    root = tmp_path_factory.mktemp("mix")
    with_mix = build_index(lm, sae, windows, root / "mix", batch_size=5, progress=False)
    without = build_index(lm, sae, Windows(tokens, windows.doc_id, windows.offset), root / "plain",
                          batch_size=5, progress=False)
    with torch.inference_mode():
        dense = sae.encode(run_to_hook(lm.model, HOOK, torch.from_numpy(tokens).long())).double().numpy()
    return lm, windows, dense, FeatureIndex.open(with_mix, lm.tokenizer), FeatureIndex.open(without, lm.tokenizer)


def test_source_mass_equals_brute_force(built):
    _, windows, dense, ix, _ = built
    expected = np.stack([(dense * (windows.source == s)[:, :, None]).sum((0, 1)) for s in range(3)], axis=1)
    assert ix.source_names() == ["code", "prose", "verse"]
    np.testing.assert_allclose(ix.source_masses(), expected, rtol=1e-9)
    np.testing.assert_allclose(ix.source_masses().sum(1), [ix.card(f).mean_activation * ix.card(f).density
                                                           * ix.manifest.n_tokens for f in range(D_SAE)], rtol=1e-6)


def test_card_shows_the_mix_only_when_present(built):
    *_, ix, plain = built
    f = int(np.argmax(ix.densities()))
    mix = ix.card(f).source_mix
    shares = [s for _, s in mix]
    assert shares == sorted(shares, reverse=True) and sum(shares) == pytest.approx(1.0)
    top = card_html(ix.card(f)).top
    assert f"{shares[0]:.0%} of activation in {mix[0][0]}" in top
    assert plain.card(f).source_mix == [] and "source-mix" not in card_html(plain.card(f)).top
    assert plain.source_masses() is None


def test_mix_line_groups_the_rest():
    html = source_mix_html([("bugs", 0.9), ("a", 0.04), ("b", 0.03), ("c", 0.02), ("<d>", 0.01)])
    assert "90% of activation in bugs (4% a, 3% b, 3% other)" in html and "<d>" not in html
    assert source_mix_html([]) == ""


def test_source_sums_of_shards_merge_to_the_one_pass_bits():
    from explorer.index import exact_sum
    from explorer.index.merge import merge_pair
    from explorer.index.pass_state import PassState

    gen = torch.Generator().manual_seed(0)
    f = torch.relu(torch.randn(8, 6, 10, generator=gen) * 3)  # (windows, seq, d_sae)
    src = torch.randint(0, 3, (8, 6), generator=gen)
    edges = torch.from_numpy(np.geomspace(1e-3, 100, 51).astype(np.float32))

    def state(parts, sources=True):
        run = PassState(10, 6, 4, torch.device("cpu"))
        run.edges = edges
        if sources:
            run.track_sources(3)
        for lo, hi in parts:
            run.update(f[lo:hi].clone(), lo, src[lo:hi])
        return run.state_dict()

    one = state([(0, 8)])
    merged = merge_pair(state([(0, 3)]), state([(3, 5), (5, 8)]), 6)
    assert torch.equal(merged["source_mass"], one["source_mass"])
    expected = torch.stack([(f * (src == s)[..., None]).double().sum((0, 1)) for s in range(3)], 1)
    torch.testing.assert_close(exact_sum.to_float(one["source_mass"]).view(10, 3), expected)
    with pytest.raises(ValueError, match="same windows"):
        merge_pair(state([(0, 3)]), state([(3, 8)], sources=False), 6)
