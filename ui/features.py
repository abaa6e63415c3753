"""How a feature is named on screen: its label, its name, its max activation."""

from __future__ import annotations

from explorer import export, render
from explorer.workspace import Workspace

md = export.md_escape  # untrusted text shown by a widget that reads Markdown


def label(ws: Workspace, feature: int) -> str:
    return ws.index.label(feature) if ws.index is not None else ""


def feature_name(ws: Workspace, feature: int) -> str:
    return render.feature_name(feature, label(ws, feature))


def feature_md(ws: Workspace, feature: int) -> str:
    """`feature_name` for widgets that read Markdown: labels are untrusted text."""
    return export.md_escape(feature_name(ws, feature))


def max_act(ws: Workspace, feature: int) -> float | None:
    """The feature's max activation in the index; None without an index or when it never fired."""
    if ws.index is None:
        return None
    value = float(ws.index.max_activations()[int(feature)])
    return value if value > 0 else None
