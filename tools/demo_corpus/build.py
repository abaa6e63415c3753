"""The build driver: fetch, sample every source up to its quota, shuffle, write.

`build_demo_corpus(out_dir, target_tokens, seed)` writes `out_dir/corpus.jsonl` (one
{"text", "source", "genre"} object per line, shuffled with the seed) and `out_dir/manifest.json`
(each source's status, quota and counts, the per-genre totals, and the corpus's sha256).

Each source gets a share of the token budget (tokens ~ chars / 4) and is sampled by whole units
(chapters, scenes, entries, functions) in a seeded random order until its quota is met; exact
repeats across sources are dropped. A source that cannot be fetched or read is skipped with a
warning, and the shares of the others are scaled up. Same seed and same machine: same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from explorer.files import replacing, write_json
from tools.demo_corpus.fetch import fetch
from tools.demo_corpus.sources import SOURCES, Source
from tools.demo_corpus.units import Context, Unit

log = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
CORPUS_FILE = "corpus.jsonl"
MANIFEST_FILE = "manifest.json"


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
                    roots[item] = fetch(item, cache)
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
    digest = _write_lines(corpus, (json.dumps(r, ensure_ascii=False) + "\n" for r in build.records))
    manifest = _manifest(list(reports.values()), target_tokens, seed, digest, len(build.records))
    write_json(out_dir / MANIFEST_FILE, manifest, indent=2)
    log.info("wrote %s: %d docs, ~%d tokens in %.0f s", corpus, len(build.records),
             manifest["total"]["tokens_est"], time.monotonic() - start)
    return corpus


def _write_lines(path: Path, lines: Iterable[str]) -> str:
    """Write the lines (UTF-8) atomically, streaming; return the sha256 of the bytes written."""
    sha = hashlib.sha256()
    with replacing(path) as tmp, open(tmp, "wb") as f:
        for line in lines:
            data = line.encode("utf-8")
            sha.update(data)
            f.write(data)
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
