"""Python programs with small bugs, paired with the real tracebacks they raise.

A snippet is a short program that runs cleanly. A mutation operator finds places in its AST
(a variable to misspell, a `return` to drop, a dict key to typo, ...) and splices a change into the
original text, so comments and layout survive. Each mutant is run in a fresh temporary folder and
its real stdout/stderr are kept: no traceback is ever written by hand.

Public names: `Snippet`, `BugRun`, `hand_snippets`, `stdlib_function_snippets`,
`doctest_snippets`, `mutants`, `run_program`, `generate_bug_runs`, `format_bug_run`.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import keyword
import logging
import math
import os
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT_S = 5.0  # CPU seconds a program may use
WALL_FACTOR = 12  # wall-clock allowance, as a multiple of TIMEOUT_S, for a heavily shared machine
RUN_CHUNK = 200  # mutants run between checks for "enough pairs yet?"
# Addresses in default reprs change from run to run; a fixed stand-in keeps the build reproducible.
ADDRESS = re.compile(r"0x[0-9a-fA-F]{8,16}")
FIXED_ADDRESS = "0x7f3a2c1e4d90"
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(?::|$)")
BUILTIN_NAMES = frozenset(dir(builtins))

# Stdlib modules whose doctests are pure computation: no I/O, network, threads or GUI.
DOCTEST_MODULES = ("_pydecimal", "statistics", "difflib", "collections/__init__", "fractions",
                   "json/__init__", "typing", "enum", "datetime", "textwrap", "heapq", "ipaddress",
                   "pickletools", "http/cookies", "importlib/metadata/_text", "importlib/metadata/_itertools",
                   "importlib/metadata/_functools", "importlib/metadata/_collections", "json/encoder")
# _pydecimal is the pure-Python twin of decimal; programs import the public name.
MODULE_ALIASES = {"_pydecimal": "decimal"}


@dataclass(frozen=True)
class Snippet:
    name: str
    """Unique name, e.g. "hand/word_count" or "stddoc/statistics.median"."""
    code: str
    """A whole program that runs cleanly with `python main.py`."""


@dataclass(frozen=True)
class Mutant:
    snippet: Snippet
    mutation: str
    """The operator's name, e.g. "rename_var"."""
    code: str


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


# ---------------------------------------------------------------------------------------------
# Snippets


def hand_snippets() -> list[Snippet]:
    """The hand-written programs (HAND_SNIPPETS, at the end of this file)."""
    return [Snippet(f"hand/{name}", code.strip("\n") + "\n") for name, code in HAND_SNIPPETS.items()]


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _module_name(rel: str) -> str:
    name = rel.removesuffix("/__init__").replace("/", ".")
    return MODULE_ALIASES.get(name, name)


def _examples_to_code(examples: list[doctest.Example]) -> str | None:
    """Doctest examples as a program: expressions with expected output become print(...) calls."""
    lines = []
    for ex in examples:
        if ex.exc_msg is not None:  # expected-exception examples would fail the clean-run check
            return None
        src = ex.source.rstrip("\n")
        try:
            tree = ast.parse(src)
        except SyntaxError:
            return None
        if len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr) and ex.want.strip():
            expr = ast.get_source_segment(src, tree.body[0].value)
            tail = src[src.rindex(expr) + len(expr):]  # keeps a trailing "# comment"
            src = f"print({expr}){tail}"
        lines.append(src)
    return "\n".join(lines) + "\n" if lines else None


def _docstring_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            yield node


def doctest_snippets(per_module: int = 12, seed: int = 0,
                     modules: Iterable[str] = DOCTEST_MODULES) -> list[Snippet]:
    """Programs built from stdlib docstring examples, run against the real module.

    Each docstring becomes one program: `import module` plus `from module import <names used>`,
    then the examples. Up to `per_module` docstrings per module (seeded choice) so that decimal's
    500 examples do not crowd out the rest.
    """
    out = []
    rng = random.Random(seed)
    parser = doctest.DocTestParser()
    for rel in modules:
        path = _stdlib_root() / f"{rel}.py"
        if not path.is_file():
            continue
        module = _module_name(rel)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        public = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        public |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
        candidates = []
        for node in _docstring_nodes(tree):
            doc = ast.get_docstring(node, clean=True)
            if not doc or ">>>" not in doc:
                continue
            try:
                examples = parser.get_examples(doc)
            except ValueError:
                continue
            body = _examples_to_code(examples)
            if body is None or len(examples) < 2 and len(body) < 40:
                continue
            try:
                names = [n for n in ast.walk(ast.parse(body)) if isinstance(n, ast.Name)]
            except SyntaxError:
                continue
            # Names the examples take from the module (and do not define themselves).
            used = sorted({n.id for n in names} & public - {n.id for n in names if isinstance(n.ctx, ast.Store)})
            header = f"import {module}\n" + (f"from {module} import {', '.join(used)}\n" if used else "")
            label = getattr(node, "name", "module")
            candidates.append(Snippet(f"stddoc/{module}.{label}", header + "\n" + body))
        rng.shuffle(candidates)
        out.extend(candidates[:per_module])
    return out


def _free_names(func: ast.FunctionDef) -> set[str]:
    bound = {a.arg for a in ast.walk(func.args) if isinstance(a, ast.arg)} | {func.name}
    loads = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Name):
            (loads if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node is not func:
            bound.add(node.name)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return loads - bound - BUILTIN_NAMES


def stdlib_function_snippets(per_module: int = 6, seed: int = 0,
                             modules: Iterable[str] = DOCTEST_MODULES) -> list[Snippet]:
    """Self-contained stdlib functions (no free names beyond their module's imports), copied with
    their source and called through their own doctest examples."""
    out = []
    rng = random.Random(seed)
    parser = doctest.DocTestParser()
    for rel in modules:
        path = _stdlib_root() / f"{rel}.py"
        if not path.is_file():
            continue
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        imports = {}  # bound name -> the import statement's source
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not (
                    isinstance(node, ast.ImportFrom) and (node.level or node.module == "__future__")):
                for alias in node.names:
                    imports[(alias.asname or alias.name).split(".")[0]] = ast.get_source_segment(source, node)
        candidates = []
        for func in tree.body:
            if not isinstance(func, ast.FunctionDef) or func.decorator_list:
                continue
            doc = ast.get_docstring(func)
            free = _free_names(func)
            if not doc or ">>>" not in doc or not free <= set(imports):
                continue
            body = _examples_to_code(parser.get_examples(doc))
            if body is None:
                continue
            header = "".join(sorted({imports[n] + "\n" for n in free}))
            code = header + ("\n\n" if header else "") + ast.get_source_segment(source, func) + "\n\n\n" + body
            candidates.append(Snippet(f"stdfn/{_module_name(rel)}.{func.name}", code))
        rng.shuffle(candidates)
        out.extend(candidates[:per_module])
    return out


# ---------------------------------------------------------------------------------------------
# Mutations: each operator returns candidate edits; one mutant applies one edit.

Edit = tuple[int, int, str]  # (start byte, end byte, replacement) in the UTF-8 source


class _Source:
    """Maps AST (line, column) positions, which count UTF-8 bytes, to byte offsets."""

    def __init__(self, code: str):
        self.code = code
        self.raw = code.encode("utf-8")
        self.line_start = [0]
        for line in self.raw.splitlines(keepends=True):
            self.line_start.append(self.line_start[-1] + len(line))
        self.tree = ast.parse(code)
        self.names = {n.id for n in ast.walk(self.tree) if isinstance(n, ast.Name)}
        self.names |= {a.arg for a in ast.walk(self.tree) if isinstance(a, ast.arg)}
        self.names |= {n.name for n in ast.walk(self.tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        self.modules = {(a.asname or a.name).split(".")[0] for n in ast.walk(self.tree)
                        if isinstance(n, ast.Import) for a in n.names}
        self.imported = {a.asname or a.name for n in ast.walk(self.tree)
                         if isinstance(n, ast.ImportFrom) for a in n.names}

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.line_start[node.lineno - 1] + node.col_offset,
                self.line_start[node.end_lineno - 1] + node.end_col_offset)

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.raw[start:end].decode("utf-8")

    def replace(self, node: ast.AST, new: str) -> Edit:
        return (*self.span(node), new)

    def apply(self, edit: Edit) -> str:
        start, end, new = edit
        return (self.raw[:start] + new.encode("utf-8") + self.raw[end:]).decode("utf-8")


def _typo(name: str, rng: random.Random, taken: set[str]) -> str | None:
    """A plausible misspelling: a dropped, doubled or swapped letter (never the first one)."""
    for _ in range(10):
        if len(name) < 3:
            return None
        i = rng.randrange(1, len(name))
        kind = rng.choice(("drop", "double", "swap"))
        if kind == "drop":
            new = name[:i] + name[i + 1:]
        elif kind == "double":
            new = name[:i] + name[i] + name[i:]
        else:
            i = min(i, len(name) - 2)
            new = name[:i] + name[i + 1] + name[i] + name[i + 2:]
        if new != name and new.isidentifier() and not keyword.iskeyword(new) and new not in taken \
                and new not in BUILTIN_NAMES:
            return new
    return None


def _calls(src: _Source, name: str | None = None) -> Iterator[ast.Call]:
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Call) and (name is None or isinstance(node.func, ast.Name) and node.func.id == name):
            yield node


def op_rename_var(src: _Source, rng: random.Random) -> list[Edit]:
    assigned = {n.id for n in ast.walk(src.tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    assigned |= {a.arg for a in ast.walk(src.tree) if isinstance(a, ast.arg)}
    edits = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in assigned:
            new = _typo(node.id, rng, src.names)
            if new:
                edits.append(src.replace(node, new))
    return edits


def op_off_by_one(src: _Source, rng: random.Random) -> list[Edit]:
    edits = []
    for call in _calls(src, "range"):
        if len(call.args) == 1 and isinstance(call.args[0], ast.Call) and \
                isinstance(call.args[0].func, ast.Name) and call.args[0].func.id == "len":
            edits.append(src.replace(call.args[0], src.text(call.args[0]) + " + 1"))
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            index = node.slice
            if isinstance(index, ast.Name) or isinstance(index, ast.BinOp) and isinstance(index.op, ast.Sub):
                edits.append(src.replace(index, f"{src.text(index)} + 1"))
            elif isinstance(index, ast.UnaryOp) and isinstance(index.op, ast.USub) and \
                    isinstance(index.operand, ast.Constant) and index.operand.value == 1:
                edits.append(src.replace(index, f"len({src.text(node.value)})"))
    return edits


def op_drop_return(src: _Source, rng: random.Random) -> list[Edit]:
    return [src.replace(n, src.text(n.value)) for n in ast.walk(src.tree)
            if isinstance(n, ast.Return) and n.value is not None and not isinstance(n.value, ast.Constant)]


def op_sort_none(src: _Source, rng: random.Random) -> list[Edit]:
    return [src.replace(c, f"{src.text(c.args[0])}.sort()") for c in _calls(src, "sorted")
            if len(c.args) == 1 and not c.keywords]


def op_none_value(src: _Source, rng: random.Random) -> list[Edit]:
    return [src.replace(n.value, "None") for n in ast.walk(src.tree)
            if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)]


def op_drop_conversion(src: _Source, rng: random.Random) -> list[Edit]:
    return [src.replace(c, src.text(c.args[0])) for name in ("str", "int", "float", "list")
            for c in _calls(src, name) if len(c.args) == 1 and not c.keywords]


def op_num_to_str(src: _Source, rng: random.Random) -> list[Edit]:
    edits = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float) and node.value not in (0, 1):
            edits.append(src.replace(node, repr(src.text(node))))
    return edits


def op_zero_div(src: _Source, rng: random.Random) -> list[Edit]:
    return [src.replace(n.right, "0") for n in ast.walk(src.tree)
            if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Div, ast.FloorDiv, ast.Mod))
            and not (isinstance(n.left, ast.Constant) and isinstance(n.left.value, str))]


def op_empty_input(src: _Source, rng: random.Random) -> list[Edit]:
    edits = [src.replace(n, "[]") for n in ast.walk(src.tree) if isinstance(n, ast.List) and n.elts
             and isinstance(n.ctx, ast.Load)]
    edits += [src.replace(n, "{}") for n in ast.walk(src.tree) if isinstance(n, ast.Dict) and n.keys]
    edits += [src.replace(n, '""') for n in ast.walk(src.tree)
              if isinstance(n, ast.Constant) and isinstance(n.value, str) and len(n.value) > 8
              and "\n" not in src.text(n) and not src.text(n).startswith(("f", "b", "r"))]
    return edits


def op_missing_key(src: _Source, rng: random.Random) -> list[Edit]:
    edits = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
            new = _typo(node.slice.value, rng, set())
            if new:
                edits.append(src.replace(node.slice, repr(new)))
    return edits


def op_bad_import(src: _Source, rng: random.Random) -> list[Edit]:
    edits = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                new = _typo(alias.name, rng, set())
                if new and "." not in alias.name:
                    new_names = ", ".join((new if a is alias else a.name) + (f" as {a.asname}" if a.asname else "")
                                          for a in node.names)
                    # `import jsno` breaks every later `json.` too, so keep the old name bound.
                    alias_part = "" if alias.asname or len(node.names) > 1 else f" as {alias.name}"
                    edits.append(src.replace(node, f"import {new_names}{alias_part}"))
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            alias = rng.choice(node.names)
            new = _typo(alias.name, rng, set())
            if new:
                names = ", ".join((new if a is alias else a.name) + (f" as {a.asname}" if a.asname else "")
                                  for a in node.names)
                edits.append(src.replace(node, f"from {node.module} import {names}"))
    return edits


def op_attr_typo(src: _Source, rng: random.Random) -> list[Edit]:
    edits = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load) and not node.attr.startswith("_"):
            new = _typo(node.attr, rng, set())
            if new:
                edits.append(src.replace(node, f"{src.text(node.value)}.{new}"))
    return edits


def op_missing_arg(src: _Source, rng: random.Random) -> list[Edit]:
    edits = []
    for call in _calls(src):
        if call.args and not call.keywords and not any(isinstance(a, ast.Starred) for a in call.args) \
                and not (isinstance(call.func, ast.Name) and call.func.id in ("print", "len", "str", "repr")):
            args = ", ".join(src.text(a) for a in call.args[:-1])
            edits.append(src.replace(call, f"{src.text(call.func)}({args})"))
    return edits


def op_swap_args(src: _Source, rng: random.Random) -> list[Edit]:
    edits = []
    for call in _calls(src):
        if len(call.args) >= 2 and not any(isinstance(a, ast.Starred) for a in call.args) and \
                not (isinstance(call.func, ast.Name) and call.func.id == "print"):
            a, b = call.args[0], call.args[1]
            if src.text(a) != src.text(b):
                rest = [src.text(x) for x in call.args[2:]] + [src.text(k) for k in call.keywords]
                args = ", ".join([src.text(b), src.text(a), *rest])
                edits.append(src.replace(call, f"{src.text(call.func)}({args})"))
    return edits


def op_unpack_count(src: _Source, rng: random.Random) -> list[Edit]:
    """`a, b = f()` -> `a, b, c = f()`: a ValueError at the unpacking."""
    edits = []
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Tuple) and \
                all(isinstance(e, ast.Name) for e in node.targets[0].elts):
            target = node.targets[0]
            extra = _typo("extra", rng, src.names) or "rest"
            edits.append(src.replace(target, f"{src.text(target)}, {extra}"))
            if len(target.elts) > 2:
                edits.append(src.replace(target, ", ".join(src.text(e) for e in target.elts[:-1])))
    return edits


OPERATORS: dict[str, Callable[[_Source, random.Random], list[Edit]]] = {
    "rename_var": op_rename_var, "off_by_one": op_off_by_one, "drop_return": op_drop_return,
    "sort_none": op_sort_none, "none_value": op_none_value, "drop_conversion": op_drop_conversion,
    "num_to_str": op_num_to_str, "zero_div": op_zero_div, "empty_input": op_empty_input,
    "missing_key": op_missing_key, "bad_import": op_bad_import, "attr_typo": op_attr_typo,
    "missing_arg": op_missing_arg, "swap_args": op_swap_args, "unpack_count": op_unpack_count,
}


def mutants(snippet: Snippet, rng: random.Random, per_op: int = 3) -> list[Mutant]:
    """Up to `per_op` distinct mutants per operator, each changing one place in the snippet."""
    src = _Source(snippet.code)
    out, seen = [], {snippet.code}
    for name, op in OPERATORS.items():
        edits = sorted(set(op(src, rng)))
        rng.shuffle(edits)
        taken = 0
        for edit in edits:
            code = src.apply(edit)
            if code in seen:
                continue
            try:
                ast.parse(code)
            except SyntaxError:
                continue
            seen.add(code)
            out.append(Mutant(snippet, name, code))
            taken += 1
            if taken == per_op:
                break
    return out


# ---------------------------------------------------------------------------------------------
# Running


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


# ---------------------------------------------------------------------------------------------
# Hand-written programs: everyday tasks, deterministic output, only the standard library.

HAND_SNIPPETS: dict[str, str] = {
    "word_count": r'''
from collections import Counter

TEXT = """the quick brown fox jumps over the lazy dog
the dog barks and the fox runs away"""


def top_words(text, n):
    counts = Counter(text.split())
    return counts.most_common(n)


for word, count in top_words(TEXT, 3):
    print(f"{word:>6} {count}")
''',
    "temperature": r'''
class Temperature:
    def __init__(self, kelvin):
        self.kelvin = kelvin

    @property
    def celsius(self):
        return self.kelvin - 273.15

    def describe(self):
        return "It is " + str(round(self.celsius, 1)) + " degrees"


print(Temperature(300).describe())
''',
    "invoice": r'''
import json

order = json.loads('{"customer": "Ada", "items": ['
                   '{"name": "pen", "price": 1.5, "qty": 4}, {"name": "book", "price": 12.0, "qty": 1}]}')


def line_total(item):
    return item["price"] * item["qty"]


def invoice(order):
    lines = [f"{item['name']:<6}{line_total(item):>8.2f}" for item in order["items"]]
    total = sum(line_total(item) for item in order["items"])
    return "\n".join(lines + [f"{'total':<6}{total:>8.2f}"])


print("Invoice for", order["customer"])
print(invoice(order))
''',
    "moving_average": r'''
def moving_average(values, window):
    averages = []
    for i in range(len(values) - window + 1):
        chunk = values[i:i + window]
        averages.append(sum(chunk) / window)
    return averages


prices = [10, 12, 13, 12, 15, 18, 17]
print(moving_average(prices, 3))
''',
    "grade_report": r'''
import statistics

scores = {"alice": [88, 92, 79], "bob": [65, 70, 81], "carol": [95, 98, 91]}


def report(scores):
    for name in sorted(scores):
        marks = scores[name]
        mean = statistics.mean(marks)
        print(f"{name:<6} mean={mean:.1f} best={max(marks)}")
    best = max(scores, key=lambda n: statistics.mean(scores[n]))
    print("top student:", best)


report(scores)
''',
    "parse_config": r'''
CONFIG = """
# server settings
host = example.org
port = 8080
debug = false
"""


def parse(text):
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, value = line.split("=")
        settings[key.strip()] = value.strip()
    return settings


settings = parse(CONFIG)
port = int(settings["port"])
print(f"connecting to {settings['host']}:{port + 1}")
''',
    "stack_calc": r'''
def evaluate(expression):
    """Evaluate a postfix expression such as '3 4 + 2 *'."""
    stack = []
    for token in expression.split():
        if token in "+-*/":
            right = stack.pop()
            left = stack.pop()
            if token == "+":
                stack.append(left + right)
            elif token == "-":
                stack.append(left - right)
            elif token == "*":
                stack.append(left * right)
            else:
                stack.append(left / right)
        else:
            stack.append(float(token))
    return stack[0]


print(evaluate("3 4 + 2 *"))
print(evaluate("10 2 8 * + 3 -"))
''',
    "bank_account": r'''
class Account:
    def __init__(self, owner, balance=0):
        self.owner = owner
        self.balance = balance
        self.history = []

    def deposit(self, amount):
        self.balance += amount
        self.history.append(("deposit", amount))

    def withdraw(self, amount):
        if amount > self.balance:
            raise ValueError("insufficient funds")
        self.balance -= amount
        self.history.append(("withdraw", amount))


acct = Account("Grace", 100)
acct.deposit(50)
acct.withdraw(30)
for kind, amount in acct.history:
    print(kind, amount)
print("balance:", acct.balance)
''',
    "csv_summary": r'''
import csv
import io

DATA = """city,population,area
Lyon,513275,47.87
Nice,342669,71.92
Lille,232741,34.83
"""

rows = list(csv.DictReader(io.StringIO(DATA)))
for row in rows:
    density = int(row["population"]) / float(row["area"])
    print(f"{row['city']:<6} {density:,.0f} people/km2")
largest = max(rows, key=lambda r: int(r["population"]))
print("largest:", largest["city"])
''',
    "date_diff": r'''
from datetime import date, timedelta

start = date(2024, 1, 15)
deadline = start + timedelta(days=45)


def weekdays_between(a, b):
    days = 0
    current = a
    while current < b:
        if current.weekday() < 5:
            days += 1
        current += timedelta(days=1)
    return days


print("deadline:", deadline.isoformat())
print("working days:", weekdays_between(start, deadline))
''',
    "matrix": r'''
def transpose(matrix):
    return [[row[i] for row in matrix] for i in range(len(matrix[0]))]


def multiply(a, b):
    cols = transpose(b)
    return [[sum(x * y for x, y in zip(row, col)) for col in cols] for row in a]


a = [[1, 2], [3, 4]]
b = [[5, 6], [7, 8]]
for row in multiply(a, b):
    print(row)
''',
    "fibonacci_memo": r'''
from functools import lru_cache


@lru_cache(maxsize=None)
def fib(n):
    if n < 2:
        return n
    return fib(n - 1) + fib(n - 2)


sequence = [fib(i) for i in range(15)]
print(sequence)
print("ratio:", sequence[-1] / sequence[-2])
''',
    "inventory": r'''
inventory = {"apples": 12, "pears": 4, "plums": 0}
orders = [("apples", 5), ("pears", 2), ("apples", 3)]


def fulfil(inventory, orders):
    shipped = []
    for fruit, qty in orders:
        if inventory[fruit] >= qty:
            inventory[fruit] -= qty
            shipped.append(fruit)
    return shipped


print("shipped:", fulfil(inventory, orders))
print("left:", inventory)
''',
    "text_wrap": r'''
import textwrap

PARAGRAPH = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
             "it was the age of foolishness, it was the epoch of belief.")


def boxed(text, width):
    lines = textwrap.wrap(text, width)
    border = "+" + "-" * (width + 2) + "+"
    body = ["| " + line.ljust(width) + " |" for line in lines]
    return "\n".join([border, *body, border])


print(boxed(PARAGRAPH, 30))
''',
    "dataclass_shapes": r'''
import math
from dataclasses import dataclass


@dataclass
class Circle:
    radius: float

    def area(self):
        return math.pi * self.radius ** 2


@dataclass
class Rect:
    width: float
    height: float

    def area(self):
        return self.width * self.height


shapes = [Circle(1.5), Rect(2, 3), Circle(0.5)]
total = sum(shape.area() for shape in shapes)
print(f"{len(shapes)} shapes, total area {total:.2f}")
print("largest:", max(shapes, key=lambda s: s.area()))
''',
    "regex_log": r'''
import re

LOG = """2024-03-01 12:00:01 ERROR disk full on /dev/sda1
2024-03-01 12:00:05 INFO backup started
2024-03-01 12:01:17 ERROR timeout talking to db-2
2024-03-01 12:02:00 WARNING high load: 7.5"""

PATTERN = re.compile(r"(\S+) (\S+) (\w+) (.*)")


def errors(log):
    found = []
    for line in log.splitlines():
        match = PATTERN.match(line)
        if match.group(3) == "ERROR":
            found.append(match.group(4))
    return found


for message in errors(LOG):
    print("!", message)
''',
    "queue_sim": r'''
from collections import deque

arrivals = [("ann", 3), ("ben", 1), ("cat", 4), ("dan", 2)]


def simulate(arrivals):
    queue = deque(arrivals)
    clock = 0
    finished = {}
    while queue:
        name, work = queue.popleft()
        clock += work
        finished[name] = clock
    return finished


times = simulate(arrivals)
print(times)
print("average wait:", sum(times.values()) / len(times))
''',
    "binary_search": r'''
def binary_search(items, target):
    low, high = 0, len(items) - 1
    while low <= high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid + 1
        else:
            high = mid - 1
    return -1


numbers = [2, 3, 5, 7, 11, 13, 17, 19, 23]
for target in (7, 23, 4):
    print(target, "->", binary_search(numbers, target))
''',
    "roman": r'''
VALUES = {"M": 1000, "D": 500, "C": 100, "L": 50, "X": 10, "V": 5, "I": 1}


def from_roman(numeral):
    total = 0
    for i, char in enumerate(numeral):
        value = VALUES[char]
        if i + 1 < len(numeral) and VALUES[numeral[i + 1]] > value:
            total -= value
        else:
            total += value
    return total


for numeral in ["XIV", "MCMXC", "CDXLIV"]:
    print(numeral, from_roman(numeral))
''',
    "caesar": r'''
import string

ALPHABET = string.ascii_lowercase


def shift(text, key):
    out = []
    for char in text.lower():
        if char in ALPHABET:
            index = (ALPHABET.index(char) + key) % len(ALPHABET)
            out.append(ALPHABET[index])
        else:
            out.append(char)
    return "".join(out)


secret = shift("attack at dawn", 3)
print(secret)
print(shift(secret, -3))
''',
    "student_ranking": r'''
students = [
    {"name": "Lin", "grade": 91, "age": 17},
    {"name": "Omar", "grade": 85, "age": 16},
    {"name": "Priya", "grade": 91, "age": 16},
]


def rank(students):
    ordered = sorted(students, key=lambda s: (-s["grade"], s["name"]))
    return [(position + 1, s["name"]) for position, s in enumerate(ordered)]


for position, name in rank(students):
    print(position, name)
''',
    "path_stats": r'''
from pathlib import Path

Path("notes").mkdir()
Path("notes/a.txt").write_text("alpha\nbeta\n")
Path("notes/b.txt").write_text("gamma\n")
Path("notes/c.md").write_text("# title\n\nbody\n")


def line_counts(folder, suffix):
    counts = {}
    for path in sorted(Path(folder).glob("*" + suffix)):
        counts[path.name] = len(path.read_text().splitlines())
    return counts


print(line_counts("notes", ".txt"))
print(line_counts("notes", ".md"))
''',
    "json_roundtrip": r'''
import json

settings = {"theme": "dark", "font_size": 14, "plugins": ["git", "lint"]}
text = json.dumps(settings, indent=2, sort_keys=True)
print(text)

loaded = json.loads(text)
loaded["font_size"] += 2
print("font size now", loaded["font_size"])
print("plugins:", ", ".join(loaded["plugins"]))
''',
    "prime_sieve": r'''
def primes_below(limit):
    is_prime = [True] * limit
    is_prime[0] = is_prime[1] = False
    for n in range(2, int(limit ** 0.5) + 1):
        if is_prime[n]:
            for multiple in range(n * n, limit, n):
                is_prime[multiple] = False
    return [n for n in range(limit) if is_prime[n]]


primes = primes_below(50)
print(primes)
print("count:", len(primes), "largest:", primes[-1])
''',
    "recipe_scale": r'''
from fractions import Fraction

recipe = {"flour": Fraction(3, 2), "sugar": Fraction(1, 3), "eggs": Fraction(2)}


def scale(recipe, servings, base=4):
    factor = Fraction(servings, base)
    return {item: amount * factor for item, amount in recipe.items()}


for item, amount in scale(recipe, 6).items():
    print(f"{item}: {amount}")
''',
    "enum_traffic": r'''
from enum import Enum


class Light(Enum):
    RED = 1
    GREEN = 2
    YELLOW = 3


NEXT = {Light.RED: Light.GREEN, Light.GREEN: Light.YELLOW, Light.YELLOW: Light.RED}


def cycle(start, steps):
    state = start
    seen = [state.name]
    for _ in range(steps):
        state = NEXT[state]
        seen.append(state.name)
    return seen


print(" -> ".join(cycle(Light.RED, 4)))
print(Light(2))
''',
    "itertools_pairs": r'''
import itertools

teams = ["lions", "tigers", "bears", "wolves"]
fixtures = list(itertools.combinations(teams, 2))
print(len(fixtures), "matches")
for round_number, (home, away) in enumerate(fixtures[:3], start=1):
    print(f"round {round_number}: {home} v {away}")

groups = itertools.groupby(sorted(teams, key=len), key=len)
for size, names in groups:
    print(size, list(names))
''',
    "heap_tasks": r'''
import heapq

tasks = [(3, "write report"), (1, "fix bug"), (2, "review PR"), (1, "deploy")]


def schedule(tasks):
    heap = list(tasks)
    heapq.heapify(heap)
    order = []
    while heap:
        priority, name = heapq.heappop(heap)
        order.append(f"[{priority}] {name}")
    return order


print("\n".join(schedule(tasks)))
''',
    "decimal_money": r'''
from decimal import Decimal, ROUND_HALF_UP

prices = ["19.99", "5.01", "0.10"]
TAX = Decimal("0.2")


def with_tax(price):
    amount = Decimal(price) * (1 + TAX)
    return amount.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


totals = [with_tax(p) for p in prices]
print(totals)
print("sum:", sum(totals))
''',
    "word_lengths": r'''
def histogram(words):
    lengths = {}
    for word in words:
        lengths.setdefault(len(word), []).append(word)
    return lengths


words = "a journey of a thousand miles begins with a single step".split()
hist = histogram(words)
for length in sorted(hist):
    print(length, "#" * len(hist[length]), hist[length])
''',
    "linked_list": r'''
class Node:
    def __init__(self, value, next=None):
        self.value = value
        self.next = next


def build(values):
    head = None
    for value in reversed(values):
        head = Node(value, head)
    return head


def to_list(head):
    out = []
    while head is not None:
        out.append(head.value)
        head = head.next
    return out


def reverse(head):
    previous = None
    while head:
        head.next, previous, head = previous, head, head.next
    return previous


print(to_list(reverse(build([1, 2, 3, 4]))))
''',
    "string_stats": r'''
def stats(sentence):
    words = sentence.split()
    longest = max(words, key=len)
    vowels = sum(1 for ch in sentence.lower() if ch in "aeiou")
    return {"words": len(words), "longest": longest, "vowels": vowels,
            "capitalised": sentence.title()}


for key, value in stats("python makes simple things simple").items():
    print(f"{key}: {value}")
''',
    "grid_neighbours": r'''
GRID = [
    "..#.",
    ".##.",
    "....",
]


def neighbours(grid, row, col):
    count = 0
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            if dr == dc == 0:
                continue
            r, c = row + dr, col + dc
            if 0 <= r < len(grid) and 0 <= c < len(grid[0]) and grid[r][c] == "#":
                count += 1
    return count


for row in range(len(GRID)):
    print("".join(str(neighbours(GRID, row, col)) for col in range(len(GRID[0]))))
''',
    "url_parts": r'''
from urllib.parse import urlparse, parse_qs

url = "https://shop.example.com/search?q=red+shoes&size=42&page=2"
parts = urlparse(url)
query = parse_qs(parts.query)

print("host:", parts.netloc)
print("path:", parts.path)
print("search for:", query["q"][0])
print("next page:", int(query["page"][0]) + 1)
''',
    "default_dict_graph": r'''
from collections import defaultdict

edges = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]
graph = defaultdict(list)
for src, dst in edges:
    graph[src].append(dst)


def paths(graph, start, goal, path=()):
    path = path + (start,)
    if start == goal:
        return [path]
    found = []
    for nxt in graph[start]:
        found.extend(paths(graph, nxt, goal, path))
    return found


for p in paths(graph, "a", "e"):
    print(" -> ".join(p))
''',
    "timesheet": r'''
from datetime import datetime

entries = [("09:00", "12:30"), ("13:15", "17:45"), ("18:00", "19:10")]
FMT = "%H:%M"


def hours(entries):
    total = 0
    for start, end in entries:
        delta = datetime.strptime(end, FMT) - datetime.strptime(start, FMT)
        total += delta.total_seconds() / 3600
    return total


worked = hours(entries)
print(f"worked {worked:.2f} h, overtime {max(0, worked - 8):.2f} h")
''',
    "vote_count": r'''
ballots = ["green", "blue", "green", "red", "blue", "green", "blue", "blue"]


def tally(ballots):
    counts = {}
    for choice in ballots:
        counts[choice] = counts.get(choice, 0) + 1
    return counts


def winner(counts):
    ranked = sorted(counts.items(), key=lambda item: item[1], reverse=True)
    name, votes = ranked[0]
    share = votes / sum(counts.values())
    return name, share


counts = tally(ballots)
name, share = winner(counts)
print(counts)
print(f"{name} wins with {share:.0%}")
''',
    "shopping_cart": r'''
class Cart:
    def __init__(self):
        self.items = {}

    def add(self, name, price, qty=1):
        current = self.items.get(name, (price, 0))
        self.items[name] = (price, current[1] + qty)

    def total(self):
        return sum(price * qty for price, qty in self.items.values())

    def receipt(self):
        lines = [f"{name} x{qty}: {price * qty:.2f}" for name, (price, qty) in sorted(self.items.items())]
        return "\n".join(lines) + f"\nTOTAL {self.total():.2f}"


cart = Cart()
cart.add("tea", 3.5)
cart.add("milk", 1.2, 2)
cart.add("tea", 3.5)
print(cart.receipt())
''',
    "unit_convert": r'''
FACTORS = {"km": 1000.0, "m": 1.0, "cm": 0.01, "mile": 1609.344}


def convert(value, src, dst):
    metres = value * FACTORS[src]
    return metres / FACTORS[dst]


for value, src, dst in [(5, "km", "mile"), (120, "cm", "m"), (1, "mile", "km")]:
    print(f"{value} {src} = {convert(value, src, dst):.3f} {dst}")
''',
    "palindromes": r'''
def is_palindrome(text):
    letters = [ch.lower() for ch in text if ch.isalnum()]
    return letters == letters[::-1]


phrases = ["A man, a plan, a canal: Panama", "Hello, world", "Was it a car or a cat I saw?"]
for phrase in phrases:
    verdict = "yes" if is_palindrome(phrase) else "no"
    print(f"{verdict:>3}  {phrase}")
''',
    "run_length": r'''
def encode(text):
    if not text:
        return []
    runs = [[text[0], 1]]
    for char in text[1:]:
        if char == runs[-1][0]:
            runs[-1][1] += 1
        else:
            runs.append([char, 1])
    return runs


def decode(runs):
    return "".join(char * count for char, count in runs)


runs = encode("aaabccddddd")
print(runs)
print(decode(runs))
''',
    "named_tuple_points": r'''
import math
from collections import namedtuple

Point = namedtuple("Point", ["x", "y"])


def distance(p, q):
    return math.hypot(p.x - q.x, p.y - q.y)


def perimeter(points):
    return sum(distance(points[i], points[i - 1]) for i in range(len(points)))


triangle = [Point(0, 0), Point(3, 0), Point(3, 4)]
print(triangle[2])
print("perimeter:", perimeter(triangle))
''',
    "flatten": r'''
def flatten(nested):
    flat = []
    for item in nested:
        if isinstance(item, list):
            flat.extend(flatten(item))
        else:
            flat.append(item)
    return flat


data = [1, [2, 3, [4, 5]], [], [[6]], 7]
print(flatten(data))
print("sum:", sum(flatten(data)))
''',
    "retry": r'''
import itertools

# The server is down for the first three calls (no randomness: every run prints the same).
outcomes = itertools.chain([False, False, False], itertools.repeat(True))


def flaky_fetch(url):
    if not next(outcomes):
        raise ConnectionError(f"could not reach {url}")
    return f"<html>{url}</html>"


def fetch_with_retry(url, attempts=5):
    for attempt in range(1, attempts + 1):
        try:
            return flaky_fetch(url), attempt
        except ConnectionError as error:
            print(f"attempt {attempt} failed: {error}")
    raise RuntimeError("giving up")


page, tries = fetch_with_retry("example.org")
print(f"got {len(page)} bytes after {tries} tries")
''',
    "matrix_stats": r'''
import statistics

readings = [
    [21.5, 22.0, 23.1],
    [19.8, 20.4, 21.0],
    [25.2, 24.8, 26.1],
]


def column(matrix, index):
    return [row[index] for row in matrix]


for index, label in enumerate(["morning", "noon", "evening"]):
    values = column(readings, index)
    print(f"{label:<8} median={statistics.median(values):.1f} stdev={statistics.stdev(values):.2f}")
''',
    "tokenizer": r'''
import re

TOKEN = re.compile(r"\s*(?:(\d+\.?\d*)|(.))")


def tokenize(expression):
    tokens = []
    for number, operator in TOKEN.findall(expression):
        if number:
            tokens.append(("NUM", float(number)))
        else:
            tokens.append(("OP", operator))
    return tokens


for kind, value in tokenize("3.5 + 4 * (2 - 1)"):
    print(kind, value)
''',
    "age_groups": r'''
people = [("Ana", 34), ("Ben", 17), ("Chloe", 65), ("Dev", 42), ("Eve", 12)]


def group(age):
    if age < 18:
        return "minor"
    if age < 65:
        return "adult"
    return "senior"


groups = {}
for name, age in people:
    groups.setdefault(group(age), []).append(name)

for label in ("minor", "adult", "senior"):
    print(f"{label}: {', '.join(groups[label])}")
''',
    "checksum": r'''
def luhn_valid(number):
    digits = [int(d) for d in str(number)]
    odd = digits[-1::-2]
    even = digits[-2::-2]
    total = sum(odd)
    for digit in even:
        total += sum(divmod(digit * 2, 10))
    return total % 10 == 0


for card in (4539578763621486, 1234567812345678, 79927398713):
    print(card, "valid" if luhn_valid(card) else "invalid")
''',
    "typed_dict_users": r'''
from typing import TypedDict


class User(TypedDict):
    name: str
    email: str
    admin: bool


def describe(user: User) -> str:
    role = "admin" if user["admin"] else "member"
    domain = user["email"].split("@")[1]
    return f"{user['name']} ({role}) at {domain}"


users: list[User] = [
    {"name": "kim", "email": "kim@example.com", "admin": True},
    {"name": "lee", "email": "lee@mail.org", "admin": False},
]
for user in users:
    print(describe(user))
''',
    "chunks": r'''
def chunked(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def pages(items, size):
    chunks = chunked(items, size)
    for number, chunk in enumerate(chunks, start=1):
        yield f"page {number}/{len(chunks)}: {chunk}"


for line in pages(list(range(1, 11)), 4):
    print(line)
''',
    "bits": r'''
def to_binary(n, width=8):
    return format(n, f"0{width}b")


def count_set_bits(n):
    count = 0
    while n:
        n &= n - 1
        count += 1
    return count


for value in (5, 42, 255):
    print(value, to_binary(value), count_set_bits(value))
print("mask:", to_binary(0b1010 ^ 0b0110, 4))
''',
    "contact_book": r'''
contacts = {
    "alice": {"phone": "555-0101", "city": "Paris"},
    "bob": {"phone": "555-0199", "city": "Oslo"},
}


def lookup(name, field):
    return contacts[name.lower()][field]


def add(name, phone, city):
    contacts[name.lower()] = {"phone": phone, "city": city}


add("Carol", "555-0150", "Rome")
for name in ("Alice", "carol"):
    print(name, lookup(name, "phone"), lookup(name, "city"))
print(len(contacts), "contacts")
''',
    "gcd_lcm": r'''
def gcd(a, b):
    while b:
        a, b = b, a % b
    return a


def lcm(a, b):
    return a * b // gcd(a, b)


pairs = [(12, 18), (7, 5), (100, 75)]
for a, b in pairs:
    print(f"gcd({a}, {b}) = {gcd(a, b)}, lcm = {lcm(a, b)}")
''',
    "histogram_bins": r'''
import math

samples = [2.3, 4.1, 4.8, 5.0, 6.7, 7.2, 7.9, 8.8, 9.5, 1.2]


def bins(values, width):
    counts = [0] * math.ceil(max(values) / width)
    for value in values:
        counts[int(value // width)] += 1
    return counts


for index, count in enumerate(bins(samples, 2.5)):
    low = index * 2.5
    print(f"{low:4.1f}-{low + 2.5:4.1f} {'*' * count}")
''',
    "anagram_groups": r'''
from collections import defaultdict

words = ["listen", "silent", "enlist", "google", "gooegl", "cat", "act", "tac", "dog"]


def group_anagrams(words):
    groups = defaultdict(list)
    for word in words:
        key = "".join(sorted(word))
        groups[key].append(word)
    return [group for group in groups.values() if len(group) > 1]


for group in group_anagrams(words):
    print(sorted(group))
''',
    "state_machine": r'''
TRANSITIONS = {
    ("locked", "coin"): "unlocked",
    ("unlocked", "push"): "locked",
    ("locked", "push"): "locked",
    ("unlocked", "coin"): "unlocked",
}


def run(events, state="locked"):
    trace = [state]
    for event in events:
        state = TRANSITIONS[(state, event)]
        trace.append(state)
    return trace


print(run(["coin", "push", "push", "coin", "coin"]))
''',
    "struct_pack": r'''
import struct

record = struct.pack("<HIf", 7, 123456, 2.5)
print(len(record), "bytes:", record.hex())

ident, count, ratio = struct.unpack("<HIf", record)
print(f"id={ident} count={count} ratio={ratio}")
print("checksum:", sum(record) % 256)
''',
    "hashing": r'''
import hashlib

files = {"a.txt": b"hello world\n", "b.txt": b"hello world\n", "c.txt": b"goodbye\n"}


def duplicates(files):
    seen = {}
    for name, content in sorted(files.items()):
        digest = hashlib.sha256(content).hexdigest()
        seen.setdefault(digest, []).append(name)
    return [names for names in seen.values() if len(names) > 1]


print(duplicates(files))
print(hashlib.md5(files["c.txt"]).hexdigest()[:8])
''',
    "priority_merge": r'''
import heapq

morning = [1, 4, 9, 12]
afternoon = [2, 3, 10]
evening = [5, 6, 11]

merged = list(heapq.merge(morning, afternoon, evening))
print(merged)
print("three largest:", heapq.nlargest(3, merged))
print("median:", merged[len(merged) // 2])
''',
    "bisect_grades": r'''
import bisect

BREAKPOINTS = [60, 70, 80, 90]
GRADES = "FDCBA"


def grade(score):
    return GRADES[bisect.bisect(BREAKPOINTS, score)]


scores = [33, 99, 77, 70, 89, 90, 100]
print([grade(score) for score in scores])
''',
    "shopping_split": r'''
expenses = {"ana": 42.0, "ben": 18.5, "cy": 0.0}


def settle(expenses):
    share = sum(expenses.values()) / len(expenses)
    balances = {name: round(paid - share, 2) for name, paid in expenses.items()}
    debtors = sorted(name for name, b in balances.items() if b < 0)
    creditors = sorted(name for name, b in balances.items() if b > 0)
    return share, debtors, creditors


share, debtors, creditors = settle(expenses)
print(f"each pays {share:.2f}")
print("owe money:", debtors, "are owed:", creditors)
''',
    "generator_pipeline": r'''
LINES = ["  id,score ", "1, 90", "2, 75 ", "", "3,88", "# comment", "4, 61"]


def stripped(lines):
    for line in lines:
        yield line.strip()


def data_rows(lines):
    for line in lines:
        if line and not line.startswith("#") and not line.startswith("id"):
            yield line


def parsed(rows):
    for row in rows:
        ident, score = row.split(",")
        yield int(ident), int(score)


scores = dict(parsed(data_rows(stripped(LINES))))
print(scores)
print("passed:", [i for i, s in scores.items() if s >= 70])
''',
    "context_timer": r'''
from contextlib import contextmanager

log = []


@contextmanager
def section(name):
    log.append(f"enter {name}")
    try:
        yield len(log)
    finally:
        log.append(f"exit {name}")


with section("load") as depth:
    data = [n * n for n in range(5)]
    log.append(f"loaded {len(data)} items at depth {depth}")
with section("save"):
    log.append("saved " + ",".join(map(str, data)))
print("\n".join(log))
''',
    "sql_like": r'''
import sqlite3

conn = sqlite3.connect(":memory:")
conn.execute("CREATE TABLE books (title TEXT, author TEXT, year INTEGER)")
conn.executemany("INSERT INTO books VALUES (?, ?, ?)", [
    ("Dune", "Herbert", 1965), ("Emma", "Austen", 1815), ("Ubik", "Dick", 1969),
])
rows = conn.execute("SELECT title, year FROM books WHERE year > ? ORDER BY year", (1900,)).fetchall()
for title, year in rows:
    print(f"{title} ({year})")
print("oldest:", conn.execute("SELECT min(year) FROM books").fetchone()[0])
''',
    "abstract_shapes": r'''
from abc import ABC, abstractmethod


class Animal(ABC):
    def __init__(self, name):
        self.name = name

    @abstractmethod
    def sound(self):
        ...

    def speak(self):
        return f"{self.name} says {self.sound()}"


class Dog(Animal):
    def sound(self):
        return "woof"


class Cat(Animal):
    def sound(self):
        return "meow"


for pet in [Dog("Rex"), Cat("Tom")]:
    print(pet.speak())
''',
    "partial_sort": r'''
from functools import partial, reduce
import operator

orders = [("widget", 3, 2.5), ("gadget", 1, 10.0), ("doohickey", 5, 1.2)]


def cost(order, discount):
    name, qty, price = order
    return qty * price * (1 - discount)


member_cost = partial(cost, discount=0.1)
costs = list(map(member_cost, orders))
print([round(c, 2) for c in costs])
print("product of quantities:", reduce(operator.mul, (q for _, q, _ in orders)))
''',
}
