"""Split index builds: merging pass states exactly, and `explorer index` under torchrun (gloo, CPU)
giving the same bytes as the one-process build, including after a rank was killed mid-build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from explorer.index import exact_sum, pass_state
from explorer.index.merge import merge_states
from explorer.index.pass_state import PassState

D, L, B, TOP_N, N_BATCHES = 40, 12, 4, 5, 9


def activation_stream(seed: int = 0) -> list[torch.Tensor]:
    """N_BATCHES batches (B, L, D) of sparse activations, rounded to eighths so that ties abound."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(N_BATCHES):
        f = torch.round(torch.rand((B, L, D), generator=g) * 24) / 8
        f[torch.rand((B, L, D), generator=g) < 0.8] = 0.0
        f[0, 0, 3] = 1e-9  # far below the histogram, still summed and counted
        batches.append(f)
    return batches


def shard_state(batches: list[torch.Tensor], first_batch: int) -> dict[str, torch.Tensor]:
    run = PassState(D, L, TOP_N, torch.device("cpu"))
    run.edges = torch.from_numpy(np.geomspace(1e-2, 10, 51).astype(np.float32))
    for i, f in enumerate(batches):
        run.update(f.clone(), (first_batch + i) * B)
    return run.state_dict()


@pytest.mark.parametrize("cooccurrence", ["dense", "sparse"])
def test_merged_shards_equal_one_pass(monkeypatch, cooccurrence):
    if cooccurrence == "sparse":
        monkeypatch.setattr(pass_state, "COOC_DENSE_MAX", 0)
    batches = activation_stream()
    whole = shard_state(batches, 0)
    for n in (1, 2, 3):
        cuts = [k * N_BATCHES // n for k in range(n + 1)]
        states = [shard_state(batches[a:b], a) for a, b in zip(cuts, cuts[1:])]
        for order in (states, states[::-1]):
            merged = merge_states(order, L)
            assert set(merged) == set(whole)
            for key, value in whole.items():
                assert merged[key].dtype == value.dtype, key
                assert torch.equal(merged[key], value), f"{key} differs with {n} shards"


def test_merge_refuses_overlap_and_other_edges():
    batches = activation_stream()
    a = shard_state(batches[:3], 0)
    with pytest.raises(ValueError, match="overlap"):
        merge_states([a, a], L)
    b = shard_state(batches[3:], 3)
    b["edges"] = b["edges"] * 2
    with pytest.raises(ValueError, match="histogram edges"):
        merge_states([a, b], L)
    b = shard_state(batches[3:], 3)
    b["new_field"] = b["count"]
    with pytest.raises(ValueError, match="RULES"):
        merge_states([a, b], L)


def test_exact_sum_ignores_order():
    g = torch.Generator().manual_seed(1)
    values = (torch.rand(5000, generator=g) * 10.0 ** torch.randint(-6, 4, (5000,), generator=g)).float()
    index = torch.randint(0, 3, (5000,), generator=g)
    sums = []
    for perm in (torch.arange(5000), torch.randperm(5000, generator=g), torch.arange(4999, -1, -1)):
        limbs = exact_sum.zeros(3, torch.device("cpu"))
        for part in perm.split(700):
            exact_sum.add_values(limbs, index[part], values[part])
        sums.append(exact_sum.to_float(limbs))
    assert torch.equal(sums[0], sums[1]) and torch.equal(sums[0], sums[2])
    exact = [sum(float(v) for v, i in zip(values, index) if i == k) for k in range(3)]  # float64, one order
    assert torch.allclose(sums[0], torch.tensor(exact, dtype=torch.float64), rtol=1e-13, atol=0)


# --------------------------------------------------------------------------- under torchrun

ROOT = Path(__file__).resolve().parents[1]
N_WIN, WIN_LEN, BATCH = 40, 16, 4  # 10 batches: shards of 10, 5 + 5 and 3 + 3 + 4 batches
INDEX_FILES = ("features.safetensors", "examples.safetensors", "windows.safetensors", "labels_auto.json")

# Runs `explorer index` as torchrun's script, with a checkpoint after every batch; rank CRASH_RANK
# dies (no cleanup, like SIGKILL) after batch CRASH_AT, and every rank logs the batches it folds in.
WRAPPER = """
import os, sys
import explorer.index
from explorer.cli import main

real = explorer.index.build_index
rank, crash_rank, crash_at = int(os.environ["RANK"]), int(os.environ["CRASH_RANK"]), int(os.environ["CRASH_AT"])

def build_index(*args, **kwargs):
    def on_batch(number):
        with open(os.path.join(os.environ["BATCH_LOG"], f"rank-{rank}"), "a") as log:
            log.write(f"{number}\\n")
        if rank == crash_rank and number == crash_at:
            os._exit(9)
    return real(*args, **{**kwargs, "checkpoint_every": 1, "on_batch": on_batch})

explorer.index.build_index = build_index
main(sys.argv[1:])
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny random model, SAE and windows on disk, and the one-process index of them."""
    from tiny import tiny_model

    from explorer import cli
    from explorer.corpus import Windows, save_windows
    from explorer.sae import random_sae
    from explorer.sae_files import save_sae

    root = tmp_path_factory.mktemp("dist")
    lm = tiny_model()
    lm.model.save_pretrained(root / "model", safe_serialization=True)
    lm.tokenizer.save_pretrained(root / "model")
    save_sae(random_sae(32, 64, architecture="topk", k=8, hook_name="blocks.1.hook_resid_post", seed=1), root / "sae")
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(N_WIN, WIN_LEN)).astype(np.int32)
    tokens[:, 0] = 257  # BOS
    tokens[20] = tokens[3]  # ties across shards
    save_windows(Windows(tokens, np.arange(N_WIN), np.zeros(N_WIN, dtype=np.int64)), root / "windows.safetensors")
    args = ["index", "--windows", str(root / "windows.safetensors"), "--model", str(root / "model"),
            "--sae", str(root / "sae"), "--batch-windows", str(BATCH), "--top-n", "6"]
    cli.main([*args, "--out", str(root / "one")])
    return root, args


def torchrun(n: int, argv: list[str], script: Path | None = None, env: dict | None = None):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}"]
    target = [str(script)] if script else ["-m", "explorer.cli"]
    return subprocess.run([*launcher, *target, *argv], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})})


def assert_same_index(a: Path, b: Path, world_size: int) -> None:
    for name in INDEX_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} differs with {world_size} ranks"
    one, split = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert "distributed" not in one and split["distributed"]["world_size"] == world_size
    assert len(split["distributed"]["peak_rss_bytes"]) == world_size
    for m in (one, split):
        m.pop("created"), m.pop("distributed", None)
    assert one == split  # settings (histogram edges too), token counts and every file's sha256


def test_three_ranks_build_the_same_bytes(inputs):
    """(Two ranks: test_a_killed_rank_resumes. One: the reference, a plain `explorer index`.)"""
    root, args, n = *inputs, 3
    out = root / f"ranks-{n}"
    done = torchrun(n, [*args, "--out", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(out)  # rank 0 alone prints the folder
    assert_same_index(root / "one", out, n)
    assert not out.with_name(out.name + ".partial").exists()


def test_a_killed_rank_resumes(inputs, tmp_path):
    root, args = inputs
    out, script = root / "resumed", tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    env = {"CRASH_RANK": "1", "CRASH_AT": "6", "BATCH_LOG": str(tmp_path)}  # rank 1 has batches 5..9
    crashed = torchrun(2, [*args, "--out", str(out)], script, env)
    assert crashed.returncode != 0 and not out.exists()
    assert (out.with_name("resumed.partial") / "rank-1-of-2" / "state.safetensors").is_file()
    (tmp_path / "rank-1").unlink()
    rerun = torchrun(2, [*args, "--out", str(out)], script, {**env, "CRASH_RANK": "-1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp_path / "rank-1").read_text().split() == ["7", "8", "9"]  # not 5 and 6 again
    assert_same_index(root / "one", out, 2)


def test_an_error_on_rank_0_stops_every_rank(inputs):
    root, args = inputs
    target = root / "not-an-index"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    failed = torchrun(2, [*args, "--out", str(target)])
    assert failed.returncode != 0
    assert "error: rank 0 stopped:" in failed.stderr and "is not a feature index" in failed.stderr
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]
