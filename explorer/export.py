"""Exports of feature cards and steering results, for sharing outside the app.

- `card_to_json` / `card_to_markdown` / `card_to_html` / `card_to_png`: one
  `explorer.index.FeatureCard` as a JSON-ready dict (Neuronpedia field names
  where they exist), Markdown, a standalone offline HTML page (the app's card,
  made by `explorer.render`), or a PNG image.
- `steering_to_json` / `steering_to_markdown`: one `SteeringResult`.
- `cards_to_zip`: many cards in many formats, byte-reproducible; `files_to_zip` zips any
  files so (the Neuronpedia formats of `explorer.neuronpedia` go through it too).
- `dumps`: the JSON text we write (files go through `explorer.files`).

Token text is untrusted: HTML comes from `explorer.render` only, and Markdown
goes through `md_escape`. The PNG colours tokens by render's colour-scale rule.
Every output is deterministic (same card, same bytes), so exports can be
diffed and cached.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import math
import zipfile
from typing import TYPE_CHECKING, Iterable, Sequence

from explorer import render

if TYPE_CHECKING:
    from explorer.index import Example, FeatureCard
    from explorer.steering import SteeringResult

FORMATS = ("json", "md", "html", "png")
FORMAT_VERSION = 1
N_EXAMPLES_PNG = 5
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time zip can store: fixed, so archives are byte-reproducible


# ---------------------------------------------------------------- numbers and JSON


def _num(x: float) -> float | None:
    """A float rounded to 6 significant digits (short, stable files); None for NaN/inf (JSON has none)."""
    return float(f"{float(x):.6g}") if math.isfinite(float(x)) else None


def _nums(xs: Iterable[float]) -> list[float | None]:
    return [_num(x) for x in xs]


def dumps(obj: dict) -> str:
    """The JSON text we write: key order as built, UTF-8, no NaN, one trailing newline."""
    return json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def _midpoints(edges: list[float]) -> list[float]:
    """Bin centres: geometric for log-spaced edges, arithmetic otherwise."""
    if render.is_log_spaced(edges):
        return [math.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])]
    return [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]


# ---------------------------------------------------------------- JSON


def _activation_json(ex: Example, bin_min: float, bin_max: float, bin_contains: float) -> dict:
    return {
        "tokens": list(ex.texts),
        "values": _nums(ex.values),
        "bin_min": _num(bin_min),
        "bin_max": _num(bin_max),
        "bin_contains": _num(bin_contains),
        "qualifying_token_index": render.peak(ex),
        # ours
        "display_tokens": list(ex.tokens),
        "token_ids": [int(t) for t in ex.token_ids],
        "window": int(ex.window),
        "position": int(ex.position),
        "activation": _num(ex.activation),
    }


def card_to_json(card: FeatureCard, *, model: str, hook: str, sae_id: str) -> dict:
    """The card as a JSON-ready dict. Neuronpedia's feature fields
    (SAEDashboard `neuronpedia/neuronpedia_dashboard.py`) are used where ours mean the same:

        feature_index               <- card.feature
        frac_nonzero                <- card.density (share of tokens with activation > 0)
        freq_hist_data_bar_values   <- bin centres of card.hist_edges (geometric when log-spaced)
        freq_hist_data_bar_heights  <- card.hist_counts (histogram of the nonzero activations)
        pos_str / pos_values        <- card.top_logits (display strings: whitespace shown as ␣ ↵)
        neg_str / neg_values        <- card.bottom_logits
        activations[]               <- top examples first (bin_min = bin_contains = -1,
                                       bin_max = max activation, as Neuronpedia marks its
                                       top group), then every quantile bin's examples
                                       (bin_min/bin_max = the bin's edges, bin_contains = its
                                       share); tokens are the raw decoded texts and
                                       qualifying_token_index the peak token.

    Not mapped: `correlated_features_*` are Pearson correlations, which we do not
    compute; our decoder-cosine neighbours and co-occurrence Jaccard scores go in
    `neighbours` and `cooccurring` instead. Our own other fields: model_id/hook/sae_id, label,
    auto_label, max/mean activation, n_tokens, hist_edges and quantiles."""
    top = [_activation_json(ex, -1.0, card.max_activation, -1.0) for ex in card.top_examples]
    binned = [_activation_json(ex, q.low, q.high, q.fraction) for q in card.quantiles for ex in q.examples]
    return {
        "format": "sae-feature-explorer/feature-card",
        "format_version": FORMAT_VERSION,
        "model_id": str(model),
        "hook": str(hook),
        "sae_id": str(sae_id),
        "feature_index": int(card.feature),
        "label": card.label,
        "auto_label": card.auto_label,
        "frac_nonzero": _num(card.density),
        "max_activation": _num(card.max_activation),
        "mean_activation": _num(card.mean_activation),
        "n_tokens": int(card.n_tokens),
        "freq_hist_data_bar_values": _nums(_midpoints(card.hist_edges)),
        "freq_hist_data_bar_heights": [int(c) for c in card.hist_counts],
        "hist_edges": _nums(card.hist_edges),
        "pos_str": [t for t, _ in card.top_logits],
        "pos_values": _nums(v for _, v in card.top_logits),
        "neg_str": [t for t, _ in card.bottom_logits],
        "neg_values": _nums(v for _, v in card.bottom_logits),
        "activations": top + binned,
        "quantiles": [
            {"low": _num(q.low), "high": _num(q.high), "fraction": _num(q.fraction), "n_examples": len(q.examples)}
            for q in card.quantiles
        ],
        "neighbours": [{"feature": int(f), "cosine": _num(s)} for f, s in card.neighbours],
        "cooccurring": [{"feature": int(f), "jaccard": _num(s)} for f, s in card.cooccurring],
    }


def steering_to_json(result: SteeringResult, *, labels: dict[int, str] | None = None) -> dict:
    """The prompt, the interventions (with feature labels when given), the
    settings and both completions; `diverge_at` indexes the generated tokens.
    Conditions, the stop condition and where a completion stopped appear only
    when there are any, so older exports keep their bytes."""
    labels = labels or {}
    out = {
        "format": "sae-feature-explorer/steering",
        "format_version": FORMAT_VERSION,
        "prompt": result.prompt,
        "interventions": [_intervention_json(iv, labels) for iv in result.interventions],
        "settings": dataclasses.asdict(result.settings),
        "clean": _completion_json(result.clean),
        "steered": _completion_json(result.steered),
        "diverge_at": result.diverge_at,
    }
    if result.stop is not None:
        out["stop"] = {**dataclasses.asdict(result.stop), "threshold": _num(result.stop.threshold),
                       "description": result.stop.describe()}
    return out


def _intervention_json(iv, labels: dict[int, str]) -> dict:
    out = {"feature": int(iv.feature), "label": labels.get(iv.feature, ""), "mode": iv.mode,
           "value": _num(iv.value), "relative": bool(iv.relative), "description": iv.describe()}
    if iv.condition is not None:
        out["condition"] = {**dataclasses.asdict(iv.condition), "threshold": _num(iv.condition.threshold)}
    return out


def _completion_json(c) -> dict:
    out = {"token_ids": [int(t) for t in c.token_ids], "text": c.text}
    if c.stopped_at is not None:
        out["stopped_at"] = int(c.stopped_at)
        out["stopped_by"] = c.stopped_by.describe() if c.stopped_by else ""
    return out


# ---------------------------------------------------------------- Markdown

# Characters with meaning in (GitHub-flavoured) Markdown inline text. `<`, `>` and
# `&` become entities so raw HTML like `<script>` shows as text; the rest get a
# backslash, which CommonMark allows before any ASCII punctuation.
_MD_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\n": " ", "\r": " "}
    | {c: "\\" + c for c in "\\`*_[]|~#!{}()"}
)
_SPARK = "▁▂▃▄▅▆▇█"


def md_escape(text: object) -> str:
    """`text` as Markdown that renders literally on one line (safe in table cells)."""
    return str(text).translate(_MD_ESCAPES)


def _fence(text: str) -> str:
    """`text` in a code block whose fence is longer than any backtick run inside it."""
    run = longest = 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def _md_example(ex: Example) -> str:
    peak = render.peak(ex)
    toks = [md_escape(render.visible(t)) for t in ex.tokens]
    if toks:
        toks[peak] = f"**{toks[peak]}**"
    return f"`{ex.activation:.4g}` " + " ".join(toks)


def _md_logits(title: str, rows: list[tuple[str, float]]) -> list[str]:
    out = [f"| {title} | logit |", "|---|---:|"]
    out += [f"| {md_escape(render.visible(t))} | {v:+.4g} |" for t, v in rows]
    return out


def _sparkline(counts: list[int]) -> str:
    top = max(counts, default=0)
    if top <= 0:
        return ""
    return "".join(_SPARK[min(len(_SPARK) - 1, int(c / top * (len(_SPARK) - 1) + 0.5))] for c in counts)


def card_to_markdown(card: FeatureCard, *, model: str, hook: str, sae_id: str) -> str:
    """The card as Markdown; tokens are shown joined by spaces, the peak in bold."""
    title = f"# Feature {card.feature}" + (f": {md_escape(card.label)}" if card.label else "")
    lines = [title, ""]
    if card.auto_label and card.auto_label != card.label:
        lines += [f"Auto label: {md_escape(card.auto_label)}", ""]
    lines += [
        f"Model {md_escape(model)}, hook {md_escape(hook)}, SAE {md_escape(sae_id)}",
        "",
        "| density | max activation | mean activation | tokens scanned |",
        "|---:|---:|---:|---:|",
        f"| {card.density:.4%} | {card.max_activation:.4g} | {card.mean_activation:.4g} | {card.n_tokens:,} |",
        "",
    ]
    if card.hist_counts:
        lo, hi = (card.hist_edges[0], card.hist_edges[-1]) if card.hist_edges else (0.0, 0.0)
        scale = ", log scale" if render.is_log_spaced(card.hist_edges) else ""
        lines += [f"Activation histogram ({lo:.3g} to {hi:.3g}{scale}): {_sparkline(card.hist_counts)}", ""]
    lines += ["## Logits", ""] + _md_logits("top", card.top_logits) + [""]
    lines += _md_logits("bottom", card.bottom_logits) + [""]
    lines += ["## Top examples", ""] + [f"{i}. {_md_example(ex)}" for i, ex in enumerate(card.top_examples, 1)]
    lines.append("")
    if card.quantiles:
        lines += ["## Quantiles", ""]
        for q in card.quantiles:
            lines += [f"### {q.low:.3g} to {q.high:.3g} (contains {q.fraction:.2%})", ""]
            lines += [f"- {_md_example(ex)}" for ex in q.examples] + [""]
    named = (("Decoder neighbours (cosine)", card.neighbours), ("Co-occurring features (Jaccard)", card.cooccurring))
    for name, pairs in named:
        if pairs:
            lines += [f"## {name}", "", ", ".join(f"#{int(f)} ({s:.3f})" for f, s in pairs), ""]
    return "\n".join(lines)


def steering_to_markdown(result: SteeringResult, *, labels: dict[int, str] | None = None) -> str:
    """The steering run as Markdown; prompt and completions go in code blocks."""
    labels = labels or {}
    s = result.settings
    lines = ["# Steering", "", "## Prompt", "", _fence(result.prompt), "", "## Interventions", ""]
    lines += ["| feature | label | edit |", "|---:|---|---|"]
    lines += [
        f"| {int(iv.feature)} | {md_escape(labels.get(iv.feature, ''))} | {md_escape(iv.describe())} |"
        for iv in result.interventions
    ]
    lines += [
        "",
        f"Settings: {s.max_new_tokens} new tokens, temperature {s.temperature:g}, top_p {s.top_p:g}, seed {s.seed}"
        + (", chat template" if s.chat else "")
        + (f", {md_escape(result.stop.describe())} (steered row)" if result.stop else ""),
        "",
        "## Clean",
        "",
        _fence(result.clean.text),
        "",
        "## Steered",
        "",
        _fence(result.steered.text),
        "",
        *_stopped_md(result.steered),
        "Identical completions."
        if result.diverge_at is None
        else f"The completions first differ at generated token {result.diverge_at}.",
        "",
    ]
    return "\n".join(lines)


def _stopped_md(c) -> list[str]:
    if c.stopped_at is None:
        return []
    why = f" ({md_escape(c.stopped_by.describe())})" if c.stopped_by else ""
    return [f"Stopped after generated token {int(c.stopped_at)}{why}.", ""]


# ---------------------------------------------------------------- HTML


def card_to_html(card: FeatureCard, *, model: str, hook: str, sae_id: str) -> str:
    """A standalone page that opens offline: the app's card (`explorer.render.card_page`)."""
    return render.card_page(card, source=f"model {model} · hook {hook} · SAE {sae_id}")


# ---------------------------------------------------------------- PNG

_WIDTH, _MARGIN = 1100, 24


@functools.lru_cache(maxsize=16)
def _font(size: int, bold: bool = False, mono: bool = False):
    from PIL import ImageFont

    name = "DejaVuSansMono" if mono else "DejaVuSans"
    try:  # Pillow finds system fonts by file name; DejaVu has the ␣ and ↵ glyphs.
        # BASIC layout: no dependence on libraqm, which rejects some control characters.
        return ImageFont.truetype(f"{name}{'-Bold' if bold else ''}.ttf", size, layout_engine=ImageFont.Layout.BASIC)
    except OSError:
        return ImageFont.load_default(size=size)


def _one_line(text: object) -> str:
    # Pillow draws "\n" as a line break and cannot measure it; show it as display tokens do.
    return render.visible(str(text).replace("\n", "↵").replace("\r", "␍"))


def _fit(draw, text: str, font, width: float) -> str:
    """`text` on one line, cut (with an ellipsis) to fit `width` pixels."""
    text = _one_line(text)
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _png_histogram(draw, card: FeatureCard, x: int, y: int, w: int, h: int, fonts) -> None:
    title = "activation histogram (nonzero" + (", log scale)" if render.is_log_spaced(card.hist_edges) else ")")
    draw.text((x, y), title, font=fonts["small"], fill="#555")
    top, plot_y, plot_h = max(card.hist_counts, default=0), y + 22, h - 44
    draw.rectangle([x, plot_y, x + w, plot_y + plot_h], outline="#ccc")
    if top > 0:
        bw = w / len(card.hist_counts)
        for i, c in enumerate(card.hist_counts):
            bh = plot_h * c / top
            bar = [x + i * bw, plot_y + plot_h - bh, x + (i + 1) * bw - 1, plot_y + plot_h]
            draw.rectangle(bar, fill=render.HIGHLIGHT)
    if card.hist_edges:
        lo, hi = f"{card.hist_edges[0]:.3g}", f"{card.hist_edges[-1]:.3g}"
        draw.text((x, plot_y + plot_h + 4), lo, font=fonts["small"], fill="#555")
        hi_x = x + w - draw.textlength(hi, font=fonts["small"])
        draw.text((hi_x, plot_y + plot_h + 4), hi, font=fonts["small"], fill="#555")


def _png_logits(draw, title: str, rows, x: int, y: int, w: int, scale: float, fill: str, fonts) -> None:
    draw.text((x, y), title, font=fonts["small"], fill="#555")
    tok_w, bar_w = 120, w - 120 - 60
    for i, (tok, v) in enumerate(rows[:10]):
        ry = y + 22 + i * 18
        draw.text((x, ry), _fit(draw, tok, fonts["mono_small"], tok_w - 6), font=fonts["mono_small"], fill="#222")
        bw = bar_w * min(abs(v) / scale, 1.0) if scale > 0 and math.isfinite(v) else 0
        draw.rectangle([x + tok_w, ry + 3, x + tok_w + bw, ry + 13], fill=fill)
        draw.text((x + tok_w + bar_w + 4, ry), f"{v:+.3g}", font=fonts["small"], fill="#222")


def _window_around(widths: list[float], peak: int, room: float) -> tuple[int, int]:
    """[a, b): the widest run of tokens around `peak` that fits in `room` pixels."""
    a, b, used = peak, peak + 1, widths[peak]
    grew = True
    while grew:
        grew = False
        if b < len(widths) and used + widths[b] <= room:
            used, b, grew = used + widths[b], b + 1, True
        if a > 0 and used + widths[a - 1] <= room:
            used, a, grew = used + widths[a - 1], a - 1, True
    return a, b


def _png_example(draw, ex: Example, vmax: float, x: int, y: int, fonts) -> None:
    draw.text((x, y), f"{ex.activation:.3g}", font=fonts["small"], fill="#555")
    if not ex.tokens:
        return
    x0, peak = x + 64, render.peak(ex)
    font_of = [fonts["mono_bold"] if i == peak else fonts["mono"] for i in range(len(ex.tokens))]
    tokens = [_one_line(t) for t in ex.tokens]
    widths = [draw.textlength(t, font=f) + 2 for t, f in zip(tokens, font_of)]
    a, b = _window_around(widths, peak, _WIDTH - _MARGIN - x0)
    for i in range(a, b):
        w = widths[i]
        draw.rectangle([x0, y - 2, x0 + w - 1, y + 20], fill=render.rgb(ex.values[i], vmax))
        draw.text((x0 + 1, y), tokens[i], font=font_of[i], fill="#000")
        if i == peak:
            draw.rectangle([x0, y - 2, x0 + w - 1, y + 20], outline="#c03000")
            draw.line([x0 + 1, y + 18, x0 + w - 2, y + 18], fill="#c03000", width=2)
        x0 += w


def card_to_png(card: FeatureCard, *, model: str, hook: str, sae_id: str) -> bytes:
    """The card drawn as a PNG: title, stats, histogram, logits and the top 5 examples."""
    from PIL import Image, ImageDraw

    fonts = {
        "title": _font(24, bold=True), "body": _font(15), "small": _font(13),
        "mono": _font(15, mono=True), "mono_bold": _font(15, bold=True, mono=True), "mono_small": _font(13, mono=True),
    }
    examples = card.top_examples[:N_EXAMPLES_PNG]
    height = 330 + 30 * len(examples) + 40
    img = Image.new("RGB", (_WIDTH, height), "white")
    draw = ImageDraw.Draw(img)
    inner = _WIDTH - 2 * _MARGIN

    # 1) title, labels, provenance and stats
    name = f"Feature {card.feature}" + (f": {card.label}" if card.label else "")
    draw.text((_MARGIN, 18), _fit(draw, name, fonts["title"], inner), font=fonts["title"], fill="#111")
    sub = f"auto label: {card.auto_label}" if card.auto_label and card.auto_label != card.label else ""
    sub = "   ".join(p for p in (sub, f"model {model} · hook {hook} · SAE {sae_id}") if p)
    draw.text((_MARGIN, 52), _fit(draw, sub, fonts["small"], inner), font=fonts["small"], fill="#666")
    stats = (f"density {card.density:.4%}   max {card.max_activation:.4g}   "
             f"mean {card.mean_activation:.4g}   tokens scanned {card.n_tokens:,}")
    draw.text((_MARGIN, 74), stats, font=fonts["body"], fill="#222")

    # 2) histogram on the left, top and bottom logits on the right
    _png_histogram(draw, card, _MARGIN, 108, 480, 210, fonts)
    scale = max((abs(v) for _, v in card.top_logits + card.bottom_logits if math.isfinite(v)), default=0.0)
    _png_logits(draw, "top logits", card.top_logits, 540, 108, 260, scale, "#2a9d4b", fonts)
    _png_logits(draw, "bottom logits", card.bottom_logits, 815, 108, 260, scale, "#d04040", fonts)

    # 3) top examples, each a one-line window centred on its peak token
    draw.text((_MARGIN, 330), "top examples", font=fonts["small"], fill="#555")
    vmax = render.colour_scale(card)
    for i, ex in enumerate(examples):
        _png_example(draw, ex, vmax, _MARGIN, 356 + 30 * i, fonts)

    buf = io.BytesIO()
    img.save(buf, format="PNG")  # Pillow writes no timestamp, so the bytes are reproducible
    return buf.getvalue()


# ---------------------------------------------------------------- files


def card_bytes(card: FeatureCard, fmt: str, *, model: str, hook: str, sae_id: str, explanations: Sequence = ()) -> bytes:
    """The card in one of FORMATS, as a file's bytes; JSON, Markdown and HTML add `explanations` (its records)."""
    meta = dict(model=model, hook=hook, sae_id=sae_id)
    if fmt == "json":
        extra = {"explanations": [dataclasses.asdict(r) for r in explanations]} if explanations else {}
        return dumps(card_to_json(card, **meta) | extra).encode()
    if fmt == "md":
        lines = [f"- {r.method}: {md_escape(r.text)} ({md_escape(r.scores())}, {md_escape(r.model)}, {r.date[:10]})"
                 for r in explanations]
        return (card_to_markdown(card, **meta) + "\n".join(["## Explanations", "", *lines, ""] if lines else [])).encode()
    if fmt == "html":
        return render.card_page(card, f"model {model} · hook {hook} · SAE {sae_id}", explanations).encode()
    if fmt == "png":
        return card_to_png(card, **meta)
    raise ValueError(f"Unknown export format {fmt!r}. Fix: use one of {', '.join(FORMATS)}")


def card_filename(feature: int, fmt: str) -> str:
    return f"feature_{int(feature):05d}.{fmt}"


def cards_to_zip(
    cards: Iterable[FeatureCard],
    formats: Iterable[str] = FORMATS,
    *,
    model: str,
    hook: str,
    sae_id: str,
) -> bytes:
    """A zip with each card in each format (feature_00123.json, ...), sorted by
    feature, with fixed timestamps: the same cards give the same bytes."""
    formats = list(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"Unknown export formats {bad}. Fix: choose from {', '.join(FORMATS)}")
    cards = sorted(cards, key=lambda c: c.feature)
    seen = [c.feature for c in cards]
    if len(set(seen)) != len(seen):
        raise ValueError("The same feature appears twice. Fix: pass each feature's card once")
    return files_to_zip(
        (card_filename(card.feature, fmt), card_bytes(card, fmt, model=model, hook=hook, sae_id=sae_id))
        for card in cards for fmt in formats
    )


def files_to_zip(files: Iterable[tuple[str, bytes]]) -> bytes:
    """A zip of (path inside the zip, bytes) in the order given, with fixed timestamps and
    modes: the same files give the same bytes. PNGs are stored, the rest deflated."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_STORED if name.endswith(".png") else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()
