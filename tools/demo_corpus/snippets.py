"""Short programs that run cleanly, the raw material for mutants (see `mutations`).

Three kinds: hand-written programs (`programs/*.py`, read as text), self-contained stdlib functions
called through their own doctest examples, and stdlib docstring examples turned into programs.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import random
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

PROGRAMS_DIR = Path(__file__).parent / "programs"
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


def hand_snippets() -> list[Snippet]:
    """The hand-written programs in `programs/`, named `hand/<file name without the number>`.

    Files are read in name order; the number in front fixes that order, which is where the
    seeded shuffle of `generate_bug_runs` starts from, so renumbering changes the corpus."""
    return [Snippet(f"hand/{path.stem.split('_', 1)[1]}", path.read_text(encoding="utf-8"))
            for path in sorted(PROGRAMS_DIR.glob("[0-9][0-9]_*.py"))]


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
