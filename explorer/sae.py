"""The sparse autoencoder (SAE) and its on-disk format.

One `SAE` module covers the four SAELens inference architectures (standard, topk,
jumprelu, gated) with SAELens's formulas, and reads and writes the SAELens v6 folder
format: cfg.json + sae_weights.safetensors [+ sparsity.safetensors].

Public names: SAEError, SAEConfig, SAE, load_sae, save_sae, load_gemma_scope_npz,
random_sae, fold_W_dec_norm, fold_activation_norm_scaling_factor, sae_fingerprint,
check_compatible.

Unlike SAELens, encode/decode store nothing on the module (SAELens keeps the per-token
normalisation statistics on `self` between encode and decode), so one SAE can serve
many threads. The price: decode needs the original input, `like=x`, for the two
per-token normalisations (constant_norm_rescale, layer_norm).

Only json, safetensors and npz (allow_pickle=False) are read; nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import zipfile
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from explorer.files import replacing, replacing_dir

log = logging.getLogger(__name__)

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SPARSITY_FILENAME = "sparsity.safetensors"
GEMMA_SCOPE_FILENAME = "params.npz"
# Written as metadata.sae_lens_version when the config has no v6 version of its own:
# SAELens runs its pre-6.0 conversion on anything older, and that would drop metadata.
SAE_LENS_FORMAT_VERSION = "6.0.0"

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
_PER_TOKEN_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")
_DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
# Flat keys of a pre-6.0 cfg.json that SAELens moves into "metadata" (LLM_METADATA_KEYS).
_LEGACY_METADATA_KEYS = frozenset({
    "model_name", "hook_name", "model_class_name", "hook_head_index",
    "model_from_pretrained_kwargs", "prepend_bos", "exclude_special_tokens",
    "neuronpedia_id", "context_size", "seqpos_slice", "dataset_path", "sae_lens_version",
    "sae_lens_training_version", "hook_name_out", "hook_head_index_out", "hf_hook_name",
    "hf_hook_name_out",
})
_V6_TOP_LEVEL_KEYS = (
    "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
    "reshape_activations", "k", "rescale_acts_by_decoder_norm",
)


class SAEError(ValueError):
    """An SAE cannot be loaded or used; the message names the problem and the fix."""


def _parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif str(dtype).removeprefix("torch.") in _DTYPES:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    raise SAEError(f"unsupported dtype {dtype!r}; use one of {', '.join(_DTYPES)}")


def _dtype_name(dtype: str | torch.dtype) -> str:
    return str(_parse_dtype(dtype)).removeprefix("torch.")


def _major_version(version: object) -> int:
    match = re.match(r"\s*v?(\d+)", str(version or ""))
    return int(match.group(1)) if match else 0


@dataclass
class SAEConfig:
    """What cfg.json says about an SAE. Fields are checked only when it is made, so
    prefer dataclasses.replace to assigning a field."""

    d_in: int
    """Width of the activations the SAE reads (the model's hidden size at hook_name)."""
    d_sae: int
    """Number of features."""
    architecture: str = "standard"
    """standard | topk | jumprelu | gated (the SAELens names)."""
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from the (normalised) input before encoding."""
    normalize_activations: str = "none"
    """none | expected_average_only_in | constant_norm_rescale | layer_norm. The first two
    do nothing at run time (fold an expected_average_only_in factor in with
    fold_activation_norm_scaling_factor); the last two rescale each token and decode
    undoes it."""
    k: int | None = None
    """topk only: features kept per token."""
    rescale_acts_by_decoder_norm: bool = False
    """topk only: rank features by pre-activation * ||W_dec[i]||; decode divides it out."""
    dtype: str = "float32"
    """Parameter dtype; "torch.float32"-style strings are accepted and stored short."""
    hook_name: str = ""
    """SAELens hook name, e.g. "blocks.15.hook_resid_post" (metadata.hook_name on disk)."""
    model_name: str = ""
    """metadata.model_name on disk."""
    metadata: dict = field(default_factory=dict)
    """Every other cfg.json metadata entry, kept as read for the round trip."""

    def __post_init__(self) -> None:
        self.dtype = _dtype_name(self.dtype)
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise SAEError(f"{name} must be a positive int, got {value!r}; fix cfg.json")
        if self.architecture not in ARCHITECTURES:
            raise SAEError(
                f"unknown SAE architecture {self.architecture!r}; supported: "
                f"{', '.join(ARCHITECTURES)}. SAELens transcoders and training-only kinds "
                "are not supported (SAELens saves batchtopk SAEs as jumprelu)."
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise SAEError(
                f"unsupported normalize_activations {self.normalize_activations!r}; "
                f"supported: {', '.join(NORMALIZATIONS)}. For covariance_whitening, fold the "
                "whitening into the weights with SAELens's fold_activation_whitening first."
            )
        if self.architecture == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
                raise SAEError(f"topk needs an int k in 1..d_sae={self.d_sae}, got k={self.k!r}")
        elif self.k is not None or self.rescale_acts_by_decoder_norm:
            raise SAEError(
                f"k and rescale_acts_by_decoder_norm only apply to topk SAEs, not "
                f"{self.architecture!r}; leave them unset"
            )

    def to_dict(self) -> dict:
        """The SAELens v6 cfg.json dict."""
        metadata = dict(self.metadata)
        if _major_version(metadata.get("sae_lens_version")) < 6:
            metadata["sae_lens_version"] = SAE_LENS_FORMAT_VERSION
        metadata.setdefault("sae_lens_training_version", None)
        # SAELens writes null for an unknown model or hook.
        metadata["model_name"] = self.model_name or None
        metadata["hook_name"] = self.hook_name or None
        d = {
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "dtype": self.dtype,
            "device": "cpu",  # every loader overrides it
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "normalize_activations": self.normalize_activations,
            "reshape_activations": "none",
            "metadata": metadata,
            "architecture": self.architecture,
        }
        if self.architecture == "topk":
            d["k"] = self.k
            d["rescale_acts_by_decoder_norm"] = self.rescale_acts_by_decoder_norm
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SAEConfig:
        """Read a cfg.json dict (v6, or pre-6.0 converted as SAELens does); unknown keys are ignored."""
        if not isinstance(d, dict):
            raise SAEError(f"cfg.json must hold a JSON object, got {type(d).__name__}")
        if _is_pre_6_0(d):
            d = convert_pre_6_0_config(d)
        if d.get("reshape_activations") == "hook_z":
            raise SAEError(
                "hook_z SAEs (attention outputs reshaped from [..., n_heads, d_head]) are not "
                "supported; choose a residual-stream or MLP-output SAE"
            )
        missing = [key for key in ("d_in", "d_sae") if key not in d]
        if missing:
            raise SAEError(f"cfg.json lacks {missing}; every SAELens config has d_in and d_sae")
        architecture = d.get("architecture", "standard")
        topk = architecture == "topk"
        metadata = dict(d.get("metadata") or {})
        hook_name = metadata.pop("hook_name", None) or ""
        model_name = metadata.pop("model_name", None) or ""
        # Drop what to_dict adds by default, so from_dict(to_dict()) is the identity; a
        # pre-6.0 version number no longer describes the (converted) config either.
        version = metadata.get("sae_lens_version")
        if version == SAE_LENS_FORMAT_VERSION or _major_version(version) < 6:
            metadata.pop("sae_lens_version", None)
        if "sae_lens_training_version" in metadata and metadata["sae_lens_training_version"] is None:
            del metadata["sae_lens_training_version"]
        return cls(
            d_in=d["d_in"],
            d_sae=d["d_sae"],
            architecture=architecture,
            apply_b_dec_to_input=bool(d.get("apply_b_dec_to_input", True)),
            normalize_activations=d.get("normalize_activations") or "none",
            k=d.get("k", 100) if topk else None,  # 100 is SAELens's TopKSAEConfig default
            rescale_acts_by_decoder_norm=bool(d.get("rescale_acts_by_decoder_norm", False)) and topk,
            dtype=str(d.get("dtype", "float32")),
            hook_name=hook_name,
            model_name=model_name,
            metadata=metadata,
        )


def _is_pre_6_0(d: dict) -> bool:
    version = d.get("sae_lens_version") or (d.get("metadata") or {}).get("sae_lens_version")
    return _major_version(version) < 6


def convert_pre_6_0_config(d: dict) -> dict:
    """A pre-6.0 cfg.json dict in v6 form, as SAELens's handle_pre_6_0_config makes it."""
    renames = {"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
               "activation_fn_str": "activation_fn"}
    new = {renames.get(key, key): value for key, value in d.items()}
    new.setdefault("prepend_bos", True)
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("sae_lens_training_version", None)
    new.setdefault("activation_fn", "relu")
    new.setdefault("architecture", "standard")
    new.setdefault("neuronpedia_id", None)
    new.setdefault("reshape_activations", "hook_z" if "hook_z" in (new.get("hook_name") or "") else "none")
    topk_k = (new.get("activation_fn_kwargs") or {}).get("k")
    if new["activation_fn"] == "topk" and topk_k is not None:
        new["architecture"] = "topk"
        new["k"] = topk_k
    elif new["activation_fn"] not in ("relu", "topk"):
        log.warning("legacy activation_fn %r is read as ReLU, as SAELens does", new["activation_fn"])
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    new["normalize_activations"] = new.get("normalize_activations") or "none"
    out = {key: new[key] for key in _V6_TOP_LEVEL_KEYS if key in new}
    out["metadata"] = {key: value for key, value in new.items() if key in _LEGACY_METADATA_KEYS}
    out["architecture"] = new["architecture"]
    return out


def _param_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"W_enc": (cfg.d_in, cfg.d_sae), "W_dec": (cfg.d_sae, cfg.d_in), "b_dec": (cfg.d_in,)}
    if cfg.architecture == "gated":
        shapes |= {"b_gate": (cfg.d_sae,), "b_mag": (cfg.d_sae,), "r_mag": (cfg.d_sae,)}
    else:
        shapes["b_enc"] = (cfg.d_sae,)
    if cfg.architecture == "jumprelu":
        shapes["threshold"] = (cfg.d_sae,)
    return shapes


class SAE(nn.Module):
    """A sparse autoencoder; parameter names and shapes are SAELens's (row-vector convention)."""

    cfg: SAEConfig
    W_enc: nn.Parameter  # (d_in, d_sae)
    W_dec: nn.Parameter  # (d_sae, d_in)
    b_dec: nn.Parameter  # (d_in,)
    # b_enc (d_sae,) except gated; jumprelu adds threshold (d_sae,); gated has b_gate, b_mag, r_mag (d_sae,)
    sparsity: Tensor | None
    """log10(feature frequency + 1e-10) from sparsity.safetensors, (d_sae,), if the folder had it."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dtype = _parse_dtype(cfg.dtype)
        for name, shape in _param_shapes(cfg).items():
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=dtype)))
        self.sparsity = None

    @property
    def device(self) -> torch.device:
        return self.W_dec.device

    @property
    def dtype(self) -> torch.dtype:
        return self.W_dec.dtype

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k is not None else ""
        return f"{self.cfg.architecture}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}{k}, hook={self.cfg.hook_name!r}"

    def encode(self, x: Tensor) -> Tensor:
        """(..., d_in) activations -> (..., d_sae) features, in the SAE's dtype."""
        self._check_last_dim(x, self.cfg.d_in, "encode(x)", "d_in")
        x = x.to(self.dtype)
        sae_in = _normalize_in(x, self.cfg)
        if self.cfg.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        if self.cfg.architecture == "gated":
            gate = (sae_in @ self.W_enc + self.b_gate) > 0
            magnitude = torch.relu(sae_in @ (self.W_enc * self.r_mag.exp()) + self.b_mag)
            return gate.to(magnitude.dtype) * magnitude
        pre = sae_in @ self.W_enc + self.b_enc
        if self.cfg.architecture == "standard":
            return torch.relu(pre)
        if self.cfg.architecture == "jumprelu":
            return torch.relu(pre) * (pre > self.threshold).to(pre.dtype)  # strict >, as SAELens
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        # SAELens takes the top k first and applies ReLU to them after.
        values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, indices, values.relu())

    def decode(self, f: Tensor, like: Tensor | None = None) -> Tensor:
        """(..., d_sae) features -> (..., d_in) reconstruction.

        `like` is the input x that `f` was encoded from; constant_norm_rescale and
        layer_norm SAEs need it to undo their per-token normalisation. Ignored otherwise.
        """
        self._check_last_dim(f, self.cfg.d_sae, "decode(f)", "d_sae")
        f = f.to(self.dtype)
        if self.cfg.rescale_acts_by_decoder_norm:
            f = f * (1 / self.W_dec.norm(dim=-1))
        out = f @ self.W_dec + self.b_dec
        norm = self.cfg.normalize_activations
        if norm not in _PER_TOKEN_NORMALIZATIONS:
            return out
        if like is None:
            raise SAEError(
                f"this SAE normalises each token ({norm}), so decode needs the original input "
                "to undo it: call decode(f, like=x) or forward(x)"
            )
        self._check_last_dim(like, self.cfg.d_in, "decode(like=...)", "d_in")
        like = like.to(self.dtype)
        if norm == "constant_norm_rescale":
            return out / _norm_coeff(like, self.cfg.d_in)
        mu, std = _ln_stats(like)
        return out * std + mu

    def decode_change(self, f: Tensor, f_new: Tensor, features: list[int], like: Tensor | None = None) -> Tensor:
        """decode(f_new, like) - decode(f, like) when f and f_new differ only at `features`.

        The decoder is affine in f (b_dec cancels; a per-token norm only scales), so
        the edited features' decoder rows suffice: a steering step reads a few rows
        of W_dec instead of all of it, twice."""
        idx = torch.as_tensor(features, dtype=torch.long, device=self.W_dec.device)
        rows = self.W_dec[idx]
        change = (f_new[..., idx] - f[..., idx]).to(self.dtype)
        if self.cfg.rescale_acts_by_decoder_norm:
            change = change / rows.norm(dim=-1)
        out = change @ rows
        norm = self.cfg.normalize_activations
        if norm not in _PER_TOKEN_NORMALIZATIONS:
            return out
        if like is None:
            raise SAEError(f"this SAE normalises each token ({norm}): call decode_change(..., like=x)")
        like = like.to(self.dtype)
        if norm == "constant_norm_rescale":
            return out / _norm_coeff(like, self.cfg.d_in)
        return out * _ln_stats(like)[1]

    def forward(self, x: Tensor) -> Tensor:
        """(..., d_in) -> (..., d_in) reconstruction: decode(encode(x), like=x)."""
        return self.decode(self.encode(x), like=x)

    def _check_last_dim(self, t: Tensor, want: int, what: str, name: str) -> None:
        if t.shape[-1:] != (want,):
            raise SAEError(
                f"{what} got shape {list(t.shape)}, but this SAE's {name} is {want}; pass tensors "
                f"shaped (..., {want}) (check that the hook and model match the SAE's "
                f"{self.cfg.hook_name or 'hook'})"
            )


def _norm_coeff(x: Tensor, d_in: int) -> Tensor:
    return (d_in**0.5) / x.norm(dim=-1, keepdim=True)


def _ln_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    mu = x.mean(dim=-1, keepdim=True)
    return mu, (x - mu).std(dim=-1, keepdim=True)  # unbiased std, as SAELens


def _normalize_in(x: Tensor, cfg: SAEConfig) -> Tensor:
    if cfg.normalize_activations == "constant_norm_rescale":
        return x * _norm_coeff(x, cfg.d_in)
    if cfg.normalize_activations == "layer_norm":
        mu, std = _ln_stats(x)
        return (x - mu) / (std + 1e-5)  # eps only on the way in, as SAELens
    return x


def _build(cfg: SAEConfig, tensors: dict[str, Tensor], source: str) -> SAE:
    """An SAE from named tensors, after checking names, shapes and finiteness."""
    expected = _param_shapes(cfg)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    present = ", ".join(f"{name} {list(t.shape)}" for name, t in sorted(tensors.items()))
    if missing:
        raise SAEError(
            f"{source}: missing tensor(s) {missing} for a {cfg.architecture} SAE; it holds: "
            f"{present or 'nothing'}. Fix: check cfg.json 'architecture', or re-export the SAE."
        )
    if unexpected:
        raise SAEError(
            f"{source}: unexpected tensor(s) {unexpected} for a {cfg.architecture} SAE (it "
            f"holds: {present}). Fix: cfg.json 'architecture' probably names the wrong kind."
        )
    dtype = _parse_dtype(cfg.dtype)
    cast = {}
    for name, shape in expected.items():
        t = tensors[name]
        if tuple(t.shape) != shape:
            raise SAEError(
                f"{source}: tensor {name} has shape {list(t.shape)}, expected {list(shape)} "
                f"from cfg.json (d_in={cfg.d_in}, d_sae={cfg.d_sae}). Fix: cfg.json and the "
                "weights disagree; correct d_in/d_sae or re-export the SAE."
            )
        t = t.to(dtype)
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise SAEError(
                f"{source}: tensor {name} has {bad} NaN/inf value(s) of {t.numel()} (as "
                f"{cfg.dtype}). Fix: the weights are corrupt or overflow {cfg.dtype}; re-download "
                "them or load in float32."
            )
        cast[name] = t
    with torch.device("meta"):  # no throwaway allocation: the tensors are assigned below
        sae = SAE(cfg)
    sae.load_state_dict(cast, strict=True, assign=True)
    return sae


def _listing(folder: Path, limit: int = 20) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return shown or "nothing (empty folder)"


def _folder_hint(folder: Path) -> str:
    if (folder / GEMMA_SCOPE_FILENAME).is_file():
        return " It looks like a Gemma Scope SAE: use load_gemma_scope_npz(path, hook_name=...)."
    if (folder / "sae.safetensors").is_file():
        return " It looks like an EleutherAI sparsify SAE, which load_sae does not read."
    below = sorted(p.parent.relative_to(folder).as_posix() for p in folder.glob("*/**/" + CFG_FILENAME))
    if below:
        return f" SAE folders below it: {', '.join(below[:10])}; pass one of those."
    return ""


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
        cfg = dataclasses.replace(cfg, dtype=_dtype_name(dtype))
    weights_file = folder / WEIGHTS_FILENAME
    tensors = _read_safetensors(weights_file)
    _drop_legacy_scaling_factor(tensors, raw, str(weights_file))
    if cfg.architecture == "jumprelu" and "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").float().exp()  # a training checkpoint
    sae = _build(cfg, tensors, str(weights_file)).to(device)
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
    cfg = dataclasses.replace(sae.cfg, dtype=_dtype_name(sae.dtype))  # a .to(dtype) wins
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
    if "hook_z" in hook_name:
        raise SAEError("Gemma Scope attention (hook_z) SAEs are not supported; use a res or mlp SAE")
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
        metadata={"context_size": 1024, "prepend_bos": True, "dataset_path": "monology/pile-uncopyrighted"},
    )
    return _build(cfg, tensors, str(file))


def random_sae(d_in: int, d_sae: int, architecture: str = "topk", k: int = 32, hook_name: str = "",
               model_name: str = "", seed: int = 0) -> SAE:
    """An untrained SAE: unit-norm random decoder rows, W_enc = W_dec.T, zero biases.

    Thresholds are zero (jumprelu acts as ReLU); topk keeps min(k, d_sae) features.
    """
    generator = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=generator)
    W_dec = W_dec / W_dec.norm(dim=-1, keepdim=True)
    cfg = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture=architecture,
        k=min(k, d_sae) if architecture == "topk" else None,
        hook_name=hook_name, model_name=model_name, metadata={"untrained": True},
    )
    tensors = {name: torch.zeros(shape) for name, shape in _param_shapes(cfg).items()}
    tensors["W_dec"], tensors["W_enc"] = W_dec, W_dec.T.clone()
    return _build(cfg, tensors, "random_sae")


def _params(sae: SAE) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in sae.named_parameters()}


def _rebuilt(sae: SAE, cfg: SAEConfig, tensors: dict[str, Tensor], what: str) -> SAE:
    new = _build(dataclasses.replace(cfg, dtype=_dtype_name(sae.dtype)), tensors, what)
    new.sparsity = sae.sparsity
    return new


@torch.no_grad()
def fold_W_dec_norm(sae: SAE) -> SAE:
    """A copy with unit-norm decoder rows and the norms moved into the encoder.

    Reconstructions (and jumprelu/gated active sets) are unchanged; features are scaled
    by ||W_dec[i]||. topk is refused unless rescale_acts_by_decoder_norm, as in SAELens,
    because the top-k choice would change.
    """
    if sae.cfg.architecture == "topk" and not sae.cfg.rescale_acts_by_decoder_norm:
        raise SAEError(
            "folding decoder norms into a topk SAE changes which features win the top-k unless "
            "rescale_acts_by_decoder_norm is true; use this SAE unfolded"
        )
    t = _params(sae)
    norms = t["W_dec"].norm(dim=-1).clamp(min=1e-8)
    t["W_dec"] = t["W_dec"] / norms[:, None]
    t["W_enc"] = t["W_enc"] * norms
    for name in ("b_enc", "threshold", "b_gate", "b_mag"):  # r_mag needs none: W_enc carries it
        if name in t:
            t[name] = t[name] * norms
    return _rebuilt(sae, sae.cfg, t, "fold_W_dec_norm")


@torch.no_grad()
def fold_activation_norm_scaling_factor(sae: SAE, s: float) -> SAE:
    """A copy that takes raw activations where `sae` took activations * s.

    W_enc *= s, W_dec /= s, b_dec /= s; normalize_activations becomes "none". So
    new.encode(x) == sae.encode(x * s) and new.forward(x) == sae.forward(x * s) / s.
    """
    if sae.cfg.normalize_activations in _PER_TOKEN_NORMALIZATIONS:
        raise SAEError(
            f"a {sae.cfg.normalize_activations} SAE rescales every token itself; a constant "
            "factor cannot be folded into it"
        )
    t = _params(sae)
    t["W_enc"] = t["W_enc"] * s
    t["W_dec"] = t["W_dec"] / s
    t["b_dec"] = t["b_dec"] / s
    cfg = dataclasses.replace(sae.cfg, normalize_activations="none")
    return _rebuilt(sae, cfg, t, "fold_activation_norm_scaling_factor")


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


def check_compatible(sae: SAE, d_model: int, hook_name: str | None = None) -> None:
    """Raise SAEError unless the SAE reads activations as wide as the model's (d_model).

    A differing hook name is only logged: the same point has several spellings.
    """
    if sae.cfg.d_in != d_model:
        trained_on = f" (cfg.json says it was trained on {sae.cfg.model_name!r})" if sae.cfg.model_name else ""
        raise SAEError(
            f"the SAE reads {sae.cfg.d_in}-wide activations but the model's hidden size is "
            f"{d_model}{trained_on}. Fix: load an SAE trained on this model, or a model whose "
            f"hidden size is {sae.cfg.d_in}."
        )
    if hook_name and sae.cfg.hook_name and hook_name != sae.cfg.hook_name:
        log.warning("SAE was trained at %s but is being attached at %s", sae.cfg.hook_name, hook_name)
