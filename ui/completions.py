"""Clean and steered completions streamed into the page as they grow, their diff,
and the notice when a prompt is longer than the model reads."""

from __future__ import annotations

import contextlib
import time

import streamlit as st

from explorer import render
from explorer.steering import (GenerationSettings, SteeringResult, completion, first_difference, prompt_limit,
                               prompt_truncation, stream_rows)
from explorer.tokens import token_strings
from explorer.workspace import Workspace
from ui.workspace import ws_key

# Streamed completions are redrawn at most this often: every redraw is a message
# the browser renders, usually on the same CPU that generates (eight tabs generating
# at once spent 3.5-3.9 s of CPU in chromium at 0.25 s, 2.9-3.2 s at 0.5 s).
STREAM_EVERY_S = 0.5
TICKET_KEY = "steer_ticket"  # the session's generation in the model's scheduler


def show_rows(ws: Workspace, boxes, ids: list[list[int]]) -> None:
    for box, row in zip(boxes, ids):
        box.text(ws.lm.tokenizer.decode(row))


def stream_pair(ws: Workspace, prompt: str, interventions, settings, boxes, clean=None, stop=None) -> SteeringResult:
    """Generate clean and steered completions as one batch, showing them in
    `boxes` (two st.empty) as they grow. A `clean` completion from an earlier run
    with the same prompt and settings is shown at once and only the steered row
    is generated. `stop` (a StopCondition) ends the steered row only. A new
    generation in the same session cancels the one before (its rows leave the
    model's batch), and the stream is closed even when a rerun interrupts the loop."""
    ids: list[list[int]] = [list(clean.token_ids) if clean else [], []]
    rows = [list(interventions)] if clean else [[], list(interventions)]
    stops = [stop] if clean else [None, stop]
    stopped: dict[int, int] = {}  # row -> generated token where its stop condition fired
    growing = ids[1:] if clean else ids
    shown = 0.0
    cancel_previous()
    stream = stream_rows(ws.lm, ws.sae, prompt, rows, settings, ws.max_acts(), stops, stopped, keep_ticket)
    with contextlib.closing(stream) as steps:
        for step in steps:
            for row, token in zip(growing, step):
                if token is not None:
                    row.append(token)
            if time.monotonic() - shown >= STREAM_EVERY_S:
                show_rows(ws, boxes, ids)
                shown = time.monotonic()
    show_rows(ws, boxes, ids)
    at = stopped.get(len(rows) - 1)
    clean = clean or completion(ws.lm, ids[0], settings)
    steered = completion(ws.lm, ids[1], settings, at, stop if at is not None else None)
    return SteeringResult(prompt, tuple(interventions), settings, clean, steered,
                          first_difference(clean.token_ids, steered.token_ids), stop=stop)


def keep_ticket(ticket) -> None:
    st.session_state[TICKET_KEY] = ticket


def cancel_previous() -> None:
    """Cancel this session's generation if one is still running (a rerun cut its page off)."""
    ticket = st.session_state.pop(TICKET_KEY, None)
    if ticket is not None:
        ticket.cancel()


def stopped_note(box, steered) -> None:
    """Say under the steered completion where its stop condition ended it, when it did."""
    if steered.stopped_at is not None:
        box.caption(f"Stopped after generated token {steered.stopped_at}: {steered.stopped_by.describe()}")


def earlier_clean(ws: Workspace, history: list[dict], prompt: str, settings):
    """The unclamped completion of an earlier run of this workspace with the same prompt and settings."""
    key = ws_key(ws)
    for run in history:
        r = run["result"]
        if run["ws"] == key and r.prompt == prompt and r.settings == settings:
            return r.clean
    return None


def display_tokens(ws: Workspace, ids: list[int]) -> list[str]:
    return token_strings(ws.lm.tokenizer, ids)[1]


def result_diff(ws: Workspace, result: SteeringResult) -> None:
    st.html(render.diff_html(display_tokens(ws, result.clean.token_ids), display_tokens(ws, result.steered.token_ids),
                             result.diverge_at))


def prompt_cut(ws: Workspace, prompt: str, settings: GenerationSettings) -> tuple[int, int] | None:
    """(the prompt's tokens, the tokens kept) when generation cuts it, else None."""
    n = prompt_truncation(ws.lm, prompt, settings)
    return None if n is None else (n, prompt_limit(ws.lm, settings))


def cut_notice(box, cut: tuple[int, int] | None) -> None:
    """Say in `box` (st itself, or an st.empty) that the prompt was cut, when it was."""
    if cut:
        box.warning(f"The prompt has {cut[0]:,} tokens; only the first {cut[1]:,} were used.",
                    icon=":material/content_cut:")
