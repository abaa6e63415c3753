"""Deep links: a page's state in the URL's query parameters, and links to feature cards."""

from __future__ import annotations

import streamlit as st

from explorer.links import LinkState, parse_links
from explorer.workspace import Workspace
from ui.features import feature_md
from ui.router import PAGES
from ui.workspace import current_workspace


def open_page(page: str, title: str) -> tuple[Workspace, LinkState, bool] | None:
    """How a page with deep links starts: its title, the session's workspace
    (None when nothing is loaded; the page then shows nothing more) and its link."""
    st.title(title)
    ws = current_workspace()
    if ws is None:
        return None
    return (ws, *link(page, ws))


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
