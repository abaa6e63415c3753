"""Training checkpoints: out_dir/checkpoint/step_000001000/{state.safetensors, state.json}.

A checkpoint holds the SAE's weights, Adam's moments and a TrainState (the counters);
state.json also records the TrainConfig and the activation cache it belongs to, so that
a resumed run refuses another run's checkpoint. Each checkpoint folder appears whole,
and only the newest `keep` are kept.

Public names: CHECKPOINT_DIR, TrainState, latest_checkpoint, save_checkpoint,
load_checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from explorer.activation_cache import ActivationCache
from explorer.files import remove_leftovers, replacing_dir
from explorer.sae import SAE
from explorer.settings import TrainConfig, TrainError

CHECKPOINT_DIR = "checkpoint"
# Fields that may change between a run and its resumption without changing the result.
RESUMABLE_CHANGES = frozenset({"out_dir", "checkpoint_every", "device"})


@dataclass
class TrainState:
    """Everything besides weights and Adam moments that a resumed run needs.

    No RNG state is kept: the only randomness after init is the data order, and that is a
    pure function of (seed, epoch, batch index) (ActivationCache.batches)."""

    step: int
    scale: float  # inputs are multiplied by this (normalize_activations)
    tokens_since_fired: Tensor  # (d_sae,) int64
    fire_counts: Tensor  # (d_sae,) int64, counted from plan.freq_start on
    running: dict[str, float] = field(default_factory=dict)  # progress-bar averages only

    @classmethod
    def fresh(cls, d_sae: int, scale: float, device: torch.device) -> TrainState:
        zeros = torch.zeros(d_sae, dtype=torch.int64, device=device)
        return cls(0, scale, zeros.clone(), zeros.clone())


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint folder, or None. Each appears whole (renamed into place)."""
    if not folder.is_dir():
        return None
    steps = [p for p in folder.iterdir() if re.fullmatch(r"step_\d+", p.name) and (p / "state.json").is_file()]
    return max(steps, key=lambda p: int(p.name[5:]), default=None)


def save_checkpoint(folder: Path, cfg: TrainConfig, cache: ActivationCache, sae: SAE,
                    opt: torch.optim.Optimizer, state: TrainState, keep: int = 2) -> Path:
    tensors = {f"sae.{name}": p.detach().cpu() for name, p in sae.named_parameters()}
    for name, p in sae.named_parameters():
        for key, value in opt.state[p].items():
            tensors[f"adam.{name}.{key}"] = torch.as_tensor(value).detach().cpu()
    tensors["tokens_since_fired"] = state.tokens_since_fired.cpu()
    tensors["fire_counts"] = state.fire_counts.cpu()
    meta = {"step": state.step, "scale": state.scale, "config": cfg.to_dict(), "cache": _cache_identity(cache),
            "running": state.running}

    final = folder / f"step_{state.step:09d}"
    remove_leftovers(final)  # of a run killed while saving this step; one trainer owns the folder
    # A step saved again (a rerun after the end) replaces the old folder whole.
    with replacing_dir(final) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp / "state.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    older = sorted((p for p in folder.iterdir() if re.fullmatch(r"step_\d+", p.name)), key=lambda p: int(p.name[5:]))
    for stale in older[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def load_checkpoint(path: Path, cfg: TrainConfig, cache: ActivationCache, sae: SAE,
                    opt: torch.optim.Optimizer) -> TrainState:
    """Restore weights and Adam state in place; returns the counters. Refuses another run's checkpoint."""
    meta = json.loads((path / "state.json").read_text())
    saved = TrainConfig.from_dict(meta["config"]).to_dict()
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_CHANGES and saved.get(k) != v]
    if changed:
        raise TrainError(
            f"{path} belongs to a run with different {', '.join(changed)} "
            f"({', '.join(f'{k}={saved.get(k)!r}' for k in changed)}). "
            "Fix: use the same settings to resume, or another out_dir to start afresh.")
    if meta["cache"] != _cache_identity(cache):
        raise TrainError(f"{path} was trained on another activation cache ({meta['cache']}). "
                         "Fix: pass the same cache to resume, or another out_dir to start afresh.")
    tensors = load_file(str(path / "state.safetensors"))
    device = sae.W_dec.device
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(tensors[f"sae.{name}"])
    opt_state = opt.state_dict()
    for i, (name, _) in enumerate(sae.named_parameters()):
        prefix = f"adam.{name}."
        entry = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if entry:
            opt_state["state"][i] = entry
    opt.load_state_dict(opt_state)  # moves moments to the parameters' device; keeps `step` on the CPU
    return TrainState(meta["step"], meta["scale"], tensors["tokens_since_fired"].to(device),
                      tensors["fire_counts"].to(device), meta["running"])


def _cache_identity(cache: ActivationCache) -> dict:
    m = cache.manifest
    return {"hook_name": m["hook_name"], "tokens_sha256": m["tokens_sha256"], "n_tokens": cache.n_tokens,
            "skip_first": m["skip_first"]}
