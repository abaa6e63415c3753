"""An on-disk cache of model activations at one hook, for SAE training.

Running the model is the slow part of training an SAE, so activations are computed once
and read back every epoch.

- `cache_activations(lm, hook_name, windows, out_dir)` writes float16 safetensors shards
  of about 64k tokens and a `manifest.json`. The manifest is written first, and rewritten
  after every shard; each file is written under a temporary name and renamed. An
  interrupted run therefore resumes at the first shard that is neither listed nor whole
  on disk.
- `cache_hooks(lm, {hook: out_dir, ...}, windows)` does the same for several hooks from
  one forward pass per batch (one folder per hook, each resuming on its own). Under
  torchrun both split the shards between the ranks.
- `ActivationCache(out_dir)` reads a finished cache: `n_tokens`, `d_in`, and
  `batches(batch_size, seed, epoch)`, which yields shuffled float32 batches.
- `CacheError`: every user-facing problem, with the fix in the message.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from explorer.corpus import Windows
from explorer.files import make_dirs, replacing, write_json
from explorer.hooks import HookError, hook_width, hooked, parse_hook
from explorer.model import LoadedModel
from explorer.train_distributed import SINGLE, Ranks

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SHARD_KEY = "activations"
SHARD_TOKENS = 65_536
FORMAT_VERSION = 1
FP16_MAX = float(torch.finfo(torch.float16).max)
# Manifest keys that must agree before a run may resume into an existing cache.
RESUME_KEYS = ("hook_name", "model_name", "d_in", "context_size", "skip_first", "n_windows",
               "windows_per_shard", "tokens_sha256")


class CacheError(ValueError):
    """An activation cache cannot be written or read; the message says how to fix it."""


@dataclass(frozen=True)
class Shard:
    file: str
    """File name inside the cache folder."""
    n_tokens: int
    first_window: int
    """Index of the shard's first window in the windows that were cached."""


# ---------------------------------------------------------------------------------------------
# Writing


def cache_activations(
    lm: LoadedModel,
    hook_name: str,
    windows: Windows,
    out_dir: str | Path,
    batch_size: int = 16,
    skip_first: int = 1,
    shard_tokens: int = SHARD_TOKENS,
    progress: bool = True,
    ranks: Ranks = SINGLE,
) -> ActivationCache:
    """Run the model over `windows` and store the activations at `hook_name` in `out_dir`.

    The first `skip_first` positions of every window are dropped: the BOS position has an
    outlier norm that SAELens and sparsify also leave out of training. Shards hold whole
    windows (about `shard_tokens` tokens each), so resuming with another `batch_size` is fine,
    but the windows, hook, model and `skip_first` must be the ones the cache was started with.
    Under torchrun (`ranks`), each rank computes its own contiguous part of the shards.
    """
    return cache_hooks(lm, {hook_name: out_dir}, windows, batch_size, skip_first, shard_tokens, progress,
                       ranks)[hook_name]


def cache_hooks(
    lm: LoadedModel,
    folders: dict[str, str | Path],
    windows: Windows,
    batch_size: int = 16,
    skip_first: int = 1,
    shard_tokens: int = SHARD_TOKENS,
    progress: bool = True,
    ranks: Ranks = SINGLE,
) -> dict[str, ActivationCache]:
    """cache_activations for several hooks (hook name -> cache folder) from one forward pass
    per batch of windows; each folder holds what cache_activations would write for its hook.

    Each hook's cache resumes on its own: a batch runs the model only as far as the deepest
    hook that still lacks that shard. Under torchrun every rank takes a contiguous part of
    the shards still to do, rank 0 alone writes the manifests, and the folders must be on a
    disk that every rank sees.
    """
    context = windows.tokens.shape[1]
    per_window = context - skip_first
    if len(windows) == 0:
        raise CacheError("No windows to cache. Fix: tokenize a non-empty corpus first.")
    if skip_first < 0 or per_window < 1:
        raise CacheError(f"skip_first={skip_first} leaves no tokens of a {context}-token window. "
                         f"Fix: use 0 <= skip_first < {context} (1 drops only BOS).")
    if batch_size < 1:
        raise CacheError(f"batch_size={batch_size}; use a positive number of windows per forward pass.")
    if not folders:
        raise CacheError("No hooks to cache. Fix: name at least one hook.")
    per_shard = max(1, shard_tokens // per_window)
    n_shards = -(-len(windows) // per_shard)
    fresh = {hook: _new_manifest(lm, hook, windows, skip_first, per_shard) for hook in folders}
    outs = {hook: Path(folder) for hook, folder in folders.items()}
    if ranks.main:  # before the others read them: a fresh cache's manifest is written first
        for hook, out in outs.items():
            _start(out, fresh[hook])
    ranks.barrier()
    manifests = {hook: _adopt(out, _resume(out, fresh[hook]), n_shards) for hook, out in outs.items()}
    missing = {i: [hook for hook in folders if not _has(manifests[hook], i)] for i in range(n_shards)}
    todo = [i for i in range(n_shards) if missing[i]]
    mine = [todo[j] for j in ranks.part(len(todo))]
    ranks.barrier()  # every rank has read the folders before any writes to them

    def n_tokens(index: int) -> int:
        return (min(len(windows), (index + 1) * per_shard) - index * per_shard) * per_window

    bar = tqdm(total=sum(n_tokens(i) for i in mine), unit="tok", unit_scale=True,
               desc=f"Caching {', '.join(folders)}", disable=not (progress and ranks.main))
    for index in mine:
        lo = index * per_shard
        acts = _shard_activations(lm, missing[index], windows.tokens[lo:lo + per_shard], batch_size, skip_first,
                                  bar)
        for hook in missing[index]:
            name = _shard_file(index)
            _write_shard(outs[hook] / name, acts[hook])
            if ranks.main:  # the other ranks' shards are found by _adopt
                _record(manifests[hook], {"file": name, "n_tokens": len(acts[hook]), "first_window": lo}, n_shards)
                write_json(outs[hook] / MANIFEST, manifests[hook])
    bar.close()
    ranks.barrier()
    if ranks.main:
        for hook, out in outs.items():
            manifest = _adopt(out, manifests[hook], n_shards)
            manifest["complete"] = len(manifest["shards"]) == n_shards
            write_json(out / MANIFEST, manifest)
    ranks.barrier()
    return {hook: ActivationCache(out) for hook, out in outs.items()}


def _new_manifest(lm: LoadedModel, hook_name: str, windows: Windows, skip_first: int,
                  windows_per_shard: int) -> dict:
    bos_id = getattr(lm.tokenizer, "bos_token_id", None)
    tokens = np.ascontiguousarray(windows.tokens)
    return {
        "format": FORMAT_VERSION, "hook_name": hook_name, "model_name": lm.name,
        "d_in": hook_width(lm.model, parse_hook(lm.model, hook_name)),
        "dtype": "float16", "context_size": int(tokens.shape[1]), "skip_first": skip_first,
        "prepend_bos": bool(bos_id is not None and (tokens[:, 0] == bos_id).all()),
        "n_windows": len(windows), "windows_per_shard": windows_per_shard,
        "tokens_sha256": hashlib.sha256(tokens.tobytes()).hexdigest(), "shards": [], "complete": False,
    }


def _shard_file(index: int) -> str:
    return f"shard_{index:05d}.safetensors"


def _start(out: Path, fresh: dict) -> None:
    """Write a new cache's manifest before any shard, so that a shard file found later was
    written for it. Shard files that no manifest vouched for are stale: they go first."""
    if (out / MANIFEST).is_file():
        return
    make_dirs(out)
    stale = sorted(out.glob("shard_*.safetensors"))
    if stale:
        log.warning("Removing %d shard file(s) without a manifest from %s", len(stale), out)
        for path in stale:
            path.unlink()
    write_json(out / MANIFEST, fresh)


def _resume(out: Path, fresh: dict) -> dict:
    """The manifest to continue from: the existing one if it matches, minus shards whose file is gone."""
    path = out / MANIFEST
    if not path.is_file():
        make_dirs(out)
        return fresh
    old = json.loads(path.read_text())
    differ = [key for key in RESUME_KEYS if old.get(key) != fresh[key]]
    if differ:
        raise CacheError(
            f"{out} already holds a cache made with different {', '.join(differ)} "
            f"(cached: {', '.join(f'{k}={old.get(k)!r}' for k in differ)}). "
            "Fix: pass another out_dir, or delete this one to rebuild it.")
    kept = [s for s in old["shards"] if (out / s["file"]).is_file()]
    if len(kept) < len(old["shards"]):
        log.warning("%d shard(s) listed in %s are missing; recomputing them", len(old["shards"]) - len(kept), path)
    if kept:
        log.info("Resuming activation cache in %s: %d shard(s) already done", out, len(kept))
    return {**old, "shards": kept, "complete": old["complete"] and len(kept) == len(old["shards"])}


def _has(manifest: dict, index: int) -> bool:
    return any(s["first_window"] == index * manifest["windows_per_shard"] for s in manifest["shards"])


def _record(manifest: dict, shard: dict, n_shards: int) -> None:
    manifest["shards"] = sorted(manifest["shards"] + [shard], key=lambda s: s["first_window"])
    manifest["complete"] = len(manifest["shards"]) == n_shards


def _adopt(out: Path, manifest: dict, n_shards: int) -> dict:
    """The manifest plus the shard files it does not list yet but that are whole: those
    another rank wrote, or one written just before an interruption. (Each file appears whole,
    renamed into place, and only after the manifest that says what it holds.)"""
    from safetensors import SafetensorError, safe_open

    per_shard, per_window = manifest["windows_per_shard"], manifest["context_size"] - manifest["skip_first"]
    for index in range(n_shards):
        path = out / _shard_file(index)
        if _has(manifest, index) or not path.is_file():
            continue
        lo = index * per_shard
        n_tokens = (min(manifest["n_windows"], lo + per_shard) - lo) * per_window
        try:
            with safe_open(str(path), "pt") as f:
                shape = tuple(f.get_slice(SHARD_KEY).get_shape())
        except (OSError, SafetensorError):  # unreadable: computed again
            continue
        if shape == (n_tokens, manifest["d_in"]):
            _record(manifest, {"file": path.name, "n_tokens": n_tokens, "first_window": lo}, n_shards)
    return manifest


class _Captured(Exception):
    """Raised from the last hook a forward pass needs, to skip the later layers."""


def _shard_activations(lm: LoadedModel, hook_names: list[str], tokens: np.ndarray, batch_size: int,
                       skip_first: int, bar: tqdm) -> dict[str, torch.Tensor]:
    """Per hook, (n_windows * (context - skip_first), d_in) float16 activations on the CPU,
    all from one forward pass per batch."""
    parts: dict[str, list[torch.Tensor]] = {hook: [] for hook in hook_names}

    def capture(hook: str):
        def keep(acts: torch.Tensor) -> None:
            acts = acts[:, skip_first:].reshape(-1, acts.shape[-1])  # (batch * kept positions, d_in)
            peak = acts.abs().max().item()
            if not peak <= FP16_MAX:  # also catches NaN
                raise CacheError(
                    f"Activations at {hook} reach {peak:.4g}, outside float16's range (±{FP16_MAX:g}). "
                    "Fix: cache another hook, or raise skip_first if the outliers sit at the window start.")
            parts[hook].append(acts.to("cpu", torch.float16, copy=True))
            if all(len(p) == len(parts[hook]) for p in parts.values()):
                raise _Captured
        return keep

    edits = {hook: capture(hook) for hook in hook_names}
    for start in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(tokens[start:start + batch_size].astype(np.int64)).to(lm.device)
        # Lock per batch, not per shard, so an app sharing the model is not blocked for minutes.
        try:
            with lm.lock, torch.inference_mode(), hooked(lm.model, edits):
                lm.model(ids, use_cache=False)
        except _Captured:
            pass
        done = start // batch_size + 1
        if any(len(p) < done for p in parts.values()):
            raise HookError(f"Hooks {[h for h, p in parts.items() if len(p) < done]} never ran; "
                            "their modules were not called by the forward pass")
        bar.update(len(parts[hook_names[0]][-1]))
    return {hook: torch.cat(p) for hook, p in parts.items()}


def _write_shard(path: Path, acts: torch.Tensor) -> None:
    from safetensors.torch import save_file

    with replacing(path) as tmp:
        save_file({SHARD_KEY: acts.contiguous()}, str(tmp))



# ---------------------------------------------------------------------------------------------
# Reading


class ActivationCache:
    """A finished activation cache, read shard by shard.

    `batches` shuffles with a buffer: each epoch visits the shards in a seeded random order,
    `buffer_shards` at a time, and permutes the tokens within each group. Memory is bounded by
    the group (4 shards of 64k tokens at d_in=576 is about 300 MB in float16), and every token
    is yielded exactly once per epoch.
    """

    def __init__(self, path: str | Path, buffer_shards: int = 4):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise CacheError(f"{self.path} is not an activation cache (no {MANIFEST}). "
                             "Fix: build it with cache_activations first.")
        self.manifest = json.loads(manifest_path.read_text())
        if not self.manifest["complete"]:
            expected = -(-self.manifest["n_windows"] // self.manifest["windows_per_shard"])
            raise CacheError(f"The activation cache in {self.path} is incomplete "
                             f"({len(self.manifest['shards'])} of {expected} shards). "
                             "Fix: rerun cache_activations with the same arguments; it resumes.")
        if buffer_shards < 1:
            raise CacheError(f"buffer_shards={buffer_shards}; use at least 1.")
        self.buffer_shards = buffer_shards
        self.shards = [Shard(**s) for s in self.manifest["shards"]]

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def d_in(self) -> int:
        return self.manifest["d_in"]

    @property
    def hook_name(self) -> str:
        return self.manifest["hook_name"]

    def __repr__(self) -> str:
        return (f"ActivationCache({str(self.path)!r}, hook={self.hook_name!r}, n_tokens={self.n_tokens}, "
                f"d_in={self.d_in}, shards={len(self.shards)})")

    def load_shard(self, index: int) -> torch.Tensor:
        """One shard's (n_tokens, d_in) float16 activations, in window order."""
        from safetensors.torch import load_file

        shard = self.shards[index]
        acts = load_file(str(self.path / shard.file))[SHARD_KEY]
        if acts.shape != (shard.n_tokens, self.d_in):
            raise CacheError(f"{shard.file} holds {tuple(acts.shape)}, the manifest says "
                             f"({shard.n_tokens}, {self.d_in}). Fix: delete the cache folder and rebuild it.")
        return acts

    def n_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return self.n_tokens // batch_size if drop_last else -(-self.n_tokens // batch_size)

    def batches(self, batch_size: int, seed: int = 0, epoch: int = 0, start: int = 0,
                drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Shuffled (batch_size, d_in) float32 batches for one epoch, on the CPU.

        The order is a pure function of (seed, epoch, buffer_shards), so training can resume
        mid-epoch: `start` skips that many batches, and skipped shard groups are never read.
        The last batch is smaller unless `drop_last`.
        """
        order = np.random.default_rng([seed, epoch]).permutation(len(self.shards))
        skip = start * batch_size  # tokens of the epoch's stream still to skip
        carry = torch.zeros(0, self.d_in, dtype=torch.float16)  # tail shorter than a batch
        for g in range(0, len(order), self.buffer_shards):
            group = order[g:g + self.buffer_shards]
            size = sum(self.shards[i].n_tokens for i in group)
            if skip >= size:
                skip -= size
                continue
            perm = np.random.default_rng([seed, epoch, g]).permutation(size)[skip:]
            skip = 0
            acts = torch.cat([self.load_shard(i) for i in group])[torch.from_numpy(perm)]
            acts = torch.cat([carry, acts])
            n_full = len(acts) // batch_size * batch_size
            for lo in range(0, n_full, batch_size):
                yield acts[lo:lo + batch_size].float()
            carry = acts[n_full:]
        if len(carry) and not drop_last:
            yield carry.float()
