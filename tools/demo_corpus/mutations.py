"""Mutation operators: each finds places in a program's AST where a small bug can go (a variable
to misspell, a `return` to drop, a dict key to typo, ...), and `mutants` splices one change at a time
into the original text, so comments and layout survive.
"""

from __future__ import annotations

import ast
import keyword
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tools.demo_corpus.snippets import BUILTIN_NAMES, Snippet


@dataclass(frozen=True)
class Mutant:
    snippet: Snippet
    mutation: str
    """The operator's name, e.g. "rename_var"."""
    code: str


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
