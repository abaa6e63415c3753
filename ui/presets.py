"""The steering page's presets bar: save what is steered under a name, or load a saved preset.

Presets are the SAE's (explorer.presets), shared by every session and served by
`explorer serve` as models of their own.
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from explorer.export import md_escape as md
from explorer.presets import Preset, PresetError, load_presets, make_preset, presets_path, save_preset
from explorer.settings import env_settings
from explorer.steering import GenerationSettings, Intervention, StopCondition


def path(ws):
    return presets_path(env_settings().cache, ws.sae_id)


def bar(ws, ivs: list[Intervention], stop: StopCondition | None, settings: GenerationSettings,
        on_load: Callable[[Preset], None]) -> None:
    """Save as preset (name, whether to keep the settings, button) and Load preset (select, button).

    `on_load` runs as the button's callback, before the next run draws the editor."""
    try:
        presets = load_presets(path(ws), ws.sae_id, ws.sae.cfg.d_sae)
    except PresetError as err:
        st.error(md(str(err)))
        return
    with st.container(horizontal=True, vertical_alignment="bottom", key="preset_bar"):
        st.text_input("Preset name", key="preset_name", width=180, placeholder="e.g. calm-2",
                      help="Saved for this SAE; `explorer serve` offers it as a model of its own")
        st.checkbox("with these settings", key="preset_keep_settings",
                    help="Also save max new tokens, temperature, top p and seed as the preset's defaults")
        st.button("Save as preset", key="preset_save", on_click=save, args=(ws, ivs, stop, settings),
                  icon=":material/bookmark_add:", disabled=not ivs)
        if presets:
            name = st.selectbox("Preset", sorted(presets), key="preset_pick", width=200)
            st.button("Load preset", key="preset_load", on_click=on_load, args=(presets[name],),
                      icon=":material/bookmark:")
    message = st.session_state.pop("preset_message", None)
    if message:
        (st.error if message[0] == "error" else st.success)(md(message[1]))


def save(ws, ivs: list[Intervention], stop: StopCondition | None, settings: GenerationSettings) -> None:
    name = st.session_state.get("preset_name", "").strip()
    kept = {"max_new_tokens": settings.max_new_tokens, "temperature": settings.temperature,
            "top_p": settings.top_p, "seed": settings.seed} if st.session_state.get("preset_keep_settings") else {}
    try:
        preset = make_preset(name, ivs, stop, kept, ws.sae.cfg.d_sae)
        save_preset(path(ws), preset, ws.sae_id, ws.sae.cfg.d_sae)
    except (PresetError, OSError) as err:
        st.session_state["preset_message"] = ("error", f"Could not save the preset: {err}")
        return
    st.session_state["preset_message"] = ("ok", f"Saved preset '{name}': {preset.describe()}")
    st.session_state["preset_pick"] = name
