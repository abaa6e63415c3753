"""Feature card: what one feature responds to and what it promotes.

Top to bottom as on screen: the picker (id, previous / next / random, label,
steer link, search), the card (its markup from `explorer.render.card_html`),
the related-feature box, and the export panel; then the page itself.
"""

import functools
import random

import streamlit as st

from explorer import neuronpedia, render
from explorer.export import FORMATS, card_filename, files_to_zip
from ui import cache, links
from ui.errors import shown_as_message
from ui.feature_table import feature_table
from ui.features import feature_md, feature_name, label
from ui.router import PAGES, run_page
from ui.workspace import NO_INDEX

PAGE = "feature"


def picker(ws, card) -> None:
    """Feature id box, previous / next / random, the card's label and steer
    link, and search; the id goes in the URL."""
    d_sae = ws.sae.cfg.d_sae
    with st.container(horizontal=True, vertical_alignment="bottom"):
        st.number_input("Feature id", 0, d_sae - 1, key="feature_id", persist_state="session", step=1, width=180)
        st.button("Previous", on_click=step, args=(-1, d_sae), icon=":material/chevron_left:")
        st.button("Next", on_click=step, args=(1, d_sae), icon=":material/chevron_right:")
        st.button("Random", on_click=jump, args=(random.randrange(d_sae),), icon=":material/casino:")
        label_editor(ws, card)
        st.page_link(PAGES["steering"], label="Steer this feature (clamp to 4x its max)",
                     icon=":material/tune:", query_params={"steer": f"{card.feature}:clamp:4x"})
    # Built only while open (a lazy expander): every element costs the browser
    # a render on each card change.
    search = st.expander("Search features by label or token", key="search_open", on_change="rerun")
    if search.open:
        with search:
            search_hits(ws)
    table = st.expander("Sort and filter features by score, density, max activation", key="table_open",
                        on_change="rerun")
    if table.open:
        with table:
            feature_table(ws)
    links.write_link(PAGE, {"feature": str(card.feature)})
    viewed = st.session_state.setdefault("viewed", [])
    if card.feature not in viewed:
        viewed.append(card.feature)


def step(delta: int, d_sae: int) -> None:
    st.session_state["feature_id"] = (st.session_state["feature_id"] + delta) % d_sae


def jump(feature: int) -> None:
    st.session_state["feature_id"] = int(feature)


def label_editor(ws, card) -> None:
    """The label box opens on demand: a form on every card would be drawn anew on every card change."""
    box = st.popover("Edit label", key="label_open", on_change="rerun", icon=":material/edit:")
    if not box.open:
        return
    with box, st.form(f"label_form_{card.feature}", border=False):
        text = st.text_input("Label", card.label, placeholder=card.auto_label or "describe this feature")
        if st.form_submit_button("Save label"):
            with shown_as_message(f"save the label of #{card.feature}") as outcome:
                cache.set_label(ws, card.feature, text.strip())
            if not outcome.failed:
                st.toast(f"Saved the label of #{card.feature}")
                st.rerun()


def search_hits(ws) -> None:
    by = st.radio("Search in", ["label", "top_token", "logit_token", "explanation"], horizontal=True, key="search_by",
                  persist_state="session",
                  format_func={"label": "labels and explanations", "top_token": "top-activating tokens",
                               "logit_token": "promoted tokens (logits)", "explanation": "explanations only"}.get)
    query = st.text_input("Search", key="search_query", persist_state="session", placeholder="e.g. French, ␣the, code")
    if query.strip():
        with shown_as_message("search the features") as outcome:
            hits = ws.index.search(query.strip(), by=by, limit=20)
        if outcome.failed:
            return
        if not hits:
            st.info("No feature matches.")
        with st.container(horizontal=True):
            for f in hits:
                st.button(feature_md(ws, f), key=f"hit_{f}", on_click=jump, args=(f,))


def card_html(ws, card) -> render.CardHtml:
    """Plain HTML for everything on a card that is not a widget. Streamlit
    redraws every element on the page when a run starts and when it ends, so
    each element, widget or not, costs the browser time on every card change."""
    whole = st.session_state.get("card_whole", False)
    return render.card_html(card, label=functools.partial(label, ws), context=None if whole else render.CONTEXT,
                            quantiles=bool(st.session_state.get("quantiles_open")),
                            neuronpedia_url=neuronpedia.feature_url(ws.sae.cfg.neuronpedia_id, card.feature),
                            explanations=ws.index.feature_explanations(card.feature))


def show_card(ws, card, html: render.CardHtml) -> None:
    st.html(html.top)
    st.toggle("Whole windows", key="card_whole", persist_state="session",
              help=f"Off: {render.CONTEXT[0]} tokens before and {render.CONTEXT[1]} after each peak token")
    st.html(html.examples)
    if card.quantiles:
        # Drawn only while open, and it stays open from card to card: 25 more
        # examples would double the markup the browser cleans on every card.
        box = st.expander("Samples by activation range", key="quantiles_open", on_change="rerun")
        if box.open:
            with box:
                st.html(html.quantiles)
    st.html(html.related)
    related_picker(ws, card)


def related_picker(ws, card) -> None:
    """One box for both lists: a widget with a button per feature costs the
    browser about 30 ms more on every card change (measured)."""
    names: dict[int, str] = {}
    for attr, _, score in render.RELATED:
        for f, value in getattr(card, attr):
            names.setdefault(f, f"{feature_name(ws, f)} ({score} {value:.2f})")
    if names:
        st.selectbox("Open a related feature here", list(names), index=None, format_func=names.get, key="related",
                     on_change=open_picked, args=("related",), placeholder="Choose a feature", width=480)


def open_picked(key: str) -> None:
    """A related feature was picked: open its card and clear the pick."""
    picked = st.session_state[key]
    st.session_state[key] = None
    if picked is not None:
        st.session_state["feature_id"] = int(picked)


def export_panel(ws, feature: int) -> None:
    """Downloads, built only while the expander is open (see `picker`).
    The files are made on click, and cached."""
    panel = st.expander("Export this card, or a zip of cards", key="export_open", on_change="rerun",
                        icon=":material/download:")
    if not panel.open:
        return
    with panel:
        with st.container(horizontal=True):
            for fmt in FORMATS:
                st.download_button(fmt.upper(), functools.partial(cache.card_bytes, ws, feature, fmt),
                                   file_name=card_filename(feature, fmt),
                                   mime=cache.MIME[fmt], key=f"dl_{fmt}", on_click="ignore", icon=":material/download:")
        viewed = st.session_state.get("viewed", [feature])
        with st.container(horizontal=True, vertical_alignment="bottom"):
            several = st.multiselect("Cards for a zip (viewed this session)", viewed, default=[feature], key="zip_features")
            formats = st.multiselect("Formats", FORMATS, default=list(FORMATS), key="zip_formats")
        if several and formats:
            st.download_button(f"Zip of {len(several)} card(s)", functools.partial(cache.zip_bytes, ws, several, formats),
                               key="dl_zip", file_name="feature_cards.zip", mime="application/zip", on_click="ignore",
                               icon=":material/folder_zip:")
        if several:
            neuronpedia_downloads(ws, several)


def neuronpedia_downloads(ws, features: list[int]) -> None:
    """The chosen cards in both Neuronpedia formats (explorer.neuronpedia), zipped on click; the
    popover is built only while open."""
    box = st.popover("For Neuronpedia", key="np_open", on_change="rerun", icon=":material/upload:")
    if not box.open:
        return
    with box:
        ids = neuronpedia.workspace_ids(ws)
        default = "" if ws.sae.cfg.neuronpedia_id else " (the SAE has no neuronpedia_id: `explorer export --np-…` sets them)"
        st.caption(f"Neuronpedia model `{ids.model_id}`, source `{ids.source}`{default}")
        for fmt, name in (("neuronpedia", "SAEDashboard batch files"), ("neuronpedia-upload", "Upload-batch bodies")):
            st.download_button(name, functools.partial(neuronpedia_zip, ws, tuple(features), fmt), key=f"dl_{fmt}",
                               file_name=f"{fmt}.zip", mime="application/zip", on_click="ignore",
                               icon=":material/download:")


def neuronpedia_zip(ws, features: tuple[int, ...], fmt: str) -> bytes:
    return files_to_zip(neuronpedia.export_files(ws, features, fmt))


def feature_page() -> None:
    opened = links.open_page(PAGE, "Feature card")
    if opened is None:
        return
    ws, state, fresh = opened
    if ws.index is None:
        st.info(NO_INDEX)
        return
    if fresh and state.feature is not None:
        st.session_state["feature_id"] = state.feature
    browse(ws)


@st.fragment
def browse(ws) -> None:
    """The picker and the card. A fragment: moving to another card reruns and
    redraws only this part of the page, not the sidebar and title."""
    st.session_state.setdefault("feature_id", 0)
    feature = int(st.session_state["feature_id"])
    # The card and its markup are made before the first element is drawn, so
    # the browser receives the new card in one burst and renders it once.
    with shown_as_message(f"open the card of #{feature}") as outcome:
        card = cache.card(ws, feature)
        html = card_html(ws, card)
    if outcome.failed:  # the id box stays, to move on to another feature
        st.number_input("Feature id", 0, ws.sae.cfg.d_sae - 1, key="feature_id", persist_state="session", step=1, width=180)
        return
    with shown_as_message(f"show the card of #{feature}"):  # a fragment's rerun is outside the page's net
        picker(ws, card)
        show_card(ws, card, html)
        export_panel(ws, card.feature)


run_page(feature_page)
