"""Steering: edit SAE features inside the forward pass and compare completions.

An intervention sets, scales, shifts or zeroes one feature at the SAE's hook.
The SAE's reconstruction error is kept, so the activation moves by exactly
decode(f_edited) - decode(f): with no edit the model is untouched.

Rows of one batch carry their own interventions (row 0 none, row 1 the user's
clamps), so an unclamped/clamped pair costs about one generation, and every
decoding step is steered, the KV-cached ones included. Generations go through
the model's shared scheduler (explorer.scheduler), which batches the rows of
every user's requests together; the functions here are its clients, one
request each.

An intervention may carry a `Condition` (apply only where another feature is
above a threshold, only on generated tokens, or only once the generated text
matches a pattern), and a row a `StopCondition` (end the row once a feature
fires above a threshold). Both read the row's own features at the hook, as
encoded there for the edit (no extra forward), before this position's edits.
The conditions live in `explorer.conditions`, the interventions, settings and
hook edit in `explorer.interventions`; this module re-exports their public names.

This module holds the prompt limits, the clients (`stream_rows`,
`generate_rows`, `generate_pair`) and the pair's result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Mapping

from explorer.activations import MAX_PROMPT_TOKENS, encode_prompt
from explorer.conditions import (  # noqa: F401  (most are re-exported: steering's API)
    CONDITION_KINDS,
    MAX_PATTERN_CHARS,
    Condition,
    RowConditions,
    SteeringError,
    StopCondition,
    check_condition,
    compile_pattern,
    parse_condition,
    parse_stop,
)
from explorer.interventions import (  # noqa: F401  (re-exported: steering's API)
    MAX_NEW_TOKENS,
    MODES,
    SEED_RANGE,
    TEMPERATURE_RANGE,
    VALUE_RANGES,
    Completion,
    GenerationSettings,
    Intervention,
    RowEdit,
    check_value,
    completion,
    edit_features,
    resolve,
    value_range,
)
from explorer.model import LoadedModel
from explorer.sae import SAE
from explorer.scheduler import Row, scheduler_for


@dataclass(frozen=True)
class SteeringResult:
    prompt: str
    interventions: tuple[Intervention, ...]
    settings: GenerationSettings
    clean: Completion
    steered: Completion
    diverge_at: int | None  # index of the first generated token that differs
    truncated_from: int | None = None  # the prompt's token count when it was cut (prompt_limit)
    stop: StopCondition | None = None  # the steered row's stop condition



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



def _submit(lm, sae, prompt, rows, settings, max_acts, stops):
    """One request of the model's scheduler: a Row per list of interventions."""
    if stops is not None and len(stops) != len(rows):
        raise SteeringError(f"{len(stops)} stop conditions for {len(rows)} rows. Fix: give one per row (None for none)")
    ids, _ = encode_prompt(lm, prompt, settings.chat, prompt_limit(lm, settings))
    stops = stops or [None] * len(rows)
    return scheduler_for(lm, sae).submit(ids[0].tolist(), [Row(tuple(r), settings, s) for r, s in zip(rows, stops)],
                                         max_acts)


def stream_rows(
    lm: LoadedModel,
    sae: SAE,
    prompt: str,
    rows: list[list[Intervention]],
    settings: GenerationSettings = GenerationSettings(),
    max_acts: Mapping[int, float] | None = None,
    stops: list[StopCondition | None] | None = None,
    stopped: dict[int, int] | None = None,
) -> Iterator[list[int | None]]:
    """Generate one completion per row (each row its own interventions) and
    yield, per step, the new token of every row (None once a row has ended).

    `stops`: per row, a StopCondition or None. A row stops after the generated
    token at which its stop feature fired; `stopped`, when given, receives
    row -> that token's index.

    The rows run in the model's scheduler, batched with other users' rows. Close
    the generator (e.g. `contextlib.closing`) when you stop reading early: that
    cancels the request and frees its rows. A prompt longer than `prompt_limit`
    is cut to it (`prompt_truncation` says whether it was)."""
    ticket = _submit(lm, sae, prompt, rows, settings, max_acts, stops)
    tokens = ticket.tokens()
    try:
        for step in tokens:
            if stopped is not None:
                stopped.update(ticket.stopped)
            yield step
        if stopped is not None:
            stopped.update(ticket.stopped)
    finally:
        tokens.close()


def generate_rows(lm, sae, prompt, rows, settings=GenerationSettings(), max_acts=None, stops=None) -> list[Completion]:
    """One Completion per row; `stops` as in `stream_rows`."""
    return _submit(lm, sae, prompt, rows, settings, max_acts, stops).result()


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
    stop: StopCondition | None = None,
) -> SteeringResult:
    """The unclamped and the clamped completion, as one batch of two rows.

    `clean`: the unclamped completion of an earlier run with the same prompt and
    settings; it does not depend on the interventions, so only the clamped row is
    generated (batch one). `stop` ends the steered row only (the clean row is the
    model as it is)."""
    if not interventions:
        raise SteeringError("No feature is steered. Fix: add at least one intervention")
    if clean is None:
        clean, steered = generate_rows(lm, sae, prompt, [[], list(interventions)], settings, max_acts, [None, stop])
    else:
        (steered,) = generate_rows(lm, sae, prompt, [list(interventions)], settings, max_acts, [stop])
    return SteeringResult(
        prompt=prompt,
        interventions=tuple(interventions),
        settings=settings,
        clean=clean,
        steered=steered,
        diverge_at=first_difference(clean.token_ids, steered.token_ids),
        truncated_from=prompt_truncation(lm, prompt, settings),
        stop=stop,
    )
