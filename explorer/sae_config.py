"""SAEConfig: what an SAE's cfg.json says, in SAELens's v6 form.

Public names: SAEError, SAEConfig, convert_pre_6_0_config, parse_dtype, dtype_name,
ARCHITECTURES, NORMALIZATIONS.

SAEConfig.from_dict reads v6 dicts and converts pre-6.0 ones the way SAELens's
handle_pre_6_0_config does; to_dict writes v6. from_dict also states
metadata.model_from_pretrained_kwargs as SAELens reads it today (flags over
from_pretrained_no_processing) for SAEs trained when SAELens meant from_pretrained's
defaults (explorer.tl_processing reads the flags). Files are read and written in
sae_files.py; this module knows dicts only.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

# Written as metadata.sae_lens_version when the config has no v6 version of its own:
# SAELens runs its pre-6.0 conversion on anything older, and that would drop metadata.
SAE_LENS_FORMAT_VERSION = "6.0.0"

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")
RESHAPES = ("none", "hook_z")
NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")
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
# SAELens passed model_from_pretrained_kwargs to HookedTransformer.from_pretrained, every
# processing flag on by default, until 3.19.2, and to from_pretrained_no_processing since
# (SAELens PR #279, "fix: centre writing weights defaults").
_NO_PROCESSING_SINCE = (3, 19, 2)
_FROM_PRETRAINED_DEFAULTS = {"fold_ln": True, "center_writing_weights": True, "center_unembed": True,
                             "fold_value_biases": True}
_V6_TOP_LEVEL_KEYS = (
    "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
    "reshape_activations", "k", "rescale_acts_by_decoder_norm",
)


class SAEError(ValueError):
    """An SAE cannot be loaded or used; the message names the problem and the fix."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype named by "float32", "torch.float32" or torch.float32 itself."""
    if isinstance(dtype, torch.dtype):
        if dtype in _DTYPES.values():
            return dtype
    elif str(dtype).removeprefix("torch.") in _DTYPES:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    raise SAEError(f"unsupported dtype {dtype!r}; use one of {', '.join(_DTYPES)}")


def dtype_name(dtype: str | torch.dtype) -> str:
    """The short name cfg.json uses ("float32") for any form parse_dtype accepts."""
    return str(parse_dtype(dtype)).removeprefix("torch.")


def _major_version(version: object) -> int:
    match = re.match(r"\s*v?(\d+)", str(version or ""))
    return int(match.group(1)) if match else 0


def _version(version: object) -> tuple[int, int, int] | None:
    match = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(version or ""))
    return tuple(int(part or 0) for part in match.groups()) if match else None


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
    reshape_activations: str = "none"
    """none | hook_z: SAELens flattens attn.hook_z's (..., n_heads, d_head) to (..., n_heads * d_head);
    our attn.hook_z activations come flat already, so it changes nothing at run time."""
    dtype: str = "float32"
    """Parameter dtype; "torch.float32"-style strings are accepted and stored short."""
    hook_name: str = ""
    """SAELens hook name, e.g. "blocks.15.hook_resid_post" (metadata.hook_name on disk)."""
    model_name: str = ""
    """metadata.model_name on disk."""
    metadata: dict = field(default_factory=dict)
    """Every other cfg.json metadata entry, kept as read for the round trip."""

    def __post_init__(self) -> None:
        self.dtype = dtype_name(self.dtype)
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
        if self.reshape_activations not in RESHAPES or (
                self.reshape_activations == "hook_z" and self.hook_name and not self.hook_name.endswith("hook_z")):
            raise SAEError(
                f"reshape_activations={self.reshape_activations!r} with hook {self.hook_name!r}: use 'none', or "
                "'hook_z' for an SAE at blocks.L.attn.hook_z"
            )
        if self.architecture == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
                raise SAEError(f"topk needs an int k in 1..d_sae={self.d_sae}, got k={self.k!r}")
        elif self.k is not None or self.rescale_acts_by_decoder_norm:
            raise SAEError(
                f"k and rescale_acts_by_decoder_norm only apply to topk SAEs, not "
                f"{self.architecture!r}; leave them unset"
            )

    @property
    def neuronpedia_id(self) -> str:
        """metadata.neuronpedia_id, e.g. "gpt2-small/0-res-jb" ("" when the SAE has none)."""
        return str(self.metadata.get("neuronpedia_id") or "")

    @property
    def dataset_path(self) -> str:
        """metadata.dataset_path: the dataset the SAE was trained on ("" when not said)."""
        return str(self.metadata.get("dataset_path") or "")

    @property
    def context_size(self) -> int | None:
        """metadata.context_size: tokens per training sequence."""
        value = self.metadata.get("context_size")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def prepend_bos(self) -> bool | None:
        """metadata.prepend_bos: whether its training sequences began with BOS."""
        value = self.metadata.get("prepend_bos")
        return value if isinstance(value, bool) else None

    def provenance(self) -> str:
        """What the config says about the SAE's training, in one line ("" when it says nothing)."""
        bos = {True: "BOS prepended", False: "no BOS", None: ""}[self.prepend_bos]
        parts = (
            f"model {self.model_name}" if self.model_name else "",
            f"dataset {self.dataset_path}" if self.dataset_path else "",
            f"context {self.context_size} tokens" if self.context_size else "",
            bos,
            f"Neuronpedia {self.neuronpedia_id}" if self.neuronpedia_id else "",
        )
        return " · ".join(p for p in parts if p)

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
            "reshape_activations": self.reshape_activations,
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
        pre_6_0 = _is_pre_6_0(d)
        if pre_6_0:
            d = convert_pre_6_0_config(d)
        missing = [key for key in ("d_in", "d_sae") if key not in d]
        if missing:
            raise SAEError(f"cfg.json lacks {missing}; every SAELens config has d_in and d_sae")
        architecture = d.get("architecture", "standard")
        topk = architecture == "topk"
        metadata = _tl_kwargs_as_today(dict(d.get("metadata") or {}), pre_6_0)
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
            reshape_activations=d.get("reshape_activations") or "none",
            dtype=str(d.get("dtype", "float32")),
            hook_name=hook_name,
            model_name=model_name,
            metadata=metadata,
        )


def _tl_kwargs_as_today(metadata: dict, pre_6_0: bool) -> dict:
    """metadata whose model_from_pretrained_kwargs mean what SAELens reads today: flags on
    top of from_pretrained_no_processing.

    An SAE that SAELens before 3.19.2 trained (its version says so), or a pre-6.0 config
    that names no kwargs (gpt2-small-res-jb and the other mats_sae_training SAEs), was
    trained with from_pretrained's defaults: those are written out. Other configs are kept."""
    if (metadata.get("model_class_name") or "HookedTransformer") != "HookedTransformer":
        return metadata  # a transformers model: its kwargs are not TransformerLens flags
    kwargs = metadata.get("model_from_pretrained_kwargs")
    version = _version(metadata.get("sae_lens_training_version") or metadata.get("sae_lens_version"))
    trained_with_defaults = version < _NO_PROCESSING_SINCE if version else pre_6_0 and kwargs is None
    if not trained_with_defaults:
        return metadata
    return {**metadata, "model_from_pretrained_kwargs": {**_FROM_PRETRAINED_DEFAULTS, **(kwargs or {})}}


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

