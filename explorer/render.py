"""HTML for token text and feature cards: the one place where untrusted text becomes markup.

Dataset examples, model generations and labels are attacker-influenced, so
every string goes through `escape` (html.escape with quotes) and every colour,
width and title is computed from numbers alone. The output uses inline styles
only, so it works inside `st.html` (DOMPurify-sanitised, not iframed) and in
standalone exported pages.

Token text:
- `escape(text)`: text made safe for HTML element content and attribute values.
- `visible(token)`: control and bidi characters in a token shown as visible marks.
- `alpha(value, vmax)`: THE colour-scale rule, an activation's highlight strength in
  [0, 1]; `colour` (an rgba() string) and `rgb` (flattened onto white, for images)
  apply it.
- `token_html(token)`: one token as HTML text.
- `token_spans(tokens, values, vmax, peak=...)`: one coloured span per token.
- `diff_html(clean_tokens, steered_tokens, diverge_at)`: two completions, the
  first differing token marked.
- `value_table(rows)`, `logit_tables(top, bottom)`: small tables of (token, value).
- `histogram_html(edges, counts)`: a histogram as plain HTML bars (numbers only).

Feature cards (an `explorer.index.FeatureCard`), one renderer for the app's
page and every export:
- `colour_scale(card)`: the vmax shared by all of a card's examples.
- `card_html(card, ...)`: a `CardHtml` of four parts (top, examples, quantiles,
  related), one `st.html` element each on the page; optionally a link to the
  feature's Neuronpedia page.
- `card_page(card, source)`: the same parts as a standalone offline HTML page.
- `source_mix_html(mix)`: the line and bar of how a card's activation splits over corpus sources.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

if TYPE_CHECKING:
    from explorer.index import Example, FeatureCard, QuantileBin

NEWLINE = "↵"  # the display string for "\n" (explorer.tokens.display_token)

HIGHLIGHT = (255, 140, 0)  # orange: activation highlights and histogram bars
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
_CELL = 'style="padding:2px 10px;border-bottom:1px solid #eee"'  # a table cell of a card
_HEAD = 'style="font-weight:600;margin-bottom:4px"'  # the title above a table or the histogram
_COLUMNS = "display:flex;gap:32px;flex-wrap:wrap"  # tables side by side
_BOX_STYLE = "font-family:ui-monospace,Menlo,Consolas,monospace;line-height:1.9;overflow-wrap:anywhere;"


def escape(text: object) -> str:
    """`text` as HTML that displays literally, quotes included (safe in attributes)."""
    return html.escape(str(text), quote=True)


def visible(token: str) -> str:
    """`token` with control and bidi characters replaced by visible marks (U+001C -> '␜')."""
    return str(token).translate(_INVISIBLE)


def alpha(value: float, vmax: float) -> float:
    """How strongly `value` is highlighted on a 0..vmax scale: value/vmax clipped
    to [0, 1]. A NaN value or a vmax that is not positive gives 0."""
    value, vmax = float(value), float(vmax)
    if not (math.isfinite(vmax) and vmax > 0) or math.isnan(value):
        return 0.0
    return min(max(value / vmax, 0.0), 1.0)


def colour(value: float, vmax: float) -> str:
    """Background for `value` on a 0..vmax scale: orange with alpha value/vmax,
    clipped to [0, 1]. A NaN value or a vmax that is not positive gives alpha 0."""
    r, g, b = HIGHLIGHT
    return f"rgba({r},{g},{b},{alpha(value, vmax):.3f})"


def rgb(value: float, vmax: float) -> tuple[int, int, int]:
    """The highlight of `colour` drawn on white, as an opaque colour (for images)."""
    a = alpha(value, vmax)
    return tuple(round(255 - a * (255 - c)) for c in HIGHLIGHT)


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
    body = "".join(f"<tr><td {_CELL}>{token_html(tok)}</td><td {_CELL} align=right>{_fmt(v)}</td></tr>" for tok, v in rows)
    head = "".join(f'<th {_CELL} align=left>{escape(h)}</th>' for h in headers)
    return f'<table style="border-collapse:collapse;font-size:0.85em"><tr>{head}</tr>{body}</table>'


def logit_tables(top: list[tuple[str, float]], bottom: list[tuple[str, float]]) -> str:
    """The top and bottom logit tables of a card, side by side."""
    cols = "".join(f"<div><div {_HEAD}>{title}</div>{value_table(rows)}</div>"
                   for title, rows in (("Top logits", top), ("Bottom logits", bottom)))
    return f'<div style="{_COLUMNS}">{cols}</div>'


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


# ---------------------------------------------------------------- feature cards

CONTEXT = (24, 12)  # tokens shown before and after an example's peak when windows are cut
RELATED = (("neighbours", "Decoder neighbours", "cosine"), ("cooccurring", "Co-occurring features", "Jaccard"))
_MUTED = "color:#808495"
# The browser skips laying out examples that are off screen: Streamlit measures
# its elements after every update, and each measure would lay out all of them.
_LAZY = "content-visibility:auto;contain-intrinsic-size:auto 90px"
# No scripts at all in an exported page; the policy also blocks any that an escaping bug might let in.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_PAGE_CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1000px;"
             "color:#222;padding:0 16px}")


@dataclass(frozen=True)
class CardHtml:
    """A card's markup in the parts the page draws as separate elements."""

    top: str  # heading, numbers, histogram, logits
    examples: str  # the max-activating examples
    quantiles: str  # samples from every activation range (empty when not asked for)
    related: str  # decoder neighbours and co-occurring features


def colour_scale(card: FeatureCard) -> float:
    """The vmax of all of a card's highlights, one scale so its examples compare
    at a glance: the feature's max activation, or when that is not a positive
    number, the largest value in its top examples (0, no colour, if none)."""
    if math.isfinite(card.max_activation) and card.max_activation > 0:
        return card.max_activation
    return max((v for ex in card.top_examples for v in ex.values), default=0.0)


def peak(ex: Example) -> int:
    """Index of the example's peak token inside its window: its position, or the
    largest value when the position lies outside the window."""
    if 0 <= ex.position < len(ex.tokens):
        return ex.position
    return max(range(len(ex.values)), key=ex.values.__getitem__) if ex.values else 0


def feature_name(feature: int, label: str = "") -> str:
    """How a feature is named on a card: '#12 · its label', or '#12'."""
    return f"#{int(feature)} · {label}" if label else f"#{int(feature)}"


def example_html(ex: Example, vmax: float, context: tuple[int, int] | None = CONTEXT) -> str:
    """One example: a caption with its numbers, then its tokens highlighted and
    the peak marked; `context` (before, after) cuts the window around the peak,
    None shows it whole."""
    p = peak(ex)
    a, b = (0, len(ex.tokens)) if context is None else (max(0, p - context[0]), p + context[1] + 1)
    # numbers only in the caption: nothing to escape
    caption = (f'<div style="{_MUTED};font-size:0.8em;margin-top:0.7em">activation {ex.activation:.3g}'
               f" · window {ex.window}, token {ex.position}</div>")
    spans = token_spans(ex.tokens[a:b], ex.values[a:b], vmax, peak=p - a, plain_zeros=True)
    return f'<div style="{_LAZY}">{caption}{spans}</div>'


def quantiles_html(quantiles: Sequence[QuantileBin], vmax: float, context: tuple[int, int] | None = CONTEXT) -> str:
    """Samples from every activation range, each range under its heading."""
    return "".join(
        f'<div style="font-weight:600;margin-top:1em">{q.low:.3g} to {q.high:.3g} · '
        f"{q.fraction:.2%} of activations</div>"
        + "".join(example_html(ex, vmax, context) for ex in q.examples)
        for q in quantiles
    )


def _external_link(url: str) -> str:
    """A plain link to `url` in a new tab; only https URLs (a config file names them, so they are untrusted)."""
    if not url.startswith("https://"):
        return ""
    return (f'<div style="font-size:0.9em"><a href="{escape(url)}" target="_blank" rel="noopener noreferrer">'
            "Open on Neuronpedia</a></div>")


def explanations_html(explanations: Sequence) -> str:
    """The LLM explanation and the automatic label with their scores (explorer.index.explanations
    records), one line each; "" when there are none."""
    rows = []
    for rec in explanations:
        what = "Explanation" if rec.method == "llm" else "Auto label, scored"
        by = f"by {rec.model}, " if rec.method == "llm" else ""
        rows.append(f'<div style="margin:0.2em 0"><b>{escape(what)}:</b> {escape(rec.text)} '
                    f'<span style="{_MUTED};font-size:0.85em">({escape(by + rec.scores())}, {escape(rec.date[:10])})'
                    "</span></div>")
    return f'<div class="card-explanations">{"".join(rows)}</div>' if rows else ""


def source_mix_html(mix: list[tuple[str, float]], top: int = 3) -> str:
    """One line and a stacked bar: how the feature's activation mass splits over corpus sources
    ("92% of activation in bugs"), the `top` largest and the rest as "other"; "" without sources."""
    if not mix:
        return ""
    shown = list(mix[:top])
    rest = sum(share for _, share in mix[top:])
    if rest > 0:
        shown.append(("other", rest))
    name, share = mix[0]
    words = ", ".join(f"{s:.0%} {escape(n)}" for n, s in shown[1:])
    line = f"{share:.0%} of activation in {escape(name)}" + (f" ({words})" if words else "")
    tints = ("#1f77b4", "#ff7f0e", "#2ca02c", "#bbbbbb")
    bar = "".join(f'<span title="{escape(n)} {s:.1%}" style="display:inline-block;height:0.6em;'
                  f'width:{100 * s:.2f}%;background:{tints[i] if n != "other" else tints[-1]}"></span>'
                  for i, (n, s) in enumerate(shown))
    return (f'<div class="source-mix" style="font-size:0.9em;margin-top:0.3em">{line}'
            f'<div style="display:flex;width:18em;max-width:100%;margin-top:0.2em">{bar}</div></div>')


def _card_top(card: FeatureCard, neuronpedia_url: str = "", explanations: Sequence = ()) -> str:
    auto = (f'<div style="{_MUTED};font-size:0.9em">Auto label: {escape(card.auto_label)}</div>'
            if card.auto_label and card.auto_label != card.label else "")
    auto += explanations_html(explanations)
    auto += _external_link(neuronpedia_url)
    numbers = (("Density", f"{card.density:.4%}"), ("Max activation", f"{card.max_activation:.4g}"),
               ("Mean activation", f"{card.mean_activation:.4g}"), ("Tokens scanned", f"{card.n_tokens:,}"))
    stats = "".join(f'<div><div style="{_MUTED};font-size:0.85em">{name}</div>'
                    f'<div style="font-size:1.8em">{value}</div></div>' for name, value in numbers)
    auto += source_mix_html(card.source_mix)
    histogram = (f"<div {_HEAD}>Activation histogram (nonzero activations)</div>"
                 + histogram_html(card.hist_edges, card.hist_counts))
    return (f"<h2>{escape(feature_name(card.feature, card.label))}</h2>{auto}"
            f'<div style="display:flex;flex-wrap:wrap;gap:1em 4em;margin:0.5em 0 1.5em">{stats}</div>'
            '<div style="display:flex;flex-wrap:wrap;gap:1.5em 3em">'
            f'<div style="flex:1 1 320px">{histogram}</div>'
            f"<div>{logit_tables(card.top_logits, card.bottom_logits)}</div></div>"
            "<h3>Max-activating examples</h3>")


def _related(card: FeatureCard, label: Callable[[int], str], links: bool) -> str:
    """Both lists of related features; with `links` each name is a deep link
    (?feature=N) that opens that card in a new tab."""
    cols = []
    for attr, title, score in RELATED:
        rows = []
        for f, value in getattr(card, attr):
            name = escape(feature_name(f, label(f)))
            if links:
                name = f'<a href="?feature={int(f)}" target="_blank">{name}</a>'
            rows.append(f"<tr><td {_CELL}>{name}</td><td {_CELL} align=right>{value:.2f}</td></tr>")
        rows = rows or ["<tr><td>none</td></tr>"]
        if attr == "cooccurring" and card.cooccurrence_approximate:  # counted past the exact bound
            score += ", approximate"
        cols.append(f"<div><div {_HEAD}>{title} ({score})</div>"
                    f'<table style="border-collapse:collapse;font-size:0.9em">{"".join(rows)}</table></div>')
    return f'<h3>Related features</h3><div style="{_COLUMNS}">{"".join(cols)}</div>'


def card_html(
    card: FeatureCard,
    *,
    label: Callable[[int], str] | None = None,
    context: tuple[int, int] | None = CONTEXT,
    quantiles: bool = True,
    links: bool = True,
    neuronpedia_url: str = "",
    explanations: Sequence = (),
) -> CardHtml:
    """Plain HTML for everything on a card that is not a widget.

    `label(feature)` names the related features (none by default; the card's
    own label comes with it). `context` cuts each example around its peak
    (None: whole windows). `quantiles` False leaves that part empty, to save
    the browser its markup while nobody looks. `links` makes related features
    deep links to their cards. `neuronpedia_url`, the feature's Neuronpedia page
    (explorer.neuronpedia.feature_url), adds a link to it under the title. `explanations`
    (the index's records for this feature) adds them, with their scores, under the title."""
    vmax = colour_scale(card)
    samples = quantiles_html(card.quantiles, vmax, context) if quantiles else ""
    examples = "".join(example_html(ex, vmax, context) for ex in card.top_examples)
    return CardHtml(
        top=_card_top(card, neuronpedia_url, explanations),
        examples=f'<div class="card-examples">{examples}</div>',
        quantiles=f'<div class="card-quantiles">{samples}</div>',
        related=_related(card, label or (lambda f: ""), links),
    )


def card_page(card: FeatureCard, source: str, explanations: Sequence = ()) -> str:
    """The card as a standalone page that opens offline: the app's card with
    whole windows, every activation range and related features as plain text,
    under a line saying where it comes from (`source`). Inline styles only; no
    scripts, fonts, images or links."""
    parts = card_html(card, context=None, links=False, explanations=explanations)
    samples = f"<h3>Samples by activation range</h3>\n{parts.quantiles}\n" if card.quantiles else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(feature_name(card.feature, card.label))}</title><style>{_PAGE_CSS}</style></head>\n<body>\n"
        f'<p style="{_MUTED}">{escape(source)}</p>\n{parts.top}\n{parts.examples}\n{samples}{parts.related}\n'
        "</body></html>\n"
    )
