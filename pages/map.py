"""Feature map: every feature of the index in 2D (explorer.feature_map), coloured by a statistic.

Hover shows a feature's label; a box or lasso selection lists the selected features with links
to their cards; a click on one point opens its card. Above MAX_POINTS features the page draws a
density-stratified sample over a shaded histogram of all of them, and says so.
"""

import numpy as np
import streamlit as st

from explorer import feature_map
from explorer.feature_map import MAX_POINTS, load_map, shown_points
from ui import links
from ui.errors import shown_as_message
from ui.map_chart import map_figure, selected_features
from ui.router import PAGES, run_page
from ui.workspace import NO_INDEX, ws_key

PAGE = "map"
MAX_LISTED = 500  # rows in the selection table
N_LINKED = 12  # selected features linked to their cards
COLOUR_BY = ("density", "max activation", "dominant source")


@st.cache_resource(max_entries=4, show_spinner="Reading the feature map…")
def _map(key: tuple, _ws):
    return load_map(_ws.index.path, d_sae=_ws.index.d_sae, sae_fingerprint=_ws.index.manifest.sae_fingerprint)


@st.cache_resource(max_entries=4, show_spinner=False)
def _hover(key: tuple, _ws) -> list[str]:
    return [f"#{f} {_ws.index.label(f)}" for f in range(_ws.index.d_sae)]


def dominant_sources(ws) -> np.ndarray | None:
    """Per feature the id of the source with most of its activation (-1 if it never fired), or None."""
    mass = ws.index.source_masses()
    if mass is None:
        return None
    return np.where(mass.sum(1) > 0, mass.argmax(1), -1)


def no_map(ws) -> None:
    st.info(f"This index has no feature map yet. Make one (once; it is stored in the index folder) with "
            f"`explorer map --index {ws.index.path} --sae {ws.sae_source}`, then reload this page. "
            "UMAP takes minutes on a CPU, more on a busy one.", icon=":material/map:")


def figure(ws, fmap, colour: str, shown: np.ndarray):
    hover = _hover(ws_key(ws), ws)
    labels = [hover[f] for f in shown]
    grid = len(shown) < fmap.d_sae
    if colour == "dominant source":
        return map_figure(fmap, shown, labels, categories=dominant_sources(ws)[shown],
                          category_names=ws.index.source_names(), grid=grid)
    if colour == "max activation":
        return map_figure(fmap, shown, labels, ws.index.max_activations()[shown], "max act", grid=grid)
    density = ws.index.densities()[shown]
    return map_figure(fmap, shown, labels, np.log10(np.maximum(density, 1e-9)), "log10 density", grid=grid)


def selection_table(ws, features: list[int]) -> None:
    """Links to the first N_LINKED selected cards, then a table of all (up to MAX_LISTED)."""
    maxima = ws.index.max_activations()
    st.markdown(f"**{len(features):,} selected** (links: max activation in brackets)")
    links.feature_links(ws, [(f, float(maxima[f])) for f in features[:N_LINKED]], key="map_links")
    if len(features) > MAX_LISTED:
        st.caption(f"The table lists the first {MAX_LISTED} by id.")
    shown = features[:MAX_LISTED]
    st.dataframe({"feature": shown, "label": [ws.index.label(f) for f in shown],
                  "density": ws.index.densities()[shown], "max activation": maxima[shown]},
                 hide_index=True, column_config={"density": st.column_config.NumberColumn(format="%.5f")})


def map_page() -> None:
    opened = links.open_page(PAGE, "Feature map")
    if opened is None:
        return
    ws, _, _ = opened
    if ws.index is None:
        st.info(NO_INDEX)
        return
    with shown_as_message("read the feature map") as outcome:
        file = feature_map.map_file(ws.index.path)
        stamp = (file.stat().st_mtime_ns, file.stat().st_size) if file.is_file() else None
        fmap = _map((*ws_key(ws), stamp), ws)  # a map made while the app runs shows on reload
    if outcome.failed:
        return
    if fmap is None:
        no_map(ws)
        return
    choices = COLOUR_BY if ws.index.source_names() else COLOUR_BY[:2]
    colour = st.segmented_control("Colour by", choices, default=choices[0], key="map_colour") or choices[0]
    shown = shown_points(ws.index.densities(), MAX_POINTS)
    how = "UMAP of every decoder direction" if fmap.params.method == "umap" else (
        f"UMAP of {fmap.params.n_landmarks:,} sampled decoder directions, the others placed beside their most "
        "similar ones")
    note = (f"{fmap.d_sae:,} features ({how}, seed {fmap.params.seed}). Near means similar decoder directions. "
            "Drag a box or lasso to list features; click one point to open its card.")
    if len(shown) < fmap.d_sae:
        note += (f" Showing {len(shown):,} of {fmap.d_sae:,} features as points (a sample spread evenly over "
                 "density); the grey shading counts all of them.")
    st.caption(note)
    with shown_as_message("draw the feature map"):
        event = st.plotly_chart(figure(ws, fmap, colour, shown), key="feature_map", on_select="rerun",
                                selection_mode=("points", "box", "lasso"), config={"scrollZoom": True})
        features, click = selected_features(event.selection if event is not None else None)
        if click and st.session_state.get("_map_opened") != features[0]:
            st.session_state["_map_opened"] = features[0]  # back on this page, the same click does not reopen it
            st.switch_page(PAGES["feature"], query_params={"feature": str(features[0])})
        if features:
            selection_table(ws, features)


run_page(map_page)
