"""The one workspace (model, SAE, index) a session works in, and the sidebar
that shows what is loaded and loads something else.

Every forward pass goes through `explorer`, whose functions take the model's lock.
The load form opens only paths under the configured roots (EXPLORER_ROOTS): it is
open to whoever reaches the page.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

import streamlit as st

from explorer.export import md_escape as md
from explorer.model import DEMO_NAME, pack_in_background
from explorer.settings import DEMO_MODEL, ROOTS_ENV, SettingsError, env_settings
from explorer.workspace import RANDOM_SAE, Workspace, WorkspaceError, check_inside_roots, open_workspace

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
    # The fast decoding layout is made after the load, while the first page draws.
    ws = open_workspace(model=model, sae=sae or None, index=index or None, progress=False, pack=False)
    # torch, transformers and the workspace leave ~700k long-lived Python objects;
    # every full garbage collection walked them all, a 200-400 ms pause about once
    # a second while pages rerun. Frozen objects are never walked again. No collection
    # first: it would delay the first page by 0.25-0.5 s to free ~2% of them (measured).
    gc.freeze()
    pack_in_background(ws.lm)
    return ws


def choice() -> Choice:
    """The session's choice; the environment's until the load form changes it.
    Raises SettingsError when an EXPLORER_* variable is bad."""
    if "ws_choice" not in st.session_state:
        st.session_state["ws_choice"] = Choice.from_env()
    return st.session_state["ws_choice"]


def load(c: Choice) -> tuple[Workspace | None, str | None]:
    """The workspace, or the reason it cannot be loaded (never a traceback)."""
    try:
        return get_workspace(c.model, c.sae, c.index), None
    except Exception as err:  # noqa: BLE001 - any loading failure is shown to the user
        return None, f"Could not load model {c.model!r}, SAE {c.sae or 'default'!r}, index {c.index or 'default'!r}: {err}"


def loaded() -> tuple[Workspace | None, str | None]:
    """The session's workspace, or the reason there is none (a bad EXPLORER_* variable too)."""
    try:
        c = choice()
    except SettingsError as err:
        return None, f"The app's settings are not usable: {err}"
    return load(c)


def check_paths(new: Choice) -> None:
    """Refuse (WorkspaceError) a path typed in the load form that lies outside the
    roots (EXPLORER_ROOTS). The environment's own choices are the operator's, so
    they stay allowed; 'demo', 'random' and empty (the default) name no path."""
    env, roots = Choice.from_env(), env_settings().roots
    if new.model not in (env.model, DEMO_MODEL, DEMO_NAME):
        check_inside_roots("Model", new.model, roots)
    if new.sae not in (env.sae, "", RANDOM_SAE):
        check_inside_roots("SAE", new.sae, roots)
    if new.index not in (env.index, ""):
        check_inside_roots("Index", new.index, roots)


def current_workspace() -> Workspace | None:
    """The session's workspace; on failure the page shows why and gets None."""
    ws, _ = loaded()
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
        ws, error = loaded()
        if ws is None:
            st.error(md(error))
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
                c = st.session_state.get("ws_choice", Choice())
                model = st.text_input("Model (local folder, .gguf or 'demo')", c.model)
                sae = st.text_input("SAE folder (empty: the default; 'random': untrained)", c.sae)
                index = st.text_input("Index folder (empty: the default)", c.index)
                st.caption(roots_note())
                if st.form_submit_button("Load"):
                    submit(Choice(model.strip() or "demo", sae.strip(), index.strip()))
        if st.session_state.get("ws_error"):
            st.error(md(st.session_state["ws_error"]))


def roots_note() -> str:
    try:
        roots = env_settings().roots
    except SettingsError:
        return ""  # the error above says why
    return md(f"Paths under {', '.join(str(r) for r in roots)} (set by {ROOTS_ENV}).")


def submit(new: Choice) -> None:
    """Load what the form names; on failure keep the loaded workspace and say why."""
    try:
        check_paths(new)
        error = load(new)[1]
    except (WorkspaceError, SettingsError) as err:
        error = str(err)
    st.session_state["ws_error"] = error
    if not error:
        st.session_state["ws_choice"] = new
        st.rerun()
