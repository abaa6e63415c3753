"""Steering: edit SAE features inside the forward pass and compare completions.

An intervention sets, scales, shifts or zeroes one feature at the SAE's hook.
The SAE's reconstruction error is kept, so the activation moves by exactly
decode(f_edited) - decode(f): with no edit the model is untouched.

Rows of one batch carry their own interventions (row 0 none, row 1 the user's
clamps), so an unclamped/clamped pair costs about one generation, and every
decoding step is steered, the KV-cached ones included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch

from explorer.activations import MAX_PROMPT_TOKENS, encode_prompt
from explorer.hooks import hooked
from explorer.model import LoadedModel, new_cache
from explorer.sae import SAE
from explorer.tl_processing import sae_space

MODES = ("clamp", "scale", "add", "ablate")
# The steering values anyone may ask for, in the app, in a deep link or on the
# command line: multiples of a feature's max activation, activation units, scale
# factors. Far beyond them the edited feature swamps the residual stream and the
# model writes end-of-text garbage; further still float32 overflows to inf.
VALUE_RANGES: dict[str, tuple[float, float]] = {"relative": (-20.0, 20.0), "absolute": (-1e4, 1e4), "scale": (-20.0, 20.0)}
MAX_NEW_TOKENS = 2048
# Below 0.01 sampling is greedy decoding in all but name, and far below it the
# scaled logits overflow float32 (1e-30 gives inf, then NaN probabilities).
TEMPERATURE_RANGE = (0.01, 100.0)
SEED_RANGE = (0, 2**64 - 1)  # what torch.Generator.manual_seed takes


class SteeringError(ValueError):
    """An intervention or setting is invalid; the message says how to fix it."""


@dataclass(frozen=True)
class Intervention:
    feature: int
    mode: str = "clamp"
    value: float = 0.0
    relative: bool = False  # value is a multiple of the feature's max activation

    def describe(self) -> str:
        if self.mode == "ablate":
            return f"ablate #{self.feature}"
        unit = "x max" if self.relative else ""
        return f"{self.mode} #{self.feature} {self.value:g}{unit}"


def value_range(iv: Intervention) -> tuple[float, float]:
    """The (low, high) an intervention's own value must lie in (VALUE_RANGES)."""
    if iv.mode == "scale":  # a factor, whether written 2 or 2x
        return VALUE_RANGES["scale"]
    return VALUE_RANGES["relative" if iv.relative else "absolute"]


def check_value(iv: Intervention) -> None:
    """Raise SteeringError unless the intervention's own value is finite and in range."""
    if iv.mode == "ablate":
        return
    value = float(iv.value)
    if not math.isfinite(value):
        raise SteeringError(f"Value for feature {iv.feature} is not a finite number. Fix: give a number such as 8.5 or 3x")
    low, high = value_range(iv)
    if not low <= value <= high:
        unit = " x max activation" if iv.relative and iv.mode != "scale" else ""
        raise SteeringError(f"{iv.describe()}: the value {value:g} is outside {low:g}..{high:g}{unit}. "
                            f"Fix: use a value in {low:g}..{high:g}")


@dataclass(frozen=True)
class GenerationSettings:
    """How to decode; invalid values raise SteeringError at construction."""

    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    seed: int = 0
    stop_at_eos: bool = True
    chat: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS or self.max_new_tokens != int(self.max_new_tokens):
            raise SteeringError(f"max_new_tokens={self.max_new_tokens} is not a whole number in 1..{MAX_NEW_TOKENS}. "
                                f"Fix: ask for 1 to {MAX_NEW_TOKENS} new tokens")
        low, high = TEMPERATURE_RANGE
        if not (self.temperature == 0 or low <= self.temperature <= high):  # NaN fails both
            raise SteeringError(f"temperature={self.temperature:g} is neither 0 nor in {low:g}..{high:g}. "
                                f"Fix: use 0 for greedy decoding, or a temperature in {low:g}..{high:g} such as 0.7")
        if not 0 < self.top_p <= 1:
            raise SteeringError(f"top_p={self.top_p:g} is not in (0, 1]. Fix: use a value above 0 and at most 1, such as 0.9")
        low, high = SEED_RANGE
        if not low <= self.seed <= high or self.seed != int(self.seed):
            raise SteeringError(f"seed={self.seed} is not a whole number in {low}..{high}. Fix: use a seed such as 0 or 42")


@dataclass(frozen=True)
class Completion:
    token_ids: list[int]
    text: str


@dataclass(frozen=True)
class SteeringResult:
    prompt: str
    interventions: tuple[Intervention, ...]
    settings: GenerationSettings
    clean: Completion
    steered: Completion
    diverge_at: int | None  # index of the first generated token that differs
    truncated_from: int | None = None  # the prompt's token count when it was cut (prompt_limit)


@dataclass(frozen=True)
class _Resolved:
    """An intervention with its value in activation units."""

    feature: int
    mode: str
    value: float


def resolve(interventions: list[Intervention], d_sae: int, max_acts: Mapping[int, float] | None = None) -> list[_Resolved]:
    out = []
    for iv in interventions:
        if iv.mode not in MODES:
            raise SteeringError(f"Unknown mode {iv.mode!r}. Fix: use one of {', '.join(MODES)}")
        if not 0 <= iv.feature < d_sae:
            raise SteeringError(f"Feature {iv.feature} does not exist. Fix: pick a feature in 0..{d_sae - 1}")
        check_value(iv)
        value = float(iv.value)
        if iv.relative and iv.mode in ("clamp", "add"):
            if not max_acts or iv.feature not in max_acts:
                raise SteeringError(
                    f"Feature {iv.feature}'s max activation is unknown, so '{value:g}x max' has no meaning. "
                    "Fix: load a feature index, or give an absolute value"
                )
            value *= max_acts[iv.feature]
            low, high = VALUE_RANGES["absolute"]
            if not low <= value <= high:  # also refuses NaN and inf from a bad max activation
                raise SteeringError(
                    f"{iv.describe()} is {value:g} activation units (max activation {max_acts[iv.feature]:g}), "
                    f"outside {low:g}..{high:g}. Fix: use a smaller multiple, or an absolute value"
                )
        out.append(_Resolved(iv.feature, iv.mode, 0.0 if iv.mode == "ablate" else value))
    return out


def edit_features(f: torch.Tensor, edits: list[_Resolved]) -> torch.Tensor:
    """Apply edits to latents f [..., d_sae]; returns a new tensor."""
    f = f.clone()
    for e in edits:
        if e.mode in ("clamp", "ablate"):
            f[..., e.feature] = e.value
        elif e.mode == "scale":
            f[..., e.feature] *= e.value
        else:  # add
            f[..., e.feature] += e.value
    return f


def row_edit(sae: SAE, rows: list[list[_Resolved]]):
    """A hook edit that steers each batch row by its own list of edits."""
    steered = [i for i, edits in enumerate(rows) if edits]
    features = [sorted({e.feature for e in edits}) for edits in rows]

    def edit(act: torch.Tensor) -> torch.Tensor | None:
        if not steered:
            return None
        out = act.clone()
        for i in steered:
            x = act[i].to(sae.dtype)
            f = sae.encode(x)
            delta = sae.decode_change(f, edit_features(f, rows[i]), features[i], like=x)
            out[i] = (x + delta).to(act.dtype)
        return out

    return edit


def _sample(logits: torch.Tensor, settings: GenerationSettings, gens: list[torch.Generator]) -> torch.Tensor:
    if settings.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # drop tokens once the mass before them already exceeds top_p
        drop = sorted_p.cumsum(-1) - sorted_p > settings.top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    # one generator per row, seeded alike, so a row samples as it would alone
    return torch.cat([torch.multinomial(probs[i], 1, generator=gens[i]) for i in range(len(gens))])


def prompt_limit(lm: LoadedModel, settings: GenerationSettings) -> int:
    """How many prompt tokens a generation keeps: MAX_PROMPT_TOKENS, or fewer
    when the prompt and the new tokens would not fit in the model's context."""
    context = lm.context_length
    if context is None:
        return MAX_PROMPT_TOKENS
    room = context - settings.max_new_tokens
    if room < 2:  # BOS and one token of text
        raise SteeringError(f"max_new_tokens={settings.max_new_tokens} leaves no room for the prompt in this model's "
                            f"context of {context} tokens. Fix: ask for at most {context - 2} new tokens")
    return min(MAX_PROMPT_TOKENS, room)


@torch.inference_mode()
def stream_rows(
    lm: LoadedModel,
    sae: SAE,
    prompt: str,
    rows: list[list[Intervention]],
    settings: GenerationSettings = GenerationSettings(),
    max_acts: Mapping[int, float] | None = None,
) -> Iterator[list[int | None]]:
    """Generate one completion per row (each row its own interventions) and
    yield, per step, the new token of every row (None once a row has ended).

    Holds the model's lock until the generator finishes or is closed: close it
    (e.g. `contextlib.closing`) when you stop reading early. A prompt longer than
    `prompt_limit` is cut to it (`prompt_truncation` says whether it was)."""
    resolved = [resolve(r, sae.cfg.d_sae, max_acts) for r in rows]
    ids, _ = encode_prompt(lm, prompt, settings.chat, prompt_limit(lm, settings))
    ids = ids.repeat(len(rows), 1)
    gens = [torch.Generator(device=lm.device).manual_seed(settings.seed) for _ in rows]
    eos = lm.tokenizer.eos_token_id
    done = torch.zeros(len(rows), dtype=torch.bool, device=lm.device)
    cache = new_cache(lm.model)
    with lm.lock, hooked(lm.model, {sae.cfg.hook_name: sae_space(lm.model, sae.cfg).wrap(row_edit(sae, resolved))}):
        out = lm.model(ids, use_cache=True, logits_to_keep=1, **cache)
        for _ in range(settings.max_new_tokens):
            nxt = _sample(out.logits[:, -1], settings, gens)
            yield [None if d else int(t) for t, d in zip(nxt.tolist(), done.tolist())]
            if settings.stop_at_eos and eos is not None:
                done |= nxt == eos
                if bool(done.all()):
                    return
            out = lm.model(nxt[:, None], use_cache=True, **cache)


def generate_rows(lm, sae, prompt, rows, settings=GenerationSettings(), max_acts=None) -> list[Completion]:
    tokens: list[list[int]] = [[] for _ in rows]
    for step in stream_rows(lm, sae, prompt, rows, settings, max_acts):
        for i, t in enumerate(step):
            if t is not None:
                tokens[i].append(t)
    return [completion(lm, t, settings) for t in tokens]


def completion(lm: LoadedModel, ids: list[int], settings: GenerationSettings) -> Completion:
    eos = lm.tokenizer.eos_token_id
    shown = ids[:-1] if settings.stop_at_eos and ids and ids[-1] == eos else ids
    return Completion(token_ids=ids, text=lm.tokenizer.decode(shown, skip_special_tokens=False))


def prompt_truncation(lm: LoadedModel, prompt: str, settings: GenerationSettings) -> int | None:
    """The prompt's token count when a generation cuts it (to `prompt_limit`), else None."""
    return encode_prompt(lm, prompt, settings.chat, prompt_limit(lm, settings))[1]


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def generate_pair(
    lm: LoadedModel,
    sae: SAE,
    prompt: str,
    interventions: list[Intervention],
    settings: GenerationSettings = GenerationSettings(),
    max_acts: Mapping[int, float] | None = None,
    clean: Completion | None = None,
) -> SteeringResult:
    """The unclamped and the clamped completion, as one batch of two rows.

    `clean`: the unclamped completion of an earlier run with the same prompt and
    settings; it does not depend on the interventions, so only the clamped row is
    generated (batch one)."""
    if not interventions:
        raise SteeringError("No feature is steered. Fix: add at least one intervention")
    if clean is None:
        clean, steered = generate_rows(lm, sae, prompt, [[], list(interventions)], settings, max_acts)
    else:
        (steered,) = generate_rows(lm, sae, prompt, [list(interventions)], settings, max_acts)
    return SteeringResult(
        prompt=prompt,
        interventions=tuple(interventions),
        settings=settings,
        clean=clean,
        steered=steered,
        diverge_at=first_difference(clean.token_ids, steered.token_ids),
        truncated_from=prompt_truncation(lm, prompt, settings),
    )
