"""explorer.files (atomic writes, one permission rule) and the writers built on it."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny import tiny_model

from explorer.activation_cache import ActivationCache, cache_activations
from explorer.corpus import Windows, save_windows
from explorer.files import (DIR_MODE, FILE_MODE, make_dirs, remove_leftovers, replacing, replacing_dir,
                            write_atomic, write_json)
from explorer.sae import SAEConfig, random_sae
from explorer.sae_files import load_sae, save_sae
from explorer.train import TrainConfig, train_sae

HOOK = "blocks.1.hook_resid_post"


class Boom(Exception):
    pass


@pytest.fixture
def strict_umask():
    """umask 077: what mkstemp, mkdtemp and mkdir would give without the rule is 0600 / 0700."""
    before = os.umask(0o077)
    yield
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes_under(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): _mode(p) for p in sorted(root.rglob("*"))}


def _assert_rule(root: Path) -> None:
    """Every file under root is 0644 and every folder 0755; root itself included."""
    wrong = {name: oct(mode) for name, mode in _modes_under(root).items()
             if mode != (DIR_MODE if (root / name).is_dir() else FILE_MODE)}
    assert wrong == {}
    assert _mode(root) == DIR_MODE


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# files.py


def test_write_atomic_replaces_the_file_with_the_rule_even_under_umask_077(tmp_path, strict_umask):
    target = tmp_path / "new" / "deeper" / "a.json"
    write_json(target, {"a": "é"})
    assert target.read_text(encoding="utf-8") == '{\n "a": "é"\n}\n'
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second"
    _assert_rule(tmp_path / "new")
    assert _entries(target.parent) == ["a.json"]


def test_a_failed_replacing_block_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(Boom), replacing(target) as tmp:
        tmp.write_text("half")
        raise Boom
    assert target.read_text() == "old"
    assert _entries(tmp_path) == ["a.txt"]


def test_replacing_dir_swaps_a_populated_folder_whole(tmp_path, strict_umask):
    target = tmp_path / "out"
    (target / "old_sub").mkdir(parents=True)
    (target / "old_sub" / "x").write_text("old")
    (target / "stale").write_text("old")
    with replacing_dir(target) as tmp:
        assert not target.samefile(tmp) and _entries(tmp) == []
        (tmp / "sub").mkdir()
        (tmp / "sub" / "y").write_text("new")
        (tmp / "z").write_text("new")
    assert _entries(target) == ["sub", "z"]
    assert (target / "sub" / "y").read_text() == "new"
    _assert_rule(target)
    assert _entries(tmp_path) == ["out"]  # neither the temp nor the moved-aside folder is left


def test_a_failed_replacing_dir_block_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    with pytest.raises(Boom), replacing_dir(target) as tmp:
        (tmp / "a").write_text("half")
        raise Boom
    assert _entries(target) == ["a"] and (target / "a").read_text() == "old"
    assert _entries(tmp_path) == ["out"]


def test_replacing_dir_puts_the_old_folder_back_when_the_swap_fails(tmp_path, monkeypatch):
    target = tmp_path / "out"
    target.mkdir()
    (target / "a").write_text("old")
    real_replace = os.replace

    def refuse_the_new_folder(src, dst):
        if Path(dst) == target and Path(src).parent == tmp_path:
            raise OSError("disk trouble")
        real_replace(src, dst)

    with pytest.raises(OSError, match="disk trouble"):
        with replacing_dir(target) as tmp:
            (tmp / "a").write_text("new")
            monkeypatch.setattr(os, "replace", refuse_the_new_folder)
    monkeypatch.undo()
    assert (target / "a").read_text() == "old"
    assert _entries(tmp_path) == ["out"]


def test_make_dirs_sets_the_rule_on_new_folders_only(tmp_path, strict_umask):
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    os.chmod(mine, 0o700)
    make_dirs(mine / "a" / "b")
    assert _mode(mine) == 0o700  # the user's folder keeps its mode
    assert _mode(mine / "a") == DIR_MODE and _mode(mine / "a" / "b") == DIR_MODE
    assert make_dirs(mine / "a") == mine / "a"  # already there: nothing to do


def test_remove_leftovers_removes_only_the_temp_names_of_that_path(tmp_path):
    target = tmp_path / "a"
    ours = [tmp_path / ".a.k3j_x9q1.tmp", tmp_path / ".a.zz0_abcd.tmp"]
    ours[0].write_text("crashed file")
    ours[1].mkdir()
    (ours[1] / "inside").write_text("crashed folder")
    others = [".a.json.k3j_x9q1.tmp",  # a temp of a.json, which may be being written now
              ".ab.k3j_x9q1.tmp", ".a.k3j_x9q1.old", "a", "a.k3j_x9q1.tmp", ".b.k3j_x9q1.tmp"]
    for name in others:
        (tmp_path / name).write_text("keep")
    assert sorted(remove_leftovers(target)) == sorted(ours)
    assert _entries(tmp_path) == sorted(others)
    assert remove_leftovers(tmp_path / "missing" / "a") == []


def test_remove_leftovers_finds_what_interrupted_writes_left(tmp_path):
    file_write, folder_write = replacing(tmp_path / "a"), replacing_dir(tmp_path / "a")
    # Entered and never left, as when the process is killed inside the block.
    left = [file_write.__enter__(), folder_write.__enter__()]
    (left[1] / "half").write_text("half")
    assert sorted(remove_leftovers(tmp_path / "a")) == sorted(left)
    assert _entries(tmp_path) == []


# ---------------------------------------------------------------------------------------------
# The writers: 0644 files and 0755 folders, whatever the umask


@pytest.fixture
def windows():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(6, 17)).astype(np.int32)
    tokens[:, 0] = 257
    return Windows(tokens, np.arange(6), np.zeros(6, dtype=np.int64))


@pytest.mark.parametrize("name", ["windows.safetensors", "windows.npz"])
def test_save_windows_follows_the_rule(tmp_path, strict_umask, windows, name):
    save_windows(windows, tmp_path / "out" / name)
    _assert_rule(tmp_path / "out")
    assert _entries(tmp_path / "out") == [name]


def test_save_sae_follows_the_rule_new_and_into_an_existing_folder(tmp_path, strict_umask):
    sae = random_sae(8, 16, seed=1)
    save_sae(sae, tmp_path / "new" / "sae", sparsity=torch.linspace(-4, 0, 16))
    _assert_rule(tmp_path / "new")

    existing = tmp_path / "existing"
    make_dirs(existing)
    write_atomic(existing / "notes.txt", "mine")
    write_atomic(existing / "sparsity.safetensors", b"stale")
    save_sae(sae, existing)
    _assert_rule(existing)
    assert _entries(existing) == ["cfg.json", "notes.txt", "sae_weights.safetensors"]
    assert torch.equal(load_sae(existing).W_dec, sae.W_dec)


def test_a_failed_save_sae_into_an_existing_folder_keeps_every_old_file(tmp_path, monkeypatch):
    old = random_sae(8, 16, seed=1)
    save_sae(old, tmp_path, sparsity=torch.linspace(-4, 0, 16))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def fail(self):
        raise Boom

    monkeypatch.setattr(SAEConfig, "to_dict", fail)  # cfg.json fails, after the weights are written
    with pytest.raises(Boom):
        save_sae(random_sae(8, 16, seed=2), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_cache_checkpoints_and_trained_sae_follow_the_rule(tmp_path, strict_umask, windows, one_thread):
    cache_activations(tiny_model(), HOOK, windows, tmp_path / "cache" / "acts", batch_size=3, shard_tokens=40,
                      progress=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "runs" / "sae"), d_sae=16, k=2, batch_size=16, epochs=2,
                      checkpoint_every=2, lr_warmup_steps=1, b_dec_samples=32)
    train_sae(cfg, ActivationCache(tmp_path / "cache" / "acts"), progress=False)
    _assert_rule(tmp_path / "cache")
    _assert_rule(tmp_path / "runs")
    checkpoints = tmp_path / "runs" / "sae" / "checkpoint"
    assert all(name.startswith("step_") for name in _entries(checkpoints))  # no temp folder left


def test_replacing_dir_leaves_links_and_their_targets_alone(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    outside.chmod(0o600)
    with replacing_dir(tmp_path / "out") as tmp:
        (tmp / "link").symlink_to(outside)
        (tmp / "broken").symlink_to(tmp_path / "missing")
    assert (outside.stat().st_mode & 0o777) == 0o600
    assert (tmp_path / "out" / "broken").is_symlink()
