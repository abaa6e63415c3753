"""explorer.render: untrusted token text must come out as text, never as markup.

`make_card` is the card the export tests share: untrusted text in every field.
"""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser

import pytest

from explorer.index import Example, FeatureCard, QuantileBin
from explorer.render import (
    HIGHLIGHT,
    card_html,
    colour,
    colour_scale,
    diff_html,
    escape,
    histogram_html,
    logit_tables,
    rgb,
    token_spans,
    visible,
)

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
PAYLOADS = [SCRIPT, IMG, "&amp;", "'onmouseover='x"]


def example(tokens: list[str], values: list[float], window: int = 0) -> Example:
    peak = max(range(len(values)), key=values.__getitem__)
    return Example(
        window=window, position=peak, activation=values[peak],
        token_ids=list(range(len(tokens))), tokens=tokens,
        texts=[t.replace("␣", " ").replace("↵", "\n") for t in tokens], values=values,
    )


def make_card(feature: int = 123) -> FeatureCard:
    top = [
        example(["Hello", "␣", SCRIPT, "␣world", "↵"], [0.0, 0.5, 4.0, 1.0, 0.0], window=7),
        example(["a", IMG, "&amp;", "|pipe|", "`tick`"], [0.2, 3.0, 0.1, 0.0, 0.0], window=9),
    ]
    return FeatureCard(
        feature=feature, label=f"html {SCRIPT}", auto_label="markup *tokens*",
        density=0.0123, max_activation=4.0, mean_activation=1.25, n_tokens=10_000,
        hist_edges=[0.0, 1.0, 2.0, 3.0, 4.0], hist_counts=[50, 20, 5, 1],
        top_logits=[("</div>", 2.5), (SCRIPT, 1.5)], bottom_logits=[("|x|", -2.0), ("`", -1.0), ("\x1c", -0.5)],
        top_examples=top,
        quantiles=[QuantileBin(low=0.0, high=2.0, fraction=0.9, examples=[top[1]]),
                   QuantileBin(low=2.0, high=4.0, fraction=0.1, examples=[top[0]])],
        neighbours=[(5, 0.81), (9, 0.5)], cooccurring=[(17, 0.25)],
    )


class Collect(HTMLParser):
    """Start tags with their attributes, and the text as a browser would show it."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


def parse(html: str) -> Collect:
    p = Collect()
    p.feed(html)
    p.close()
    return p


def test_token_spans_escape_payloads():
    out = token_spans(PAYLOADS, [0.0, 1.0, 2.0, 0.5], 2.0, peak=2)
    assert "<script" not in out and "<img" not in out
    assert "&lt;script&gt;" in out and "&quot;&gt;&lt;img" in out and "&amp;amp;" in out
    p = parse(out)
    assert {tag for tag, _ in p.tags} <= {"div", "span"}
    assert all(set(attrs) <= {"style", "title"} for _, attrs in p.tags)
    assert p.text == "".join(PAYLOADS)  # shown literally, "&amp;" included


def test_token_spans_titles_peak_and_newlines():
    out = token_spans(["a", "b↵", "c"], [0.25, 1.0, 3.0], 2.0, peak=1)
    spans = [attrs for tag, attrs in parse(out).tags if tag == "span"]
    assert [s["title"] for s in spans] == ["0.25", "1", "3"]
    assert ["underline" in s["style"] for s in spans] == [False, True, False]
    assert "rgba(255,140,0,1.000)" in spans[2]["style"]  # 3 / 2 is clipped to 1
    assert "b↵<br>" in out
    no_titles = token_spans(["a"], [1.0], 1.0, title_values=False)
    assert "title=" not in no_titles


def test_invisible_characters_are_shown():
    assert visible("a\x1cb\x00") == "a␜b␀"
    assert visible("\u202eevil\x85") == "<U+202E>evil<0x85>"
    assert parse(token_spans(["a\x1c", "\u202ex"], [1.0, 0.0], 1.0)).text == "a␜<U+202E>x"


def test_token_spans_length_mismatch():
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        token_spans(["a", "b"], [1.0], 1.0)


@pytest.mark.parametrize(
    "value, vmax, alpha",
    [(0.5, 1.0, "0.500"), (2.0, 1.0, "1.000"), (-1.0, 1.0, "0.000"), (float("nan"), 1.0, "0.000"),
     (float("inf"), 1.0, "1.000"), (1.0, 0.0, "0.000"), (1.0, -2.0, "0.000"), (1.0, float("nan"), "0.000")],
)
def test_colour_clips(value, vmax, alpha):
    assert colour(value, vmax) == f"rgba(255,140,0,{alpha})"


def test_escape_quotes():
    assert escape('<a href="x">\'') == "&lt;a href=&quot;x&quot;&gt;&#x27;"


def test_diff_html_marks_first_difference():
    clean, steered = ["The", "␣cat", "␣sat"], ["The", "<script>", "␣ran"]
    out = diff_html(clean, steered, 1)
    p = parse(out)
    assert {tag for tag, _ in p.tags} <= {"div", "span"}
    assert "<script>" in p.text and "<script" not in out
    spans = [attrs["style"] for tag, attrs in p.tags if tag == "span"]
    marked = [i for i, s in enumerate(spans) if "underline" in s]
    assert marked == [1, 4]  # token 1 of the clean row and of the steered row
    assert "first difference at generated token 1" in p.text
    assert "identical" in parse(diff_html(clean, clean, None)).text


def test_value_table_escapes_tokens():
    from explorer.render import value_table

    html_out = value_table([("<script>alert(1)</script>", 1.5), ("␣the", -0.25)])
    assert "<script>" not in html_out and "&lt;script&gt;" in html_out
    assert "1.5" in html_out and "-0.25" in html_out


def test_plain_zeros_leave_zero_tokens_as_escaped_text():
    out = token_spans(PAYLOADS + ["x"], [0.0, 0.0, 1.0, 0.0, 0.0], 2.0, peak=1, plain_zeros=True)
    p = parse(out)
    assert {tag for tag, _ in p.tags} <= {"div", "span"}  # the payloads stay text
    spans = [attrs for tag, attrs in p.tags if tag == "span"]
    assert [s["title"] for s in spans] == ["0", "1"]  # the peak (even at zero) and the active token
    assert p.text == "".join(PAYLOADS) + "x"


def test_histogram_html_trims_empty_bins_and_labels_each_bar():
    edges = [0.1 * 2**i for i in range(7)]  # log-spaced
    out = histogram_html(edges, [0, 2, 8, 0, 4, 0])
    bars = [attrs for tag, attrs in parse(out).tags if tag == "div" and "title" in attrs]
    assert [b["title"] for b in bars] == ["0.2 to 0.4: 2 tokens", "0.4 to 0.8: 8 tokens", "0.8 to 1.6: 0 tokens",
                                          "1.6 to 3.2: 4 tokens"]
    assert "height:25.0%" in bars[0]["style"] and "height:100.0%" in bars[1]["style"]
    assert "log scale" in parse(out).text
    assert "log scale" not in parse(histogram_html([0.0, 1.0, 2.0, 3.0], [1, 1, 1])).text
    assert parse(histogram_html(edges, [0] * 6)).text == "No nonzero activations."


def test_logit_tables_escape_tokens():
    p = parse(logit_tables([(PAYLOADS[0], 1.5)], [(PAYLOADS[1], -2.0)]))
    assert {tag for tag, _ in p.tags} <= {"div", "table", "tr", "th", "td"}
    assert PAYLOADS[0] in p.text and PAYLOADS[1] in p.text and "Bottom logits" in p.text


# ---------------------------------------------------------------- feature cards

CARD_TAGS = {"h2", "h3", "div", "span", "br", "p", "table", "tr", "th", "td", "a"}
CARD_ATTRS = {"style", "title", "class", "align", "href", "target"}


def test_card_html_escapes_every_untrusted_string():
    card = dataclasses.replace(make_card(), auto_label=f"auto {IMG}")
    parts = card_html(card, label=lambda f: f"neighbour {SCRIPT}")
    for part in dataclasses.astuple(parts):
        assert "<script" not in part and "<img" not in part
        p = parse(part)
        assert {tag for tag, _ in p.tags} <= CARD_TAGS
        assert all(set(attrs) <= CARD_ATTRS for _, attrs in p.tags)
        assert all(attrs["href"].removeprefix("?feature=").isdigit() for tag, attrs in p.tags if tag == "a")
    assert f"#123 · html {SCRIPT}" in parse(parts.top).text and f"auto {IMG}" in parse(parts.top).text
    assert "Top logits" in parse(parts.top).text and SCRIPT in parse(parts.top).text  # a logit token
    assert SCRIPT in parse(parts.examples).text and IMG in parse(parts.examples).text
    assert parse(parts.related).text.count(f"neighbour {SCRIPT}") == 3


def test_card_html_parts_follow_the_options():
    card = make_card()
    whole = card_html(card, context=None, links=False)
    cut = card_html(card, context=(1, 0))
    assert parse(whole.examples).text.count("Hello") == 1 and "Hello" not in parse(cut.examples).text
    assert "␣" in parse(cut.examples).text  # the token just before the peak
    assert "0 to 2 · 90.00% of activations" in parse(whole.quantiles).text
    assert card_html(card, quantiles=False).quantiles == '<div class="card-quantiles"></div>'
    assert '<a href="?feature=5" target="_blank">#5</a>' in cut.related
    assert "<a " not in whole.related and "#5" in parse(whole.related).text


def test_one_colour_scale_per_card():
    card = make_card()
    assert colour_scale(card) == 4.0
    for broken in (0.0, float("inf"), float("nan")):  # fall back to the largest example value
        assert colour_scale(dataclasses.replace(card, max_activation=broken)) == 4.0
    assert colour_scale(dataclasses.replace(card, max_activation=0.0, top_examples=[])) == 0.0
    # the scale is the card's, not each example's: example 2 peaks at 3.0 of 4.0
    assert "rgba(255,140,0,0.750)" in card_html(card).examples


def test_rgb_is_colour_on_white():
    assert rgb(0.0, 1.0) == (255, 255, 255) and rgb(float("nan"), 1.0) == (255, 255, 255)
    assert rgb(2.0, 1.0) == HIGHLIGHT and rgb(0.5, 1.0) == (255, 198, 128)
