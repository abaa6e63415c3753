"""One short text per feature (automatic labels; other per-feature texts alike), read and
searched without a Python loop over the features.

`LabelLines(file, n)` reads labels_auto.json lazily: the file as the build writes it (json.dumps
with indent=0) holds one JSON string per line, so after one vectorised scan for line ends,
`get(i)` decodes one line. A file in another layout is parsed whole, once.

`TextColumn(texts)` is the search structure: every text case-folded and joined into one array
of code points, with the start of each text. `find(query)` finds all occurrences of the
case-folded query with a few whole-array numpy comparisons (anchored at the query's rarest
character), keeps the first occurrence per text, and ranks as the reader always has: exact
match, then prefix, then earliest match, then lower feature.
"""

from __future__ import annotations

import json
import logging
import mmap
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

_HEAD = (b"{", b'"labels": [')  # the first line, and the line that opens the list (after "method")


class LabelLines:
    """The `labels` list of a labels_auto.json, `n` strings long, read lazily. A missing,
    unreadable or wrong-length file gives "" for every feature (with one warning)."""

    def __init__(self, file: Path, n: int):
        self.file, self.n = file, n
        self._lines: tuple[mmap.mmap, np.ndarray] | None = None  # the mapping, and each line's start
        self._list: list[str] | None = None  # the whole list, once parsed

    def _map_lines(self) -> tuple[mmap.mmap, np.ndarray] | None:
        """The file mapped and its line starts, when it has the build's one-label-a-line layout."""
        try:
            with open(self.file, "rb") as fh:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError):  # ValueError: an empty file cannot be mapped
            return None
        ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)  # b"\n"
        starts = np.concatenate([[0], ends + 1])
        # {, "method", "labels": [, n labels, ], }
        if len(starts) != self.n + 5 or data[:ends[0]] != _HEAD[0] or data[starts[2]:ends[2]] != _HEAD[1]:
            return None
        return data, starts

    def get(self, i: int) -> str:
        """The text of feature `i`."""
        if self._list is None and self._lines is None:
            self._lines = self._map_lines()
        if self._lines is not None:
            data, starts = self._lines
            line = data[starts[3 + i]:starts[4 + i] - 1].rstrip(b",")
            try:
                text = json.loads(line)
            except ValueError:
                text = None
            if isinstance(text, str):
                return text
            self._lines = None  # not the layout it seemed: parse it whole
        return self.all()[i]

    def all(self) -> list[str]:
        """Every text, the file parsed whole (once)."""
        if self._list is None:
            try:
                labels = json.loads(self.file.read_text(encoding="utf-8"))["labels"]
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("%s is missing or unreadable; features have no automatic labels", self.file)
                labels = []
            if not isinstance(labels, list) or len(labels) != self.n or set(map(type, labels)) - {str}:
                labels = [""] * self.n
            self._list, self._lines = labels, None
        return self._list


class TextColumn:
    """Case-insensitive substring search over one text per feature (`texts[i]` is feature i's)."""

    def __init__(self, texts: list[str]):
        # Case folding maps each character on its own, so the joined text can be folded in one
        # call; only when that changes the length (ß -> ss) are the texts folded one by one.
        joined = "".join(texts)
        folded = joined.casefold()
        if len(folded) == len(joined):
            lengths = np.fromiter(map(len, texts), np.int64, len(texts))
        else:
            pieces = [t.casefold() for t in texts]
            lengths, folded = np.fromiter(map(len, pieces), np.int64, len(pieces)), "".join(pieces)
        self.starts = np.concatenate([[0], np.cumsum(lengths)])  # text i is chars[starts[i]:starts[i + 1]]
        codes = np.frombuffer(folded.encode("utf-32-le"), np.uint32)
        self.chars = codes.astype(np.uint16) if len(codes) == 0 or codes.max() < 65536 else codes
        # how often each character occurs, to anchor a search at the query's rarest one
        self._freq = np.bincount(codes, minlength=1) if len(codes) else np.zeros(1, np.int64)

    def find(self, query: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features whose text contains the case-folded `query`, where it first occurs in each,
        whether the text is exactly the query), features ascending."""
        q = np.frombuffer(query.casefold().encode("utf-32-le"), np.uint32)
        m = len(q)
        none = np.zeros(0, np.int64)
        if m == 0 or m > len(self.chars) or (self.chars.dtype == np.uint16 and q.max() >= 65536):
            return none, none, none.astype(bool)
        freq = np.where(q < len(self._freq), self._freq[np.minimum(q, len(self._freq) - 1)], 0)
        anchor = int(freq.argmin())
        pos = np.flatnonzero(self.chars == q[anchor]) - anchor  # candidate starts of the query
        pos = pos[(pos >= 0) & (pos <= len(self.chars) - m)]
        for j in range(m):
            if j != anchor and len(pos):
                pos = pos[self.chars[pos + j] == q[j]]
        text = np.searchsorted(self.starts, pos, side="right") - 1
        pos, text = pos[pos + m <= self.starts[text + 1]], text[pos + m <= self.starts[text + 1]]  # not across texts
        features, first = np.unique(text, return_index=True)  # pos ascends, so the first hit is the earliest
        at = pos[first] - self.starts[features]
        exact = (at == 0) & (self.starts[features + 1] - self.starts[features] == m)
        return features, at, exact


def rank(features: np.ndarray, at: np.ndarray, exact: np.ndarray, limit: int) -> np.ndarray:
    """The best `limit` hits: exact first, then prefix, then earliest match, then lower feature."""
    kind = np.where(exact, 0, np.where(at == 0, 1, 2))
    if len(features) > 4 * limit:  # keep the best `limit` by kind and position before sorting
        key = kind * (int(at.max()) + 1) + at
        cut = np.partition(key, limit - 1)[limit - 1]
        keep = key <= cut
        features, at, kind = features[keep], at[keep], kind[keep]
    return features[np.lexsort((features, at, kind))][:limit]
