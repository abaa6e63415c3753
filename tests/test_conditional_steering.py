"""Conditional steering: conditions on interventions and a row's stop condition,
checked against a full recompute without the KV cache (tiny model, greedy)."""

import json
import re

import pytest
import torch
from tiny import tiny_model

from explorer import export, scheduler, steering
from explorer.activations import encode_prompt
from explorer.cli import build_parser
from explorer.commands import CliError, parse_intervention
from explorer.hooks import hooked, run_to_hook
from explorer.links import LinkState, parse_links, parse_steer, to_query
from explorer.sae import random_sae
from explorer.steering import (
    Condition,
    GenerationSettings,
    Intervention,
    SteeringError,
    StopCondition,
    edit_features,
    generate_pair,
    generate_rows,
    parse_condition,
    resolve,
)

HOOK = "blocks.1.hook_resid_post"
PROMPT = "The cat"
N = 12
SETTINGS = GenerationSettings(max_new_tokens=N, stop_at_eos=False)
STEER = (5, "add", 5.0)  # turns the tiny model's greedy completion into another, from its first token


@pytest.fixture(scope="module")
def lm():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def sae(lm):
    return random_sae(lm.d_model, 64, architecture="standard", hook_name=HOOK, seed=3)


@pytest.fixture
def recorded(monkeypatch):
    """The RowEdit of each generation, to read which positions it edited."""
    edits = []

    class Recording(steering.RowEdit):
        def __init__(self, *args):
            super().__init__(*args)
            edits.append(self)

    monkeypatch.setattr(scheduler, "RowEdit", Recording)  # the scheduler makes each request's RowEdit
    return edits


def steer(condition=None):
    return [Intervention(*STEER, condition=condition)]


def run(lm, sae, ivs, stop=None):
    (done,) = generate_rows(lm, sae, PROMPT, [ivs], SETTINGS, stops=[stop])
    return done


def prompt_len(lm):
    return encode_prompt(lm, PROMPT)[0].shape[1]


@torch.inference_mode()
def features_at_hook(lm, sae, tokens):
    """(positions, d_sae) features at the hook for the prompt followed by `tokens`."""
    ids = torch.cat([encode_prompt(lm, PROMPT)[0], torch.tensor([tokens], dtype=torch.long)], dim=1)
    return sae.encode(run_to_hook(lm.model, HOOK, ids)[0])


def recompute(lm, sae, ivs, where):
    """Greedy tokens with no KV cache: every step runs the whole sequence, and the
    edit applies at the positions where `where(f, n_prompt)` (a bool per position) holds.
    Returns the tokens and the mask of the last full pass."""
    edits = resolve(ivs, sae.cfg.d_sae)
    features = sorted({e.feature for e in edits})
    ids = encode_prompt(lm, PROMPT)[0]
    n = ids.shape[1]
    tokens: list[int] = []
    mask = None

    def edit(act):
        nonlocal mask
        x = act[0]
        f = sae.encode(x)
        mask = where(f, n)
        f_new = torch.where(mask[:, None], edit_features(f, edits), f)
        return (x + sae.decode_change(f, f_new, features, like=x))[None]

    with torch.inference_mode(), hooked(lm.model, {HOOK: edit}):
        for _ in range(N + 1):  # one pass more, for the mask over the last token
            full = torch.cat([ids, torch.tensor([tokens], dtype=torch.long)], dim=1)
            next_token = int(lm.model(full).logits[0, -1].argmax())
            if len(tokens) < N:
                tokens.append(next_token)
    return tokens, mask.tolist()


@pytest.fixture(scope="module")
def clean(lm, sae):
    return run(lm, sae, [])


@pytest.fixture(scope="module")
def unconditional(lm, sae):
    return run(lm, sae, steer())


def test_the_steer_used_here_changes_the_completion(clean, unconditional):
    assert clean.token_ids[0] != unconditional.token_ids[0] and len(clean.token_ids) == N


@pytest.mark.parametrize("condition", [
    Condition("feature_above", 5, 1e9),
    Condition("after_pattern", pattern="no such text"),
])
def test_a_condition_that_never_holds_gives_the_unsteered_tokens(lm, sae, clean, recorded, condition):
    assert run(lm, sae, steer(condition)) == clean
    assert not any(recorded[-1].applied[0])


@pytest.mark.parametrize("condition", [
    Condition("feature_above", 5, -1.0),  # ReLU features are never below 0
    Condition("after_pattern", pattern=""),  # '' matches the empty text before the first token
])
def test_a_condition_that_always_holds_gives_the_unconditional_tokens(lm, sae, unconditional, recorded, condition):
    assert run(lm, sae, steer(condition)) == unconditional
    assert all(recorded[-1].applied[0])


def test_generated_only_leaves_the_prompt_alone(lm, sae, clean, unconditional, recorded):
    got = run(lm, sae, steer(Condition("generated_only")))
    n = prompt_len(lm)
    tokens, mask = recompute(lm, sae, steer(), lambda f, n: torch.arange(f.shape[0]) >= n)
    assert got.token_ids == tokens
    assert got.token_ids[0] == clean.token_ids[0]  # sampled from the unedited prompt
    assert got.token_ids != clean.token_ids and got.token_ids != unconditional.token_ids
    assert recorded[-1].applied[0] == mask == [False] * n + [True] * N


def test_after_pattern_steers_from_the_token_that_completes_the_match(lm, sae, clean, recorded):
    k = 4  # the pattern is exactly the clean text up to generated token k: it matches at that step only
    text = lm.tokenizer.decode(clean.token_ids[: k + 1])
    got = run(lm, sae, steer(Condition("after_pattern", pattern=f"^{re.escape(text)}$")))
    n = prompt_len(lm)
    tokens, mask = recompute(lm, sae, steer(), lambda f, n: torch.arange(f.shape[0]) >= n + k)
    assert got.token_ids == tokens
    assert got.token_ids[: k + 1] == clean.token_ids[: k + 1] and got.token_ids != clean.token_ids
    assert recorded[-1].applied[0] == mask == [False] * (n + k) + [True] * (N - k)


def test_feature_above_flips_mid_generation_and_steers_exactly_those_steps(lm, sae, clean, recorded):
    # a condition feature and threshold that hold at some generated positions and not others
    f = features_at_hook(lm, sae, clean.token_ids)[prompt_len(lm):]
    watched = int(((f > 0).float().mean(0) - 0.5).abs().argmin())
    threshold = float(f[:, watched].median())
    cond = Condition("feature_above", watched, threshold)
    got = run(lm, sae, steer(cond))
    tokens, mask = recompute(lm, sae, steer(), lambda f, n: f[:, watched] > threshold)
    assert got.token_ids == tokens
    applied = recorded[-1].applied[0]
    assert applied == mask
    generated = applied[prompt_len(lm):]
    assert any(generated) and not all(generated)  # it does flip
    assert got.token_ids != clean.token_ids


def test_each_intervention_has_its_own_condition(lm, sae, recorded):
    ivs = [Intervention(11, "clamp", 30.0, condition=Condition("generated_only")), Intervention(5, "add", 5.0)]
    got = run(lm, sae, ivs)
    n = prompt_len(lm)
    edits = resolve(ivs, sae.cfg.d_sae)
    ids = encode_prompt(lm, PROMPT)[0]
    tokens: list[int] = []

    def edit(act):  # #5 everywhere, #11 only past the prompt
        x = act[0]
        f = sae.encode(x)
        later = (torch.arange(f.shape[0]) >= n)[:, None]
        f_new = torch.where(later, edit_features(f, edits), edit_features(f, edits[1:]))
        return (x + sae.decode_change(f, f_new, [5, 11], like=x))[None]

    with torch.inference_mode(), hooked(lm.model, {HOOK: edit}):
        for _ in range(N):
            full = torch.cat([ids, torch.tensor([tokens], dtype=torch.long)], dim=1)
            tokens.append(int(lm.model(full).logits[0, -1].argmax()))
    assert got.token_ids == tokens
    assert all(recorded[-1].applied[0])  # #5 applies at every position


def first_above(values: list[float], threshold: float) -> int:
    return next(i for i, v in enumerate(values) if v > threshold)


def test_a_stop_condition_ends_the_row_after_the_token_where_it_fires(lm, sae, clean):
    f = features_at_hook(lm, sae, clean.token_ids)[prompt_len(lm):]  # (N, d_sae) at generated tokens
    # a feature quiet over the first 4 generated tokens that fires later
    rise = f[4 : N - 1].max(0).values - f[:4].max(0).values
    watched = int(rise.argmax())
    assert rise[watched] > 0
    threshold = float(f[:4, watched].max())
    values = f[:, watched].tolist()
    at = first_above(values, threshold)
    got = run(lm, sae, [], stop=StopCondition(watched, threshold))
    assert 4 <= at < N - 1
    assert got.token_ids == clean.token_ids[: at + 1]
    assert (got.stopped_at, got.stopped_by) == (at, StopCondition(watched, threshold))
    assert run(lm, sae, [], stop=StopCondition(watched, 1e9)) == clean  # never fires: untouched


def test_a_pair_stops_only_the_steered_row_and_says_so(lm, sae, clean, unconditional):
    f = features_at_hook(lm, sae, unconditional.token_ids)[prompt_len(lm):]
    watched = int(f[2].argmax())
    threshold = float(f[2, watched]) - 1e-4
    at = first_above(f[:, watched].tolist(), threshold)
    stop = StopCondition(watched, threshold)
    result = generate_pair(lm, sae, PROMPT, steer(), SETTINGS, stop=stop)
    assert result.clean == clean and result.stop == stop
    assert result.steered.token_ids == unconditional.token_ids[: at + 1] and result.steered.stopped_at == at
    exported = export.steering_to_json(result)
    assert exported["stop"]["feature"] == watched and exported["steered"]["stopped_at"] == at
    assert "stopped_at" not in exported["clean"]
    assert f"Stopped after generated token {at}" in export.steering_to_markdown(result)


@pytest.mark.parametrize("iv, message", [
    (Intervention(1, "clamp", 1.0, condition=Condition("feature_above", 64, 0.5)), "does not exist"),
    (Intervention(1, "clamp", 1.0, condition=Condition("feature_above", 3, float("nan"))), "finite"),
    (Intervention(1, "clamp", 1.0, condition=Condition("after_pattern", pattern="(")), "not a regular expression"),
    (Intervention(1, "clamp", 1.0, condition=Condition("after_pattern", pattern="a" * 201)), "more than 200"),
    (Intervention(1, "clamp", 1.0, condition=Condition("sometimes")), "Unknown condition kind"),
])
def test_bad_conditions_are_explained(sae, iv, message):
    with pytest.raises(SteeringError, match=message):
        resolve([iv], sae.cfg.d_sae)


def test_a_bad_stop_condition_is_explained(lm, sae):
    with pytest.raises(SteeringError, match="does not exist"):
        run(lm, sae, [], stop=StopCondition(99, 0.5))


def test_describe_and_export_carry_the_condition():
    iv = Intervention(3, "clamp", 2.0, True, Condition("feature_above", 45, 0.5))
    assert iv.describe() == "clamp #3 2x max when #45 > 0.5"
    assert Intervention(3, "ablate", condition=Condition("after_pattern", pattern="\\.")).describe() == r"ablate #3 after /\./"
    json_iv = export._intervention_json(iv, {})
    assert json_iv["condition"] == {"kind": "feature_above", "feature": 45, "threshold": 0.5, "pattern": ""}
    assert "condition" not in export._intervention_json(Intervention(3, "clamp", 2.0), {})  # old bytes stay


# ------------------------------------------------------------------ links


def test_link_round_trip_with_conditions_and_stop():
    ivs = (
        Intervention(123, "clamp", 3.0, True, Condition("feature_above", 45, 0.5)),
        Intervention(7, "ablate", 0.0, condition=Condition("generated_only")),
        Intervention(9, "add", -2.0, condition=Condition("after_pattern", pattern="a,b:c@d [0-9]+%")),
        Intervention(2, "scale", 0.5),
    )
    state = LinkState(prompt="hi", steer=ivs, stop=StopCondition(45, 1.25))
    query = to_query(state)
    assert query["steer"].startswith("123:clamp:3x@f45>0.5,7:ablate@gen,9:add:-2@after=a%2Cb%3Ac%40d")
    assert query["stop"] == "45>1.25"
    again = parse_links(query, d_sae=200)
    assert again == state and not again.problems


def test_old_links_read_the_same():
    ivs, problems = parse_steer("123:clamp:3x,45:ablate")
    assert not problems and all(iv.condition is None for iv in ivs)
    assert "stop" not in to_query(parse_links({"steer": "1:ablate"}))


@pytest.mark.parametrize("params, words", [
    ({"steer": "1:clamp:2@f999>0.5"}, ["1:clamp:2@f999>0.5", "does not exist", "skipped"]),
    ({"steer": "1:clamp:2@sometimes"}, ["Unknown condition", "skipped"]),
    ({"steer": "1:clamp:2@after=%28"}, ["not a regular expression", "skipped"]),
    ({"steer": "1:clamp:2@f3>x"}, ["FEATURE>THRESHOLD", "skipped"]),
    ({"stop": "3>nan"}, ["stop '3>nan'", "not used"]),
    ({"stop": "999>1"}, ["does not exist", "not used"]),
])
def test_bad_link_conditions_become_problems(params, words):
    state = parse_links(params, d_sae=64)
    assert state.steer == () and state.stop is None
    assert len(state.problems) == 1 and all(w in state.problems[0] for w in words)


# ------------------------------------------------------------------ command line


def test_cli_reads_conditions_and_stop():
    assert parse_intervention("12=3x@f45>0.5", "clamp") == Intervention(12, "clamp", 3.0, True, Condition("feature_above", 45, 0.5))
    assert parse_intervention("7@gen", "ablate").condition == Condition("generated_only")
    assert parse_intervention("3=5@after=a@b>c", "add").condition == Condition("after_pattern", pattern="a@b>c")
    args = build_parser().parse_args(["steer", "hi", "--clamp", "12=3x@gen", "--stop-when", "45>0.5"])
    assert args.stop_when == "45>0.5" and args.clamp == ["12=3x@gen"]
    assert steering.parse_stop(args.stop_when) == StopCondition(45, 0.5)


@pytest.mark.parametrize("spec, error", [
    ("12=3x@f45", SteeringError), ("12=3x@sometimes", SteeringError), ("12=3x@after=(", SteeringError),
    ("12=3x@f-1>0", SteeringError), ("x=3@gen", CliError),
])
def test_cli_refuses_bad_conditions_before_loading(spec, error):
    with pytest.raises(error):
        parse_intervention(spec, "clamp")


def test_steer_command_with_a_condition_and_a_stop(capsys, monkeypatch, tmp_path):
    from test_cli_errors import run

    folder = tmp_path / "tiny"
    model = tiny_model(seed=1)
    model.model.save_pretrained(folder, safe_serialization=True)
    model.tokenizer.save_pretrained(folder)
    for name in ("EXPLORER_MODEL", "EXPLORER_SAE", "EXPLORER_INDEX", "EXPLORER_CACHE", "EXPLORER_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ws = ["--model", str(folder), "--sae", "random", "--hook", HOOK, "--max-new-tokens", "6"]
    code, out, err = run(capsys, "steer", "hi", "--add", "3=5@gen", "--stop-when", "4>-1", *ws)
    assert code == 0, err
    assert "STEERED (add #3 5 on generated tokens)" in out
    assert "The steered completion stopped after generated token 0 (stop when #4 > -1)." in out
    code, _, err = run(capsys, "steer", "hi", "--add", "3=5@f9999>1", *ws)
    assert code == 2 and "feature 9999 does not exist" in err
    code, _, err = run(capsys, "steer", "hi", "--add", "3=5", "--stop-when", "4", *ws)
    assert code == 2 and "FEATURE>THRESHOLD" in err


def test_condition_specs_read_back():
    for cond in (Condition("feature_above", 4, 0.25), Condition("generated_only"), Condition("after_pattern", pattern="x,y")):
        assert parse_condition(cond.spec()) == cond
    assert json.loads(json.dumps(export._intervention_json(Intervention(1, condition=Condition("generated_only")), {})))


# ------------------------------------------------------------------ the steering page (demo model)


@pytest.fixture
def page():
    from test_app import app, no_exception

    def open_page(**params):
        at = app("pages/steering.py", **params)
        no_exception(at)
        return at

    return open_page


@pytest.mark.demo
def test_a_link_with_conditions_fills_the_pickers_and_is_written_back(page):
    at = page(steer="7:add:50@f12>0.5,9:ablate@gen,3:scale:2@after=%5C.", stop="12>1", prompt="Once upon a time")
    picked = {s.key: s.value for s in at.selectbox if s.key and s.key.startswith("cond_")}
    assert list(picked.values()) == ["where feature >", "generated tokens", "after text matches"]
    boxes = {t.key: t.value for t in at.text_input if t.key and t.key.startswith("cond_")}
    assert list(boxes.values()) == ["12>0.5", "\\."]
    assert at.text_input(key="steer_stop").value == "12>1"
    assert at.query_params["steer"] == "7:add:50@f12>0.5,9:ablate@gen,3:scale:2@after=%5C."
    assert at.query_params["stop"] == "12>1"


@pytest.mark.demo
def test_a_bad_condition_leaves_its_feature_out_and_says_why(page):
    at = page(steer="7:add:50@f12>0.5,9:ablate", prompt="Once upon a time")
    key = next(t.key for t in at.text_input if t.key and t.key.startswith("cond_"))
    at.text_input(key=key).input("12>lots").run()
    assert "left out until its condition is fixed" in "\n".join(e.value for e in at.error)
    assert at.query_params["steer"] == "9:ablate"


@pytest.mark.demo
def test_generating_with_a_stop_condition_marks_where_it_stopped(page):
    at = page(steer="7:add:50@gen", stop="12>-1", prompt="Once upon a time", max_new_tokens="6")  # fires at once
    at.button(key="generate").click().run()
    result = at.session_state["steer_history"][0]["result"]
    assert result.interventions[0].condition == Condition("generated_only")
    assert len(result.clean.token_ids) == 6 and len(result.steered.token_ids) == 1
    assert result.steered.stopped_at == 0 and result.stop == StopCondition(12, -1.0)
    assert any("Stopped after generated token 0" in c.value for c in at.caption)
