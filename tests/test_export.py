"""explorer.export: every format escapes token text, uses the agreed field names
and is deterministic."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from explorer.export import (
    card_bytes,
    card_to_html,
    card_to_json,
    card_to_markdown,
    card_to_png,
    cards_to_zip,
    dumps,
    md_escape,
    steering_to_json,
    steering_to_markdown,
)
from explorer import render
from explorer.files import write_atomic
from explorer.steering import Completion, GenerationSettings, Intervention, SteeringResult
from test_app import app, no_exception, ws  # noqa: F401  (ws: the demo workspace fixture)
from test_render import IMG, SCRIPT, make_card, parse

META = dict(model="tiny-model", hook="blocks.1.hook_resid_post", sae_id="sae-abc")


def steering_result(text: str = f"ok {SCRIPT} ``` fence") -> SteeringResult:
    return SteeringResult(
        prompt="Tell me about <b>cats</b>",
        interventions=(Intervention(7, "clamp", 2.0, relative=True), Intervention(3, "ablate")),
        settings=GenerationSettings(max_new_tokens=4, seed=1),
        clean=Completion(token_ids=[1, 2, 3], text="the cat"),
        steered=Completion(token_ids=[1, 5, 6], text=text),
        diverge_at=1,
    )


def test_card_json_uses_neuronpedia_fields():
    card = make_card()
    d = card_to_json(card, **META)
    assert d["feature_index"] == 123 and d["frac_nonzero"] == 0.0123
    assert d["freq_hist_data_bar_heights"] == [50, 20, 5, 1]
    assert d["freq_hist_data_bar_values"] == [0.5, 1.5, 2.5, 3.5]
    assert d["pos_str"] == ["</div>", SCRIPT] and d["pos_values"] == [2.5, 1.5]
    assert d["neg_str"] == ["|x|", "`", "\x1c"] and d["neg_values"] == [-2.0, -1.0, -0.5]
    acts = d["activations"]
    assert len(acts) == 4  # 2 top examples, then one per quantile bin
    assert set(acts[0]) >= {"tokens", "values", "bin_min", "bin_max", "bin_contains", "qualifying_token_index"}
    assert (acts[0]["bin_min"], acts[0]["bin_max"], acts[0]["bin_contains"]) == (-1.0, 4.0, -1.0)
    assert acts[0]["tokens"][3] == " world" and acts[0]["display_tokens"][3] == "␣world"
    assert acts[0]["qualifying_token_index"] == 2 and acts[1]["qualifying_token_index"] == 1
    assert (acts[2]["bin_min"], acts[2]["bin_max"], acts[2]["bin_contains"]) == (0.0, 2.0, 0.9)
    assert d["label"] == card.label and d["model_id"] == "tiny-model" and d["sae_id"] == "sae-abc"
    assert d["neighbours"] == [{"feature": 5, "cosine": 0.81}, {"feature": 9, "cosine": 0.5}]
    assert d["cooccurring"] == [{"feature": 17, "jaccard": 0.25}]
    assert d["quantiles"][1] == {"low": 2.0, "high": 4.0, "fraction": 0.1, "n_examples": 1}
    assert json.loads(dumps(d)) == d


def test_card_json_log_histogram_centres():
    from dataclasses import replace

    card = replace(make_card(), hist_edges=[0.01, 0.1, 1.0, 10.0], hist_counts=[3, 2, 1])
    assert card_to_json(card, **META)["freq_hist_data_bar_values"] == [0.0316228, 0.316228, 3.16228]
    assert "log scale" in card_to_markdown(card, **META)


def test_card_json_non_finite_becomes_null():
    from dataclasses import replace

    card = replace(make_card(), mean_activation=float("nan"), max_activation=float("inf"))
    d = card_to_json(card, **META)
    assert d["mean_activation"] is None and d["max_activation"] is None
    dumps(d)  # allow_nan=False would raise on a NaN left behind


def test_markdown_escapes_tokens():
    md = card_to_markdown(make_card(), **META)
    assert "<script>" not in md and "<img" not in md
    assert "&lt;script&gt;" in md and "\\|pipe\\|" in md and "\\`tick\\`" in md
    assert "**&lt;script&gt;alert\\(1\\)&lt;/script&gt;**" in md  # the peak token, bold
    assert md_escape("a*b_c\nd") == "a\\*b\\_c d"


def test_markdown_renders_payload_as_text():
    import markdown_it  # comes with streamlit (through rich)

    md = card_to_markdown(make_card(), **META) + "\n" + steering_to_markdown(steering_result())
    rendered = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    tags = {tag for tag, _ in parse(rendered).tags}
    assert not tags & {"script", "img", "b", "div"}
    assert SCRIPT in parse(rendered).text


def test_html_export_is_inert_and_offline():
    page = card_to_html(make_card(), **META)
    p = parse(page)
    tags = {tag for tag, _ in p.tags}
    assert not tags & {"script", "img", "iframe", "object", "embed", "link", "a", "base"}
    for _, attrs in p.tags:
        assert not any(k.startswith("on") or k in ("src", "href") for k in attrs)
    assert "http://" not in page and "https://" not in page and "@import" not in page and "url(" not in page
    for payload in (SCRIPT, IMG, "&amp;", "|pipe|", "markup *tokens*"):
        assert payload in p.text
    assert "Content-Security-Policy" in page


def test_html_export_is_the_app_card():
    card = make_card()
    page = card_to_html(card, **META)
    parts = render.card_html(card, context=None, links=False)  # whole windows, no links out of the file
    for part in dataclasses.astuple(parts):
        assert part in page
    assert "tiny-model · hook blocks.1.hook_resid_post · SAE sae-abc" in page


@pytest.mark.parametrize("fmt", ["html", "md", "json", "png"])
def test_untrusted_text_stays_text_in_every_format(fmt):
    untrusted = {"label": "<script>label()</script>", "auto_label": '"><img src=x onerror=auto()>',
                 "logit": "<b>logit</b>", "model": "<script>model()</script>", "hook": "<i>hook</i>",
                 "sae_id": "<a href=x>sae</a>", "token": SCRIPT}
    card = dataclasses.replace(make_card(), label=untrusted["label"], auto_label=untrusted["auto_label"],
                               top_logits=[(untrusted["logit"], 1.0)])
    data = card_bytes(card, fmt, model=untrusted["model"], hook=untrusted["hook"], sae_id=untrusted["sae_id"])
    if fmt == "png":  # drawn as pixels: nothing is parsed
        Image.open(io.BytesIO(data)).verify()
        return
    if fmt == "json":  # raw strings: whoever shows them escapes them
        d = json.loads(data)
        assert (d["label"], d["auto_label"], d["pos_str"], d["model_id"]) == (
            untrusted["label"], untrusted["auto_label"], [untrusted["logit"]], untrusted["model"])
        return
    text = data.decode()
    if fmt == "md":
        import markdown_it

        text = markdown_it.MarkdownIt("commonmark", {"html": True}).enable("table").render(text)
    p = parse(text)
    assert not {tag for tag, _ in p.tags} & {"script", "img", "b", "i", "a"}
    for name, payload in untrusted.items():
        assert payload in p.text, name


@pytest.mark.demo
def test_page_and_html_export_draw_the_same_card(ws):
    """The feature page and the HTML export share one renderer: with whole
    windows and the samples open, the page's card elements are in the export."""
    at = app("pages/feature.py", feature="3")
    at.session_state["card_whole"] = True
    at.session_state["quantiles_open"] = True
    at.run()
    no_exception(at)
    from ui.router import STILL_STATUS

    shown = [h.proto.body for h in at.get("html") if h.proto.body != STILL_STATUS]  # every page's style, not the card
    card = ws.index.card(3)
    parts = render.card_html(card, label=ws.index.label, context=None)
    assert shown == [parts.top, parts.examples, parts.quantiles, parts.related]
    exported = card_to_html(card, **META)
    assert parts.top in exported and parts.examples in exported and parts.quantiles in exported


def test_png_is_a_reasonable_image():
    data = card_to_png(make_card(), **META)
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.width == 1100 and 300 < img.height < 1000
    pixels = np.asarray(img.convert("RGB"))
    orange = int((pixels == (255, 140, 0)).all(axis=-1).sum())
    assert orange > 500  # the histogram bars and the peak tokens' highlight
    assert 5_000 < len(data) < 1_000_000


def test_outputs_are_deterministic():
    a, b = make_card(), make_card()
    for fmt in ("json", "md", "html", "png"):
        assert card_bytes(a, fmt, **META) == card_bytes(b, fmt, **META), fmt
    assert cards_to_zip([a], **META) == cards_to_zip([b], **META)


def test_zip_contents():
    cards = [make_card(123), make_card(7)]
    data = cards_to_zip(cards, formats=("json", "md"), **META)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.namelist() == ["feature_00007.json", "feature_00007.md", "feature_00123.json", "feature_00123.md"]
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in zf.infolist())
        assert json.loads(zf.read("feature_00123.json"))["feature_index"] == 123
        assert zf.read("feature_00007.md") == card_bytes(cards[1], "md", **META)
    with pytest.raises(ValueError, match="pdf"):
        cards_to_zip(cards, formats=("pdf",), **META)
    with pytest.raises(ValueError, match="twice"):
        cards_to_zip([make_card(1), make_card(1)], **META)


def test_steering_json_and_markdown():
    result = steering_result()
    labels = {7: "cats <b>"}
    d = steering_to_json(result, labels=labels)
    assert [iv["feature"] for iv in d["interventions"]] == [7, 3]
    assert d["interventions"][0] == {"feature": 7, "label": "cats <b>", "mode": "clamp", "value": 2.0,
                                     "relative": True, "description": "clamp #7 2x max"}
    assert d["settings"]["max_new_tokens"] == 4 and d["diverge_at"] == 1
    assert d["steered"] == {"token_ids": [1, 5, 6], "text": result.steered.text}
    assert json.loads(dumps(d)) == d
    md = steering_to_markdown(result, labels=labels)
    assert "cats &lt;b&gt;" in md and "````text\n" + result.steered.text + "\n````" in md
    assert "first differ at generated token 1" in md


def test_write_atomic(tmp_path):
    target = tmp_path / "sub" / "card.json"
    write_atomic(target, "é")
    assert target.read_text(encoding="utf-8") == "é"
    write_atomic(target, b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG"
    assert [p.name for p in target.parent.iterdir()] == ["card.json"]
    assert target.stat().st_mode & 0o777 == 0o644
