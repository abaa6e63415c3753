"""The app's pages under streamlit.testing (AppTest), with the demo model.

AppTest runs one page per run in this process; the workspace is cached by
st.cache_resource, so the model loads once for the whole module. Charts and
downloads are not visible to AppTest: the browser tests cover them.
"""

import html
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `streamlit run` puts the app's folder on sys.path; AppTest does not

from streamlit.testing.v1 import AppTest

pytestmark = pytest.mark.demo
APP = str(ROOT / "app.py")
TIMEOUT = 120  # the first run loads the model


def app(page: str | None = None, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if page:
        at.run()
        at.switch_page(page)
    for key, value in params.items():
        at.query_params[key] = value
    return at.run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def card_top(at: AppTest) -> str:
    """The card's first HTML element: heading, numbers, histogram, logits."""
    return next(h.proto.body for h in at.get("html") if "<h2>" in h.proto.body)


def header(at: AppTest) -> str:
    """The card's title as shown."""
    return html.unescape(re.search(r"<h2>(.*?)</h2>", card_top(at)).group(1))


def texts_html(at: AppTest) -> str:
    return "\n".join(h.proto.body for h in at.get("html"))


def no_exception(at: AppTest) -> None:
    assert not at.exception, texts(at.exception)


@pytest.mark.parametrize("page, title", [(None, "Token activations"), ("pages/feature.py", "Feature card"),
                                         ("pages/steering.py", "Steering")])
def test_pages_render(page, title):
    at = app(page)
    no_exception(at)
    assert at.title[0].value == title
    sidebar = texts(at.sidebar.markdown)
    assert "Model" in sidebar and "Hook" in sidebar


@pytest.fixture(scope="module")
def ws():
    """The workspace the app loads (the same cached object, in this process)."""
    from ui.workspace import Choice, get_workspace

    c = Choice.from_env()
    return get_workspace(c.model, c.sae, c.index)


def test_sidebar_says_what_is_loaded(ws):
    at = app()
    side = texts(at.sidebar.markdown) + texts(at.sidebar.warning) + texts(at.sidebar.info)
    assert ws.hook_name in side
    if ws.untrained:
        assert "UNTRAINED" in side
    if ws.index is None:
        assert "No index" in side
        feature_page = app("pages/feature.py")
        assert "No feature index is loaded" in texts(feature_page.info)


def test_prompt_shows_tokens_and_features():
    at = app()
    at.text_area(key="act_prompt").input("The cat sat on the mat. <b>bold</b>")
    at.button[0].click()  # the form's Analyse button
    at.run()
    no_exception(at)
    html = texts(at.get("html"))
    assert "␣cat" in html and "&lt;" in html and "<b>" not in html
    assert at.selectbox(key="act_feature").value is not None
    assert len(at.dataframe) >= 1  # the selected token's features
    assert at.query_params["prompt"].startswith("The cat")


def test_prompt_deep_link_runs_it():
    at = app(prompt="Hello world")
    no_exception(at)
    assert "world" in texts(at.get("html"))


def test_empty_prompt_shows_a_message():
    at = app()
    at.text_area(key="act_prompt").input("   ")
    at.button[0].click()
    at.run()
    no_exception(at)
    assert "empty" in texts(at.error).lower()


def test_long_prompt_is_cut_with_a_notice():
    at = app(prompt="word " * 700)
    no_exception(at)
    assert "only the first 512" in texts(at.warning)


@pytest.mark.parametrize(
    "page, params, words",
    [
        ("pages/feature.py", {"feature": "abc"}, ["abc", "not a feature id"]),
        ("pages/feature.py", {"feature": "999999"}, ["999999", "does not exist"]),
        ("pages/steering.py", {"steer": "1:clamp:xyz"}, ["1:clamp:xyz", "not a number"]),
        ("pages/steering.py", {"steer": "5:ablate", "max_new_tokens": "lots"}, ["max_new_tokens 'lots'"]),
    ],
)
def test_bad_deep_links_show_inline_errors(page, params, words):
    at = app(page, **params)
    no_exception(at)
    errors = texts(at.error)
    for word in words:
        assert word in errors


def test_steering_link_fills_the_editor():
    at = app("pages/steering.py", steer="7:ablate,9:scale:3", prompt="Once upon a time", max_new_tokens="4")
    no_exception(at)
    assert at.text_area(key="steer_prompt").value == "Once upon a time"
    assert at.slider(key="steer_new").value == 4
    modes = [s.value for s in at.selectbox if s.key and s.key.startswith("mode_")]
    assert modes == ["ablate", "scale"]


def test_steering_generates_both_completions():
    at = app("pages/steering.py", steer="7:add:5000", prompt="Once upon a time", max_new_tokens="6")
    at.button(key="generate").click()
    at.run()
    no_exception(at)
    shown = texts(at.text)
    assert shown.strip(), "no completion text"
    assert len(at.session_state["steer_history"]) == 1
    result = at.session_state["steer_history"][0]["result"]
    assert len(result.clean.token_ids) == 6 and result.interventions[0].feature == 7
    assert result.clean.text.strip() in shown and result.steered.text.strip() in shown  # st.text strips


def test_steering_reuses_the_clean_row_while_prompt_and_settings_stay(monkeypatch):
    from explorer import steering

    batches = []
    real = steering.stream_rows

    def counting(lm, sae, prompt, rows, *args):
        batches.append(len(rows))
        return real(lm, sae, prompt, rows, *args)

    at = app("pages/steering.py", steer="7:add:5000", prompt="Once upon a time", max_new_tokens="5")
    monkeypatch.setattr("ui.completions.stream_rows", counting)
    at.button(key="generate").click().run()
    at.number_input(key="val_1_abs").set_value(-3000.0)
    at.button(key="generate").click().run()
    at.slider(key="steer_new").set_value(4)  # new settings: the clean row is generated again
    at.button(key="generate").click().run()
    no_exception(at)
    history = [run["result"] for run in at.session_state["steer_history"]][::-1]
    assert batches == [2, 1, 2]
    assert history[1].clean == history[0].clean and history[1].steered != history[0].steered
    assert len(history[2].clean.token_ids) == 4
    assert history[2].clean.text.strip() in texts(at.text)


def test_bad_model_path_is_an_inline_error():
    at = app()
    at.session_state["ws_open"] = True  # the "Load another model" expander
    at.run()
    at.sidebar.text_input[0].input("data/no/such/model")  # under the project's data/, one of the roots
    at.sidebar.button[0].click()
    at.run()
    no_exception(at)
    assert "Model path not found" in texts(at.sidebar.error)
    assert at.session_state["ws_choice"].model != "data/no/such/model"  # the working workspace stays loaded


def test_feature_card_from_link(ws):
    assert ws.index is not None, "the demo index in data/demo/index did not load"
    at = app("pages/feature.py", feature="3")
    no_exception(at)
    assert header(at).startswith("#3")
    for name in ("Density", "Max activation", "Mean activation", "Tokens scanned", "Top logits", "Bottom logits"):
        assert name in card_top(at)
    next(b for b in at.button if b.label == "Next").click()
    at.run()
    no_exception(at)
    assert header(at).startswith("#4") and at.query_params["feature"] == "4"


def test_related_feature_opens_its_card(ws):
    at = app("pages/feature.py", feature="3")
    card = ws.index.card(3)
    neighbour, other = card.neighbours[0][0], card.cooccurring[0][0]
    box = at.selectbox(key="related")
    assert box.options[0].startswith(f"#{neighbour} ") and any(o.startswith(f"#{other} ") for o in box.options)
    box.set_value(neighbour).run()
    no_exception(at)
    assert header(at).startswith(f"#{neighbour}") and at.query_params["feature"] == str(neighbour)
    assert at.selectbox(key="related").value is None  # the pick is cleared for the next card
    # each related feature is also a deep link, opened in a new tab
    assert f'<a href="?feature={ws.index.card(neighbour).neighbours[0][0]}" target="_blank">' in texts_html(at)


def test_lazy_parts_are_built_only_when_open(ws):
    at = app("pages/feature.py", feature="3")
    assert not at.get("download_button") and "activations</div>" not in texts_html(at)
    at.session_state["export_open"] = True
    at.session_state["quantiles_open"] = True
    at.run()
    no_exception(at)
    assert [b.proto.label for b in at.get("download_button")] == ["JSON", "MD", "HTML", "PNG", "Zip of 1 card(s)"]
    assert "of activations</div>" in texts_html(at)


def test_server_freezes_the_loaded_objects_out_of_gc(ws):
    # without it every full collection walked ~450k objects: 200-400 ms pauses on 2 cores
    import gc

    app()
    assert gc.get_freeze_count() > 100_000


def test_feature_search(ws):
    assert ws.index is not None, "the demo index in data/demo/index did not load"
    word = ws.index.label(7).split()[0].strip("‘’'\"")
    at = app("pages/feature.py")
    at.session_state["search_open"] = True  # the search expander
    at.run()
    at.text_input(key="search_query").input(word)
    at.run()
    no_exception(at)
    hits = [b for b in at.button if (b.key or "").startswith("hit_")]
    assert hits, f"no result for {word!r}"
    hits[0].click()
    at.run()
    assert header(at).startswith(f"#{hits[0].key.removeprefix('hit_')}")


def test_relative_steering_needs_a_known_max(ws):
    at = app("pages/steering.py", steer="7:clamp:3x")
    no_exception(at)
    uid = next(s.key for s in at.selectbox if (s.key or "").startswith("mode_")).removeprefix("mode_")
    if ws.index is None or not ws.index.max_activations()[7] > 0:
        assert "needs the feature's max activation" in texts(at.error)
        assert at.number_input(key=f"val_{uid}_abs").value == 3.0
    else:
        assert at.toggle(key=f"rel_{uid}").value is True
        assert at.slider(key=f"val_{uid}_rel").value == 3.0


def test_steering_editor_survives_a_page_switch():
    at = app("pages/steering.py", steer="7:scale:3")
    uid = next(s.key for s in at.selectbox if (s.key or "").startswith("mode_")).removeprefix("mode_")
    at.selectbox(key=f"mode_{uid}").set_value("ablate")
    at.text_area(key="steer_prompt").input("Hello there")
    at.run()
    for page in ("pages/activations.py", "pages/steering.py"):
        at.query_params.clear()  # as a browser does when the sidebar switches pages
        at.switch_page(page).run()
    no_exception(at)
    assert at.selectbox(key=f"mode_{uid}").value == "ablate"
    assert at.text_area(key="steer_prompt").value == "Hello there"
    assert "ablate" in at.query_params["steer"]
