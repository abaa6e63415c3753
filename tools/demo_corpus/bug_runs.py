"""Running mutants: each runs in a fresh temporary folder and its real stdout/stderr are kept (no
traceback is ever written by hand). `generate_bug_runs` picks a balanced, seeded set of runs that
end in a traceback; `format_bug_run` gives the corpus text of one.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tools.demo_corpus.mutations import mutants
from tools.demo_corpus.snippets import Snippet, doctest_snippets, hand_snippets, stdlib_function_snippets

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0  # CPU seconds a program may use
WALL_FACTOR = 12  # wall-clock allowance, as a multiple of TIMEOUT_S, for a heavily shared machine
RUN_CHUNK = 200  # mutants run between checks for "enough pairs yet?"
# Addresses in default reprs change from run to run; a fixed stand-in keeps the build reproducible.
ADDRESS = re.compile(r"0x[0-9a-fA-F]{8,16}")
FIXED_ADDRESS = "0x7f3a2c1e4d90"
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")


@dataclass(frozen=True)
class BugRun:
    snippet: str
    mutation: str
    original: str
    code: str
    stdout: str
    stderr: str
    exception: str | None
    """Exception class name from the traceback's last line, e.g. "KeyError"; None if the run was silent."""


def run_program(code: str, timeout: float = TIMEOUT_S) -> tuple[str, str, int] | None:
    """Run `code` as main.py in a fresh temp folder; (stdout, stderr, returncode), or None when it
    used more than `timeout` CPU seconds (or hung for 12x that in wall time).

    Isolated like `python -I` (-S/-s: no site-packages, -P: no script folder on sys.path, a minimal
    environment), but without -E, which would also ignore PYTHONHASHSEED=0, which keeps the
    order of printed sets stable. Skipping `site` also makes each start 2-7x faster.
    """
    with tempfile.TemporaryDirectory(prefix="bug-") as tmp:
        Path(tmp, "main.py").write_text(code, encoding="utf-8")
        env = {"PYTHONHASHSEED": "0", "PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8",
               "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp}
        # The limit is CPU seconds (`ulimit -t`), not wall time, so how busy the machine is cannot
        # decide which mutants count as hanging; the wall-clock timeout only catches sleepers.
        cmd = ["/bin/sh", "-c", f'ulimit -t {math.ceil(timeout)} && exec "$0" -S -s -P main.py', sys.executable]
        try:
            proc = subprocess.run(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout * WALL_FACTOR, text=True, errors="replace")
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode < 0:  # killed by a signal (SIGXCPU at the CPU limit)
            return None
        clean = lambda s: ADDRESS.sub(FIXED_ADDRESS, s.replace(tmp + os.sep, "").replace(tmp, "."))  # noqa: E731
        return clean(proc.stdout), clean(proc.stderr), proc.returncode


def _exception_name(stderr: str) -> str | None:
    if "Traceback (most recent call last)" not in stderr:
        return None
    for line in reversed(stderr.strip().splitlines()):
        m = EXCEPTION_LINE.match(line)
        if m and not line.startswith(" "):
            return m.group(1).rsplit(".", 1)[-1]
    return None


def _parallel_map(fn, items: list, workers: int) -> Iterator:
    # Threads suffice: each call waits on a subprocess. map() keeps the input order (reproducible).
    with ThreadPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, items)


def clean_snippets(snippets: Iterable[Snippet], workers: int = 2) -> list[Snippet]:
    """Keep the snippets that run cleanly: exit 0, nothing on stderr, some stdout, no timeout."""
    snippets = list(snippets)
    kept = []
    for snip, result in zip(snippets, _parallel_map(lambda s: run_program(s.code), snippets, workers)):
        if result and result[2] == 0 and not result[1] and result[0].strip():
            kept.append(snip)
        else:
            log.debug("snippet %s does not run cleanly; skipped", snip.name)
    return kept


def generate_bug_runs(max_pairs: int | None = None, seed: int = 0, per_op: int = 3, max_share: float = 0.2,
                      max_per_snippet: int = 12, workers: int = 2, limit: int | None = None,
                      progress: bool = True, snippets: list[Snippet] | None = None) -> list[BugRun]:
    """Run mutants of every snippet and keep those that raise a real traceback.

    `snippets` defaults to the hand-written, stdlib-function and stdlib-doctest programs;
    `limit` caps how many are used (for quick tests). Each exception type is capped at
    `max_share` of the kept pairs and each snippet at `max_per_snippet`, so NameError and
    ImportError (the easiest bugs to make) do not dominate. Deterministic for a given seed.
    """
    from tqdm import tqdm

    rng = random.Random(seed)
    if snippets is None:
        snippets = hand_snippets() + stdlib_function_snippets(seed=seed) + doctest_snippets(seed=seed)
    snippets = list(snippets)
    rng.shuffle(snippets)
    if limit is not None:
        snippets = snippets[:limit]
    snippets = clean_snippets(snippets, workers)
    todo = [m for s in snippets for m in mutants(s, random.Random(f"{seed}/{s.name}"), per_op)]
    rng.shuffle(todo)

    runs: list[BugRun] = []
    with tqdm(total=len(todo), desc="buggy code", unit="run", leave=False, disable=not progress) as bar:
        # Fixed-size chunks in a seeded order: stop once a balanced set of max_pairs exists,
        # at the same point on every run.
        for i in range(0, len(todo), RUN_CHUNK):
            chunk = todo[i:i + RUN_CHUNK]
            for m, result in zip(chunk, _parallel_map(run_program, [m.code for m in chunk], workers)):
                if result is not None:
                    stdout, stderr, _ = result
                    runs.append(BugRun(m.snippet.name, m.mutation, m.snippet.code, m.code, stdout, stderr,
                                       _exception_name(stderr)))
            bar.update(len(chunk))
            if max_pairs is not None and len(balance(runs, max_pairs, max_share, max_per_snippet)) >= max_pairs:
                break
    return balance(runs, max_pairs, max_share, max_per_snippet)


def balance(runs: list[BugRun], max_pairs: int | None, max_share: float, max_per_snippet: int) -> list[BugRun]:
    """Keep runs with a traceback, in order, with no exception type above `max_share` of the result."""
    with_tb = [r for r in runs if r.exception]
    by_type = Counter(r.exception for r in with_tb)
    # Largest n such that capping every type at max_share * n still leaves n pairs.
    cap_for = lambda n: max(1, math.floor(max_share * n))  # noqa: E731
    n = len(with_tb) if max_pairs is None else min(max_pairs, len(with_tb))
    while n > 0 and sum(min(c, cap_for(n)) for c in by_type.values()) < n:
        n -= 1
    cap = cap_for(n)
    kept, per_type, per_snippet = [], Counter(), Counter()
    for r in with_tb:
        if len(kept) == n:
            break
        if per_type[r.exception] < cap and per_snippet[r.snippet] < max_per_snippet:
            kept.append(r)
            per_type[r.exception] += 1
            per_snippet[r.snippet] += 1
    return kept


def format_bug_run(run: BugRun) -> str:
    """The corpus text: the buggy program, a shell line, then what it printed."""
    return f"{run.code.rstrip()}\n\n$ python main.py\n{run.stdout}{run.stderr}".rstrip() + "\n"
