"""Explanations of features, kept beside an index: records, the file, and search over them.

`<index>/explanations.jsonl` holds one JSON record per (feature, method): the text, the model
that wrote it ("heuristic" records hold the index's automatic label), its detection and
fuzzing scores, the judge, how many examples each score used, and the date. A run appends
each finished record and flushes it (a killed run loses at most the line it was writing,
which the reader skips), and at the end rewrites the file atomically, one record per
(feature, method), sorted. The last record of a (feature, method) wins. User labels live in
their own file and are never read or written here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from explorer.files import write_atomic

log = logging.getLogger(__name__)

EXPLANATIONS_FILE = "explanations.jsonl"
METHODS = ("llm", "heuristic")


@dataclass(frozen=True)
class Explanation:
    feature: int
    method: str  # "llm": written by `model`; "heuristic": the index's automatic label
    text: str
    model: str  # the explainer ("" for heuristic labels)
    judge: str = ""  # the model that scored it ("" when not scored)
    detection: float | None = None  # balanced accuracy, 0.5 = chance
    fuzzing: float | None = None
    detection_auc: float | None = None
    fuzzing_auc: float | None = None
    n_detection: int = 0  # questions behind each score (half activating, half not, when available)
    n_fuzzing: int = 0
    date: str = ""  # ISO 8601, UTC
    seconds: float = 0.0  # time to write it (0 for heuristic labels)
    score_seconds: float = 0.0  # time to score it

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Explanation:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def scores(self) -> str:
        """'detection 0.75 · fuzzing 0.60 (n=20/10, AUC 0.80/0.62, judge M)', or 'not scored'."""
        if self.detection is None:
            return "not scored"
        aucs = f", AUC {self.detection_auc:.2f}/{self.fuzzing_auc:.2f}" if self.detection_auc is not None else ""
        return (f"detection {self.detection:.2f} · fuzzing {self.fuzzing:.2f} "
                f"(n={self.n_detection}/{self.n_fuzzing}{aucs}, judge {self.judge})")


def read_explanations(index_path: str | Path) -> dict[tuple[int, str], Explanation]:
    """The records in the index folder by (feature, method); {} when there is no file."""
    path = Path(index_path) / EXPLANATIONS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return {}
    out = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = Explanation.from_dict(json.loads(line))
        except (ValueError, TypeError) as err:  # a line cut by a killed run, or a hand edit
            log.warning("%s line %d is not a record (%s); skipped", path, n, err)
            continue
        out[(rec.feature, rec.method)] = rec
    return out


class ExplanationLog:
    """Appends records to the file as they finish; `close` rewrites it clean."""

    def __init__(self, index_path: str | Path):
        self.path = Path(index_path) / EXPLANATIONS_FILE
        self._file = None

    def append(self, rec: Explanation) -> None:
        if self._file is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        self._file.write(rec.to_json() + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path.exists():
            write_explanations(self.path.parent, read_explanations(self.path.parent).values())


def write_explanations(index_path: str | Path, records) -> None:
    recs = sorted(records, key=lambda r: (r.feature, METHODS.index(r.method) if r.method in METHODS else 9, r.method))
    write_atomic(Path(index_path) / EXPLANATIONS_FILE, "".join(r.to_json() + "\n" for r in recs))


def search_explanations(records: dict[tuple[int, str], Explanation], query: str, limit: int = 20) -> list[int]:
    """Features whose LLM explanation contains `query` (case-insensitive), best first: the
    query as a whole word before inside a word, then the better detection score, then earlier."""
    q = (query or "").strip().casefold()
    if not q or limit <= 0:
        return []
    word = re.compile(rf"(?<!\w){re.escape(q)}(?!\w)")
    hits = []
    for (f, method), rec in records.items():
        if method != "llm":
            continue
        text = rec.text.casefold()
        at = text.find(q)
        if at >= 0:
            hits.append((0 if word.search(text) else 1, -(rec.detection or 0.0), at, f))
    return [f for *_, f in sorted(hits)[:limit]]
