"""The demo corpus builder (tools/demo_corpus) gives the same bytes for the same seed, and the same
bytes as the builder it replaced (explorer/demo_corpus.py + explorer/buggy_code.py, before the move).

The builds here use only sources that need no download: the running Python's standard library
tests and the tracebacks written into them. The golden sha256 values were computed with the old
builder on Python 3.11.7; they depend only on that Python's own files, so they are checked only
on that exact version (elsewhere the tests still check that two builds agree).
"""

from __future__ import annotations

import hashlib
import json
import platform
import random
import stat

import pytest

from tools.demo_corpus.__main__ import main
from tools.demo_corpus.bug_runs import format_bug_run, generate_bug_runs
from tools.demo_corpus.build import CORPUS_FILE, MANIFEST_FILE, build_demo_corpus
from tools.demo_corpus.mutations import mutants
from tools.demo_corpus.snippets import hand_snippets

GOLDEN_PYTHON = "3.11.7"
SOURCES = ["stdlib_tests", "written_tracebacks"]
TOKENS = 100_000
# Old builder, `build_demo_corpus(out, 100_000, seed=0, sources=SOURCES)`.
GOLDEN_CORPUS = "f0bdcf490dcd2c8c95d29e673f45ca9fcd4f61306f342f97641eedcc23e964c2"
GOLDEN_MANIFEST = "e91305785b6232f216dc69cd7cc7dfddf065cc01fbd37c4cb10074dcad41f1b0"
# Old HAND_SNIPPETS strings, hashed as json [name, code] per snippet; no Python dependence.
GOLDEN_HAND = "0fc7d56da352878cafdea82568b341d872113a7138121aa97681c673a78459f7"
# Old `mutants(s, random.Random(f"0/{s.name}"), 3)` of every hand snippet, json [snippet, mutation, code].
GOLDEN_MUTANTS = "c5e09808f9bb58955b572cfd158ddcf4022c445fcbc6de283b791ea00c0e806a"
# Old `generate_bug_runs(seed=0, limit=8, per_op=1, max_pairs=12, snippets=hand_snippets())`, formatted.
GOLDEN_RUNS = "dbc411f213040c448e03d78f8dfe1951b079484d0fd92a68a558ef978da2e198"

on_golden_python = pytest.mark.skipif(platform.python_version() != GOLDEN_PYTHON,
                                      reason=f"golden values were computed on Python {GOLDEN_PYTHON}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    """The same build twice, in two folders: (corpus bytes, manifest bytes) each."""
    out = []
    for name in ("a", "b"):
        folder = tmp_path_factory.mktemp(name)
        build_demo_corpus(folder, target_tokens=TOKENS, seed=0, sources=SOURCES)
        out.append(((folder / CORPUS_FILE).read_bytes(), (folder / MANIFEST_FILE).read_bytes()))
        for file in (CORPUS_FILE, MANIFEST_FILE):
            assert stat.S_IMODE((folder / file).stat().st_mode) == 0o644
    return out


def test_same_seed_gives_the_same_bytes(two_builds):
    (corpus_a, manifest_a), (corpus_b, manifest_b) = two_builds
    assert corpus_a == corpus_b and manifest_a == manifest_b
    manifest = json.loads(manifest_a)
    assert manifest["sha256"] == sha256(corpus_a)
    assert [s["status"] for s in manifest["sources"]] == ["ok", "ok"]
    assert manifest["total"]["chars"] >= TOKENS * 4


@on_golden_python
def test_build_matches_the_old_builder(two_builds):
    corpus, manifest = two_builds[0]
    assert (sha256(corpus), sha256(manifest)) == (GOLDEN_CORPUS, GOLDEN_MANIFEST)


def test_the_seed_changes_the_corpus(tmp_path):
    """Through the command line, with a cheap source (stdlib_tests is read lazily)."""
    corpora = []
    for seed in ("0", "1"):
        main(["--out", str(tmp_path / seed), "--tokens", "20000", "--seed", seed, "--sources", "stdlib_tests"])
        corpora.append((tmp_path / seed / CORPUS_FILE).read_bytes())
    assert corpora[0] != corpora[1]


def test_hand_programs_are_the_old_strings():
    digest = hashlib.sha256()
    for s in hand_snippets():
        digest.update(json.dumps([s.name, s.code]).encode())
    assert digest.hexdigest() == GOLDEN_HAND


@on_golden_python
def test_mutants_match_the_old_builder():
    digest = hashlib.sha256()
    for s in hand_snippets():
        for m in mutants(s, random.Random(f"0/{s.name}"), 3):
            digest.update(json.dumps([m.snippet.name, m.mutation, m.code]).encode())
    assert digest.hexdigest() == GOLDEN_MUTANTS


@on_golden_python
def test_bug_runs_match_the_old_builder():
    runs = generate_bug_runs(seed=0, limit=8, per_op=1, max_pairs=12, workers=2, progress=False,
                             snippets=hand_snippets())
    assert len(runs) == 12
    assert sha256("".join(format_bug_run(r) for r in runs).encode()) == GOLDEN_RUNS
