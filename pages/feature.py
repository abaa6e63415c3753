"""Feature card: what one feature responds to and what it promotes."""

import functools
import random

import streamlit as st

from explorer import render
from explorer.export import FORMATS, card_filename
from pages import common

PAGE = "feature"
CONTEXT = (24, 12)  # tokens shown before and after an example's peak
# The browser skips laying out examples that are off screen: Streamlit measures
# its elements after every update, and each measure would lay out all of them.
LAZY = "content-visibility:auto;contain-intrinsic-size:auto 90px"


def step(delta: int, d_sae: int) -> None:
    st.session_state["feature_id"] = (st.session_state["feature_id"] + delta) % d_sae


def jump(feature: int) -> None:
    st.session_state["feature_id"] = int(feature)


def picker(ws) -> int:
    """Feature id box, previous / next / random, and search."""
    d_sae = ws.sae.cfg.d_sae
    st.session_state.setdefault("feature_id", 0)
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.number_input("Feature id", 0, d_sae - 1, key="feature_id", persist_state="session", step=1, width=180)
        st.button("Previous", on_click=step, args=(-1, d_sae), icon=":material/chevron_left:")
        st.button("Next", on_click=step, args=(1, d_sae), icon=":material/chevron_right:")
        st.button("Random", on_click=jump, args=(random.randrange(d_sae),), icon=":material/casino:")
    with st.expander("Search features by label or token"):
        by = st.radio("Search in", ["label", "top_token", "logit_token"], horizontal=True, key="search_by", persist_state="session",
                      format_func={"label": "labels", "top_token": "top-activating tokens",
                                   "logit_token": "promoted tokens (logits)"}.get)
        query = st.text_input("Search", key="search_query", persist_state="session", placeholder="e.g. French, ␣the, code")
        if query.strip():
            hits = ws.index.search(query.strip(), by=by, limit=20)
            if not hits:
                st.info("No feature matches.")
            with st.container(horizontal=True):
                for f in hits:
                    st.button(common.feature_md(ws, f), key=f"hit_{f}", on_click=jump, args=(f,))
    feature = int(st.session_state["feature_id"])
    common.write_link(PAGE, {"feature": str(feature)})
    viewed = st.session_state.setdefault("viewed", [])
    if feature not in viewed:
        viewed.append(feature)
    return feature


def label_editor(ws, card) -> None:
    form = st.form(f"label_form_{card.feature}", border=False)
    with form, st.container(horizontal=True, vertical_alignment="bottom"):
        text = st.text_input("Label", card.label, placeholder=card.auto_label or "describe this feature")
        if st.form_submit_button("Save label"):
            common.set_label(ws, card.feature, text.strip())
            st.toast(f"Saved the label of #{card.feature}")
            st.rerun()
    if card.auto_label and card.auto_label != card.label:
        st.caption(f"Auto label: {common.md(card.auto_label)}")


def examples_html(items, vmax: float) -> str:
    """Each example around its peak token (marked), or whole when asked."""
    whole = st.session_state.get("card_whole", False)
    parts = []
    for ex in items:
        a, b = (0, len(ex.tokens)) if whole else (max(0, ex.position - CONTEXT[0]), ex.position + CONTEXT[1] + 1)
        # numbers only in the caption: nothing to escape
        caption = (f'<div style="color:#808495;font-size:0.8em;margin-top:0.7em">activation {ex.activation:.3g}'
                   f" · window {ex.window}, token {ex.position}</div>")
        spans = render.token_spans(ex.tokens[a:b], ex.values[a:b], vmax, peak=ex.position - a, plain_zeros=True)
        parts.append(f'<div style="{LAZY}">{caption}{spans}</div>')
    return "".join(parts)


def quantiles_html(quantiles, vmax: float) -> str:
    """Every activation range as a native <details>: one element for them all."""
    return "".join(
        f'<details style="margin:0.3em 0"><summary style="cursor:pointer">{q.low:.3g} to {q.high:.3g} · '
        f"{q.fraction:.2%} of activations</summary>{examples_html(q.examples, vmax)}</details>"
        for q in quantiles
    )


def open_picked(key: str) -> None:
    """A related feature was picked: open its card and clear the pick."""
    picked = st.session_state[key]
    st.session_state[key] = None
    if picked is not None:
        st.session_state["feature_id"] = int(picked)


def related(ws, title: str, pairs, key: str) -> None:
    """Related features as one row of pills: a click opens that card."""
    names = {f: f"{common.feature_md(ws, f)} ({score:.2f})" for f, score in pairs}
    if not names:
        st.caption(f"{title}: none")
        return
    st.pills(title, list(names), format_func=names.get, key=key, on_change=open_picked, args=(key,))


@st.fragment
def export_panel(ws, feature: int) -> None:
    """Downloads: the bytes are cached, so every rerun offers the same file."""
    st.subheader("Export")
    with st.container(horizontal=True):
        for fmt in FORMATS:
            # a callable: the file is made on click, so browsing cards does not pay for four exports
            st.download_button(fmt.upper(), functools.partial(common.card_bytes, ws, feature, fmt),
                               file_name=card_filename(feature, fmt),
                               mime=common.MIME[fmt], key=f"dl_{fmt}", on_click="ignore", icon=":material/download:")
    viewed = st.session_state.get("viewed", [feature])
    with st.container(horizontal=True, vertical_alignment="bottom"):
        several = st.multiselect("Cards for a zip (viewed this session)", viewed, default=[feature], key="zip_features")
        formats = st.multiselect("Formats", FORMATS, default=list(FORMATS), key="zip_formats")
    if several and formats:
        st.download_button(f"Zip of {len(several)} card(s)", functools.partial(common.zip_bytes, ws, several, formats), key="dl_zip",
                           file_name="feature_cards.zip", mime="application/zip", on_click="ignore", icon=":material/folder_zip:")


def show_card(ws, card) -> None:
    st.header(common.feature_md(ws, card.feature))
    label_editor(ws, card)
    cols = st.columns(4)
    cols[0].metric("Density", f"{card.density:.4%}")
    cols[1].metric("Max activation", f"{card.max_activation:.4g}")
    cols[2].metric("Mean activation", f"{card.mean_activation:.4g}")
    cols[3].metric("Tokens scanned", f"{card.n_tokens:,}")
    left, right = st.columns([1, 1])
    with left:
        st.html(common.histogram_html(card))
    with right:
        st.html(render.logit_tables(card.top_logits, card.bottom_logits))
    vmax = card.max_activation if card.max_activation > 0 else 1.0
    st.subheader("Max-activating examples")
    st.toggle("Whole windows", key="card_whole", persist_state="session",
              help=f"Off: {CONTEXT[0]} tokens before and {CONTEXT[1]} after each peak token")
    # One HTML element per list: the browser renders a card's ~50 examples far
    # faster as one element than as dozens of widgets.
    with st.container(key="card_examples"):
        st.html(examples_html(card.top_examples, vmax))
    if card.quantiles:
        st.subheader("Samples by activation range")
        with st.container(key="card_quantiles"):
            st.html(quantiles_html(card.quantiles, vmax))
    st.subheader("Related features")
    related(ws, "Decoder neighbours (cosine similarity)", card.neighbours, "neighbours")
    related(ws, "Co-occurring features (Jaccard)", card.cooccurring, "cooccurring")


def feature_page() -> None:
    st.title("Feature card")
    ws = common.current_workspace()
    if ws is None:
        return
    state, fresh = common.link(PAGE, ws)
    if ws.index is None:
        st.info(common.NO_INDEX)
        return
    if fresh and state.feature is not None:
        st.session_state["feature_id"] = state.feature
    browse(ws)


@st.fragment
def browse(ws) -> None:
    """The picker and the card. A fragment: moving to another card reruns and
    redraws only this part of the page, not the sidebar and title."""
    feature = picker(ws)
    card = common.card(ws, feature)
    st.page_link(common.PAGES["steering"], label=f"Steer this feature (clamp #{feature} to 4x its max)",
                 icon=":material/tune:", query_params={"steer": f"{feature}:clamp:4x"})
    show_card(ws, card)
    export_panel(ws, feature)


common.run_page(feature_page)
