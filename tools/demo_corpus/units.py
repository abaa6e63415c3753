"""What a source reader yields (`Unit`: label and text), what it is given (`Context`), and the
helpers readers share to cut texts into units of a bounded size."""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MAX_UNIT_CHARS = 20_000  # a whole play or man page is split, so one unit cannot blow a quota

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


def shuffled(units: Iterable[Unit], rng: random.Random) -> list[Unit]:
    units = list(units)
    rng.shuffle(units)
    return units


def split_long(text: str, max_chars: int = MAX_UNIT_CHARS) -> list[str]:
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


def long_units(label: str, text: str) -> list[Unit]:
    """One unit, or several labelled `label#1`, `label#2`, ... when the text is too long."""
    pieces = split_long(text.strip())
    if len(pieces) == 1:
        return [(label, pieces[0])]
    return [(f"{label}#{i + 1}", p) for i, p in enumerate(pieces)]


def unwrap(text: str) -> str:
    """Join hard-wrapped lines within each paragraph; paragraphs stay separated by a blank line."""
    paras = (" ".join(line.strip() for line in p.splitlines()) for p in re.split(r"\n\s*\n", text))
    return "\n\n".join(p for p in paras if p)


def merge_small(chunks: list[Unit], min_chars: int = 1500) -> list[Unit]:
    """Merge consecutive small chunks (short functions, one-paragraph sections) into one unit."""
    out: list[Unit] = []
    for label, text in chunks:
        if out and len(out[-1][1]) < min_chars:
            out[-1] = (out[-1][0], out[-1][1].rstrip() + "\n\n\n" + text)
        else:
            out.append((label, text))
    return out
