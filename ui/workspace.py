"""The one workspace (model, SAE, index) a session works in, and the sidebar
that shows what is loaded and loads something else.

Every forward pass goes through `explorer`, whose functions take the model's lock.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import streamlit as st

from explorer.settings import env_settings
from explorer.workspace import Workspace, open_workspace

NO_INDEX = ("No feature index is loaded, so there are no feature cards, labels, search or 'x max' values. "
            "Fix: build one with `explorer index` and choose its folder in the sidebar.")
UNTRAINED = ("UNTRAINED SAE: random weights, so its features mean nothing. "
             "Use it to try the tool; choose a trained SAE folder in the sidebar for real features.")


@dataclass(frozen=True)
class Choice:
    """What the user asked to load; '' means the default."""

    model: str = "demo"
    sae: str = ""
    index: str = ""

    @classmethod
    def from_env(cls) -> Choice:
        env = env_settings()
        return cls(env.model, env.sae or "", env.index or "")


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
            if ws.sae.cfg.provenance():
                st.caption(f"SAE metadata: {ws.sae.cfg.provenance()}")
            for notice in ws.notices():  # e.g. an SAE trained on another model
                st.warning(notice, icon=":material/warning:")
            if ws.untrained:
                st.warning(UNTRAINED, icon=":material/warning:")
            if ws.index is None:
                st.info("No index loaded: feature cards and 'x max' steering need one.")
            else:
                st.markdown(f"**Index** `{ws.index.path}` ({ws.index.manifest.n_tokens:,} tokens)")
                if ws.index.label_notice:  # user labels kept aside: say where and how to restore
                    st.warning(ws.index.label_notice, icon=":material/warning:")
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
