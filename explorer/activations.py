"""Per-token SAE feature activations for one prompt.

The forward pass stops at the hook layer (later layers cannot change the
activation there; it runs in the model's scheduler, batched with other
prompts), the SAE encodes it, and only the strongest features per
token are kept: top-k plus every activation above a threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from explorer.model import LoadedModel, format_prompt
from explorer.sae import SAE
from explorer.scheduler import scheduler_for
from explorer.tl_processing import sae_space
from explorer.tokens import token_strings

MAX_PROMPT_TOKENS = 512


class PromptError(ValueError):
    """The prompt cannot be analysed; the message says why and what to do."""


@dataclass(frozen=True)
class TokenActivations:
    token_ids: list[int]
    texts: list[str]  # decoded text of each token
    tokens: list[str]  # display strings (whitespace and bytes made visible)
    features: list[list[int]]  # per token, kept feature ids, strongest first
    values: list[list[float]]  # matching activations
    error_norm: list[float]  # ||x - x_hat|| per token
    input_norm: list[float]  # ||x|| per token, to judge the error against
    truncated_from: int | None = None  # original token count when the prompt was cut

    def feature_values(self, feature: int) -> list[float]:
        """One feature's activation at every token (0 where it was not kept)."""
        out = []
        for feats, vals in zip(self.features, self.values):
            out.append(vals[feats.index(feature)] if feature in feats else 0.0)
        return out

    def top_features(self, n: int = 10) -> list[tuple[int, float]]:
        """Features by their maximum activation over the prompt."""
        best: dict[int, float] = {}
        for feats, vals in zip(self.features, self.values):
            for f, v in zip(feats, vals):
                best[f] = max(best.get(f, 0.0), v)
        return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def encode_prompt(lm: LoadedModel, text: str, chat: bool = False, max_tokens: int = MAX_PROMPT_TOKENS) -> tuple[torch.Tensor, int | None]:
    """Token ids [1, T] for a prompt, cut to `max_tokens` (and to the model's
    context length); also the original length if cut."""
    if not text or not text.strip():
        raise PromptError("The prompt is empty. Fix: type some text to analyse")
    if lm.context_length:
        max_tokens = min(max_tokens, lm.context_length)
    formatted = format_prompt(lm.tokenizer, text, chat)
    ids = lm.tokenizer(formatted, return_tensors="pt", add_special_tokens=not chat).input_ids
    bos = lm.tokenizer.bos_token_id
    if bos is not None and ids[0, 0].item() != bos:
        # SAEs are trained on windows that start with BOS (SAELens prepend_bos);
        # without it the first token becomes the attention sink, whose outlier
        # activation lights up every feature.
        ids = torch.cat([torch.tensor([[bos]]), ids], dim=1)
    n = ids.shape[1]
    if n > max_tokens:
        return ids[:, :max_tokens].to(lm.device), n
    return ids.to(lm.device), None


def sparse_top(acts: torch.Tensor, top_k: int, threshold: float) -> tuple[list[list[int]], list[list[float]]]:
    """Keep per row the top_k features plus every one above threshold (all > 0)."""
    k = min(top_k, acts.shape[-1])
    top_vals, top_idx = acts.topk(k, dim=-1)
    above = (acts > threshold).sum(-1)
    features, values = [], []
    for row in range(acts.shape[0]):
        n_keep = max(int(above[row]), 0)
        if n_keep > k:  # more above threshold than top_k: take them all, sorted
            vals, idx = acts[row].topk(n_keep)
        else:
            vals, idx = top_vals[row], top_idx[row]
        keep = vals > 0
        features.append(idx[keep].tolist())
        values.append(vals[keep].tolist())
    return features, values


@torch.inference_mode()
def token_activations(
    lm: LoadedModel,
    sae: SAE,
    text: str,
    chat: bool = False,
    top_k: int = 16,
    threshold: float = 0.0,
    max_tokens: int = MAX_PROMPT_TOKENS,
) -> TokenActivations:
    if top_k < 1:
        raise PromptError(f"top_k={top_k}: at least one feature per token must be kept. Fix: use a top_k of 1 or more")
    ids, truncated_from = encode_prompt(lm, text, chat, max_tokens)
    # through the model's scheduler, batched with other prompts waiting for a forward pass
    raw = scheduler_for(lm, sae).submit_prefill(ids[0].tolist()).result()  # (seq, d_in)
    # in the SAE's own space (TransformerLens processing, see tl_processing.py)
    x = sae_space(lm.model, sae.cfg).to_sae(raw)
    x = x.to(sae.dtype)
    f = sae.encode(x)
    x_hat = sae.decode(f, like=x)
    features, values = sparse_top(f.float(), top_k, threshold)
    id_list = ids[0].tolist()
    if id_list[0] == lm.tokenizer.bos_token_id:
        # The BOS position's outlier norm is outside what the SAE was trained on
        # (training and the index skip it), so it lists no features.
        features[0], values[0] = [], []
    texts, shown = token_strings(lm.tokenizer, id_list)
    return TokenActivations(
        token_ids=id_list,
        texts=texts,
        tokens=shown,
        features=features,
        values=values,
        error_norm=(x - x_hat).float().norm(dim=-1).tolist(),
        input_norm=x.float().norm(dim=-1).tolist(),
        truncated_from=truncated_from,
    )
