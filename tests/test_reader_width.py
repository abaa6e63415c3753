"""The reader at width: search gives what the Python loop over every feature gave, cards read
through the mapped files equal those read through safetensors' own reader, opening reads no
per-feature column, and the faiss neighbours of a wide SAE are close to the exact ones and
the same every run."""

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tiny import byte_tokenizer

from explorer import neighbours
from explorer.index import FeatureIndex, IndexFormatError
from explorer.index.format import EXAMPLES_FILE, FEATURES_FILE, LABELS_AUTO_FILE
from explorer.index.integrity import open_checked
from explorer.index.mapped import MappedFile
from explorer.index.text_column import LabelLines, TextColumn, rank
from explorer.sae import random_sae

ROOT = Path(__file__).resolve().parent.parent
DEMO_INDEX = ROOT / "data" / "demo" / "index"
sys.path.insert(0, str(ROOT / "bench"))
from bench_width import write_synthetic_index  # noqa: E402

QUERIES = ["the", "The", "THE", "‘", "→", "an", "x", "ing", "’ / ‘", "zzz", "<0x", "↵", "␣", "a", "e", "ß", "ss",
           "été", "ÉTÉ", "quokka", "Quokka detector", " ", "‘an’ / ‘than’ → ‘anomal’ / ‘entimes’"]
USER = {3: "Quokka detector", 7: "THE END", 11: "été", 12: "Straße", 40: "the", 41: ""}


def loop_search(ix: FeatureIndex, query: str, limit: int) -> list[int]:
    """Label search as the reader did it before: a Python loop over every feature."""
    q = query.strip().casefold()
    if not q:
        return []
    hits = []
    for f in range(ix.d_sae):
        text = ix.label(f).casefold()
        at = text.find(q)
        if at >= 0:
            hits.append((0 if text == q else 1 if at == 0 else 2, at, f))
    return [f for *_, f in sorted(hits)[:limit]]


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory):
    """The committed demo index, copied (user labels get written), with some user labels set."""
    path = Path(shutil.copytree(DEMO_INDEX, tmp_path_factory.mktemp("demo") / "index"))
    ix = FeatureIndex.open(path, byte_tokenizer())  # label search reads no token text
    for f, text in USER.items():
        ix.set_label(f, text)
    return path


def test_label_search_is_the_python_loop_on_the_demo_index(demo_copy):
    ix = FeatureIndex.open(demo_copy, byte_tokenizer())
    assert ix.label(3) == "Quokka detector" and 41 not in ix._user  # an empty label is no label
    for q in QUERIES:
        for limit in (1, 20, 5000):
            assert ix.search(q, limit=limit) == loop_search(ix, q, limit), (q, limit)
    assert ix.search("quokka") == [3] and ix.search("strasse")[:1] == [12]
    ix.set_label(3, "")  # removed: the automatic label is searched again
    assert ix.search("quokka") == [] and ix.search(ix.label(3), limit=5000) == loop_search(ix, ix.label(3), 5000)


@pytest.mark.parametrize("texts", [["Straße", "STRASSE", "ss", "", "ǅ x", "ﬁne", "a\x00b", "😀 ss"],
                                   ["Abc", "xABC", "abcabc", "ab", "c", "ABC", "bc"]])
def test_text_column_finds_what_str_find_finds(texts):
    """Both folding paths (whole text at once; text by text when folding changes lengths)."""
    column = TextColumn(texts)
    for q in ["ss", "straße", "abc", "b", "c", "x", "😀", "fi", "\x00", "ǆ", "bca", "zz"]:
        want = sorted((0 if t.casefold() == q.casefold() else 1 if t.casefold().find(q.casefold()) == 0 else 2,
                       t.casefold().find(q.casefold()), f) for f, t in enumerate(texts) if q.casefold() in t.casefold())
        assert rank(*column.find(q), limit=100).tolist() == [f for *_, f in want], q


def test_labels_read_a_line_at_a_time_equal_the_parsed_file(tmp_path):
    file = DEMO_INDEX / LABELS_AUTO_FILE
    parsed = json.loads(file.read_text(encoding="utf-8"))["labels"]
    lines = LabelLines(file, len(parsed))
    assert [lines.get(i) for i in range(len(parsed))] == parsed and lines._list is None  # never parsed whole
    # Another layout (say, a hand edit) is parsed whole; a wrong count gives empty labels.
    other = tmp_path / LABELS_AUTO_FILE
    other.write_text(json.dumps({"labels": parsed}), encoding="utf-8")
    assert LabelLines(other, len(parsed)).get(5) == parsed[5]
    assert LabelLines(other, len(parsed) + 1).get(5) == ""


class SafeOpen:
    """safetensors' own reader (arrays copied out whole), as the index was read before."""

    def __init__(self, file: Path):
        self._handle = safe_open(str(file), framework="np")

    def keys(self):
        return self._handle.keys()

    def array(self, name: str) -> np.ndarray:
        return self._handle.get_tensor(name)


@pytest.mark.demo
def test_cards_and_token_search_match_safetensors_reads_on_the_demo_index():
    from transformers import AutoTokenizer

    from explorer.model import prepare_demo_model

    tokenizer = AutoTokenizer.from_pretrained(prepare_demo_model(progress=False))
    mapped = FeatureIndex.open(DEMO_INDEX, tokenizer)
    manifest, _ = open_checked(DEMO_INDEX)
    labels = LabelLines(DEMO_INDEX / LABELS_AUTO_FILE, manifest.d_sae)
    labels.all()  # parsed whole, as before
    files = [SafeOpen(DEMO_INDEX / name) for name in (FEATURES_FILE, EXAMPLES_FILE, "windows.safetensors")]
    copied = FeatureIndex(DEMO_INDEX, manifest, tokenizer, *files, labels)
    for f in [0, 1, 4607, *np.random.default_rng(0).integers(0, manifest.d_sae, 30).tolist()]:
        assert mapped.card(f) == copied.card(f), f
    for by in ("top_token", "logit_token"):
        for q in ("the", "ing", " ", "é"):
            assert mapped.search(q, by=by, limit=100) == copied.search(q, by=by, limit=100), (by, q)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return write_synthetic_index(tmp_path_factory.mktemp("wide") / "index", 65536, n_windows=64, window_len=16,
                                 vocab=258, top_n=4)


def test_opening_a_wide_index_reads_no_per_feature_column(wide, tmp_path, monkeypatch):
    """Noise in the middle of the per-feature locators (counts, example pointers) does not stop
    the index opening, so open did not read them; the card of a damaged feature names the damage."""
    path = Path(shutil.copytree(wide, tmp_path / "index"))
    for name, array, rows in ((FEATURES_FILE, "count", slice(30000, 30001)),
                              (EXAMPLES_FILE, "ex_ptr", slice(40000 * 6 + 2, 40000 * 6 + 3))):
        m = MappedFile(path / name)
        info = m.header[array]
        item = np.dtype(m.array(array).dtype).itemsize
        with open(path / name, "r+b") as fh:
            fh.seek(8 + int.from_bytes((path / name).read_bytes()[:8], "little") + info["data_offsets"][0]
                    + rows.start * item)
            fh.write((-5).to_bytes(item, "little", signed=True))
    read = []
    real_array = MappedFile.array
    monkeypatch.setattr(MappedFile, "array", lambda self, name: read.append(name) or real_array(self, name))
    ix = FeatureIndex.open(path, byte_tokenizer())
    assert set(read) <= {"hist_edges", "ex_ptr", "window_ids"}  # ex_ptr: its two ends only
    assert ix._auto._list is None and ix._auto._lines is None  # labels: not even scanned yet
    monkeypatch.undo()
    ix.card(29999), ix.card(65535)
    for f in (30000, 40000):
        with pytest.raises(IndexFormatError, match="is damaged.*Fix: rebuild"):
            ix.card(f)
    assert ix.search("feature 1", limit=4) == [1, 65, 129, 193]  # exact matches first


def decoder(n: int, d: int = 48, parents: int = 64, seed: int = 0) -> torch.Tensor:
    """Rows that split `parents` directions, as a wide SAE's decoder splits a narrow one's."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(parents, d, generator=g)
    return base[torch.randint(0, parents, (n,), generator=g)] + 0.7 * torch.randn(n, d, generator=g)


def test_faiss_neighbours_are_close_to_exact_and_reproducible(monkeypatch, one_thread):
    from explorer.index.finalise import _neighbours

    n = 3000
    sae = random_sae(48, n, architecture="topk", k=4, hook_name="blocks.0.hook_resid_post", seed=0)
    with torch.no_grad():
        sae.W_dec.copy_(decoder(n))
    exact_ids, exact_cos, exact = _neighbours(sae)
    assert exact["method"] == "exact"
    monkeypatch.setattr(neighbours, "EXACT_MAX_CPU", 1000)
    ids, cos, method = _neighbours(sae)
    again = _neighbours(sae)
    assert method["method"] == "faiss IndexIVFFlat" and method["exact_max_cpu"] == 1000
    np.testing.assert_array_equal(ids, again[0]), np.testing.assert_array_equal(cos, again[1])
    assert neighbours.recall(ids, exact_ids) >= 0.9
    # Valid: no feature is its own neighbour, no repeats, cosines true and in ranked order.
    assert (ids >= 0).all() and not (ids == np.arange(n)[:, None]).any()
    assert all(len(set(row)) == len(row) for row in ids.tolist())
    W = neighbours.normalised(sae.W_dec).numpy()
    np.testing.assert_allclose(cos, np.einsum("nkd,nd->nk", W[ids], W), atol=1e-5)
    assert (np.diff(cos, axis=1) <= 0).all()
    same = np.array([set(a) == set(b) for a, b in zip(ids.tolist(), exact_ids.tolist())])
    assert same.mean() >= 0.5
    np.testing.assert_allclose(cos[same], exact_cos[same], atol=1e-5)  # same set, same ranked cosines
