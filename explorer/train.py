"""Training a TopK (or ReLU + L1) sparse autoencoder on cached activations.

The TopK recipe is OpenAI's (Gao et al. 2024), as sparsify and dictionary_learning implement it:
- latents: the k largest pre-activations, then ReLU. That gives the same dense output as
  SAELens's order (top-k first, ReLU after), so the result saves as a SAELens "topk" SAE.
- loss: FVU + auxk_alpha * AuxK, both over the batch's total variance (sae_losses.py
  defines them).
- decoder rows stay unit norm. Before each Adam step, the gradient component parallel to
  each row is removed; after it, the rows are renormalised.
- init: random unit decoder rows, W_enc = W_dec.T, b_enc = 0. b_dec is the geometric median
  of a data sample, as OpenAI does (or the sample mean, with b_dec_init="mean").
- inputs are scaled so their mean norm is sqrt(d_in), as SAELens's expected_average_only_in
  and dictionary_learning do: Adam's steps are in absolute units, so without it the
  biases would move too fast for a model with small activations and too slowly for one
  with large ones. The factor is folded into the biases of the SAE returned and saved
  (b_enc, b_dec divided by it). That SAE therefore reads raw activations, keeps unit decoder
  rows, and its features are in the activations' own units.
- Adam, lr 2e-4 / sqrt(d_sae / 2^14) by default (dictionary_learning's rule). Linear warmup,
  and linear decay to 0 over the last lr_decay_fraction of the steps.
The ReLU variant is a standard SAE: FVU + l1_coefficient * L1 (a scale-free L1, see
sae_losses.py), with the same unit-norm decoder.

Under torchrun (`ranks`), training is data parallel and gives one process's SAE, within
float32 rounding. Every rank reads the same global batches (same seed, same order) and takes
a contiguous slice of each. Its losses use the whole batch's denominators
(sae_losses.py), so the sum over ranks of the slices' gradients is the batch's gradient.
One all-reduce per step sums the gradients, the per-latent firing counts (so the dead-latent
mask, and with it AuxK, stays the one-process one) and the logged losses. Every rank then
takes the same Adam step. Rank 0 alone writes checkpoints and the final SAE; on resume every
rank loads the same checkpoint.

Public names: TrainConfig, TrainError, train_sae, resolve, Plan, lr_factor, geometric_median.
TrainConfig and TrainError are declared in settings.py (free of torch, for the CLI).
`train_sae` writes periodic checkpoints to out_dir/checkpoint/ and resumes from the latest
one (checkpoints.py); the final SAE is saved in out_dir in SAELens format.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from explorer.activation_cache import ActivationCache
from explorer.checkpoints import CHECKPOINT_DIR, TrainState, latest_checkpoint, load_checkpoint, save_checkpoint
from explorer.files import write_json
from explorer.sae import SAE, SAEConfig
from explorer.sae_files import save_sae
from explorer.sae_losses import relu_losses, topk_losses
from explorer.settings import TrainConfig, TrainError
from explorer.train_distributed import SINGLE, Ranks

log = logging.getLogger(__name__)

CONFIG_FILENAME = "train_config.json"
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 6.25e-10  # OpenAI's value; the FVU loss is O(1), so gradients can be tiny
EMA = 0.05  # weight of the newest step in the progress-bar averages (about 20 steps)


@dataclass(frozen=True)
class Plan:
    """The numbers a TrainConfig resolves to against one cache (automatic values filled in)."""

    d_in: int
    d_sae: int
    lr: float
    n_steps: int
    steps_per_epoch: int
    dead_after_tokens: int
    k_aux: int
    warmup_steps: int
    decay_start: int
    """First step of the linear lr decay."""
    freq_start: int
    """First step whose firing counts make sparsity.safetensors (the last tenth of the run)."""


def resolve(cfg: TrainConfig, cache: ActivationCache) -> Plan:
    if cfg.hook_name and cfg.hook_name != cache.hook_name:
        raise TrainError(f"TrainConfig.hook_name={cfg.hook_name!r} but the cache holds {cache.hook_name!r}. "
                         "Fix: pass the matching cache, or leave hook_name empty.")
    d_sae = cfg.d_sae or cfg.expansion_factor * cache.d_in
    if cfg.architecture == "topk" and cfg.k > d_sae:
        raise TrainError(f"k={cfg.k} is larger than d_sae={d_sae}; use k <= d_sae.")
    steps_per_epoch = cache.n_tokens // cfg.batch_size
    if steps_per_epoch == 0:
        raise TrainError(f"batch_size={cfg.batch_size} is larger than the cache ({cache.n_tokens} tokens). "
                         "Fix: cache more tokens or use a smaller batch_size.")
    n_tokens = cfg.n_tokens or int(cfg.epochs * cache.n_tokens)
    n_steps = n_tokens // cfg.batch_size
    if n_steps == 0:
        raise TrainError(f"{n_tokens} training tokens make no full batch of {cfg.batch_size}. "
                         "Fix: raise n_tokens/epochs or lower batch_size.")
    return Plan(
        d_in=cache.d_in,
        d_sae=d_sae,
        lr=cfg.lr or 2e-4 / math.sqrt(d_sae / 2**14),
        n_steps=n_steps,
        steps_per_epoch=steps_per_epoch,
        dead_after_tokens=cfg.dead_after_tokens or min(10_000_000, max(cfg.batch_size, n_steps * cfg.batch_size // 10)),
        k_aux=cfg.k_aux or cache.d_in // 2,
        warmup_steps=min(cfg.lr_warmup_steps, n_steps // 10),
        decay_start=n_steps - int(n_steps * cfg.lr_decay_fraction),
        freq_start=n_steps - max(1, n_steps // 10),
    )


def lr_factor(step: int, plan: Plan) -> float:
    if step < plan.warmup_steps:
        return (step + 1) / plan.warmup_steps
    if step >= plan.decay_start:
        return (plan.n_steps - step) / (plan.n_steps - plan.decay_start)
    return 1.0


# ---------------------------------------------------------------------------------------------
# Initialisation and the constrained decoder


def geometric_median(points: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """The point minimising the summed distance to `points` (n, d), by Weiszfeld's iteration."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iters):
        weights = 1 / (points - median).norm(dim=-1).clamp_min(1e-8)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        moved = (new - median).norm()
        median = new
        if moved <= tol * median.norm().clamp_min(1.0):
            break
    return median.float()


def _init_sae(cfg: TrainConfig, plan: Plan, cache: ActivationCache) -> tuple[SAE, float]:
    """A fresh SAE for scaled inputs, and the input scale factor."""
    sae = SAE(_sae_config(cfg, plan, cache, {}))
    generator = torch.Generator().manual_seed(cfg.seed)
    W_dec = torch.randn(plan.d_sae, plan.d_in, generator=generator)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    sample = next(cache.batches(min(cfg.b_dec_samples, cache.n_tokens), seed=cfg.seed, epoch=0))
    scale = math.sqrt(plan.d_in) / sample.norm(dim=-1).mean().item() if cfg.normalize_activations else 1.0
    sample = sample * scale
    b_dec = geometric_median(sample) if cfg.b_dec_init == "geometric_median" else sample.mean(0)
    with torch.no_grad():
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_enc.zero_()
        sae.b_dec.copy_(b_dec)
    return sae, scale


def _in_raw_units(sae: SAE, scale: float, cfg: SAEConfig | None = None) -> SAE:
    """A CPU copy of an SAE trained on activations * scale that reads raw activations.

    TopK and ReLU commute with a positive factor, so dividing both biases by it divides the
    pre-activations, the features and the reconstruction by it, and keeps W_dec unit-norm.
    """
    out = SAE(cfg or sae.cfg)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            value = p.detach().cpu()
            getattr(out, name).copy_(value / scale if name in ("b_enc", "b_dec") else value)
    return out


def _sae_config(cfg: TrainConfig, plan: Plan, cache: ActivationCache, metadata: dict) -> SAEConfig:
    manifest = cache.manifest
    topk = cfg.architecture == "topk"
    return SAEConfig(
        d_in=plan.d_in, d_sae=plan.d_sae, architecture="topk" if topk else "standard",
        k=cfg.k if topk else None, hook_name=cache.hook_name, model_name=manifest["model_name"],
        metadata={
            "context_size": manifest["context_size"],
            "prepend_bos": manifest["prepend_bos"],
            # The positions trained on: the first skip_first of each window were left out.
            "seqpos_slice": [manifest["skip_first"], None],
            **metadata,
        },
    )


@torch.no_grad()
def _remove_parallel_grad(sae: SAE) -> None:
    """Drop the part of each decoder row's gradient that would only change its norm."""
    W, grad = sae.W_dec, sae.W_dec.grad
    grad -= (grad * W).sum(-1, keepdim=True) * W


@torch.no_grad()
def _normalise_decoder(sae: SAE) -> None:
    sae.W_dec /= sae.W_dec.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(sae.W_dec.dtype).eps)


# ---------------------------------------------------------------------------------------------
# Training loop


def train_sae(cfg: TrainConfig, cache: ActivationCache, progress: bool = True,
              stop_after_steps: int | None = None, ranks: Ranks = SINGLE) -> SAE:
    """Train an SAE on `cache` and save it in cfg.out_dir (SAELens format); returns it.

    Resumes from the latest checkpoint in out_dir/checkpoint/. `stop_after_steps` ends this
    call early (after a checkpoint) so that a long run can be done in slices; the SAE returned
    then is the unfinished one and nothing is saved in SAELens format yet. With `ranks` of
    several processes (torchrun), every rank calls this and they train one SAE together.
    """
    plan = resolve(cfg, cache)
    if cfg.batch_size < ranks.world:
        raise TrainError(f"batch_size={cfg.batch_size} leaves some of the {ranks.world} processes without tokens. "
                         f"Fix: use a batch_size of at least {ranks.world}.")
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(cfg.out_dir)
    checkpoints = out / CHECKPOINT_DIR
    latest = latest_checkpoint(checkpoints)
    sae, scale = (SAE(_sae_config(cfg, plan, cache, {})), 1.0) if latest else _init_sae(cfg, plan, cache)
    sae.to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=plan.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
    state = load_checkpoint(latest, cfg, cache, sae, opt) if latest else TrainState.fresh(plan.d_sae, scale, device)
    state.scale = _same_start(sae, state.scale, ranks)
    if latest:
        log.info("Resuming from %s (step %d of %d)", latest, state.step, plan.n_steps)
    elif ranks.main:
        write_json(out / CONFIG_FILENAME, {"config": cfg.to_dict(), "plan": dataclasses.asdict(plan)})

    end = plan.n_steps if stop_after_steps is None else min(plan.n_steps, state.step + stop_after_steps)
    bar = tqdm(total=plan.n_steps, initial=state.step, unit="step", desc=f"Training SAE {cache.hook_name}",
               disable=not (progress and ranks.main))
    started, first_step = time.perf_counter(), state.step
    batches = _stream(cache, cfg, plan, state.step)
    while state.step < end:
        _train_step(sae, opt, next(batches).to(device) * state.scale, state, cfg, plan, ranks)
        bar.update()
        if state.step % 10 == 0 or state.step == end:
            bar.set_postfix(_postfix(state, plan), refresh=False)
        if state.step % cfg.checkpoint_every == 0 and state.step < end and ranks.main:
            save_checkpoint(checkpoints, cfg, cache, sae, opt, state)
    bar.close()
    if state.step > first_step:
        log.info("%d steps at %.2f steps/s", state.step - first_step,
                 (state.step - first_step) / (time.perf_counter() - started))
    if ranks.main:
        save_checkpoint(checkpoints, cfg, cache, sae, opt, state)
    if state.step < plan.n_steps:
        final = _in_raw_units(sae, state.scale)
    else:
        final = _save_final(sae, cfg, plan, cache, state, write=ranks.main)
    ranks.barrier()  # the files are written when any rank returns
    return final


@torch.no_grad()
def _same_start(sae: SAE, scale: float, ranks: Ranks) -> float:
    """Rank 0's weights and input scale on every rank. Each rank initialised (or loaded)
    the same ones already; this keeps ranks on machines whose float code differs in step."""
    if ranks.world == 1:
        return scale
    for p in sae.parameters():
        ranks.broadcast_(p)
    return ranks.broadcast_(torch.tensor([scale], dtype=torch.float64, device=sae.W_dec.device)).item()


def _stream(cache: ActivationCache, cfg: TrainConfig, plan: Plan, step: int) -> Iterator[Tensor]:
    """Batches from `step` on, epoch after epoch; partial last batches are dropped."""
    epoch, start = divmod(step, plan.steps_per_epoch)
    while True:
        yield from cache.batches(cfg.batch_size, seed=cfg.seed, epoch=epoch, start=start, drop_last=True)
        epoch, start = epoch + 1, 0


def _train_step(sae: SAE, opt: torch.optim.Optimizer, batch: Tensor, state: TrainState, cfg: TrainConfig,
                plan: Plan, ranks: Ranks = SINGLE) -> None:
    for group in opt.param_groups:
        group["lr"] = plan.lr * lr_factor(state.step, plan)
    rows = ranks.part(len(batch))
    x = batch[rows.start:rows.stop]  # this rank's slice; the whole batch with one process
    whole = batch if ranks.world > 1 else None
    if cfg.architecture == "topk":
        losses = topk_losses(sae, x, cfg.k, state.tokens_since_fired >= plan.dead_after_tokens, plan.k_aux, whole)
        loss = losses.fvu + cfg.auxk_alpha * losses.auxk
    else:
        losses = relu_losses(sae, x, whole)
        loss = losses.fvu + cfg.l1_coefficient * losses.l1
    opt.zero_grad(set_to_none=True)
    loss.backward()
    fire_counts, stats = losses.fired, torch.stack([loss, losses.fvu, losses.auxk, losses.l0]).detach()
    if ranks.world > 1:
        stats[3] *= len(x) / len(batch)  # this slice's share of the batch's mean L0
        fire_counts, stats = _sum_over_ranks(sae, fire_counts, stats, ranks)
    _remove_parallel_grad(sae)
    opt.step()
    _normalise_decoder(sae)

    state.tokens_since_fired += len(batch)
    state.tokens_since_fired[fire_counts > 0] = 0
    if state.step >= plan.freq_start:
        state.fire_counts += fire_counts
    state.step += 1
    now = dict(zip(("loss", "fvu", "auxk", "l0"), stats.tolist()))
    state.running = {key: value if key not in state.running else (1 - EMA) * state.running[key] + EMA * value
                     for key, value in now.items()}


def _sum_over_ranks(sae: SAE, fire_counts: Tensor, stats: Tensor, ranks: Ranks) -> tuple[Tensor, Tensor]:
    """Sum the gradients (in place), the firing counts and the logged losses over the ranks,
    in one all-reduce. Counts travel as float32, exact up to 2**24 tokens a batch."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in sae.parameters()]
    flat = ranks.sum_(torch.cat([g.flatten() for g in grads] + [fire_counts.float(), stats.float()]))
    offset = 0
    for p, g in zip(sae.parameters(), grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g)
        offset += g.numel()
    counts = flat[offset:offset + len(fire_counts)].round().long()
    return counts, flat[offset + len(fire_counts):]


def _postfix(state: TrainState, plan: Plan) -> dict[str, str]:
    r = state.running
    dead = (state.tokens_since_fired >= plan.dead_after_tokens).float().mean().item()
    return {"loss": f"{r['loss']:.4f}", "l0": f"{r['l0']:.1f}", "ev": f"{1 - r['fvu']:.3f}", "dead": f"{dead:.1%}"}


def _save_final(sae: SAE, cfg: TrainConfig, plan: Plan, cache: ActivationCache, state: TrainState,
                write: bool = True) -> SAE:
    freq_tokens = (plan.n_steps - plan.freq_start) * cfg.batch_size
    sparsity = torch.log10(state.fire_counts.double().cpu() / freq_tokens + 1e-10).float()
    r = state.running
    training = {
        "architecture": cfg.architecture, "steps": plan.n_steps, "batch_size": cfg.batch_size, "lr": plan.lr,
        "seed": cfg.seed, "b_dec_init": cfg.b_dec_init, "input_scale": state.scale,
        # Running averages over about the last 20 steps, on training batches.
        "fvu": r["fvu"], "explained_variance": 1 - r["fvu"], "l0": r["l0"],
        "dead_fraction": (state.tokens_since_fired >= plan.dead_after_tokens).float().mean().item(),
        "dead_after_tokens": plan.dead_after_tokens,
        "sparsity_tokens": freq_tokens,  # sparsity.safetensors counts firing over the last tenth of the run
    }
    if cfg.architecture == "topk":
        training |= {"k": cfg.k, "auxk_alpha": cfg.auxk_alpha, "k_aux": plan.k_aux, "auxk_loss": r["auxk"]}
    else:
        training |= {"l1_coefficient": cfg.l1_coefficient}
    metadata = {"trained_tokens": plan.n_steps * cfg.batch_size, "training": training}
    final = _in_raw_units(sae, state.scale, _sae_config(cfg, plan, cache, metadata))
    final.sparsity = sparsity
    if write:
        save_sae(final, cfg.out_dir, sparsity=sparsity)
        log.info("Saved SAE to %s", cfg.out_dir)
    return final
