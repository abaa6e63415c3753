"""Readers for code: the running Python's standard library and its tests (cut at top-level
def/class, R9 in shared/reference/offline-corpora.md), mutated programs with the tracebacks they
raise, and the tracebacks written into the stdlib's own doctests."""

from __future__ import annotations

import ast
import inspect
import math
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from tools.demo_corpus.bug_runs import format_bug_run, generate_bug_runs
from tools.demo_corpus.units import Context, Unit, long_units, merge_small, shuffled


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
    return merge_small(chunks)


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
            yield from long_units(*chunks[i])


def read_stdlib(ctx: Context) -> Iterator[Unit]:
    return _read_stdlib(ctx, tests=False, per_file=3)


def read_stdlib_tests(ctx: Context) -> Iterator[Unit]:
    return _read_stdlib(ctx, tests=True, per_file=2)


def read_bug_tracebacks(ctx: Context) -> Iterator[Unit]:
    """Mutated programs and the real tracebacks they raise (tools.demo_corpus.bug_runs)."""
    # ~700 chars a pair; ask for a few more than the quota needs, sampling stops at the quota.
    max_pairs = math.ceil(ctx.quota_chars / 600) + 20
    runs = generate_bug_runs(max_pairs=max_pairs, seed=ctx.seed)
    return [(f"bugs:{r.snippet}:{r.mutation}", format_bug_run(r)) for r in runs]


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
                text = inspect.cleandoc(node.value)  # like a docstring: the first line is not indented
                units += long_units(f"doctest:{path.relative_to(root).as_posix()}:{node.lineno}", text)
    return shuffled(units, ctx.rng)
