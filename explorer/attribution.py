"""Which features made this token: attribution of one next-token logit to SAE features.

For a prompt, a position and a target token, each feature active at that
position or an earlier one gets the score activation x d(logit)/d(activation),
the first-order change of the target's logit if the feature were switched off.
The SAE is spliced in at its hook as x + (x_hat - x_hat.detach()): the forward
pass is exactly the model's (the reconstruction error is kept), while the
gradient reaches every feature through the decoder. One forward and one
backward pass give all the scores at once.

The parts add up: the features' scores, the error term's share
(gradient . (x - x_hat)) and the decoder bias's share sum to gradient . x over
the spliced positions. With a second token (`versus`), the metric is the logit
difference target - versus: "why A rather than B".

Public names: attribute, token_id, Attribution, FeatureScore, AttributionError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from explorer.activations import MAX_PROMPT_TOKENS, encode_prompt
from explorer.hooks import hooked
from explorer.model import LoadedModel
from explorer.sae import SAE
from explorer.tokens import token_strings

# The glyphs tokens.display_token shows for whitespace, so a token copied from the page can be typed back.
_TYPED_WHITESPACE = str.maketrans({"␣": " ", "↵": "\n", "⇥": "\t", "␍": "\r"})
_ID_RE = re.compile(r"^id:(\d+)$")


class AttributionError(ValueError):
    """The position or a target token is invalid; the message says how to fix it."""


@dataclass(frozen=True)
class FeatureScore:
    feature: int
    position: int  # the prompt token the feature fires on
    activation: float
    score: float  # activation x d(metric)/d(activation)


@dataclass(frozen=True)
class Attribution:
    tokens: list[str]  # display strings of the prompt's tokens up to `position`
    position: int
    target: int  # token id
    target_token: str  # its display string
    versus: int | None  # the second token of a logit difference
    versus_token: str | None
    metric: float  # logit(target) at `position`, minus logit(versus) when given
    positive: list[FeatureScore]  # strongest first
    negative: list[FeatureScore]  # most negative first
    features_total: float  # sum of every feature's score, listed or not
    error_share: float  # the SAE error term: gradient . (x - x_hat)
    bias_share: float  # the decoder bias: the part of x_hat that no feature writes
    prompt_prefix: str  # the prompt's text up to and including `position`, for steering from there


def token_id(tokenizer, token: int | str) -> int:
    """A token id from an id, `id:123`, or the text of one token ('␣Paris' for ' Paris')."""
    vocab = len(tokenizer)
    if isinstance(token, str) and _ID_RE.match(token.strip()):
        token = int(_ID_RE.match(token.strip()).group(1))
    if isinstance(token, int):
        if not 0 <= token < vocab:
            raise AttributionError(f"Token id {token} does not exist. Fix: use an id in 0..{vocab - 1}")
        return token
    if not token:
        raise AttributionError("The token is empty. Fix: type one token, e.g. ' Paris' or id:123")
    for text in dict.fromkeys((token, token.translate(_TYPED_WHITESPACE))):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) == 1:
            return ids[0]
    pieces = " | ".join(token_strings(tokenizer, ids)[1])
    raise AttributionError(
        f"{token!r} is {len(ids)} tokens ({pieces}), not one. "
        "Fix: type a single token (a leading space counts: '␣Paris'), or its id as id:123"
    )


class _Splice:
    """A hook edit that puts the SAE in the forward pass without changing it.

    Positions before `first` (the BOS token, whose outlier activation the SAE
    was not trained on) are left out. After the forward pass, `features`
    (seq, d_sae) and `spliced` (seq, d_in) are the tensors to differentiate by."""

    def __init__(self, sae: SAE, first: int):
        self.sae, self.first = sae, first

    def __call__(self, act: torch.Tensor) -> torch.Tensor:
        x = act[0, self.first:].detach().to(self.sae.dtype)  # (seq, d_in)
        self.x = x
        self.features = self.sae.encode(x).detach().requires_grad_(True)  # (seq, d_sae), a leaf
        self.x_hat = self.sae.decode(self.features, like=x)
        # x_hat - x_hat.detach() is exactly zero, so the value is x to the bit
        self.spliced = x + (self.x_hat - self.x_hat.detach())
        return torch.cat([act[:, : self.first], self.spliced[None].to(act.dtype)], dim=1)


def _position(position: int, n_tokens: int, first: int) -> int:
    pos = position + n_tokens if position < 0 else position
    if first <= pos < n_tokens:
        return pos
    why = "is the BOS token, where the SAE reads no features" if 0 <= pos < first else "is outside the prompt"
    raise AttributionError(f"Position {position} {why}. Fix: pick a token position in {first}..{n_tokens - 1}")


def _ranked(scores: torch.Tensor, features: torch.Tensor, first: int, top: int, sign: int) -> list[FeatureScore]:
    """The `top` scores of one sign, from (seq, d_sae) scores; ties by position, then feature."""
    flat = scores.flatten() * sign
    values, idx = flat.topk(min(top, flat.numel()))
    d_sae = scores.shape[-1]
    out = [
        FeatureScore(feature=i % d_sae, position=first + i // d_sae,
                     activation=float(features.flatten()[i]), score=float(v) * sign)
        for v, i in zip(values.tolist(), idx.tolist())
        if v > 0
    ]
    return sorted(out, key=lambda s: (-s.score * sign, s.position, s.feature))


def attribute(
    lm: LoadedModel,
    sae: SAE,
    text: str,
    position: int = -1,
    target: int | str | None = None,
    versus: int | str | None = None,
    chat: bool = False,
    top: int = 20,
    max_tokens: int = MAX_PROMPT_TOKENS,
) -> Attribution:
    """Rank the features at `position` and before by their attribution to the
    logit of `target` at `position` (the token the model predicts next there).

    `position` indexes the prompt's tokens, BOS included; negative counts from
    the end. `target`: the actual next token by default, or at the prompt's last
    token the model's top prediction. `versus`: score logit(target) - logit(versus)."""
    if top < 1:
        raise AttributionError(f"top is {top}; it counts the features listed per direction. Fix: use 1 or more")
    ids, _ = encode_prompt(lm, text, chat, max_tokens)
    first = 1 if ids[0, 0].item() == lm.tokenizer.bos_token_id else 0
    pos = _position(position, ids.shape[1], first)
    target_id = None if target is None else token_id(lm.tokenizer, target)
    if target_id is None and pos + 1 < ids.shape[1]:
        target_id = int(ids[0, pos + 1])
    versus_id = None if versus is None else token_id(lm.tokenizer, versus)
    ids = ids[:, : pos + 1]  # later tokens cannot change the logits at pos
    splice = _Splice(sae, first)
    # inference_mode(False): callers (and the app's cached readers) may run under inference mode
    with torch.inference_mode(False), torch.enable_grad():
        with lm.lock, hooked(lm.model, {sae.cfg.hook_name: splice}):
            logits = lm.model(ids, use_cache=False, logits_to_keep=1).logits[0, -1]  # (vocab,)
        if target_id is None:
            target_id = int(logits.argmax())
        metric = logits[target_id] - (logits[versus_id] if versus_id is not None else 0)
        f_grad, x_grad = torch.autograd.grad(metric, [splice.features, splice.spliced])
    features = splice.features.detach()
    scores = (features * f_grad).double()  # (seq, d_sae); float64 so the sums lose nothing
    features_total = float(scores.sum())
    x_grad = x_grad.double()
    _, shown = token_strings(lm.tokenizer, [target_id] + ([versus_id] if versus_id is not None else []))
    return Attribution(
        tokens=token_strings(lm.tokenizer, ids[0].tolist())[1],
        position=pos,
        target=target_id,
        target_token=shown[0],
        versus=versus_id,
        versus_token=shown[1] if versus_id is not None else None,
        metric=float(metric.detach()),
        positive=_ranked(scores, features, first, top, 1),
        negative=_ranked(scores, features, first, top, -1),
        features_total=features_total,
        error_share=float((x_grad * (splice.x - splice.x_hat.detach()).double()).sum()),
        bias_share=float((x_grad * splice.x_hat.detach().double()).sum()) - features_total,
        prompt_prefix=lm.tokenizer.decode(ids[0, first:].tolist()),
    )
