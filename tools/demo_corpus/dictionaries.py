"""Readers for the dictionaries: GCIDE (Webster 1913), WordNet, Bierce, the Jargon File and FOLDOC.

The dictd ones (R6 in shared/reference/offline-corpora.md) share one index reader; WordNet's
data files are read directly (R7).
"""

from __future__ import annotations

import gzip
import re
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

from tools.demo_corpus.units import Context, Unit, shuffled, unwrap


_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_entries(root: Path, name: str) -> Iterator[tuple[str, str]]:
    """R6: `.index` lines are headword TAB offset TAB length (dictd's base64 numbers) into the .dz text."""
    def number(s: str) -> int:
        return sum(_B64[c] * 64 ** i for i, c in enumerate(reversed(s)))

    data = gzip.open(root / f"{name}.dict.dz").read()
    seen = set()
    for line in (root / f"{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        headword, offset, length = line.split("\t")[:3]
        span = (number(offset), number(length))
        if headword.startswith("00") or span in seen:  # 00-database-* entries are metadata
            continue
        seen.add(span)
        yield headword, data[span[0]:span[0] + span[1]].decode("utf-8", errors="replace")


def _dict_units(ctx: Context, package: str, name: str, clean: Callable[[str], str]) -> list[Unit]:
    root = ctx.path(f"deb:{package}", "usr/share/dictd")
    return shuffled(((f"{name}:{hw}", clean(text)) for hw, text in _dictd_entries(root, name)), ctx.rng)


def _clean_lexicon(text: str) -> str:
    """Jargon File / FOLDOC: `{cross reference}` -> `cross reference`, wrapped lines joined."""
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)
    head, _, body = text.strip("\n").partition("\n\n")
    return head.strip() + "\n\n" + unwrap(body) if body else head.strip()


GCIDE_SOURCE_TAGS = re.compile(r"\s*\[(?:1913 Webster|Webster 1913 Suppl\.|Century Dict\.|Chambers 1881|"
                               r"WordNet[^\]]*|(?:PJC|RDH|JC|DP|MW|NRT|ASG)(?: ?\+ ?\w+)*)\]")
GCIDE_SYMBOLS = {"ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "eth": "ð", "th": "þ", "deg": "°", "sect": "§",
                 "root": "√", "yogh": "ȝ", "aum": "ä", "thorn": "þ", "imac": "ī", "ng": "ŋ", "asl": "ʼ",
                 "frac12": "½", "frac14": "¼",
                 "frac34": "¾", "cre": "˘", "pound": "£", "middot": "·", "times": "×", "divide": "÷"}
GCIDE_GREEK = {n: chr(0x3B1 + i) for i, n in enumerate(
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigmav sigma "
    "tau upsilon phi chi psi omega".split())}
# [x] accent escapes: a mark before or after one letter -> that letter with a combining mark.
GCIDE_MARKS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", '"': "\u0308", "~": "\u0303", "=": "\u0304",
               "-": "\u0306", ".": "\u0307", ",": "\u0327"}


def _gcide_symbol(m: re.Match) -> str:
    code = m.group(1)
    if code in GCIDE_SYMBOLS:
        return GCIDE_SYMBOLS[code]
    if code in GCIDE_GREEK:
        return GCIDE_GREEK[code]
    if len(code) == 2 and code[0] in GCIDE_MARKS and code[1].isalpha():
        return unicodedata.normalize("NFC", code[1] + GCIDE_MARKS[code[0]])
    if len(code) == 2 and code[1] in GCIDE_MARKS and code[0].isalpha():
        return unicodedata.normalize("NFC", code[0] + GCIDE_MARKS[code[1]])
    return m.group(0)


def _clean_gcide(text: str) -> str:
    text = GCIDE_SOURCE_TAGS.sub("", text)
    # "Lapidate \Lap"i*date\, v. t." -> the headword is written twice; keep the marked-up one.
    text = re.sub(r"^[^\\\n]*? (?=\\)", "", text.lstrip("\n"), count=1)
    text = re.sub(r"\[([a-zA-Z'`^\"~=.,\-]{2,7}\d{0,2})\]", _gcide_symbol, text)
    text = re.sub(r"\\([^\\\n]+)\\", lambda m: re.sub(r'["*`]', "", m.group(1)), text)  # \Lap"i*date\
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)
    return unwrap(text)


def read_gcide(ctx: Context) -> Iterator[Unit]:
    """R6: Webster 1913 entries only; the WordNet-derived ones repeat the wordnet source."""
    root = ctx.path("deb:dict-gcide", "usr/share/dictd")
    units = [(f"gcide:{hw}", _clean_gcide(text)) for hw, text in _dictd_entries(root, "gcide")
             if "[1913 Webster]" in text or "[Webster 1913 Suppl.]" in text]
    return shuffled(units, ctx.rng)


def read_devil(ctx: Context) -> Iterator[Unit]:
    """R6, keeping line breaks so Bierce's verse survives."""
    return _dict_units(ctx, "dict-devil", "devil", lambda t: re.sub(r"\n{3,}", "\n\n", t.strip("\n")))


def read_jargon(ctx: Context) -> Iterator[Unit]:
    return _dict_units(ctx, "dict-jargon", "jargon", _clean_lexicon)


def read_foldoc(ctx: Context) -> Iterator[Unit]:
    return _dict_units(ctx, "dict-foldoc", "foldoc", _clean_lexicon)


WORDNET_POS = {"noun": "n.", "verb": "v.", "adj": "adj.", "adv": "adv."}


def read_wordnet(ctx: Context) -> Iterator[Unit]:
    """R7: `word1, word2 (pos): gloss`, one synset a line, grouped 20 to a unit (synsets are short)."""
    lines = []
    for pos, short in WORDNET_POS.items():
        path = ctx.path("deb:wordnet-base", f"usr/share/wordnet/data.{pos}")
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:  # licence header
                continue
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            words = [parts[4 + 2 * i].replace("_", " ") for i in range(int(parts[3], 16))]
            words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers like (p)
            lines.append(f"{', '.join(words)} ({short}): {gloss.strip()}")
    ctx.rng.shuffle(lines)
    return [(f"wordnet:{i}", "\n".join(lines[i:i + 20])) for i in range(0, len(lines), 20)]
