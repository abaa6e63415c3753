"""Interventions, generation settings and the hook edit that applies them per row.

An intervention sets, scales, shifts or zeroes one feature at the SAE's hook.
The SAE's reconstruction error is kept, so the activation moves by exactly
decode(f_edited) - decode(f): with no edit the model is untouched.

`RowEdit` is that hook edit for a batch of rows, each row with its own
interventions and conditions (explorer.conditions); `sample` picks each row's
next token with the row's own generator. The generation loop that uses them is
explorer.scheduler; explorer.steering builds on both and re-exports these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from explorer.conditions import Condition, RowConditions, StopCondition, SteeringError, check_condition
from explorer.model import LoadedModel
from explorer.sae import SAE

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


@dataclass(frozen=True)
class Intervention:
    feature: int
    mode: str = "clamp"
    value: float = 0.0
    relative: bool = False  # value is a multiple of the feature's max activation
    condition: Condition | None = None  # None: every position

    def describe(self) -> str:
        if self.mode == "ablate":
            text = f"ablate #{self.feature}"
        else:
            unit = "x max" if self.relative else ""
            text = f"{self.mode} #{self.feature} {self.value:g}{unit}"
        return f"{text} {self.condition.describe()}" if self.condition else text


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
    stopped_at: int | None = None  # index of the generated token where `stopped_by` fired (the last kept)
    stopped_by: StopCondition | None = None


@dataclass(frozen=True)
class _Resolved:
    """An intervention with its value in activation units."""

    feature: int
    mode: str
    value: float
    condition: Condition | None = None


def resolve(interventions: list[Intervention], d_sae: int, max_acts: Mapping[int, float] | None = None) -> list[_Resolved]:
    out = []
    for iv in interventions:
        if iv.mode not in MODES:
            raise SteeringError(f"Unknown mode {iv.mode!r}. Fix: use one of {', '.join(MODES)}")
        if not 0 <= iv.feature < d_sae:
            raise SteeringError(f"Feature {iv.feature} does not exist. Fix: pick a feature in 0..{d_sae - 1}")
        check_value(iv)
        check_condition(iv.condition, d_sae)
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
        out.append(_Resolved(iv.feature, iv.mode, 0.0 if iv.mode == "ablate" else value, iv.condition))
    return out


def edit_features(f: torch.Tensor, edits: list[_Resolved], masks: list[torch.Tensor | None] | None = None) -> torch.Tensor:
    """Apply edits to latents f [..., d_sae]; returns a new tensor.

    `masks`: per edit, a bool tensor shaped f[..., 0] saying where it applies (None: everywhere)."""
    f = f.clone()
    for e, mask in zip(edits, masks or [None] * len(edits)):
        column = f[..., e.feature]
        if e.mode in ("clamp", "ablate"):
            new = torch.full_like(column, e.value)
        elif e.mode == "scale":
            new = column * e.value
        else:  # add
            new = column + e.value
        f[..., e.feature] = new if mask is None else torch.where(mask, new, column)
    return f


class RowEdit:
    """The hook edit of one generation: steers each batch row by its own edits,
    each where its condition holds, and notes rows whose stop feature fired.

    The generation loop sets `generated` once the prompt has gone through and,
    while `wants_text(row)`, that row's generated text in `texts` before each
    forward. `applied[row]` grows by one bool per position seen: whether any edit
    changed it (rows without edits stay empty).

    Called with `present`, the activation holds only those rows (act[j] is row
    present[j]): rows that ended have left the batch."""

    def __init__(self, sae: SAE, rows: list[list[_Resolved]], stops: list[StopCondition | None] | None = None):
        self.sae = sae
        self.rows = rows
        self.stops = list(stops) if stops else [None] * len(rows)
        self.features = [sorted({e.feature for e in edits}) for edits in rows]
        self.conditions = [RowConditions([e.condition for e in edits]) for edits in rows]
        self.generated = False
        self.texts = [""] * len(rows)
        self.fired: dict[int, float] = {}  # row -> its stop feature's activation at the last position, when above
        self.applied: list[list[bool]] = [[] for _ in rows]

    def wants_text(self, row: int) -> bool:
        return self.conditions[row].wants_text()

    def __call__(self, act: torch.Tensor, present: list[int] | None = None) -> torch.Tensor | None:
        out = None
        for j, i in enumerate(range(len(self.rows)) if present is None else present):
            edits = self.rows[i]
            watch = self.generated and self.stops[i] is not None
            if not edits and not watch:
                continue
            x = act[j].to(self.sae.dtype)  # (seq, d_in)
            f = self.sae.encode(x)  # (seq, d_sae)
            if watch:
                self._check_stop(i, f)
            if not edits:
                continue
            masks = self.conditions[i].masks(f, self.generated, self.texts[i])
            if all(m is None for m in masks):  # every edit applies everywhere: no mask, no sync
                self.applied[i] += [True] * f.shape[0]
                f_new = edit_features(f, edits)
            else:
                where = [torch.ones_like(f[:, 0], dtype=torch.bool) if m is None else m for m in masks]
                applied = torch.stack(where).any(0).tolist()
                self.applied[i] += applied
                if not any(applied):  # the row goes through untouched, bit for bit
                    continue
                f_new = edit_features(f, edits, masks)
            delta = self.sae.decode_change(f, f_new, self.features[i], like=x)
            out = act.clone() if out is None else out
            out[j] = (x + delta).to(act.dtype)
        return out

    def _check_stop(self, i: int, f: torch.Tensor) -> None:
        stop = self.stops[i]
        value = float(f[-1, stop.feature])  # the newest token's position
        if value > stop.threshold:
            self.fired[i] = value


def sample(logits: torch.Tensor, settings: GenerationSettings, gens: list[torch.Generator]) -> torch.Tensor:
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


def completion(lm: LoadedModel, ids: list[int], settings: GenerationSettings,
               stopped_at: int | None = None, stopped_by: StopCondition | None = None) -> Completion:
    eos = lm.tokenizer.eos_token_id
    shown = ids[:-1] if settings.stop_at_eos and ids and ids[-1] == eos else ids
    return Completion(token_ids=ids, text=lm.tokenizer.decode(shown, skip_special_tokens=False),
                      stopped_at=stopped_at, stopped_by=stopped_by)

