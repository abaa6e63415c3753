"""HTML for token text: the one place where untrusted text becomes markup.

Dataset examples and model generations are attacker-influenced, so every
string goes through `escape` (html.escape with quotes) and every colour,
width and title is computed from numbers alone. The output uses inline styles
only, so it works inside `st.html` (DOMPurify-sanitised, not iframed) and in
standalone exported pages.

- `escape(text)`: text made safe for HTML element content and attribute values.
- `visible(token)`: control and bidi characters in a token shown as visible marks.
- `colour(value, vmax)`: the background for an activation, an rgba() string.
- `token_html(token)`: one token as HTML text.
- `token_spans(tokens, values, vmax, peak=...)`: one coloured span per token.
- `diff_html(clean_tokens, steered_tokens, diverge_at)`: two completions, the
  first differing token marked.
- `value_table(rows)`, `logit_tables(top, bottom)`: small tables of (token, value).
- `histogram_html(edges, counts)`: a histogram as plain HTML bars (numbers only).
"""

from __future__ import annotations

import html
import math

NEWLINE = "↵"  # the display string for "\n" (explorer.tokens.display_token)

_RGB = (255, 140, 0)  # orange: activation highlights
_PEAK_STYLE = "font-weight:bold;text-decoration:underline;outline:1px solid #c03000;"
_TOKEN_STYLE = "padding:0 1px;border-radius:2px;unicode-bidi:isolate;"

# C0 controls as their Unicode control pictures (U+2400 block), C1 controls as bytes, and bidi
# overrides named: invisible in a browser, and they can reorder the text around them.
_INVISIBLE = (
    {c: chr(0x2400 + c) for c in range(0x20)}
    | {0x7F: "␡", 0x2028: "↵", 0x2029: "↵"}
    | {c: f"<0x{c:02X}>" for c in range(0x80, 0xA0)}
    | {c: f"<U+{c:04X}>" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}
)
_BOX_STYLE = "font-family:ui-monospace,Menlo,Consolas,monospace;line-height:1.9;overflow-wrap:anywhere;"


def escape(text: object) -> str:
    """`text` as HTML that displays literally, quotes included (safe in attributes)."""
    return html.escape(str(text), quote=True)


def visible(token: str) -> str:
    """`token` with control and bidi characters replaced by visible marks (U+001C -> '␜')."""
    return str(token).translate(_INVISIBLE)


def _alpha(value: float, vmax: float) -> float:
    value, vmax = float(value), float(vmax)
    if not (math.isfinite(vmax) and vmax > 0) or math.isnan(value):
        return 0.0
    return min(max(value / vmax, 0.0), 1.0)


def colour(value: float, vmax: float) -> str:
    """Background for `value` on a 0..vmax scale: orange with alpha value/vmax,
    clipped to [0, 1]. A NaN value or a vmax that is not positive gives alpha 0."""
    r, g, b = _RGB
    return f"rgba({r},{g},{b},{_alpha(value, vmax):.3f})"


def _fmt(value: float) -> str:
    return f"{float(value):.4g}"


def token_html(tok: str) -> str:
    """One display token as HTML text: invisible characters shown, then escaped.
    A newline shows as its visible marker and also breaks the line."""
    return escape(visible(tok)).replace(NEWLINE, NEWLINE + "<br>")


def token_spans(
    tokens: list[str],
    values: list[float],
    vmax: float,
    *,
    peak: int | None = None,
    title_values: bool = True,
    plain_zeros: bool = False,
) -> str:
    """One `<span>` per display token, its background showing value/vmax.

    `tokens` are display strings (whitespace already made visible); each is
    escaped. `peak`, an index into `tokens`, is drawn bold and underlined.
    With `title_values` each span's tooltip gives its value. With `plain_zeros`
    tokens at zero (other than the peak) are plain text with no span: a card's
    examples are mostly zeros, and the browser sanitises and lays out every
    element of them."""
    if len(tokens) != len(values):
        raise ValueError(f"{len(tokens)} tokens but {len(values)} values; they must pair up one to one")
    parts = []
    for i, (tok, value) in enumerate(zip(tokens, values)):
        if plain_zeros and i != peak and float(value) == 0.0:
            parts.append(token_html(tok))
            continue
        style = f"background:{colour(value, vmax)};{_TOKEN_STYLE}"
        if i == peak:
            style += _PEAK_STYLE
        title = f' title="{_fmt(value)}"' if title_values else ""
        parts.append(f'<span style="{style}"{title}>{token_html(tok)}</span>')
    return f'<div style="{_BOX_STYLE}">{"".join(parts)}</div>'


def diff_html(clean_tokens: list[str], steered_tokens: list[str], diverge_at: int | None) -> str:
    """The clean and the steered completion, one row each.

    Tokens before `diverge_at` are shared and left plain; the token at
    `diverge_at` is outlined in both rows; the tokens after it are tinted.
    `diverge_at` None means the completions are identical."""

    def row(label: str, tokens: list[str], tint: str) -> str:
        parts = []
        for i, tok in enumerate(tokens):
            style = _TOKEN_STYLE
            if diverge_at is not None and i >= diverge_at:
                style += f"background:{tint};"
                if i == diverge_at:
                    style += _PEAK_STYLE
            parts.append(f'<span style="{style}">{token_html(tok)}</span>')
        head = f'<div style="font-weight:bold;font-family:sans-serif;margin-top:6px;">{escape(label)}</div>'
        return f'{head}<div style="{_BOX_STYLE}">{"".join(parts)}</div>'

    if diverge_at is None:
        note = "identical completions"
    else:
        note = f"first difference at generated token {int(diverge_at)}"
    return (
        "<div>"
        + row("clean", clean_tokens, "rgba(160,160,160,0.25)")
        + row("steered", steered_tokens, "rgba(30,120,255,0.20)")
        + f'<div style="font-family:sans-serif;font-size:0.85em;color:#666;margin-top:4px;">{escape(note)}</div>'
        + "</div>"
    )


def value_table(rows: list[tuple[str, float]], headers: tuple[str, str] = ("token", "logit")) -> str:
    """A small two-column table of (token, value): the logit tables of a card.
    Plain HTML renders far faster in the page than an interactive data grid."""
    cell = 'style="padding:2px 10px;border-bottom:1px solid #eee"'
    body = "".join(f"<tr><td {cell}>{token_html(tok)}</td><td {cell} align=right>{_fmt(v)}</td></tr>" for tok, v in rows)
    head = "".join(f'<th {cell} align=left>{escape(h)}</th>' for h in headers)
    return f'<table style="border-collapse:collapse;font-size:0.85em"><tr>{head}</tr>{body}</table>'


def logit_tables(top: list[tuple[str, float]], bottom: list[tuple[str, float]]) -> str:
    """The top and bottom logit tables of a card, side by side."""
    cols = "".join(f'<div><div style="font-weight:600;margin-bottom:4px">{title}</div>{value_table(rows)}</div>'
                   for title, rows in (("Top logits", top), ("Bottom logits", bottom)))
    return f'<div style="display:flex;gap:32px;flex-wrap:wrap">{cols}</div>'


def is_log_spaced(edges: list[float]) -> bool:
    """Log-spaced histogram edges (the index's default) rather than equal-width ones."""
    return len(edges) > 2 and edges[0] > 0 and (edges[2] - edges[1]) > 1.001 * (edges[1] - edges[0])


def histogram_html(edges: list[float], counts: list[int], height: int = 130) -> str:
    """Bars for `counts` between `edges`, as plain HTML with a tooltip per bar.

    Plain divs rather than SVG or a chart library: Streamlit's st.html
    sanitiser drops SVG, a chart library costs the browser far more on a page
    that redraws on every click, and the same markup works in a standalone
    file. Leading and trailing empty bins are dropped."""
    used = [i for i, c in enumerate(counts) if c > 0]
    if not used or len(edges) != len(counts) + 1:
        return '<p style="color:#666">No nonzero activations.</p>'
    log = is_log_spaced(edges)
    lo, hi = used[0], used[-1] + 1
    edges, counts = edges[lo:hi + 1], counts[lo:hi]
    top = max(counts)
    bars = "".join(
        f'<div title="{_fmt(edges[i])} to {_fmt(edges[i + 1])}: {int(c):,} tokens" '
        f'style="flex:1;height:{100 * c / top:.1f}%;min-height:{1 if c else 0}px;background:#ff8c00"></div>'
        for i, c in enumerate(counts)
    )
    axis = f"activation{', log scale' if log else ''} · tallest bar {int(top):,} tokens"
    return (f'<div style="display:flex;align-items:flex-end;gap:1px;height:{height}px;'
            f'border-bottom:1px solid #bbb;max-width:640px">{bars}</div>'
            '<div style="display:flex;justify-content:space-between;color:#555;font-size:0.8em;max-width:640px">'
            f"<span>{_fmt(edges[0])}</span><span>{axis}</span><span>{_fmt(edges[-1])}</span></div>")
