"""The feature map's plotly figure: WebGL points coloured by one statistic, hover labels.

Plotly only (no streamlit), so benches can time it. Points carry their feature id as
customdata, which `selected_features` reads back from the page's selection.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from explorer.feature_map import FeatureMap, density_grid

# Discrete colours for "dominant source": plotly's qualitative Dark24 with its first colours first.
SOURCE_COLOURS = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86",
                  "#EB663B", "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE",
                  "#862A16", "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038")


def map_figure(fmap: FeatureMap, shown: np.ndarray, hover: list[str], values: np.ndarray | None = None,
               value_name: str = "", categories: np.ndarray | None = None, category_names: list[str] | None = None,
               grid: bool = False) -> go.Figure:
    """Points `shown` (feature ids) of the map with `hover` text each, coloured by `values` (a
    continuous scale named `value_name`) or by `categories` (ids into `category_names`, one legend
    entry each). `grid` adds, underneath, a shaded 2D histogram of every feature of the map."""
    x, y = fmap.x[shown], fmap.y[shown]
    fig = go.Figure()
    if grid:
        counts, xc, yc = density_grid(fmap.x, fmap.y)
        fig.add_trace(go.Heatmap(z=np.where(counts > 0, np.log10(np.maximum(counts, 1)) + 1, np.nan), x=xc, y=yc,
                                 colorscale="Greys", showscale=False, hoverinfo="skip", opacity=0.5))
    marker = {"size": 4 if len(shown) > 5000 else 6, "opacity": 0.8}
    if categories is not None:
        names = category_names or []
        for c in np.unique(categories):
            at = categories == c
            fig.add_trace(go.Scattergl(
                x=x[at], y=y[at], mode="markers", name=names[c] if 0 <= c < len(names) else "none",
                customdata=shown[at], hovertext=[hover[i] for i in np.flatnonzero(at)], hoverinfo="text",
                marker={**marker, "color": SOURCE_COLOURS[int(c) % len(SOURCE_COLOURS)] if c >= 0 else "#bbbbbb"}))
    else:
        if values is not None:
            marker.update(color=values, colorscale="Viridis", showscale=True, colorbar={"title": value_name})
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", customdata=shown, hovertext=hover, hoverinfo="text",
                                   marker=marker, showlegend=False))
    fig.update_layout(height=640, margin={"l": 0, "r": 0, "t": 10, "b": 0}, dragmode="lasso",
                      xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"},
                      legend={"itemsizing": "constant"})
    return fig


def selected_features(selection) -> tuple[list[int], bool]:
    """(sorted feature ids, whether it was one click) from st.plotly_chart's selection state:
    {"points": [{"customdata": id, ...}], "box": [...], "lasso": [...]}."""
    if not selection:
        return [], False
    ids = []
    for point in selection.get("points", []):
        data = point.get("customdata")
        if data is None:  # the shaded grid underneath carries no feature
            continue
        ids.append(int(data[0] if isinstance(data, (list, tuple)) else data))
    return sorted(set(ids)), len(ids) == 1 and not selection.get("box") and not selection.get("lasso")
