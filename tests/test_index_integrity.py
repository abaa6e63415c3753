"""A damaged index fails at open with the fix, `--verify` finds what open cannot, and builds of
one folder neither race nor replace another SAE's index unasked."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from tiny import tiny_model

from explorer.cli import build_parser, main
from explorer.corpus import Windows
from explorer.index import FeatureIndex, IndexFormatError, IndexMismatchError, build_index
from explorer.index.format import IndexBusyError
from explorer.index.integrity import file_records, manifest_text, record_checksums, verify_index
from explorer.sae import random_sae

HOOK = "blocks.1.hook_resid_post"
D_SAE, N_WIN, L = 32, 12, 8
ROOT = Path(__file__).resolve().parent.parent
DEMO_INDEX = ROOT / "data" / "demo" / "index"


def tiny_inputs():
    """The model, SAE and windows of every build here (also run in a child process)."""
    lm = tiny_model()
    sae = random_sae(32, D_SAE, architecture="topk", k=4, hook_name=HOOK, seed=1)
    tokens = np.random.default_rng(0).integers(0, 256, size=(N_WIN, L)).astype(np.int32)
    return lm, sae, Windows(tokens, np.arange(N_WIN, dtype=np.int64), np.zeros(N_WIN, dtype=np.int64))


def build(inputs, out, **kwargs):
    lm, sae, windows = inputs
    kwargs = {"top_n": 4, "batch_size": 4, "sae_path_fingerprint": "sae-a", "progress": False, **kwargs}
    return build_index(lm, sae, windows, out, **kwargs)


@pytest.fixture(scope="module")
def inputs():
    return tiny_inputs()


@pytest.fixture(scope="module")
def built(inputs, tmp_path_factory):
    return build(inputs, tmp_path_factory.mktemp("built") / "idx")


@pytest.fixture
def index(built, tmp_path):
    """A fresh copy of the built index, to damage."""
    return Path(shutil.copytree(built, tmp_path / "idx"))


def edit_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(change(manifest)))


def open_fails(path: Path, inputs, match: str) -> str:
    with pytest.raises(IndexFormatError, match=match) as err:
        FeatureIndex.open(path, inputs[0].tokenizer)
    assert "Fix: rebuild it with `explorer index`" in str(err.value)
    return str(err.value)


@pytest.mark.parametrize(("what", "change", "match"), [
    ("a JSON list", lambda m: [m], "holds a JSON list"),
    ("window_len as a string", lambda m: {**m, "window_len": "8"}, "window_len is '8', not an int"),
    ("a negative n_tokens", lambda m: {**m, "n_tokens": -1}, "n_tokens is -1"),
    ("more tokens than windows hold", lambda m: {**m, "n_tokens": N_WIN * L + 1}, "n_tokens is 97, outside 0..96"),
    ("d_sae 0", lambda m: {**m, "d_sae": 0}, "d_sae is 0"),
    ("a bool for a count", lambda m: {**m, "n_windows": True}, "n_windows is True"),
    ("no hook_name", lambda m: {k: v for k, v in m.items() if k != "hook_name"}, "lacks hook_name"),
    ("a file record without its checksum", lambda m: {**m, "files": {"labels_auto.json": {"bytes": 1}}}, "files"),
    ("a file record outside the index", lambda m: {**m, "files": {"../x": m["files"]["labels_auto.json"]}}, "../x"),
])
def test_a_damaged_manifest_fails_at_open(index, inputs, what, change, match):
    edit_manifest(index, change)
    open_fails(index, inputs, f"not a valid index manifest.*{match}")


def test_a_newer_format_version_is_named(index, inputs):
    edit_manifest(index, lambda m: {**m, "format_version": 99, "window_len": "changed in version 99"})
    open_fails(index, inputs, "format version 99, but this version of the explorer reads version 1")


def data_start(file: Path) -> int:
    """Where a safetensors file's data begins: after the 8-byte header length and the header."""
    return 8 + int.from_bytes(file.read_bytes()[:8], "little")


@pytest.mark.parametrize("name", ["features.safetensors", "examples.safetensors", "windows.safetensors"])
def test_noise_of_the_same_size_fails_at_open(index, inputs, name):
    """The header stays intact, so only the data can tell: the small arrays that locate the rest."""
    file = index / name
    raw = file.read_bytes()
    start = data_start(file)
    noise = np.random.default_rng(1).integers(0, 256, len(raw) - start, dtype=np.uint8).tobytes()
    file.write_bytes(raw[:start] + noise)
    open_fails(index, inputs, f"{name} is damaged")
    assert any(name in line and "sha256" in line for line in verify_index(index, progress=False))


def test_a_truncated_file_names_its_size(index, inputs):
    size = (index / "features.safetensors").stat().st_size
    with open(index / "features.safetensors", "r+b") as fh:
        fh.truncate(size - 100)
    open_fails(index, inputs, f"features.safetensors is {size - 100:,} bytes, but the build wrote {size:,}")


def test_a_missing_labels_file_is_refused_when_recorded(index, inputs):
    (index / "labels_auto.json").unlink()
    open_fails(index, inputs, "labels_auto.json is missing")


def rewrite(path: Path, name: str, change) -> None:
    """Rewrite the safetensors file `name` with one array changed, and record the new size and
    checksum, as a build that wrote the wrong thing would."""
    arrays = load_file(str(path / name))
    key, value = change(arrays)
    arrays[key] = value
    save_file(arrays, str(path / name))
    edit_manifest(path, lambda m: {**m, "files": file_records(path)})


@pytest.mark.parametrize(("name", "change", "match"), [
    ("features.safetensors", lambda a: ("q_valid", a["q_valid"].astype(np.float32)), "q_valid as float32.*uint8"),
    ("features.safetensors", lambda a: ("hist_counts", a["hist_counts"][:, :10].copy()), r"hist_counts of shape \[32, 10\]"),
    ("features.safetensors", lambda a: ("count", a["count"][:-1].copy()), r"count of shape \[31\]"),
    ("examples.safetensors", lambda a: ("ex_position", a["ex_position"][:-1].copy()), "ex_position of shape"),
    ("examples.safetensors", lambda a: ("trace_val", a["trace_val"].astype(np.float32)), "trace_val as float32"),
    ("windows.safetensors", lambda a: ("tokens", a["tokens"].astype(np.int64)), "tokens as int64.*uint16 or int32"),
    ("windows.safetensors", lambda a: ("tokens", a["tokens"][:, :4].copy()), r"tokens of shape \[\d+, 4\]"),
])
def test_a_wrong_dtype_or_shape_fails_at_open(index, inputs, name, change, match):
    rewrite(index, name, change)
    open_fails(index, inputs, match)


def test_an_index_without_recorded_checksums_opens_but_cannot_be_verified(index, inputs):
    edit_manifest(index, lambda m: {k: v for k, v in m.items() if k != "files"})
    FeatureIndex.open(index, inputs[0].tokenizer).card(3)
    problems = verify_index(index, progress=False)
    assert len(problems) == 1 and "records no checksums" in problems[0] and "rebuild" in problems[0]


def verify_cli(path: Path, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as stop:
        main(["index", "--verify", str(path)])
        raise SystemExit(0)
    return stop.value.code, capsys.readouterr().out.splitlines()


def test_verify_finds_a_flipped_byte(index, capsys):
    assert verify_cli(index, capsys) == (0, [f"{index}: every file has the size and sha256 that the build recorded"])
    file = index / "examples.safetensors"
    raw = bytearray(file.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # in the middle of the data: open cannot see it
    file.write_bytes(bytes(raw))
    code, lines = verify_cli(index, capsys)
    assert code == 2 and len(lines) == 1
    assert "examples.safetensors has sha256" in lines[0] and "Fix: rebuild" in lines[0]


def test_the_committed_demo_index_verifies():
    assert verify_index(DEMO_INDEX, progress=False) == []


def test_record_checksums_writes_what_the_build_writes(index):
    built = (index / "manifest.json").read_bytes()
    manifest = json.loads(built)
    del manifest["files"]
    (index / "manifest.json").write_text(manifest_text(manifest))
    record_checksums(index)
    assert (index / "manifest.json").read_bytes() == built


def test_another_sae_needs_force(built, inputs, tmp_path):
    out = Path(shutil.copytree(built, tmp_path / "idx"))
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(IndexMismatchError, match="holds the index of another SAE.*--force"):
        build(inputs, out, sae_path_fingerprint="sae-b")
    assert (out / "manifest.json").read_bytes() == before
    build(inputs, out, sae_path_fingerprint="sae-b", force=True)
    assert json.loads((out / "manifest.json").read_text())["sae_fingerprint"] == "sae-b"
    build(inputs, out, sae_path_fingerprint="sae-b")  # the same SAE rebuilds without asking
    edit_manifest(out, lambda m: [m])
    with pytest.raises(IndexFormatError, match="cannot be read.*--force"):
        build(inputs, out, sae_path_fingerprint="sae-b")
    assert build_parser().parse_args(["index", "--windows", "w", "--out", "o", "--force"]).force


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_what_is_no_index_is_never_replaced_even_with_force(inputs, tmp_path, kind):
    out = tmp_path / "mine"
    if kind == "file":
        out.write_text("notes")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("notes")
    with pytest.raises(ValueError, match="not a feature index"):
        build(inputs, out, force=True)
    for unnamed in (".", "..", "/"):
        with pytest.raises(ValueError, match="names no folder of its own"):
            build(inputs, unnamed, force=True)
    assert (out.read_text() if kind == "file" else (out / "notes.txt").read_text()) == "notes"


def test_leftovers_of_a_killed_build_are_removed(inputs, tmp_path):
    out = tmp_path / "idx"
    (tmp_path / ".idx.k1ll3d.tmp").mkdir()  # a folder replacing_dir was filling
    (tmp_path / ".idx.k1ll3d.tmp" / "features.safetensors").write_bytes(b"half")
    (tmp_path / ".idx.lock").write_text("12345\n")  # its lock file, no longer locked
    (tmp_path / "idx.partial").mkdir()
    (tmp_path / "idx.partial" / ".state.safetensors.x7.tmp").write_bytes(b"half a checkpoint")
    build(inputs, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


CHILD = """
import sys, time
from pathlib import Path
sys.path[:0] = [{tests!r}, {root!r}]
from test_index_integrity import build, tiny_inputs
flag = Path({flag!r})

def hold(number):
    if number == 0:
        flag.with_suffix(".started").touch()
        deadline = time.monotonic() + 300
        while not flag.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

build(tiny_inputs(), Path({out!r}), on_batch=hold)
"""


def start_build_that_waits(out: Path, flag: Path) -> subprocess.Popen:
    """A real build in another process, stopped after its first batch until `flag` exists."""
    code = CHILD.format(tests=str(ROOT / "tests"), root=str(ROOT), flag=str(flag), out=str(out))
    child = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    deadline = time.monotonic() + 300
    while not flag.with_suffix(".started").exists():
        assert child.poll() is None, "the child build ended early"
        assert time.monotonic() < deadline, "the child build did not start"
        time.sleep(0.1)
    return child


def test_a_second_build_of_one_folder_refuses_while_the_first_runs(inputs, tmp_path):
    out, flag = tmp_path / "idx", tmp_path / "go"
    child = start_build_that_waits(out, flag)
    try:
        theirs = tmp_path / ".idx.r4nd0m.tmp"  # what the running build may be writing: not ours to remove
        theirs.mkdir()
        with pytest.raises(IndexBusyError, match=rf"Another `explorer index` is writing {out} \(pid {child.pid}\).*--out"):
            build(inputs, out)
        assert theirs.is_dir() and not out.exists()
        theirs.rmdir()
        flag.touch()
        assert child.wait(timeout=300) == 0
    finally:
        child.kill()
    FeatureIndex.open(out, inputs[0].tokenizer).card(0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go", "go.started", "idx"]


def test_a_killed_build_leaves_its_folder_free(inputs, tmp_path):
    out, flag = tmp_path / "idx", tmp_path / "go"
    child = start_build_that_waits(out, flag)
    os.kill(child.pid, signal.SIGKILL)  # the OS drops its lock; its lock file stays behind
    child.wait(timeout=60)
    assert (tmp_path / ".idx.lock").exists()
    build(inputs, out)
    FeatureIndex.open(out, inputs[0].tokenizer).card(0)
    assert not (tmp_path / ".idx.lock").exists()


def rewrite_header(file: Path, change) -> None:
    """Replace a safetensors file's JSON header by change(header), keeping the data."""
    raw = file.read_bytes()
    start = data_start(file)
    header = json.dumps(change(json.loads(raw[8:start]))).encode()
    file.write_bytes(len(header).to_bytes(8, "little") + header + raw[start:])


def shift(header: dict, name: str, by: int) -> dict:
    header[name]["data_offsets"] = [n + by for n in header[name]["data_offsets"]]
    return header


@pytest.mark.parametrize(("change", "match"), [
    (lambda raw: (10**9).to_bytes(8, "little") + raw[8:], "header claims 1,000,000,000 bytes"),
    (lambda raw: raw[:8] + b"[" + raw[9:], "header is not JSON"),
    (lambda raw: raw[:4], "too short"),
])
def test_a_broken_safetensors_header_fails_at_open(index, inputs, change, match):
    file = index / "examples.safetensors"
    file.write_bytes(change(file.read_bytes()))
    edit_manifest(index, lambda m: {**m, "files": {}})  # sizes unrecorded: the header itself must tell
    open_fails(index, inputs, f"examples.safetensors is corrupt .*{match}")


@pytest.mark.parametrize(("change", "match"), [
    (lambda h: shift(h, "ex_ptr", 10**9), "data of 'ex_ptr' lies outside the file"),
    (lambda h: {**h, "ex_ptr": {**h["ex_ptr"], "shape": [h["ex_ptr"]["shape"][0] + 1]}}, "does not hold its shape"),
    (lambda h: {**h, "ex_ptr": {**h["ex_ptr"], "dtype": "Q9"}}, "no known dtype"),
    (lambda h: {**h, "ex_ptr": {**h["ex_ptr"], "shape": [-1]}}, "no valid shape"),
])
def test_header_entries_that_do_not_fit_the_data_fail_at_open(index, inputs, change, match):
    rewrite_header(index / "examples.safetensors", change)
    edit_manifest(index, lambda m: {**m, "files": {}})
    open_fails(index, inputs, f"examples.safetensors is corrupt .*{match}")


def test_arrays_are_read_only_views_of_the_mapped_file(built, inputs):
    """Opening copies no array: the reader's arrays are views of the file's mapping."""
    ix = FeatureIndex.open(built, inputs[0].tokenizer)
    counts = ix._array(ix._features, "count")
    assert not counts.flags.writeable and not counts.flags.owndata
    np.testing.assert_array_equal(counts, load_file(str(built / "features.safetensors"))["count"])
