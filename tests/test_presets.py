"""Steering presets: saved, read back, and refused with a clear message when broken."""

from __future__ import annotations

import json

import pytest

from explorer.presets import (
    PresetError,
    delete_preset,
    load_presets,
    make_preset,
    presets_path,
    save_preset,
)
from explorer.steering import Condition, Intervention, StopCondition

SAE_ID = "ab" * 32


def test_presets_round_trip_with_conditions_stop_and_settings(tmp_path):
    path = presets_path(tmp_path, SAE_ID)
    ivs = [Intervention(12, "clamp", 3.0, relative=True, condition=Condition("feature_above", 45, 0.5)),
           Intervention(7, "ablate", condition=Condition("generated_only")),
           Intervention(3, "add", -4.0, condition=Condition("after_pattern", pattern=r"\.,:@ x"))]
    preset = make_preset("calm-2", ivs, StopCondition(45, 0.5), {"temperature": 0.7, "max_new_tokens": 20}, d_sae=100)
    save_preset(path, preset, SAE_ID, d_sae=100)
    save_preset(path, make_preset("other", [Intervention(1, "scale", 2.0)]), SAE_ID)
    loaded = load_presets(path, SAE_ID, d_sae=100)
    assert loaded["calm-2"] == preset and list(loaded) == ["calm-2", "other"]
    assert json.loads(path.read_text())["presets"]["calm-2"]["steer"].startswith("12:clamp:3x@f45>0.5,7:ablate@gen")
    assert path.stat().st_mode & 0o777 == 0o644
    delete_preset(path, "other", SAE_ID)
    assert list(load_presets(path, SAE_ID)) == ["calm-2"]


def test_no_file_means_no_presets(tmp_path):
    assert load_presets(tmp_path / "none.json") == {}


@pytest.mark.parametrize("name", ["", "Calm", "a b", "../x", "x" * 65, "-x"])
def test_bad_names_are_refused(name):
    with pytest.raises(PresetError, match="Fix: use 1 to 64 characters"):
        make_preset(name, [Intervention(1, "ablate")])


def test_bad_presets_are_refused_with_the_fix():
    with pytest.raises(PresetError, match="steers nothing"):
        make_preset("empty", [])
    with pytest.raises(PresetError, match="feature 200 does not exist"):
        make_preset("big", [Intervention(200, "ablate")], d_sae=100)
    with pytest.raises(PresetError, match="unknown settings colour"):
        make_preset("x", [Intervention(1, "ablate")], settings={"colour": 1})
    with pytest.raises(PresetError, match="temperature"):
        make_preset("x", [Intervention(1, "ablate")], settings={"temperature": 0.001})


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"presets": []}', "has no 'presets' object"),
    ('{"presets": {"x": {"steer": "5:fly:2"}}}', "mode 'fly' is not one of"),
    ('{"presets": {"x": {"steer": "500:ablate"}}}', "feature 500 does not exist"),
    ('{"presets": {"Bad Name": {"steer": "5:ablate"}}}', "is not allowed"),
    ('{"presets": {"x": {"steer": "5:ablate", "stop": "oops"}}}', "stop 'oops'"),
    ('{"sae_fingerprint": "cd", "presets": {}}', "written for another SAE"),
])
def test_broken_files_name_the_file_and_the_fix(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(PresetError, match=message) as err:
        load_presets(path, SAE_ID, d_sae=100)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_saving_never_overwrites_an_unreadable_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{broken")
    with pytest.raises(PresetError):
        save_preset(path, make_preset("x", [Intervention(1, "ablate")]), SAE_ID)
    assert path.read_text() == "{broken"


@pytest.mark.demo
def test_steering_page_saves_and_loads_a_preset(tmp_path, monkeypatch):
    from tests.test_app import app, no_exception  # noqa: I001 (test_app puts the app's folder on sys.path)
    import ui.presets

    file = tmp_path / "presets.json"
    monkeypatch.setattr(ui.presets, "path", lambda ws: file)
    at = app("pages/steering.py", steer="7:ablate@gen,9:scale:3", stop="45>0.5", max_new_tokens="5")
    at.text_input(key="preset_name").input("calm-2")
    at.button(key="preset_save").click()
    at.run()
    no_exception(at)
    saved = json.loads(file.read_text())["presets"]["calm-2"]
    assert saved == {"steer": "7:ablate@gen,9:scale:3", "stop": "45>0.5"}
    assert "Saved preset 'calm-2'" in "\n".join(s.value for s in at.success)

    at = app("pages/steering.py", steer="1:clamp:2")  # another session, steering something else
    at.selectbox(key="preset_pick").select("calm-2")
    at.button(key="preset_load").click()
    at.run()
    no_exception(at)
    modes = [s.value for s in at.selectbox if s.key and s.key.startswith("mode_")]
    assert modes == ["ablate", "scale"]
    assert at.session_state["steer_stop"] == "45>0.5"
    at.text_input(key="preset_name").input("Bad Name")
    at.button(key="preset_save").click()
    at.run()
    assert "is not allowed" in "\n".join(e.value for e in at.error)
