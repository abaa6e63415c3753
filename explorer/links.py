"""Deep links: the app's URL query parameters, parsed and validated.

A link can name a feature (`?feature=123`), a prompt (`?prompt=...`) and a
steering run (`?steer=123:clamp:3x,45:ablate` plus `max_new_tokens`,
`temperature`, `top_p`, `seed`, `chat`). A steer item may end in a condition:
`123:clamp:3x@f45>0.5` (where feature 45 is above 0.5), `@gen` (generated
tokens only) or `@after=REGEX` (REGEX percent-encoded, so `,` `:` `@` are
safe); `stop=45>0.5` ends the steered completion once feature 45 fires above 0.5. Links come from other people, so
nothing here raises: every bad value becomes a readable problem in
`LinkState.problems` and the default is used instead.

Public names: `LinkState`, `parse_links`, `to_query`, `parse_steer`,
`format_steer`, `format_condition`, `LIMITS`, and `VALUE_RANGES` (the steering module's, which
the app's sliders use too).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from explorer.steering import (
    MODES,
    VALUE_RANGES,  # noqa: F401  (part of this module's API: the app's sliders read it here)
    Condition,
    GenerationSettings,
    Intervention,
    SteeringError,
    StopCondition,
    check_condition,
    parse_condition,
    parse_stop,
    value_range,
)

_DEFAULTS = GenerationSettings()
# (low, high, default) of each generation setting a link may carry
LIMITS: dict[str, tuple[float, float, float]] = {
    "max_new_tokens": (1, 256, _DEFAULTS.max_new_tokens),
    "temperature": (0.0, 2.0, _DEFAULTS.temperature),
    "top_p": (0.05, 1.0, _DEFAULTS.top_p),
    "seed": (0, 2**31 - 1, _DEFAULTS.seed),
}
_INTEGER = {"max_new_tokens", "seed"}
MAX_PROMPT_CHARS = 8000
MAX_STEER_ITEMS = 16
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class LinkState:
    feature: int | None = None
    prompt: str | None = None
    steer: tuple[Intervention, ...] = ()
    max_new_tokens: int = int(LIMITS["max_new_tokens"][2])
    temperature: float = float(LIMITS["temperature"][2])
    top_p: float = float(LIMITS["top_p"][2])
    seed: int = int(LIMITS["seed"][2])
    chat: bool = False
    stop: StopCondition | None = None
    problems: tuple[str, ...] = field(default=(), compare=False)
    """One readable sentence per bad value in the link (the default was used)."""

    def settings(self, **overrides) -> GenerationSettings:
        """The link's generation settings as the steering module takes them."""
        values = {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                      "top_p": self.top_p, "seed": self.seed, "chat": self.chat}
        return GenerationSettings(**{**values, **overrides})


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _feature(text: str, d_sae: int | None, what: str) -> tuple[int | None, str | None]:
    text = text.strip()
    try:
        feature = int(text)
    except ValueError:
        return None, f"{what} '{text}' is not a feature id (a whole number)"
    if feature < 0 or (d_sae is not None and feature >= d_sae):
        upper = f"0..{d_sae - 1}" if d_sae is not None else "0 or more"
        return None, f"{what} {feature} does not exist (this SAE's features are {upper})"
    return feature, None


def _condition(text: str, d_sae: int | None) -> tuple[Condition | None, str | None]:
    """The text after '@' in a steer item: f45>0.5, gen, or after= a percent-encoded regex."""
    text = text.strip()
    if text.startswith("after="):
        text = "after=" + unquote(text.removeprefix("after="))
    try:
        cond = parse_condition(text)
        check_condition(cond, d_sae)
    except SteeringError as err:
        return None, str(err)
    return cond, None


def _steer_item(item: str, d_sae: int | None) -> tuple[Intervention | None, str | None]:
    item, at, condition = item.partition("@")
    iv, problem = _edit(item, d_sae)
    if iv is None or not at:
        return iv, problem
    cond, problem = _condition(condition, d_sae)
    if problem:  # steering everywhere instead would be another experiment
        return None, f"steer item '{item}@{condition}': {problem}; skipped"
    return dataclasses.replace(iv, condition=cond), None


def _edit(item: str, d_sae: int | None) -> tuple[Intervention | None, str | None]:
    parts = [p.strip() for p in item.split(":")]
    feature, problem = _feature(parts[0], d_sae, "feature")
    if problem:
        return None, f"steer item '{item}': {problem}; skipped"
    mode = parts[1].lower() if len(parts) > 1 else ""
    if mode not in MODES:
        return None, f"steer item '{item}': mode '{mode}' is not one of {', '.join(MODES)}; skipped"
    if mode == "ablate":
        return Intervention(feature, "ablate", 0.0), None
    if len(parts) < 3 or not parts[2]:
        return None, f"steer item '{item}': {mode} needs a value, e.g. {feature}:{mode}:2; skipped"
    raw = parts[2].lower()
    relative = raw.endswith("x")
    value = _number(raw[:-1] if relative else raw)
    if value is None:
        return None, f"steer item '{item}': value '{parts[2]}' is not a number; skipped"
    if mode == "scale":  # already a factor: '2x' and '2' mean the same
        relative = False
    iv = Intervention(feature, mode, value, relative)
    low, high = value_range(iv)
    if not low <= value <= high:
        return None, f"steer item '{item}': value {value:g} is outside {low:g}..{high:g}; skipped"
    return iv, None


def parse_steer(text: str, d_sae: int | None = None) -> tuple[tuple[Intervention, ...], list[str]]:
    """`123:clamp:3x,45:ablate@gen` -> interventions, plus one problem per skipped item."""
    items = [i for i in (text or "").split(",") if i.strip()]
    problems: list[str] = []
    if len(items) > MAX_STEER_ITEMS:
        problems.append(f"steer has {len(items)} items; only the first {MAX_STEER_ITEMS} are used")
        items = items[:MAX_STEER_ITEMS]
    out = []
    for item in items:
        iv, problem = _steer_item(item.strip(), d_sae)
        if problem:
            problems.append(problem)
        else:
            out.append(iv)
    return tuple(out), problems


def format_steer(interventions) -> str:
    """The inverse of `parse_steer`."""
    items = []
    for iv in interventions:
        if iv.mode == "ablate":
            items.append(f"{iv.feature}:ablate")
        else:
            suffix = "x" if iv.relative and iv.mode != "scale" else ""
            items.append(f"{iv.feature}:{iv.mode}:{float(iv.value):g}{suffix}")
        if iv.condition is not None:
            items[-1] += "@" + format_condition(iv.condition)
    return ",".join(items)


def format_condition(cond: Condition) -> str:
    """A condition as a steer item writes it: the pattern percent-encoded."""
    if cond.kind == "after_pattern":
        return "after=" + quote(cond.pattern, safe="")
    return cond.spec()


def _stop(text: str, d_sae: int | None) -> tuple[StopCondition | None, str | None]:
    try:
        stop = parse_stop(text)
        check_condition(stop, d_sae)
    except SteeringError as err:
        return None, f"stop '{text}': {err}; not used"
    return stop, None


def _setting(name: str, text: str) -> tuple[float, str | None]:
    low, high, default = LIMITS[name]
    value = _number(text)
    if value is None:
        return default, f"{name} '{text}' is not a number; using {default:g}"
    if name in _INTEGER and value != int(value):
        return default, f"{name} '{text}' is not a whole number; using {default:g}"
    if not low <= value <= high:
        return default, f"{name} {value:g} is outside {low:g}..{high:g}; using {default:g}"
    try:  # the steering module's own rule, e.g. no temperature between 0 and 0.01
        GenerationSettings(**{name: int(value) if name in _INTEGER else value})
    except SteeringError as err:
        return default, f"{name} {value:g}: {err}; using {default:g}"
    return value, None


def parse_links(params: Mapping[str, str], *, d_sae: int | None = None) -> LinkState:
    """Validate query parameters (one string per key). Unknown keys are ignored.

    `d_sae`, when known, rejects feature ids the loaded SAE does not have."""
    problems: list[str] = []
    values: dict = {}
    if "feature" in params:
        feature, problem = _feature(str(params["feature"]), d_sae, "feature")
        values["feature"] = feature
        problems += [problem] if problem else []
    prompt = params.get("prompt")
    if prompt:
        if len(prompt) > MAX_PROMPT_CHARS:
            problems.append(f"prompt has {len(prompt)} characters; cut to the first {MAX_PROMPT_CHARS}")
            prompt = prompt[:MAX_PROMPT_CHARS]
        values["prompt"] = prompt
    if "steer" in params:
        values["steer"], steer_problems = parse_steer(str(params["steer"]), d_sae)
        problems += steer_problems
    if params.get("stop"):
        values["stop"], problem = _stop(str(params["stop"]), d_sae)
        problems += [problem] if problem else []
    for name in LIMITS:
        if name in params:
            value, problem = _setting(name, str(params[name]))
            values[name] = int(value) if name in _INTEGER else float(value)
            problems += [problem] if problem else []
    if "chat" in params:
        flag = str(params["chat"]).strip().lower()
        if flag in _TRUE + _FALSE:
            values["chat"] = flag in _TRUE
        else:
            problems.append(f"chat '{params['chat']}' is not true or false; using false")
    return LinkState(**values, problems=tuple(problems))


def to_query(state: LinkState) -> dict[str, str]:
    """Query parameters for a state; settings equal to the defaults are left out."""
    query: dict[str, str] = {}
    if state.feature is not None:
        query["feature"] = str(state.feature)
    if state.prompt:
        query["prompt"] = state.prompt
    if state.steer:
        query["steer"] = format_steer(state.steer)
    for name, (_, _, default) in LIMITS.items():
        value = getattr(state, name)
        if value != default:
            query[name] = str(int(value)) if name in _INTEGER else f"{float(value):g}"
    if state.chat:
        query["chat"] = "1"
    if state.stop is not None:
        query["stop"] = state.stop.spec()
    return query
