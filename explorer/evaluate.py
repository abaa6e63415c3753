"""Evaluating an SAE on held-out windows: sparsity, reconstruction and downstream loss.

`evaluate_sae(lm, sae, windows)` runs three forward passes per batch: a clean one, one
with decode(encode(x)) spliced in at the SAE's hook, and one with the activation there
zero-ablated. The first `skip_first` positions of each window (BOS by default) are left
unchanged in both edited passes, as SAELens leaves special tokens, and are left out of
every metric. The formulas are those of explorer.metrics. The result is an `EvalReport`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from explorer import metrics
from explorer.corpus import Windows
from explorer.hooks import hook_width, hooked, parse_hook
from explorer.model import LoadedModel
from explorer.sae import SAE, check_compatible
from explorer.tl_processing import sae_space

DENSE_THRESHOLD = 0.1  # a feature firing on more than 10% of tokens counts as dense


class EvalError(ValueError):
    """The evaluation cannot run; the message says how to fix it."""


@dataclass(frozen=True)
class EvalReport:
    hook_name: str
    n_windows: int
    n_tokens: int
    """Tokens scored: every window position from skip_first on."""
    skip_first: int
    l0: float
    """Mean active features per token."""
    explained_variance: float
    ce_loss_clean: float
    """Mean next-token loss (nats) at the scored positions that have a next token."""
    ce_loss_sae: float
    ce_loss_zero: float
    ce_loss_score: float
    """(L_zero - L_sae) / (L_zero - L_clean): 1 means the SAE costs nothing."""
    kl_div_sae: float
    """Mean per-token KL(clean || with SAE) over the scored positions."""
    kl_div_zero: float
    kl_div_score: float
    dead_fraction: float
    """Features that never fired on these tokens."""
    dense_fraction: float
    """Features firing on more than dense_threshold of these tokens."""
    dense_threshold: float = DENSE_THRESHOLD

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        """A two-column Markdown table."""
        rows = [
            ("hook", f"`{self.hook_name}`"),
            ("tokens scored", f"{self.n_tokens:,} ({self.n_windows:,} windows, first {self.skip_first} skipped)"),
            ("L0", f"{self.l0:.2f}"),
            ("explained variance", f"{self.explained_variance:.4f}"),
            ("CE loss clean / SAE / zero-ablated",
             f"{self.ce_loss_clean:.4f} / {self.ce_loss_sae:.4f} / {self.ce_loss_zero:.4f}"),
            ("CE loss score", f"{self.ce_loss_score:.4f}"),
            ("KL SAE / zero-ablated", f"{self.kl_div_sae:.4f} / {self.kl_div_zero:.4f}"),
            ("KL score", f"{self.kl_div_score:.4f}"),
            ("dead features", f"{self.dead_fraction:.2%}"),
            (f"dense features (>{self.dense_threshold:.0%} of tokens)", f"{self.dense_fraction:.2%}"),
        ]
        return "\n".join(["| metric | value |", "|---|---|", *(f"| {name} | {value} |" for name, value in rows)])


class _Sums:
    """Token-weighted running sums over batches."""

    def __init__(self, d_sae: int):
        self.tokens = 0
        self.l0 = 0.0
        self.counts = torch.zeros(d_sae, dtype=torch.int64)
        self.ev = metrics.ExplainedVariance()
        self.ce_tokens = 0
        self.ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
        self.kl = {"sae": 0.0, "zero": 0.0}


def evaluate_sae(lm: LoadedModel, sae: SAE, windows: Windows, batch_size: int = 8, skip_first: int | None = None,
                 dense_threshold: float = DENSE_THRESHOLD, progress: bool = True) -> EvalReport:
    """Evaluate `sae` at its hook (sae.cfg.hook_name) on `windows`, ideally held out from training.

    `skip_first` defaults to 1 when every window starts with the tokenizer's BOS, else 0.
    """
    hook_name = sae.cfg.hook_name
    if not hook_name:
        raise EvalError("The SAE's config names no hook (cfg.hook_name is empty). "
                        "Fix: set it with dataclasses.replace(sae.cfg, hook_name=...) and rebuild the SAE.")
    check_compatible(sae, hook_width(lm.model, parse_hook(lm.model, hook_name)), hook_name)
    if len(windows) == 0:
        raise EvalError("No windows to evaluate on. Fix: pass held-out windows (split_windows).")
    context = windows.tokens.shape[1]
    if skip_first is None:
        bos_id = getattr(lm.tokenizer, "bos_token_id", None)
        skip_first = int(bos_id is not None and bool((windows.tokens[:, 0] == bos_id).all()))
    if not 0 <= skip_first < context - 1:
        raise EvalError(f"skip_first={skip_first} leaves nothing to score in {context}-token windows; "
                        f"use 0 <= skip_first < {context - 1}.")

    sums = _Sums(sae.cfg.d_sae)
    bar = tqdm(total=len(windows), unit="win", desc=f"Evaluating {hook_name}", disable=not progress)
    for lo in range(0, len(windows), batch_size):
        ids = torch.from_numpy(windows.tokens[lo:lo + batch_size].astype(np.int64)).to(lm.device)
        with lm.lock, torch.inference_mode():
            _score_batch(lm, sae, hook_name, ids, skip_first, sums)
        bar.update(len(ids))
    bar.close()

    ce = {name: total / sums.ce_tokens for name, total in sums.ce.items()}
    kl = {name: total / sums.tokens for name, total in sums.kl.items()}
    return EvalReport(
        hook_name=hook_name, n_windows=len(windows), n_tokens=sums.tokens, skip_first=skip_first,
        l0=sums.l0 / sums.tokens, explained_variance=sums.ev.compute(),
        ce_loss_clean=ce["clean"], ce_loss_sae=ce["sae"], ce_loss_zero=ce["zero"],
        ce_loss_score=metrics.ce_loss_score(ce["clean"], ce["sae"], ce["zero"]),
        kl_div_sae=kl["sae"], kl_div_zero=kl["zero"], kl_div_score=metrics.kl_div_score(kl["sae"], kl["zero"]),
        dead_fraction=metrics.dead_fraction(sums.counts),
        dense_fraction=metrics.dense_fraction(sums.counts.double() / sums.tokens, dense_threshold),
        dense_threshold=dense_threshold,
    )


def _score_batch(lm: LoadedModel, sae: SAE, hook_name: str, ids: Tensor, skip: int, sums: _Sums) -> None:
    captured: list[Tensor] = []

    def record(act: Tensor) -> None:
        captured.append(act)

    with hooked(lm.model, {hook_name: record}):
        clean = lm.model(ids, use_cache=False).logits
    space = sae_space(lm.model, sae.cfg)  # the SAE's input space (TransformerLens processing)
    x = space.to_sae(captured[0])[:, skip:].to(sae.device)  # (batch, scored positions, d_in)
    f = sae.encode(x)
    x_hat = sae.decode(f, like=x)
    # The forward up to the hook is the same in every pass, so the clean x's reconstruction
    # is what the SAE would produce there.
    spliced = _replaced_from(skip, x_hat)
    zeroed = _replaced_from(skip, torch.zeros_like(x_hat))
    with hooked(lm.model, {hook_name: space.wrap(spliced)}):
        with_sae = lm.model(ids, use_cache=False).logits
    with hooked(lm.model, {hook_name: space.wrap(zeroed)}):
        with_zero = lm.model(ids, use_cache=False).logits

    flat_f = f.reshape(-1, f.shape[-1])  # (tokens, d_sae)
    n = flat_f.shape[0]
    sums.tokens += n
    sums.l0 += metrics.l0(flat_f) * n
    sums.counts += (flat_f > 0).sum(0).cpu()
    sums.ev.update(x, x_hat)
    targets = ids[:, skip + 1:]  # position p predicts token p + 1
    sums.ce_tokens += targets.numel()
    for name, logits in (("clean", clean), ("sae", with_sae), ("zero", with_zero)):
        sums.ce[name] += _ce_sum(logits[:, skip:-1], targets)
    sums.kl["sae"] += metrics.kl_div(clean[:, skip:], with_sae[:, skip:]).double().sum().item()
    sums.kl["zero"] += metrics.kl_div(clean[:, skip:], with_zero[:, skip:]).double().sum().item()


def _replaced_from(skip: int, new: Tensor):
    """An edit that puts `new` (batch, seq - skip, d_in) at positions skip.. and keeps the rest."""

    def edit(act: Tensor) -> Tensor:
        out = act.clone()
        out[:, skip:] = new.to(act.device, act.dtype)
        return out

    return edit


def _ce_sum(logits: Tensor, targets: Tensor) -> float:
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), reduction="sum")
    value = loss.item()
    if not math.isfinite(value):
        raise EvalError("The loss is not finite; the model produced NaN/inf logits. "
                        "Fix: evaluate in float32 (load the model with dtype='float32').")
    return value
