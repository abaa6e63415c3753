"""The feature table: every feature with its label, explanation, scores, density and max
activation, sortable (click a column) and filtered by sliders, each row linking to its card."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from ui import cache

COLUMNS = ["card", "feature", "label", "explanation", "detection", "fuzzing", "label detection", "label fuzzing",
           "density", "max activation"]


def feature_frame(index) -> pd.DataFrame:
    """One row per feature of `index` (explorer.index.FeatureIndex); scores are NaN where none."""
    recs = index.explanations()

    def get(method: str, field: str) -> list:
        return [getattr(recs.get((f, method)), field, None) for f in range(index.d_sae)]

    features = range(index.d_sae)
    return pd.DataFrame({
        "card": [f"?feature={f}" for f in features],
        "feature": list(features),
        "label": [index.label(f) for f in features],
        "explanation": [t or "" for t in get("llm", "text")],
        "detection": pd.to_numeric(get("llm", "detection")),
        "fuzzing": pd.to_numeric(get("llm", "fuzzing")),
        "label detection": pd.to_numeric(get("heuristic", "detection")),
        "label fuzzing": pd.to_numeric(get("heuristic", "fuzzing")),
        "density": index.densities(),
        "max activation": index.max_activations().astype(float),
    }, columns=COLUMNS)


def filtered(frame: pd.DataFrame, min_detection: float = 0.0, density: tuple[float, float] = (0.0, 1.0),
             min_max_activation: float = 0.0, explained_only: bool = False) -> pd.DataFrame:
    """Rows inside every filter; an unscored row passes the score filter only when it is 0."""
    keep = frame["density"].between(*density) & (frame["max activation"] >= min_max_activation)
    if min_detection > 0:
        keep &= frame["detection"].fillna(-1.0) >= min_detection
    if explained_only:
        keep &= frame["explanation"] != ""
    return frame[keep]


@st.cache_data(max_entries=4, show_spinner="Reading every feature…")
def _frame(key: tuple, _ws) -> pd.DataFrame:
    return feature_frame(_ws.index)


def feature_table(ws) -> None:
    """Sliders, then the table (sorted by detection score, best first)."""
    frame = _frame(cache.ws_key(ws), ws)
    with st.container(horizontal=True):
        min_det = st.slider("Min detection score", 0.0, 1.0, 0.0, 0.05, key="table_min_det")
        top = float(frame["density"].max() or 1.0)
        dens = st.slider("Density", 0.0, top, (0.0, top), format="%.4f", key="table_density")
        min_act = st.slider("Min max activation", 0.0, float(frame["max activation"].max() or 1.0), 0.0,
                            key="table_min_act")
        only = st.checkbox("Explained only", key="table_explained")
    shown = filtered(frame, min_det, dens, min_act, only).sort_values(["detection", "feature"], ascending=[False, True])
    st.caption(f"{len(shown):,} of {len(frame):,} features · click a column to sort · open a card from its link")
    st.dataframe(shown, hide_index=True, height=360, column_config={
        "card": st.column_config.LinkColumn("card", display_text="open"),
        "density": st.column_config.NumberColumn(format="%.4f"),
        "detection": st.column_config.NumberColumn(format="%.2f"),
        "fuzzing": st.column_config.NumberColumn(format="%.2f"),
        "label detection": st.column_config.NumberColumn(format="%.2f"),
        "label fuzzing": st.column_config.NumberColumn(format="%.2f"),
    })
