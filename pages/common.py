"""Shared UI pieces: the one workspace, cached lookups, deep links, small renderers.

Pages import this module; it holds no model code. Every forward pass goes
through `explorer`, whose functions take the model's lock.
"""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from dataclasses import dataclass

import plotly.graph_objects as go
import streamlit as st

from explorer import export, render
from explorer.activations import MAX_PROMPT_TOKENS, token_activations
from explorer.links import LinkState, parse_links
from explorer.steering import SteeringResult, completion, first_difference, stream_rows
from explorer.tokens import token_strings
from explorer.workspace import Workspace, open_workspace

PAGES = {"activations": "pages/activations.py", "feature": "pages/feature.py", "steering": "pages/steering.py"}
ENV = {"model": "EXPLORER_MODEL", "sae": "EXPLORER_SAE", "index": "EXPLORER_INDEX"}
NO_INDEX = ("No feature index is loaded, so there are no feature cards, labels, search or 'x max' values. "
            "Fix: build one with `explorer index` and choose its folder in the sidebar.")
UNTRAINED = ("UNTRAINED SAE: random weights, so its features mean nothing. "
             "Use it to try the tool; choose a trained SAE folder in the sidebar for real features.")
# Streamed completions are redrawn at most this often: every redraw is a message
# the browser renders on the same CPU that generates.
STREAM_EVERY_S = 0.25
MIME = {"json": "application/json", "md": "text/markdown", "html": "text/html", "png": "image/png"}


# ---------------------------------------------------------------- routing

_router = threading.local()  # script runs are threads: one flag per run


@contextlib.contextmanager
def routing():
    """Marks a page run as started by the router (app.py)."""
    _router.active = True
    try:
        yield
    finally:
        _router.active = False


def run_page(page) -> None:
    """Run a page function under the router.

    With a pages/ folder beside app.py, Streamlit's legacy multipage mode runs
    first (on a server's first run, and on every AppTest run) and may execute a
    page file alone. The router then runs instead, and it runs this page."""
    if getattr(_router, "active", False):
        page()
    else:
        import app  # the entry script; its folder is on sys.path

        app.run()


# ---------------------------------------------------------------- the workspace


@dataclass(frozen=True)
class Choice:
    """What the user asked to load; '' means the default."""

    model: str = "demo"
    sae: str = ""
    index: str = ""

    @classmethod
    def from_env(cls) -> Choice:
        return cls(os.environ.get(ENV["model"]) or "demo", os.environ.get(ENV["sae"], ""), os.environ.get(ENV["index"], ""))


@st.cache_resource(show_spinner="Loading model, SAE and index…", max_entries=2)
def get_workspace(model: str, sae: str, index: str) -> Workspace:
    """One workspace per choice, shared by every session of this process."""
    ws = open_workspace(model=model, sae=sae or None, index=index or None, progress=False)
    # torch, transformers and the workspace leave ~450k long-lived Python objects;
    # every full garbage collection walked them all, a 200-400 ms pause about once
    # a second while pages rerun. Frozen objects are never walked again.
    gc.collect()
    gc.freeze()
    return ws


def choice() -> Choice:
    return st.session_state.setdefault("ws_choice", Choice.from_env())


def load(c: Choice) -> tuple[Workspace | None, str | None]:
    """The workspace, or the reason it cannot be loaded (never a traceback)."""
    try:
        return get_workspace(c.model, c.sae, c.index), None
    except Exception as err:  # noqa: BLE001 - any loading failure is shown to the user
        return None, f"Could not load model {c.model!r}, SAE {c.sae or 'default'!r}, index {c.index or 'default'!r}: {err}"


def current_workspace() -> Workspace | None:
    """The session's workspace; on failure the page shows why and gets None."""
    ws, _ = load(choice())
    if ws is None:
        st.error("Nothing is loaded: the sidebar says why. Fix the model, SAE or index there.")
    return ws


def ws_key(ws: Workspace) -> tuple:
    """Plain values naming a workspace, for st.cache_data keys."""
    c = choice()
    return (c.model, c.sae, c.index, ws.sae_id, ws.hook_name)


def sidebar() -> None:
    """Shown on every page: what is loaded, and a form to load something else."""
    with st.sidebar:
        st.subheader("Workspace")
        ws, error = load(choice())
        if ws is None:
            st.error(error)
        else:
            st.markdown(f"**Model** `{ws.lm.name}`  \n**Device** `{ws.lm.device}` ({str(ws.lm.dtype).removeprefix('torch.')})  \n"
                        f"**Hook** `{ws.hook_name}`  \n**SAE** `{ws.sae_source}` ({ws.sae.cfg.d_sae:,} features)")
            if ws.untrained:
                st.warning(UNTRAINED, icon=":material/warning:")
            if ws.index is None:
                st.info("No index loaded: feature cards and 'x max' steering need one.")
            else:
                st.markdown(f"**Index** `{ws.index.path}` ({ws.index.manifest.n_tokens:,} tokens)")
        # Drawn only while open: a fragment's run (a card change) redraws the sidebar's widgets too.
        other = st.expander("Load another model, SAE or index", expanded=ws is None, key="ws_open", on_change="rerun")
        if other.open:
            with other, st.form("ws_form", border=False):
                c = choice()
                model = st.text_input("Model (local folder, .gguf or 'demo')", c.model)
                sae = st.text_input("SAE folder (empty: the default; 'random': untrained)", c.sae)
                index = st.text_input("Index folder (empty: the default)", c.index)
                if st.form_submit_button("Load"):
                    new = Choice(model.strip() or "demo", sae.strip(), index.strip())
                    _, error = load(new)
                    st.session_state["ws_error"] = error
                    if not error:
                        st.session_state["ws_choice"] = new
                        st.rerun()
        if st.session_state.get("ws_error"):
            st.error(st.session_state["ws_error"])


# ---------------------------------------------------------------- cached lookups


@st.cache_data(max_entries=64, show_spinner="Running the model…")
def _activations(key: tuple, text: str, chat: bool, _ws: Workspace):
    return token_activations(_ws.lm, _ws.sae, text, chat=chat, max_tokens=MAX_PROMPT_TOKENS)


def activations(ws: Workspace, text: str, chat: bool):
    return _activations(ws_key(ws), text, chat, ws)


# A resource, not data: cards are frozen dataclasses that no page changes, so
# every session can share one object instead of paying a pickle copy per read.
@st.cache_resource(max_entries=512, show_spinner=False)
def _card(key: tuple, feature: int, _ws: Workspace):
    return _ws.index.card(feature)


def card(ws: Workspace, feature: int):
    return _card(ws_key(ws), int(feature), ws)


@st.cache_data(max_entries=256, show_spinner=False)
def _card_bytes(key: tuple, feature: int, fmt: str, _ws: Workspace) -> bytes:
    return export.card_bytes(card(_ws, feature), fmt, model=_ws.lm.name, hook=_ws.hook_name, sae_id=_ws.sae_id)


def card_bytes(ws: Workspace, feature: int, fmt: str) -> bytes:
    return _card_bytes(ws_key(ws), int(feature), fmt, ws)


@st.cache_data(max_entries=16, show_spinner="Building the zip…")
def _zip_bytes(key: tuple, features: tuple[int, ...], formats: tuple[str, ...], _ws: Workspace) -> bytes:
    cards = [card(_ws, f) for f in features]
    return export.cards_to_zip(cards, formats, model=_ws.lm.name, hook=_ws.hook_name, sae_id=_ws.sae_id)


def zip_bytes(ws: Workspace, features, formats) -> bytes:
    return _zip_bytes(ws_key(ws), tuple(sorted(set(features))), tuple(formats), ws)


def set_label(ws: Workspace, feature: int, text: str) -> None:
    ws.index.set_label(feature, text)
    for cached in (_card, _card_bytes, _zip_bytes):  # the label is on every card and export
        cached.clear()


def label(ws: Workspace, feature: int) -> str:
    return ws.index.label(feature) if ws.index is not None else ""


def feature_name(ws: Workspace, feature: int) -> str:
    text = label(ws, feature)
    return f"#{feature} · {text}" if text else f"#{feature}"


md = export.md_escape  # untrusted text shown by a widget that reads Markdown


def feature_md(ws: Workspace, feature: int) -> str:
    """`feature_name` for widgets that read Markdown: labels are untrusted text."""
    return export.md_escape(feature_name(ws, feature))


def max_act(ws: Workspace, feature: int) -> float | None:
    """The feature's max activation in the index; None without an index or when it never fired."""
    if ws.index is None:
        return None
    value = float(ws.index.max_activations()[int(feature)])
    return value if value > 0 else None


# ---------------------------------------------------------------- deep links


def link(page: str, ws: Workspace) -> tuple[LinkState, bool]:
    """The page's query parameters, validated; bad values are shown as errors.

    Returns (state, fresh): fresh is True when the URL changed since this page
    last applied or wrote it, i.e. when the page should load the link."""
    params = st.query_params.to_dict()
    state = parse_links(params, d_sae=ws.sae.cfg.d_sae)
    for problem in state.problems:
        st.error(f"Problem in the link: {problem}.")
    token = tuple(sorted(params.items()))
    fresh = st.session_state.get(f"_link_{page}") != token
    st.session_state[f"_link_{page}"] = token
    return state, fresh


def write_link(page: str, query: dict[str, str]) -> None:
    """Put the page's state in the URL (a shareable link) without reloading it."""
    if st.query_params.to_dict() != query:
        st.query_params.from_dict(query)
    st.session_state[f"_link_{page}"] = tuple(sorted(query.items()))


def feature_links(ws: Workspace, pairs, *, key: str) -> None:
    """A row of links to feature cards: (feature, score) pairs."""
    with st.container(horizontal=True, key=key):
        for f, score in pairs:
            st.page_link(PAGES["feature"], label=f"{feature_md(ws, f)} ({score:.2f})", query_params={"feature": str(f)})


# ---------------------------------------------------------------- rendering


def tokens_html(tokens: list[str], values: list[float], vmax: float, peak: int | None = None) -> None:
    """Token text highlighted by activation; every token is escaped by explorer.render."""
    st.html(render.token_spans(tokens, values, vmax, peak=peak))


def plot_text(text: str) -> str:
    """Text for a plotly label: plotly reads a few tags (<b>, <br>, <a href>) and
    decodes &lt; &gt; &amp; (not &quot;), so only those three are escaped."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def heatmap(ws: Workspace, acts, features: list[int]) -> go.Figure:
    """Tokens (x) by features (y), each row scaled by its feature's max activation
    (the index's, else the prompt's) so that weak features stay visible."""
    raw = [acts.feature_values(f) for f in features]
    scale = [max_act(ws, f) or max(row) or 1.0 for f, row in zip(features, raw)]
    x = [f"{i}:{plot_text(t)}" for i, t in enumerate(acts.tokens)]
    y = [plot_text(feature_name(ws, f)) for f in features]
    fig = go.Figure(go.Heatmap(z=[[v / s for v in row] for row, s in zip(raw, scale)], x=x, y=y, customdata=raw,
                               zmin=0, zmax=1, colorscale="Oranges", colorbar={"title": "÷ max"},
                               hovertemplate="%{y}<br>token %{x}<br>activation %{customdata:.4g}<extra></extra>"))
    fig.update_layout(height=max(260, 22 * len(features) + 120), margin={"l": 10, "r": 10, "t": 10, "b": 10},
                      yaxis={"autorange": "reversed"}, xaxis={"tickangle": -60})
    return fig


def error_chart(acts) -> go.Figure:
    rel = [e / n if n else 0.0 for e, n in zip(acts.error_norm, acts.input_norm)]
    x = [f"{i}:{plot_text(t)}" for i, t in enumerate(acts.tokens)]
    fig = go.Figure(go.Bar(x=x, y=rel, customdata=list(zip(acts.error_norm, acts.input_norm)), marker_color="#7a7aff",
                           hovertemplate="token %{x}<br>‖x−x̂‖/‖x‖ %{y:.3f}<br>‖x−x̂‖ %{customdata[0]:.3g}, ‖x‖ %{customdata[1]:.3g}<extra></extra>"))
    fig.update_layout(height=260, margin={"l": 10, "r": 10, "t": 10, "b": 10}, yaxis_title="relative error", xaxis={"tickangle": -60})
    return fig


def histogram_html(card) -> str:
    """The nonzero activations' histogram; the index's bins are log-spaced unless built otherwise."""
    title = '<div style="font-weight:600;margin-bottom:4px">Activation histogram (nonzero activations)</div>'
    return title + render.histogram_html(card.hist_edges, card.hist_counts)


# ---------------------------------------------------------------- steering


def show_rows(ws: Workspace, boxes, ids: list[list[int]]) -> None:
    for box, row in zip(boxes, ids):
        box.text(ws.lm.tokenizer.decode(row))


def stream_pair(ws: Workspace, prompt: str, interventions, settings, boxes, clean=None) -> SteeringResult:
    """Generate clean and steered completions as one batch, showing them in
    `boxes` (two st.empty) as they grow. A `clean` completion from an earlier run
    with the same prompt and settings is shown at once and only the steered row
    is generated. The generator holds the model lock, so it is closed even when
    a rerun interrupts the loop."""
    ids: list[list[int]] = [list(clean.token_ids) if clean else [], []]
    rows = [list(interventions)] if clean else [[], list(interventions)]
    growing = ids[1:] if clean else ids
    shown = 0.0
    with contextlib.closing(stream_rows(ws.lm, ws.sae, prompt, rows, settings, ws.max_acts())) as steps:
        for step in steps:
            for row, token in zip(growing, step):
                if token is not None:
                    row.append(token)
            if time.monotonic() - shown >= STREAM_EVERY_S:
                show_rows(ws, boxes, ids)
                shown = time.monotonic()
    show_rows(ws, boxes, ids)
    clean, steered = clean or completion(ws.lm, ids[0], settings), completion(ws.lm, ids[1], settings)
    return SteeringResult(prompt, tuple(interventions), settings, clean, steered,
                          first_difference(clean.token_ids, steered.token_ids))


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
