"""Highlighted tokens, the tokens-by-features heatmap and the reconstruction
error chart. Untrusted text becomes markup only through
explorer.render; plotly labels go through `plot_text`."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from explorer import render
from explorer.workspace import Workspace
from ui.features import feature_name, max_act


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

