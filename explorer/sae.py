"""The sparse autoencoder (SAE) module: encode and decode, and what is derived from them.

One `SAE` module covers the four SAELens inference architectures (standard, topk,
jumprelu, gated) with SAELens's formulas, including the per-token input
normalisations. Its config is SAEConfig (sae_config.py); reading and writing SAE
files is sae_files.py.

Public names: SAE, build_sae, random_sae, fold_W_dec_norm,
fold_activation_norm_scaling_factor, check_compatible; SAEConfig and SAEError are
imported from sae_config.py for the SAE's users.

Unlike SAELens, encode/decode store nothing on the module (SAELens keeps the per-token
normalisation statistics on `self` between encode and decode), so one SAE can serve
many threads. The price: decode needs the original input, `like=x`, for the two
per-token normalisations (constant_norm_rescale, layer_norm).
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import Tensor, nn

from explorer.sae_config import SAEConfig, SAEError, dtype_name, parse_dtype

log = logging.getLogger(__name__)

_PER_TOKEN_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")


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
        dtype = parse_dtype(cfg.dtype)
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


def build_sae(cfg: SAEConfig, tensors: dict[str, Tensor], source: str) -> SAE:
    """An SAE from named tensors, after checking names, shapes and finiteness.

    `source` (a file name, or the caller's name) starts every error message."""
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
    dtype = parse_dtype(cfg.dtype)
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
    return build_sae(cfg, tensors, "random_sae")


def _params(sae: SAE) -> dict[str, Tensor]:
    return {name: p.detach().clone() for name, p in sae.named_parameters()}


def _rebuilt(sae: SAE, cfg: SAEConfig, tensors: dict[str, Tensor], what: str) -> SAE:
    new = build_sae(dataclasses.replace(cfg, dtype=dtype_name(sae.dtype)), tensors, what)
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
