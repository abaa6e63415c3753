"""explorer.render: untrusted token text must come out as text, never as markup."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from explorer.render import (
    colour,
    diff_html,
    escape,
    histogram_html,
    logit_tables,
    token_spans,
    visible,
)

PAYLOADS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "&amp;", "'onmouseover='x"]


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
