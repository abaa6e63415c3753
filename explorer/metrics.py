"""SAE evaluation metrics, with the formulas SAELens uses.

Notation: x is the SAE input (..., d_in), x_hat its reconstruction, f the features
(..., d_sae); every leading dimension is a token. Public names: l0, ExplainedVariance,
ce_loss_score, kl_div, kl_div_score, dead_fraction, dense_fraction, l2_ratio, cossim.
Scalars come back as Python floats; per-token values as tensors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def l0(f: Tensor) -> float:
    """Mean number of active features per token: mean over tokens of #(f > 0)."""
    return (f > 0).sum(dim=-1).float().mean().item()


class ExplainedVariance:
    """Streaming EV = 1 - E||x - x_hat||^2 / (E||x||^2 - ||E x||^2).

    The denominator is the total variance of x summed over dimensions, so a
    reconstruction that outputs the per-dimension mean scores 0. Sums are float64 on
    the CPU: the variance is a difference of two large, nearly equal numbers when the
    activations have a big mean. Every token weighs the same, whatever its batch size.
    """

    def __init__(self) -> None:
        self.n_tokens = 0
        self.sum_x: Tensor | None = None  # (d_in,) float64
        self.sum_sq_norm = 0.0
        self.sum_sq_err = 0.0

    def update(self, x: Tensor, x_hat: Tensor) -> None:
        """Add a batch; x and x_hat are (..., d_in)."""
        x = x.detach().reshape(-1, x.shape[-1]).double().cpu()
        x_hat = x_hat.detach().reshape(-1, x_hat.shape[-1]).double().cpu()
        batch_sum = x.sum(dim=0)
        self.sum_x = batch_sum if self.sum_x is None else self.sum_x + batch_sum
        self.sum_sq_norm += x.pow(2).sum().item()
        self.sum_sq_err += (x - x_hat).pow(2).sum().item()
        self.n_tokens += x.shape[0]

    def compute(self) -> float:
        """EV over everything seen; 1.0 when variance and error are both < 1e-10, nan if empty."""
        if self.n_tokens == 0 or self.sum_x is None:
            return math.nan
        mse = self.sum_sq_err / self.n_tokens
        mean_x = self.sum_x / self.n_tokens
        variance = self.sum_sq_norm / self.n_tokens - mean_x.pow(2).sum().item()
        if variance < 1e-10:
            # Constant x: perfect if reconstructed, else no variance was explained (SAELens).
            return 1.0 if mse < 1e-10 else 0.0
        return 1.0 - mse / variance


def ce_loss_score(l_clean: float, l_sae: float, l_zero: float) -> float:
    """Fraction of the CE loss recovered: (L_zero - L_sae) / (L_zero - L_clean).

    1 when splicing in the SAE costs nothing, 0 when it is as bad as zero-ablating the
    activation; nan when zero-ablation itself costs nothing.
    """
    gap = l_zero - l_clean
    return math.nan if gap == 0 else (l_zero - l_sae) / gap


def kl_div(clean_logits: Tensor, other_logits: Tensor) -> Tensor:
    """Per-token KL(clean || other) = sum_v p_clean (log p_clean - log p_other); (..., vocab) -> (...)."""
    log_p = F.log_softmax(clean_logits.float(), dim=-1)
    log_q = F.log_softmax(other_logits.float(), dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)


def kl_div_score(kl_sae: float, kl_zero: float) -> float:
    """(KL_zero - KL_sae) / KL_zero: 1 when the SAE leaves the output distribution intact."""
    return math.nan if kl_zero == 0 else (kl_zero - kl_sae) / kl_zero


def dead_fraction(counts: Tensor) -> float:
    """Fraction of features that never fired; counts is (d_sae,) tokens fired per feature."""
    return (counts == 0).float().mean().item()


def dense_fraction(freqs: Tensor, threshold: float = 0.1) -> float:
    """Fraction of features firing on more than `threshold` of tokens; freqs is (d_sae,) in [0, 1].

    0.1 (one token in ten) is our cut-off for "dense": such features are rarely
    interpretable. It is a convention, not a SAELens constant; pass your own.
    """
    return (freqs > threshold).float().mean().item()


def l2_ratio(x: Tensor, x_hat: Tensor) -> float:
    """Shrinkage: mean over tokens of ||x_hat|| / ||x||; tokens with ||x|| < 1e-4 divide by 1 (SAELens)."""
    norm_in = x.float().norm(dim=-1)
    norm_in = torch.where(norm_in.abs() < 1e-4, torch.ones_like(norm_in), norm_in)
    return (x_hat.float().norm(dim=-1) / norm_in).mean().item()


def cossim(x: Tensor, x_hat: Tensor) -> float:
    """Mean over tokens of cos(x, x_hat); a zero vector counts as 0 rather than nan."""
    x, x_hat = x.float(), x_hat.float()
    denom = (x.norm(dim=-1) * x_hat.norm(dim=-1)).clamp(min=1e-12)
    return ((x * x_hat).sum(dim=-1) / denom).mean().item()
