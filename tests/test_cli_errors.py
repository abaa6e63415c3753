"""Every failure a user can cause on the command line ends in one line on stderr,
`error: <problem>. Fix: <what to do>`, exit code 2 and nothing half-written; Ctrl-C
ends in "interrupted" and exit code 130. Terminal output escapes control characters.

The commands run in-process (`cli.main`) on a tiny random model saved as a folder,
with an untrained SAE; one test runs a real process, for bytes that are not UTF-8.
"""

import dataclasses
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from tiny import byte_tokenizer, tiny_config, tiny_model

from explorer import cli, commands
from explorer.steering import Completion, SteeringResult
from explorer.terminal import printable

HOOK = "blocks.1.hook_resid_post"
ESCAPES = "\x1b[2J\x1b]0;owned\x07"  # clear the screen, retitle the window, ring the bell
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def env(monkeypatch, tmp_path):
    for name in ("EXPLORER_MODEL", "EXPLORER_SAE", "EXPLORER_INDEX", "EXPLORER_CACHE", "EXPLORER_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-model")
    lm = tiny_model(seed=1)
    lm.model.save_pretrained(folder, safe_serialization=True)
    lm.tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def ws_args(model_dir) -> list[str]:
    return ["--model", str(model_dir), "--sae", "random", "--hook", HOOK]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one command."""
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as exit:
        code = exit.code
    except KeyboardInterrupt:  # escaping here would stop the whole pytest session
        pytest.fail("KeyboardInterrupt escaped from cli.main")
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *words: str) -> str:
    """The command failed with exit code 2 and a last stderr line 'error: ... Fix: ...'."""
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and ". Fix: " in last, err
    for word in words:
        assert word in last
    return last


# --- output paths ---------------------------------------------------------------------


def _out_path(case: str, tmp_path: Path) -> Path:
    if case == "a folder":
        (tmp_path / "w.safetensors").mkdir()
        return tmp_path / "w.safetensors"
    if case == "under a file":
        (tmp_path / "afile").write_text("x")
        return tmp_path / "afile" / "w.safetensors"
    if not Path("/sys").is_dir():
        pytest.skip("needs /sys, where not even root may create files")
    return Path("/sys/w.safetensors")


@pytest.mark.parametrize("case, words", [
    ("a folder", ["Is a directory", "not a folder"]),
    ("under a file", ["afile", "move it away"]),
    ("unwritable", ["Permission denied", "permissions"]),
])
def test_output_paths_that_cannot_be_written(capsys, tmp_path, model_dir, case, words):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text to cut into windows " * 20)
    out = _out_path(case, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run(capsys, "windows", str(corpus), "--out", str(out), "--model", str(model_dir), "--window", "8")
    last = assert_one_line_error(code, err, *words)
    assert ".tmp" not in last  # names the path the user gave, not a temporary sibling
    assert sorted(tmp_path.rglob("*")) == before  # nothing half-written left behind


# --- generation settings and intervention values ----------------------------------------


@pytest.mark.parametrize("flag, value", [
    ("--temperature", "nan"), ("--temperature", "inf"), ("--temperature", "-1"), ("--temperature", "1e-30"),
    ("--top-p", "nan"), ("--top-p", "0"), ("--top-p", "1.5"),
    ("--seed", "-1"), ("--seed", str(2**64)), ("--max-new-tokens", "5000"),
])
def test_bad_generation_settings(capsys, ws_args, flag, value):
    code, _, err = run(capsys, "steer", "hi", "--clamp", "3=1", *ws_args, flag, value)
    assert_one_line_error(code, err, flag[2:].replace("-", "_"))


@pytest.mark.parametrize("spec, words", [
    ("5=1e30", ["1e+30", "-10000..10000"]),  # once end-of-text garbage
    ("5=25x", ["25", "-20..20"]),
    ("5=-inf", ["finite"]),
])
def test_absurd_intervention_values_are_refused(capsys, ws_args, spec, words):
    code, _, err = run(capsys, "steer", "hi", "--clamp", spec, *ws_args)
    assert_one_line_error(code, err, *words)


def test_a_negative_count_is_an_argument_error(capsys, ws_args):
    with pytest.raises(SystemExit) as exit:
        cli.main(["activations", "hi", "--top", "-1", *ws_args])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "argument --top: -1 is less than 1" in err and "Traceback" not in err


# --- devices and model folders -------------------------------------------------------


def _missing(device: str) -> bool:
    kind, _, index = device.partition(":")
    backend = getattr(torch, kind, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        return True
    return bool(index) and int(index) >= backend.device_count()


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "xpu", "mps", "junk", "meta"])
def test_a_device_that_is_not_there(capsys, ws_args, device):
    if device not in ("junk", "meta") and not _missing(device):
        pytest.skip(f"this machine has {device}")
    code, _, err = run(capsys, "activations", "hi", *ws_args, "--device", device)
    last = assert_one_line_error(code, err, repr(device), "cpu")
    assert "is not" in last


class _Planted:
    """Unpickling this creates a file: proof that the pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_weights_are_refused_unread(capsys, tmp_path):
    folder = tmp_path / "pickled-model"
    folder.mkdir()
    tiny_config().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    marker = tmp_path / "the-pickle-ran"
    with open(folder / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Planted(marker)}, f)
    code, _, err = run(capsys, "activations", "hi", "--model", str(folder), "--sae", "random", "--hook", HOOK)
    last = assert_one_line_error(code, err, "pytorch_model.bin", "pickle", "safetensors")
    assert not marker.exists()
    assert "weights_only" not in last and "trust" not in last  # no advice to load it anyway


# --- arguments, interrupts --------------------------------------------------------------


def test_arguments_that_are_not_utf8(model_dir):
    # A real process: the bytes reach Python's argv as lone surrogates.
    argv = [sys.executable, "-m", "explorer.cli", "activations", b"caf\xe9", "--model", str(model_dir), "--sae", "random"]
    out = subprocess.run(argv, capture_output=True, timeout=300, check=False)
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 2 and "Traceback" not in err, err
    assert err.strip().splitlines() == [("error: The argument b'caf\\xe9' is not valid UTF-8 text. "
                                         "Fix: pass prompts and paths as UTF-8 (check the terminal's or the script's encoding)")]


def test_a_reader_that_stops_reading_is_not_an_error(model_dir):
    # `explorer ... | head -1`: the pipe closes before the output is written
    argv = [sys.executable, "-m", "explorer.cli", "activations", "hi", "--model", str(model_dir), "--sae", "random",
            "--hook", HOOK]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 1
    assert "Traceback" not in err and "Exception ignored" not in err and "error:" not in err, err


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("command", ["index", "train", "steer"])
def test_ctrl_c(capsys, monkeypatch, tmp_path, command):
    stub = types.SimpleNamespace(lm=None, sae=None, sae_id="x", untrained=False, max_acts=lambda: None)
    monkeypatch.setattr(commands, "workspace", lambda args, with_index=True: stub)
    monkeypatch.setattr(commands, "_split", lambda args: ([], []))
    monkeypatch.setattr("explorer.corpus.load_windows", lambda path: [])
    monkeypatch.setattr("explorer.model.load_model", lambda *a, **k: None)
    monkeypatch.setattr("explorer.index.build_index", _interrupt)
    monkeypatch.setattr("explorer.activation_cache.cache_activations", _interrupt)
    monkeypatch.setattr("explorer.steering.generate_pair", _interrupt)
    argv = {"index": ["index", "--windows", "w", "--out", str(tmp_path / "i")],
            "train": ["train", "--windows", "w", "--acts", str(tmp_path / "a"), "--out", str(tmp_path / "s")],
            "steer": ["steer", "hi", "--ablate", "3"]}[command]
    code, _, err = run(capsys, *argv)
    resume = "; run the same command again to resume" if command in ("index", "train") else ""
    assert (code, err) == (130, f"interrupted{resume}\n")


# --- prompts longer than the model takes ------------------------------------------------


def test_steer_says_when_the_prompt_was_cut(capsys, ws_args):
    # the tiny model takes 256 positions: 4 new tokens leave 252 for the prompt
    code, out, err = run(capsys, "steer", "ab " * 200, "--clamp", "3=1", "--max-new-tokens", "4", *ws_args)
    assert code == 0, err
    assert out.splitlines()[0] == "(prompt cut from 601 to 252 tokens)"


# --- terminal output --------------------------------------------------------------------


def test_printable_escapes_control_characters():
    assert printable("a\x1b[2Jb\rc\x07\x9b\u202e\udcff\n") == "a\\x1b[2Jb\\rc\\x07\\x9b\\u202e\\udcff\\n"
    assert printable("tab\tstays, ↵ and é too") == "tab\tstays, ↵ and é too"


def test_activations_escape_prompt_tokens_and_labels(capsys, monkeypatch, ws_args):
    from explorer.workspace import open_workspace

    real = open_workspace

    def with_labels(*args, **kwargs):
        index = types.SimpleNamespace(label=lambda f: f"dog{ESCAPES}\r", label_notice="", manifest=types.SimpleNamespace(n_tokens=0))
        return dataclasses.replace(real(*args, **kwargs), index=index)

    monkeypatch.setattr("explorer.workspace.open_workspace", with_labels)
    code, out, err = run(capsys, "activations", f"a{ESCAPES}b", "--top", "2", *ws_args)
    assert code == 0, err
    assert not any(c in out for c in "\x1b\x07\r") and "\x1b" not in err  # tqdm bars on stderr draw with CR
    assert "\\x1b" in out and "(dog\\x1b[2J\\x1b]0;owned\\x07\\r)" in out


def test_steer_escapes_completions(capsys, monkeypatch, ws_args):
    def fake_pair(lm, sae, prompt, interventions, settings, max_acts=None, stop=None):
        done = Completion([1], f"one{ESCAPES}\rtwo")
        return SteeringResult(prompt, tuple(interventions), settings, done, done, None)

    monkeypatch.setattr("explorer.steering.generate_pair", fake_pair)
    code, out, err = run(capsys, "steer", "hi", "--ablate", "3", *ws_args)
    assert code == 0, err
    assert not any(c in out for c in "\x1b\x07\r")
    assert "one\\x1b[2J\\x1b]0;owned\\x07\\rtwo" in out


def test_error_lines_escape_what_the_user_typed(capsys):
    code, _, err = run(capsys, "activations", "hi", "--model", f"./no{ESCAPES}/model", "--sae", "random")
    assert_one_line_error(code, err, "./no\\x1b[2J")
    assert "\x1b" not in err
