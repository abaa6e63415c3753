"""Reading and writing SAE files: SAELens folders and Gemma Scope npz.

The SAELens v6 folder format is cfg.json + sae_weights.safetensors
[+ sparsity.safetensors]; pre-6.0 configs are converted as SAELens does
(sae_config.py), and old scaling_factor tensors are dropped or folded in.

Public names: load_sae, save_sae, load_gemma_scope_npz, sae_fingerprint, and the file
names CFG_FILENAME, WEIGHTS_FILENAME, SPARSITY_FILENAME, GEMMA_SCOPE_FILENAME.

Only json, safetensors and npz (allow_pickle=False) are read; nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import zipfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from explorer.files import replacing, replacing_dir
from explorer.sae import SAE, build_sae
from explorer.sae_config import SAEConfig, SAEError, dtype_name

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
GEMMA_SCOPE_FILENAME = "params.npz"


def _listing(folder: Path, limit: int = 20) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return shown or "nothing (empty folder)"


def _folder_hint(folder: Path) -> str:
    if (folder / GEMMA_SCOPE_FILENAME).is_file():
        return " It looks like a Gemma Scope SAE: use load_gemma_scope_npz(path, hook_name=...)."
    if (folder / "sae.safetensors").is_file():
        return " It looks like an EleutherAI sparsify SAE, which load_sae does not read."
    below = _sae_folders_below(folder)
    if below:
        return f" SAE folders below it: {', '.join(below[:10])}; pass one of those."
    return ""


def _sae_folders_below(folder: Path, max_depth: int = 3, max_folders: int = 2000) -> list[str]:
    """SAE folders (holding cfg.json) under `folder`, at most `max_depth` levels down.
    A bounded walk that follows no symlinks: a mistyped path such as `/` costs a
    moment, and nothing outside `folder` is listed."""
    found = []
    for seen, (root, dirs, files) in enumerate(os.walk(folder)):  # os.walk follows no links by default
        depth = len(Path(root).relative_to(folder).parts)
        if depth and CFG_FILENAME in files:
            found.append(Path(root).relative_to(folder).as_posix())
        if seen >= max_folders:
            break
        dirs.sort()
        if depth >= max_depth:
            dirs.clear()
    return sorted(found)


def _sae_folder(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise SAEError(
            f"SAE folder {folder} does not exist. Fix: pass the folder that holds "
            f"{CFG_FILENAME} and {WEIGHTS_FILENAME}."
        )
    if folder.is_file():
        if folder.suffix == ".npz":
            raise SAEError(f"{folder} is an npz file: use load_gemma_scope_npz(path, hook_name=...)")
        raise SAEError(f"{folder} is a file; pass the SAE folder that holds it: {folder.parent}")
    missing = [name for name in (CFG_FILENAME, WEIGHTS_FILENAME) if not (folder / name).is_file()]
    if missing:
        raise SAEError(
            f"{folder} is not an SAELens SAE folder: it lacks {', '.join(missing)}. It "
            f"contains: {_listing(folder)}.{_folder_hint(folder)}"
        )
    return folder


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SAEError(f"{file} is not valid JSON ({e}); re-download or re-export the SAE") from e


def _read_safetensors(file: Path) -> dict[str, Tensor]:
    try:
        with safe_open(file, framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise SAEError(f"cannot read {file} ({e}); it is truncated or not safetensors, re-download it") from e


def _drop_legacy_scaling_factor(tensors: dict[str, Tensor], raw_cfg: dict, source: str) -> None:
    """Old SAELens decoded (f * scaling_factor) @ W_dec + b_dec and always saved the factor.

    All ones: dropped, as SAELens does. Otherwise, when the config says
    finetuning_scaling_factor, it is folded into W_dec's rows, which gives the same decode;
    SAELens 6 cannot load such a file at all. Without that flag the factor's meaning is
    unclear, so we refuse, like SAELens.
    """
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        if name not in tensors:
            continue
        factor = tensors.pop(name).float()
        if torch.allclose(factor, torch.ones_like(factor)):
            continue
        if not raw_cfg.get("finetuning_scaling_factor"):
            raise SAEError(
                f"{source}: tensor {name} is not all ones but the config does not set "
                "finetuning_scaling_factor, so its meaning is unclear. Fix: fold it into W_dec "
                "(W_dec[i] *= factor[i]) yourself, drop the tensor and save again."
            )
        W_dec = tensors.get("W_dec")
        if W_dec is None or W_dec.shape[:1] != factor.shape:
            raise SAEError(f"{source}: {name} has shape {list(factor.shape)}, which does not match W_dec's rows")
        tensors["W_dec"] = W_dec.float() * factor[:, None]


def load_sae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> SAE:
    """Load an SAELens-format SAE folder; `dtype` overrides cfg.json's dtype."""
    folder = _sae_folder(path)
    raw = _read_json(folder / CFG_FILENAME)
    cfg = SAEConfig.from_dict(raw)
    if dtype is not None:
        cfg = dataclasses.replace(cfg, dtype=dtype_name(dtype))
    weights_file = folder / WEIGHTS_FILENAME
    tensors = _read_safetensors(weights_file)
    _drop_legacy_scaling_factor(tensors, raw, str(weights_file))
    if cfg.architecture == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp()  # a training checkpoint
    sae = build_sae(cfg, tensors, str(weights_file)).to(device)
    sparsity_file = folder / SPARSITY_FILENAME
    if sparsity_file.is_file():
        sparsity = _read_safetensors(sparsity_file).get("sparsity")
        if sparsity is None or tuple(sparsity.shape) != (cfg.d_sae,):
            raise SAEError(
                f"{sparsity_file} must hold one tensor 'sparsity' of shape [{cfg.d_sae}]; "
                "delete the file if it belongs to another SAE"
            )
        sae.sparsity = sparsity.float().to(device)
    return sae


def save_sae(sae: SAE, path: str | Path, sparsity: Tensor | None = None) -> None:
    """Write `sae` as an SAELens v6 folder; `sparsity` defaults to sae.sparsity.

    A new folder appears whole (written aside, then renamed). Into an existing folder
    each file is replaced atomically, cfg.json last, and a stale sparsity file is
    removed; other files there are left alone.
    """
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise SAEError(f"{path} is a file; save_sae needs a folder path")
    cfg = dataclasses.replace(sae.cfg, dtype=dtype_name(sae.dtype))  # a .to(dtype) wins
    sparsity = sae.sparsity if sparsity is None else sparsity
    if sparsity is not None and tuple(sparsity.shape) != (cfg.d_sae,):
        raise SAEError(f"sparsity must have shape [{cfg.d_sae}], got {list(sparsity.shape)}")
    tensors = {name: p.detach().cpu().contiguous() for name, p in sae.named_parameters()}
    if sparsity is not None:
        sparsity = sparsity.detach().float().cpu().contiguous()
    names = [WEIGHTS_FILENAME] + ([SPARSITY_FILENAME] if sparsity is not None else []) + [CFG_FILENAME]
    if not path.exists():
        with replacing_dir(path) as tmp:
            _write_sae_files({name: tmp / name for name in names}, tensors, sparsity, cfg)
        return
    with ExitStack() as stack:
        # Contexts close last in, first out: entering cfg.json first replaces it last,
        # and a failed write leaves every old file in place.
        temps = {name: stack.enter_context(replacing(path / name)) for name in reversed(names)}
        _write_sae_files(temps, tensors, sparsity, cfg)
        if sparsity is None:  # removed before the new cfg.json appears, so it never pairs with it
            (path / SPARSITY_FILENAME).unlink(missing_ok=True)


def _write_sae_files(paths: dict[str, Path], tensors: dict[str, Tensor], sparsity: Tensor | None,
                     cfg: SAEConfig) -> None:
    save_file(tensors, paths[WEIGHTS_FILENAME], metadata={"format": "pt"})
    if sparsity is not None:
        save_file({"sparsity": sparsity}, paths[SPARSITY_FILENAME])
    paths[CFG_FILENAME].write_text(json.dumps(cfg.to_dict(), indent=2))


def load_gemma_scope_npz(path: str | Path, hook_name: str, d_sae: int | None = None, model_name: str = "") -> SAE:
    """Load a Gemma Scope params.npz (a file, or the folder holding it) as a jumprelu SAE.

    Keys w_* become W_*; d_in and d_sae come from W_enc's shape. Like SAELens: no b_dec
    subtraction on input, and embedding SAEs (hook_name "hook_embed") get
    W_enc /= sqrt(d_in), W_dec *= sqrt(d_in).
    """
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / GEMMA_SCOPE_FILENAME
    if not file.is_file():
        where = f" It contains: {_listing(file.parent)}." if file.parent.is_dir() else ""
        raise SAEError(f"Gemma Scope file {file} does not exist.{where} Fix: pass the path of params.npz.")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise SAEError(f"cannot read {file} as npz ({e}); re-download it") from e
    tensors = {("W_" + key[2:] if key.startswith("w_") else key): torch.tensor(a, dtype=torch.float32)
               for key, a in arrays.items()}
    _drop_legacy_scaling_factor(tensors, {}, str(file))
    if "W_enc" not in tensors or tensors["W_enc"].ndim != 2:
        raise SAEError(f"{file}: no 2-D w_enc array, so d_in/d_sae cannot be read; it holds {sorted(arrays)}")
    d_in, found_d_sae = tensors["W_enc"].shape
    if d_sae is not None and d_sae != found_d_sae:
        raise SAEError(f"{file}: W_enc has {found_d_sae} features but d_sae={d_sae} was asked; check the width_* folder")
    if hook_name == "hook_embed" and "W_dec" in tensors:  # trained on embeddings scaled by sqrt(d_model)
        tensors["W_enc"] = tensors["W_enc"] / math.sqrt(d_in)
        tensors["W_dec"] = tensors["W_dec"] * math.sqrt(d_in)
    cfg = SAEConfig(
        d_in=d_in, d_sae=found_d_sae, architecture="jumprelu", apply_b_dec_to_input=False,
        hook_name=hook_name, model_name=model_name,
        reshape_activations="hook_z" if hook_name.endswith("attn.hook_z") else "none",
        metadata={"context_size": 1024, "prepend_bos": True, "dataset_path": "monology/pile-uncopyrighted"},
    )
    return build_sae(cfg, tensors, str(file))


def sae_fingerprint(path: str | Path) -> str:
    """sha256 hex of sae_weights.safetensors then cfg.json (or of a Gemma Scope params.npz)."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix == ".npz":
        files = [path]
    elif path.is_dir() and not (path / CFG_FILENAME).exists() and (path / GEMMA_SCOPE_FILENAME).is_file():
        files = [path / GEMMA_SCOPE_FILENAME]
    else:
        folder = _sae_folder(path)
        files = [folder / WEIGHTS_FILENAME, folder / CFG_FILENAME]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
