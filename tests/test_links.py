"""Deep-link parsing: good links round-trip, bad values become problems, never exceptions."""

import pytest

from explorer import links, steering
from explorer.links import (
    LIMITS,
    LinkState,
    format_steer,
    parse_links,
    parse_steer,
    to_query,
)
from explorer.steering import GenerationSettings, Intervention


def test_empty_link_is_all_defaults():
    state = parse_links({})
    assert state == LinkState()
    assert state.problems == ()
    assert to_query(state) == {}
    assert state.settings() == GenerationSettings()


def test_full_link_parses():
    state = parse_links(
        {"feature": "123", "prompt": "Hello <b>", "steer": "123:clamp:3x,45:ablate,7:scale:0.5,8:add:-2.5",
         "max_new_tokens": "64", "temperature": "0.7", "top_p": "0.9", "seed": "42", "chat": "1"},
        d_sae=1000,
    )
    assert state.problems == ()
    assert state.feature == 123 and state.prompt == "Hello <b>" and state.chat
    assert state.steer == (
        Intervention(123, "clamp", 3.0, True),
        Intervention(45, "ablate", 0.0),
        Intervention(7, "scale", 0.5),
        Intervention(8, "add", -2.5),
    )
    assert state.settings() == GenerationSettings(max_new_tokens=64, temperature=0.7, top_p=0.9, seed=42, chat=True)


def test_round_trip():
    state = LinkState(feature=5, prompt="a&b=c?", steer=(Intervention(5, "clamp", 10, True), Intervention(6, "add", -3)),
                      max_new_tokens=16, temperature=1.0, top_p=0.5, seed=7, chat=True)
    query = to_query(state)
    assert query["steer"] == "5:clamp:10x,6:add:-3"
    assert parse_links(query) == state


@pytest.mark.parametrize(
    "params, words",
    [
        ({"feature": "abc"}, ["feature 'abc'", "whole number"]),
        ({"feature": "999999"}, ["999999", "does not exist", "0..99"]),
        ({"feature": "-1"}, ["-1", "does not exist"]),
        ({"steer": "1:clamp:xyz"}, ["1:clamp:xyz", "not a number", "skipped"]),
        ({"steer": "1:explode:3"}, ["explode", "clamp, scale, add, ablate"]),
        ({"steer": "1:clamp"}, ["needs a value"]),
        ({"steer": "abc:ablate"}, ["abc", "feature id"]),
        ({"steer": "500:ablate"}, ["500", "does not exist"]),
        ({"steer": "1:clamp:1e9"}, ["outside"]),
        ({"steer": "1:clamp:nan"}, ["not a number"]),
        ({"max_new_tokens": "lots"}, ["max_new_tokens 'lots'", "using 32"]),
        ({"max_new_tokens": "2.5"}, ["whole number"]),
        ({"max_new_tokens": "100000"}, ["outside 1..256"]),
        ({"temperature": "-1"}, ["temperature -1", "outside"]),
        ({"temperature": "1e-30"}, ["temperature 1e-30", "greedy", "using 0"]),  # once NaN probabilities
        ({"top_p": "0"}, ["top_p 0", "outside"]),
        ({"seed": "x"}, ["seed 'x'"]),
        ({"chat": "maybe"}, ["chat 'maybe'"]),
    ],
)
def test_bad_values_become_problems(params, words):
    state = parse_links(params, d_sae=100)
    assert len(state.problems) == 1, state.problems
    for word in words:
        assert word in state.problems[0]
    defaults = LinkState()
    assert state.feature is None and state.steer == ()
    assert (state.max_new_tokens, state.temperature, state.top_p, state.seed) == (
        defaults.max_new_tokens, defaults.temperature, defaults.top_p, defaults.seed)


def test_bad_steer_items_skip_only_themselves():
    steer, problems = parse_steer("1:clamp:xyz, 2:ablate ,3:scale:2x", d_sae=10)
    assert steer == (Intervention(2, "ablate", 0.0), Intervention(3, "scale", 2.0))
    assert len(problems) == 1


def test_too_long_values_are_cut():
    state = parse_links({"prompt": "x" * 10_000, "steer": ",".join(f"{i}:ablate" for i in range(40))})
    assert len(state.prompt) == 8000 and len(state.steer) == 16
    assert len(state.problems) == 2


def test_unknown_keys_and_no_d_sae():
    state = parse_links({"foo": "bar", "feature": "123456"})
    assert state.feature == 123456 and state.problems == ()


def test_format_steer_scale_has_no_x():
    assert format_steer([Intervention(1, "scale", 2.0, relative=True)]) == "1:scale:2"
    assert set(LIMITS) == {"max_new_tokens", "temperature", "top_p", "seed"}


def test_links_take_the_steering_modules_value_ranges():
    # one rule for the app's sliders, links and the command line
    assert links.VALUE_RANGES is steering.VALUE_RANGES
