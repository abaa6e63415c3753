"""Tests for the demo corpus's buggy code (tools/demo_corpus: snippets, mutations, bug_runs):
mutants are real programs whose tracebacks come from running them."""

from __future__ import annotations

import ast
import random

import pytest

from tools.demo_corpus.bug_runs import BugRun, balance, format_bug_run, generate_bug_runs, run_program
from tools.demo_corpus.mutations import OPERATORS, mutants
from tools.demo_corpus.snippets import Snippet, doctest_snippets, hand_snippets, stdlib_function_snippets

PROGRAM = '''import json

settings = {"port": 8080, "hosts": ["a", "b"]}


def first_host(cfg):
    return cfg["hosts"][0]


text = json.dumps(settings)
print(first_host(json.loads(text)), settings["port"] // 2)
'''


def test_hand_snippets_parse_and_have_unique_names():
    snippets = hand_snippets()
    assert len(snippets) >= 50
    assert len({s.name for s in snippets}) == len(snippets)
    for s in snippets:
        ast.parse(s.code)


def test_the_program_runs_cleanly():
    stdout, stderr, code = run_program(PROGRAM)
    assert (stdout, stderr, code) == ("a 4040\n", "", 0)


@pytest.mark.parametrize("operator, exception", [
    ("missing_key", "KeyError"), ("attr_typo", "AttributeError"), ("bad_import", "ModuleNotFoundError"),
    ("zero_div", "ZeroDivisionError"), ("empty_input", "IndexError"),
])
def test_mutants_raise_real_tracebacks(operator, exception):
    found = [m for m in mutants(Snippet("t", PROGRAM), random.Random(0), per_op=10) if m.mutation == operator]
    assert found, f"{operator} found nothing to change"
    raised = set()
    for m in found:
        assert m.code != PROGRAM
        ast.parse(m.code)
        stdout, stderr, code = run_program(m.code)
        if code != 0:
            assert stderr.startswith("Traceback (most recent call last):")
            assert 'File "main.py", line' in stderr  # the temp folder is removed from paths
            raised.add(stderr.strip().splitlines()[-1].split(":")[0])
            if exception in raised:
                return
    pytest.fail(f"{operator} mutants raised only {raised}")


def test_rename_var_gives_a_name_error_with_a_hint():
    for m in mutants(Snippet("t", PROGRAM), random.Random(1), per_op=10):
        if m.mutation == "rename_var":
            _, stderr, _ = run_program(m.code)
            if "NameError" in stderr:
                assert "Did you mean" in stderr
                return
    pytest.fail("no rename_var mutant raised NameError")


def test_mutations_keep_comments_and_layout():
    code = "# keep me\nx = [1, 2, 3]  # and me\nprint(x[0])\n"
    for m in mutants(Snippet("t", code), random.Random(0), per_op=5):
        assert "# keep me" in m.code and "# and me" in m.code
        assert m.code.count("\n") == code.count("\n")


def test_stdlib_snippets_are_found():
    modules = ("statistics", "difflib")
    names = [s.name for s in doctest_snippets(modules=modules) + stdlib_function_snippets(modules=modules)]
    assert any(n.startswith("stddoc/statistics.") for n in names)
    assert "stdfn/difflib.IS_LINE_JUNK" in names


def test_every_operator_is_registered_with_a_name():
    assert {"rename_var", "off_by_one", "drop_return", "sort_none", "none_value", "drop_conversion",
            "num_to_str", "zero_div", "empty_input", "missing_key", "bad_import", "attr_typo",
            "missing_arg"} <= set(OPERATORS)


def test_timeout_returns_none():
    assert run_program("while True:\n    pass\n", timeout=0.5) is None


def test_generate_small_run_is_deterministic_and_balanced():
    pool = hand_snippets()[:6]
    runs = generate_bug_runs(seed=0, limit=3, per_op=1, max_pairs=8, workers=2, progress=False, snippets=pool)
    assert runs and all(r.exception for r in runs)
    assert all("Traceback (most recent call last)" in r.stderr for r in runs)
    again = generate_bug_runs(seed=0, limit=3, per_op=1, max_pairs=8, workers=2, progress=False, snippets=pool)
    assert [format_bug_run(r) for r in runs] == [format_bug_run(r) for r in again]
    text = format_bug_run(runs[0])
    assert "\n$ python main.py\n" in text and text.rstrip().endswith(runs[0].stderr.strip().splitlines()[-1])


def test_balance_caps_each_exception_type():
    runs = [BugRun(f"s{i}", "m", "", "", "", "Traceback (most recent call last)", exc)
            for i, exc in enumerate(["NameError"] * 8 + ["TypeError"] * 2 + ["KeyError"] * 2 + [None] * 3)]
    kept = balance(runs, max_pairs=None, max_share=0.5, max_per_snippet=10)
    names = [r.exception for r in kept]
    assert None not in names
    assert names.count("NameError") <= (len(names) + 1) // 2
    assert len(kept) == 8  # 4 NameError + 2 + 2: the largest set where NameError is at most half
