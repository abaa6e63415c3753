"""Conditions: where a steering edit applies, and when a row stops.

A `Condition` limits an intervention to positions where another feature is above
a threshold, to generated tokens, or to positions once the generated text matches
a pattern; a `StopCondition` ends a row once a feature fires above a threshold.
This module holds them, their text form (`parse_condition`, `parse_stop`, `spec`),
their checks, and `RowConditions`, which turns one row's conditions into
per-position masks over the features the steering hook has encoded.

`SteeringError` is defined here, as these checks raise it; `explorer.steering`
builds on this module and re-exports it and the public names below.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

CONDITION_KINDS = ("feature_above", "generated_only", "after_pattern")
# A pattern is searched in the whole generated text at every step: a short cap
# keeps a pasted or linked pattern from costing more than the step itself.
MAX_PATTERN_CHARS = 200


class SteeringError(ValueError):
    """An intervention or setting is invalid; the message says how to fix it."""


@dataclass(frozen=True)
class Condition:
    """Where an intervention applies, judged per row and per position.

    feature_above: where `feature`'s activation at the same hook is > `threshold`;
    generated_only: at generated tokens, not the prompt's;
    after_pattern: once the row's generated text so far matches the regex
    `pattern` (re.search), and from then on; the prompt is checked against ''."""

    kind: str
    feature: int = 0
    threshold: float = 0.0
    pattern: str = ""

    def describe(self) -> str:
        return self._text("when #{feature} > {threshold:g}", "on generated tokens", "after /{pattern}/")

    def spec(self) -> str:
        """The text `parse_condition` reads back: f45>0.5, gen, after=REGEX."""
        return self._text("f{feature}>{threshold:g}", "gen", "after={pattern}")

    def _text(self, above: str, generated: str, after: str) -> str:
        form = {"feature_above": above, "generated_only": generated}.get(self.kind, after)
        return form.format(feature=self.feature, threshold=self.threshold, pattern=self.pattern)


@dataclass(frozen=True)
class StopCondition:
    """End a row once `feature`'s activation at a generated token is > `threshold`;
    that token is the row's last. The prompt's tokens are not read."""

    feature: int
    threshold: float

    def describe(self) -> str:
        return f"stop when #{self.feature} > {self.threshold:g}"

    def spec(self) -> str:
        return f"{self.feature}>{self.threshold:g}"


def _threshold(text: str, what: str) -> tuple[int, float]:
    """'45>0.5' or 'f45>0.5' -> (45, 0.5)."""
    feature, _, threshold = text.strip().removeprefix("f").partition(">")
    try:
        return int(feature), _finite(float(threshold))
    except ValueError:
        raise SteeringError(f"{what} {text!r} is not FEATURE>THRESHOLD. Fix: write e.g. 45>0.5") from None


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(value)
    return value


def parse_condition(text: str) -> Condition:
    """'f45>0.5' (feature 45 above 0.5), 'gen' (generated tokens only) or 'after=REGEX'."""
    text = text.strip()
    if text == "gen":
        return Condition("generated_only")
    if text.startswith("after="):
        return Condition("after_pattern", pattern=text.removeprefix("after="))
    if text.startswith("f"):
        feature, threshold = _threshold(text, "condition")
        return Condition("feature_above", feature, threshold)
    raise SteeringError(f"Unknown condition {text!r}. Fix: use f45>0.5 (feature 45 above 0.5), "
                        "gen (generated tokens only) or after=REGEX")


def parse_stop(text: str) -> StopCondition:
    """'45>0.5': end the row once feature 45 is above 0.5."""
    return StopCondition(*_threshold(text, "stop condition"))


def check_condition(cond: Condition | StopCondition | None, d_sae: int | None) -> None:
    """Raise SteeringError unless the condition can be evaluated on this SAE
    (d_sae None: any feature id of 0 or more)."""
    if cond is None:
        return
    kind = getattr(cond, "kind", "feature_above")  # a StopCondition reads like feature_above
    if kind not in CONDITION_KINDS:
        raise SteeringError(f"Unknown condition kind {kind!r}. Fix: use one of {', '.join(CONDITION_KINDS)}")
    if kind == "feature_above":
        if cond.feature < 0 or (d_sae is not None and cond.feature >= d_sae):
            upper = f"0..{d_sae - 1}" if d_sae is not None else "0 or more"
            raise SteeringError(f"{cond.describe()}: feature {cond.feature} does not exist. Fix: pick a feature in {upper}")
        if not math.isfinite(float(cond.threshold)):
            raise SteeringError(f"The threshold of feature {cond.feature} is not a finite number. Fix: use e.g. 0.5")
    if kind == "after_pattern":
        compile_pattern(cond.pattern)


def compile_pattern(pattern: str) -> re.Pattern:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise SteeringError(f"The pattern has {len(pattern)} characters, more than {MAX_PATTERN_CHARS}. "
                            "Fix: use a shorter pattern")
    try:
        return re.compile(pattern)
    except re.error as err:
        raise SteeringError(f"The pattern {pattern!r} is not a regular expression ({err}). "
                            "Fix: escape special characters such as ( or [ with a backslash") from None


class RowConditions:
    """The conditions of one row's edits (None: that edit applies everywhere),
    judged per position of the features encoded at the hook.

    An after_pattern condition latches: once the row's generated text matched,
    it holds from then on, and its text is no longer wanted."""

    def __init__(self, conditions: list[Condition | None]):
        self.conditions = conditions
        self.patterns = [compile_pattern(c.pattern) if c is not None and c.kind == "after_pattern" else None
                         for c in conditions]
        self.matched = [False] * len(conditions)  # after_pattern: latched at the first match

    def wants_text(self) -> bool:
        """Whether a pattern still waits for a match in the row's generated text."""
        return any(p is not None and not m for p, m in zip(self.patterns, self.matched))

    def masks(self, f: torch.Tensor, generated: bool, text: str) -> list[torch.Tensor | None]:
        """Per condition, where it holds among the positions of f (seq, d_sae) (None: all of them).

        `generated`: whether these positions are generated tokens (not the prompt's);
        `text`: the row's generated text so far."""
        nowhere = torch.zeros(f.shape[0], dtype=torch.bool, device=f.device)
        masks: list[torch.Tensor | None] = []
        for k, cond in enumerate(self.conditions):
            if cond is None:
                masks.append(None)
            elif cond.kind == "feature_above":
                masks.append(f[:, cond.feature] > cond.threshold)
            elif cond.kind == "generated_only":
                masks.append(None if generated else nowhere)
            else:  # after_pattern
                self.matched[k] = self.matched[k] or self.patterns[k].search(text) is not None
                masks.append(None if self.matched[k] else nowhere)
        return masks
