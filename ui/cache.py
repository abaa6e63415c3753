"""Cached reads shared by every session: a prompt's activations, cards and their exports.

Each cached function takes the workspace's `ws_key` as its key and the
workspace itself as an unhashed `_ws` argument.
"""

from __future__ import annotations

import streamlit as st

from explorer import export
from explorer.activations import MAX_PROMPT_TOKENS, token_activations
from explorer.workspace import Workspace
from ui.workspace import ws_key

MIME = {"json": "application/json", "md": "text/markdown", "html": "text/html", "png": "image/png"}


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
    return export.card_bytes(card(_ws, feature), fmt, model=_ws.lm.name, hook=_ws.hook_name, sae_id=_ws.sae_id,
                             explanations=_ws.index.feature_explanations(feature))


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
