"""Bad input and failing library calls in the app: one line in the page, the
details in a closed expander, never a traceback; the load form opens only
paths under the configured roots (EXPLORER_ROOTS).

The AppTest runs use the demo model, like tests/test_app.py.
"""

import errno
import html
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `streamlit run` puts the app's folder on sys.path; AppTest does not

from streamlit.runtime.scriptrunner_utils.exceptions import RerunException, StopException
from streamlit.testing.v1 import AppTest

from ui.errors import message, shown_as_message

from test_app import app  # noqa: E402  (AppTest of app.py on the demo model, shared with test_app)

demo = pytest.mark.demo


def plain(elements) -> str:
    """The elements' text as the reader sees it: Markdown escapes undone."""
    return html.unescape(re.sub(r"\\(.)", r"\1", "\n".join(str(e.value) for e in elements)))


def shown_as_one_line(at: AppTest, *words: str) -> None:
    """No traceback; one error line holding `words`, and a Details expander."""
    assert not at.exception, plain(at.exception)
    errors = [plain([e]) for e in at.error]
    hits = [e for e in errors if all(w in e for w in words)]
    assert hits, f"no error with {words}: {errors}"
    assert "\n" not in hits[0] and "Traceback" not in hits[0] and "Fix:" in hits[0]
    assert "Details" in [e.label for e in at.expander]


# The helper itself, without a page.

def test_streamlit_control_flow_passes_through():
    for control in (StopException(), RerunException(None)):
        with pytest.raises(type(control)), shown_as_message("do it"):
            raise control


def test_message_is_one_line_with_a_fix():
    assert message("run the sweep", RuntimeError("value cannot be\nconverted")) == (
        "Could not run the sweep: value cannot be converted. Fix: use smaller or ordinary values, then try again.")
    own = ValueError("Feature 9 does not exist. Fix: pick a feature in 0..8")
    assert message("steer", own) == "Could not steer: Feature 9 does not exist. Fix: pick a feature in 0..8"
    assert len(message("read", OSError("x" * 5000))) < 600


# Each page, with the library failing under it.

@demo
def test_sweep_of_an_absurd_value_is_an_inline_error():
    at = app("pages/steering.py", steer="7:clamp:3", prompt="Once upon a time", max_new_tokens="3")
    at.text_input(key="sweep_values").input("1e300")
    at.button(key="run_sweep").click()
    at.run()
    assert not at.exception, plain(at.exception)
    assert "Clamp values must be numbers from" in plain(at.error)


@demo
def test_sweep_shows_a_library_error_in_one_line(monkeypatch):
    def failing(*args, **kw):
        raise RuntimeError("value cannot be converted to type float without overflow")

    at = app("pages/steering.py", steer="7:clamp:3", prompt="Once upon a time", max_new_tokens="3")
    monkeypatch.setattr("explorer.steering.generate_rows", failing)
    at.button(key="run_sweep").click().run()
    shown_as_one_line(at, "Could not run the sweep", "without overflow")
    assert at.title[0].value == "Steering" and at.button(key="generate")  # the page goes on


@demo
def test_generate_shows_a_library_error_in_one_line(monkeypatch):
    def failing(*args, **kw):
        raise ValueError("feature 7: clamp value 3e+30 is not finite after x max. Fix: use |value| <= 1e4")

    at = app("pages/steering.py", steer="7:clamp:3", prompt="Once upon a time", max_new_tokens="3")
    monkeypatch.setattr("ui.completions.stream_rows", failing)
    at.button(key="generate").click().run()
    shown_as_one_line(at, "Could not generate the completions", "|value| <= 1e4")


@demo
def test_activations_page_shows_a_library_error_in_one_line(monkeypatch):
    def failing(*args, **kw):
        raise OSError(errno.EIO, "Input/output error", "/models/weights.safetensors")

    monkeypatch.setattr("ui.cache.token_activations", failing)
    at = app(prompt="A prompt no other test analyses")
    shown_as_one_line(at, "Could not analyse the prompt", "Input/output error")


@demo
def test_feature_card_error_keeps_the_id_box(monkeypatch):
    def failing(ws, feature):
        raise ValueError(f"examples of feature {feature} are damaged. Fix: rebuild the index")

    monkeypatch.setattr("ui.cache.card", failing)
    at = app("pages/feature.py", feature="5")
    shown_as_one_line(at, "Could not open the card of #5", "rebuild the index")
    assert at.number_input(key="feature_id").value == 5


@demo
def test_a_label_that_cannot_be_saved_is_an_inline_error(monkeypatch):
    def failing(ws, feature, text):
        raise PermissionError(errno.EACCES, "Permission denied", "data/demo/index/labels_user.json")

    at = app("pages/feature.py", feature="3")
    monkeypatch.setattr("ui.cache.set_label", failing)
    at.session_state["label_open"] = True
    at.run()
    at.text_input[0].input("a label")
    next(b for b in at.button if b.label == "Save label").click()
    at.run()
    shown_as_one_line(at, "Could not save the label of #3", "Permission denied")


@demo
def test_a_bad_environment_variable_is_shown_not_raised(monkeypatch):
    monkeypatch.setenv("EXPLORER_THREADS", "many")
    at = app()
    assert not at.exception, plain(at.exception)
    assert "EXPLORER_THREADS='many' is not a positive whole number" in plain(at.sidebar.error)
    assert "Nothing is loaded" in plain(at.main.error)


# A prompt longer than the model reads.

@demo
def test_generate_says_a_long_prompt_was_cut():
    at = app("pages/steering.py", steer="7:ablate", prompt="word " * 700, max_new_tokens="2")
    at.button(key="generate").click().run()
    assert not at.exception, plain(at.exception)
    assert "only the first 512 were used" in plain(at.warning)


@demo
def test_sweep_says_a_long_prompt_was_cut():
    at = app("pages/steering.py", steer="7:ablate", prompt="word " * 700, max_new_tokens="2")
    at.text_input(key="sweep_values").input("0")
    at.button(key="run_sweep").click().run()
    assert not at.exception, plain(at.exception)
    assert "only the first 512 were used" in plain(at.warning)


# The load form opens only paths under the roots.

def load_form(at: AppTest, model: str | None = None, sae: str | None = None, index: str | None = None) -> AppTest:
    at.session_state["ws_open"] = True  # the "Load another model" expander
    at.run()
    for box, value in zip(at.sidebar.text_input, (model, sae, index)):
        if value is not None:
            box.input(value)
    at.sidebar.button[0].click()
    return at.run()


@demo
@pytest.mark.parametrize("field", ["model", "sae", "index"])
@pytest.mark.parametrize("path", ["/", "/etc", "data/../.."])
def test_load_form_refuses_paths_outside_the_roots(field, path):
    at = load_form(app(), **{field: path})
    assert not at.exception, plain(at.exception)
    error = plain(at.sidebar.error)
    assert f"path '{path}' is outside the folders this app opens" in error and "EXPLORER_ROOTS" in error
    assert "bin/" not in error and "passwd" not in error  # nothing of the folder is listed
    assert getattr(at.session_state["ws_choice"], field) != path  # the loaded workspace stays


@demo
def test_load_form_lists_nothing_outside_the_roots(tmp_path, monkeypatch):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "deeper" / "sae").mkdir(parents=True)
    (outside / "secret-notes.txt").write_text("x")
    (outside / "deeper" / "sae" / "cfg.json").write_text("{}")
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "not-an-sae").mkdir()
    (root / "not-an-sae" / "readme.txt").write_text("x")
    monkeypatch.setenv("EXPLORER_ROOTS", str(root))
    for path in (outside, root / "link", root / ".." / "outside"):  # as typed, through a link, through ..
        at = load_form(app(), sae=str(path))
        error = plain(at.sidebar.error)
        assert "is outside the folders this app opens" in error and str(root) in error, error
        assert "secret-notes" not in error and "deeper" not in error
    at = load_form(app(), sae=str(root / "not-an-sae"))  # inside the roots: the loader says what it lacks
    error = plain(at.sidebar.error)
    assert "lacks cfg.json" in error and "readme.txt" in error
    assert str(root) in plain(at.sidebar.caption)  # the form says where paths may be
