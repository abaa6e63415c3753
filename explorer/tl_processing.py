"""TransformerLens weight processing: what an SAE's cfg.json says about it, and the map from
this project's activations (a plain transformers model) into that SAE's input space.

Public names: TLProcessing, SAESpace, sae_space, describe, FLAGS.

SAELens trains and evaluates on `HookedTransformer.from_pretrained_no_processing(
**model_from_pretrained_kwargs)` (SAELens >= 3.19.2: sae_lens/load_model.py, evals.py;
sae_config.py rewrites older configs into that reading). Per flag, at the hooks we support:

- center_writing_weights, LayerNorm models only (TransformerLens skips it for RMSNorm):
  every weight writing to the residual stream is centred along d_model, so hook_resid_pre,
  hook_resid_post, hook_attn_out and hook_mlp_out are the raw activation minus its mean
  over d_model. attn.hook_z is unchanged.
- fold_value_biases: b_V is moved into b_O, so attn.hook_z lacks the value bias; with
  fold_ln on, LayerNorm's bias had first been folded into b_V. So z_TL = z_raw - V(c), with
  V the value projection (biases included) and c = ln_1.bias (fold_ln) or 0: one constant
  per head. Attention's output, and so every other hook, is unchanged.
- fold_ln and center_unembed change no supported hook (fold_ln changes hook_normalized;
  center_unembed shifts the logits by a constant per position, which softmax ignores).
- refactor_factored_attn_matrices re-factors W_V W_O per head, which changes attn.hook_z by a
  per-head linear map; it is not reproduced, so such an SAE at attn.hook_z is refused.

Edits go back unchanged: a change d made in the SAE's space is added to the raw activation
as it is. At attn.hook_z the map is a shift, so raw + d is exactly the edited activation. On
the residual stream raw + d and TransformerLens's centred x + d differ by a vector along
(1, ..., 1) only, and every later reader of the residual is a LayerNorm, which removes it:
downstream both models compute the same thing (logits up to center_unembed's constant).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from explorer.hooks import Edit, attn_norm_bias, is_layernorm, parse_hook, value_vectors
from explorer.sae_config import SAEConfig, SAEError

FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases",
         "refactor_factored_attn_matrices")
_RESIDUAL_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_attn_out", "hook_mlp_out")


@dataclass(frozen=True)
class TLProcessing:
    """The TransformerLens processing flags an SAE was trained under; all off means the raw
    activations of the transformers model."""

    fold_ln: bool = False
    center_writing_weights: bool = False
    center_unembed: bool = False
    fold_value_biases: bool = False
    refactor_factored_attn_matrices: bool = False

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> TLProcessing:
        """Read cfg.json's metadata: model_from_pretrained_kwargs on top of
        from_pretrained_no_processing. For a model_class_name other than HookedTransformer
        (e.g. AutoModelForCausalLM) the kwargs go to transformers, and nothing is processed."""
        if (metadata.get("model_class_name") or "HookedTransformer") != "HookedTransformer":
            return cls()
        kwargs = metadata.get("model_from_pretrained_kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise SAEError(f"cfg.json's model_from_pretrained_kwargs must be an object, got {kwargs!r}")
        return cls(**{flag: bool(kwargs.get(flag, False)) for flag in FLAGS})

    def on(self) -> list[str]:
        return [flag for flag in FLAGS if getattr(self, flag)]

    def describe(self) -> str:
        return ", ".join(self.on()) or "none (raw activations)"


@dataclass(frozen=True)
class SAESpace:
    """The map from activations at one hook of one model into an SAE's input space:
    x_sae = x - mean(x over the last dim) [if center] - offset [if any]."""

    center: bool = False
    offset: Tensor | None = None  # (width,)
    notes: tuple[str, ...] = ()  # per processing flag, what it does at this hook

    @property
    def is_identity(self) -> bool:
        return not self.center and self.offset is None

    def to_sae(self, x: Tensor) -> Tensor:
        """(..., width) activations of the transformers model -> the SAE's space."""
        if self.center:
            x = x - x.mean(dim=-1, keepdim=True)
        if self.offset is not None:
            x = x - self.offset.to(device=x.device, dtype=x.dtype)
        return x

    def edit_to_raw(self, delta: Tensor) -> Tensor:
        """A change made in the SAE's space, as a change to the raw activation: the same
        vector (see the module docstring for why this is exact downstream)."""
        return delta

    def wrap(self, edit: Edit) -> Edit:
        """A hook edit on raw activations that runs `edit` in the SAE's space."""
        if self.is_identity:
            return edit

        def in_sae_space(act: Tensor) -> Tensor | None:
            x = self.to_sae(act)
            new = edit(x)
            return None if new is None else act + self.edit_to_raw(new - x)

        return in_sae_space


def sae_space(model: torch.nn.Module, cfg: SAEConfig) -> SAESpace:
    """The SAESpace of the SAE described by `cfg` at its hook on `model`.

    Raises SAEError when a setting changes the activation in a way this map cannot
    reproduce."""
    if not cfg.hook_name:
        return SAESpace()
    if cfg.metadata.get("hook_head_index") is not None:
        raise SAEError(
            f"the SAE reads one attention head (hook_head_index={cfg.metadata['hook_head_index']}); "
            "only SAEs on whole hooks are supported"
        )
    processing = TLProcessing.from_metadata(cfg.metadata)
    point = parse_hook(model, cfg.hook_name)
    center = False
    offset = None
    notes = []
    for flag in processing.on():
        if flag == "center_writing_weights" and point.kind in _RESIDUAL_KINDS:
            center = is_layernorm(model)
            notes.append(f"{flag}: activations centred along d_model" if center else
                         f"{flag}: skipped, as TransformerLens does for RMSNorm models")
        elif flag == "fold_value_biases" and point.kind == "attn.hook_z":
            offset = _folded_value_bias(model, point.layer, processing.fold_ln)
            notes.append(f"{flag}: each head's value bias{' (LayerNorm bias folded in)' if processing.fold_ln else ''} "
                         "subtracted")
        elif flag == "refactor_factored_attn_matrices" and point.kind == "attn.hook_z":
            raise SAEError(
                f"the SAE was trained with refactor_factored_attn_matrices, which changes {cfg.hook_name} "
                "by a per-head linear map that is not reproduced here. Fix: use an SAE trained without it"
            )
        else:
            notes.append(f"{flag}: no change at {point.kind}")
    return SAESpace(center=center, offset=offset, notes=tuple(notes))


def _folded_value_bias(model: torch.nn.Module, layer: int, fold_ln: bool) -> Tensor | None:
    bias = attn_norm_bias(model, layer) if fold_ln else None
    param = next(model.parameters())
    x = bias.detach() if bias is not None else torch.zeros(model.config.hidden_size, dtype=param.dtype,
                                                           device=param.device)
    offset = value_vectors(model, layer, x)
    return None if not bool(offset.any()) else offset.detach()


def describe(model: torch.nn.Module, cfg: SAEConfig) -> str:
    """One line for logs and the UI: the flags read and what they do at the SAE's hook."""
    processing = TLProcessing.from_metadata(cfg.metadata)
    space = sae_space(model, cfg)
    return f"TransformerLens processing: {processing.describe()}" + (
        f" ({'; '.join(space.notes)})" if space.notes else "")

