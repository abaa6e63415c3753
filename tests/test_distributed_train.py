"""`explorer train` under torchrun: two gloo processes on the CPU against one process, on a
tiny random llama saved to a folder. Each torchrun start costs about 10 s (two interpreters
importing torch and transformers), so each test is one start that checks several things."""

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import tiny_model

from explorer.activation_cache import MANIFEST, ActivationCache
from explorer.cli import build_parser, main
from explorer.commands import train_config
from explorer.corpus import Windows, save_windows
from explorer.train import train_sae

ROOT = Path(__file__).resolve().parent.parent
HOOKS = ["blocks.1.hook_resid_post", "blocks.2.hook_resid_post"]
# 40 windows of 32 tokens (after BOS) in 5-window shards: 8 shards, shared out between the ranks.
# dead_after_tokens=256 makes AuxK and the firing counts part of what the ranks must agree on.
OPTIONS = ["--held-out", "0", "--batch-windows", "5", "--shard-tokens", "160", "--d-sae", "64", "--k", "4",
           "--batch-size", "64", "--epochs", "3", "--checkpoint-every", "5", "--lr-warmup-steps", "2",
           "--b-dec-samples", "256", "--dead-after-tokens", "256", "--hooks", ",".join(HOOKS)]
STEPS = 40 * 32 * 3 // 64
INTERRUPTED_AT = 23
# The ranks sum their slices' gradients, one process sums the batch's rows in another order: float32
# rounding only (1.2e-7 measured on this model), far below any real difference between SAEs.
ATOL = 1e-5


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    lm = tiny_model()
    lm.model.save_pretrained(folder / "model", safe_serialization=True)
    lm.tokenizer.save_pretrained(folder / "model")
    tokens = np.random.default_rng(0).integers(0, 256, size=(40, 33)).astype(np.int32)
    tokens[:, 0] = 257
    save_windows(Windows(tokens, np.arange(40), np.zeros(40, dtype=np.int64)), folder / "w.safetensors")
    return folder


def _argv(files, run):
    return ["train", "--windows", str(files / "w.safetensors"), "--model", str(files / "model"),
            "--acts", str(run / "acts"), "--out", str(run / "sae"), *OPTIONS]


@pytest.fixture(scope="module")
def one_process(files, tmp_path_factory):
    """The run of one process, in this one."""
    run = tmp_path_factory.mktemp("one")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        main(_argv(files, run))
    finally:
        torch.set_num_threads(threads)
    return run


def _torchrun(files, run, *extra):
    env = {**os.environ, "EXPLORER_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "explorer.cli", *_argv(files, run), *extra]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _same_files(a: Path, b: Path):
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_two_processes_cache_resume_and_train_the_one_process_saes(files, one_process, tmp_path):
    # Hook 1's cache was interrupted before its last shard; hook 2's has none yet.
    acts = tmp_path / "acts" / HOOKS[0]
    shutil.copytree(one_process / "acts" / HOOKS[0], acts)
    (acts / "shard_00007.safetensors").unlink()
    manifest = json.loads((acts / MANIFEST).read_text())
    manifest["shards"] = [s for s in manifest["shards"] if s["file"] != "shard_00007.safetensors"]
    manifest["complete"] = False
    (acts / MANIFEST).write_text(json.dumps(manifest))
    # Hook 2's training was interrupted at a checkpoint (written by one process).
    args = build_parser().parse_args(_argv(files, tmp_path))
    cfg = dataclasses.replace(train_config(args), hook_name=HOOKS[1], out_dir=str(tmp_path / "sae" / HOOKS[1]))
    train_sae(cfg, ActivationCache(one_process / "acts" / HOOKS[1]), progress=False, stop_after_steps=INTERRUPTED_AT)

    done = _torchrun(files, tmp_path)

    for hook in HOOKS:  # both caches whole again, with every byte as one process wrote them
        _same_files(tmp_path / "acts" / hook, one_process / "acts" / hook)
    # Hook 2 went on from its checkpoint: its progress bar started there, not at 0.
    assert re.search(rf"Training SAE {HOOKS[1]}:\s+\d+%\|[^|]*\| {INTERRUPTED_AT}/{STEPS}", done.stderr)
    assert not re.search(rf"Training SAE {HOOKS[1]}:\s+0%\|[^|]*\| 0/{STEPS}", done.stderr)
    for hook in HOOKS:
        two, one = (load_file(run / "sae" / hook / "sae_weights.safetensors") for run in (tmp_path, one_process))
        assert sorted(two) == sorted(one) == ["W_dec", "W_enc", "b_dec", "b_enc"]
        for name in one:
            diff = (two[name] - one[name]).abs().max().item()
            assert diff <= ATOL, (hook, name, diff)
        sparsity = [load_file(run / "sae" / hook / "sparsity.safetensors")["sparsity"] for run in (tmp_path, one_process)]
        assert torch.equal(*sparsity)  # the firing counts are summed exactly
    assert done.stdout.count("SAE saved in") == 2  # rank 0 alone reports (and writes)


def test_distribute_hooks_gives_each_rank_its_own_hooks(files, one_process, tmp_path):
    done = _torchrun(files, tmp_path, "--distribute-hooks")
    assert f"Rank 0: SAE saved in {tmp_path / 'sae' / HOOKS[0]}" in done.stdout
    assert f"Rank 1: SAE saved in {tmp_path / 'sae' / HOOKS[1]}" in done.stdout
    for hook in HOOKS:
        _same_files(tmp_path / "acts" / hook, one_process / "acts" / hook)
        # Each SAE is trained by one process, as in the one-process run: the same bytes.
        for name in ("sae_weights.safetensors", "sparsity.safetensors"):
            assert (tmp_path / "sae" / hook / name).read_bytes() == (one_process / "sae" / hook / name).read_bytes()
