import copy
import functools
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_model

from explorer.activations import encode_prompt
from explorer.attribution import AttributionError, attribute, token_id
from explorer.cpu_layout import can_pack, optimise_for_cpu
from explorer.hooks import hooked
from explorer.sae import random_sae

HOOK = "blocks.1.hook_resid_post"
PROMPT = "the cat sat on the mat"
# Llama's RMSNorm computes in float32 even in a float64 model, so its finite
# differences need a larger step and a looser match than GPT-2's (all float64).
STEP = {"llama": (1e-2, 1e-3), "gpt2": (1e-4, 1e-6)}  # model type -> (eps, relative tolerance)


def float64_pair(model_type: str, architecture: str):
    lm = tiny_model(model_type, seed=2)
    lm.model.double()
    sae = random_sae(lm.d_model, 48, architecture=architecture, k=8, hook_name=HOOK, seed=5).double()
    return lm, sae


@pytest.fixture(scope="module")
def lm_sae():
    return float64_pair("llama", "standard")


def metric(lm, ids, pos, target, versus, edit=None) -> float:
    """The logit (difference) at pos, with an optional hook edit of the activation."""
    with torch.inference_mode(), hooked(lm.model, {HOOK: edit} if edit else {}):
        logits = lm.model(ids).logits[0, pos]
    return float(logits[target] - (logits[versus] if versus is not None else 0))


def scale_feature(sae, pos: int, feature: int, factor: float):
    """Scale one feature at one position, moving the activation by the decoder's change."""

    def edit(act):
        out = act.clone()
        x = act[0, pos]
        f = sae.encode(x)
        scaled = f.clone()
        scaled[feature] *= factor
        out[0, pos] = x + sae.decode(scaled, like=x) - sae.decode(f, like=x)
        return out

    return edit


def scale_error(sae, factor: float):
    """Scale the SAE error term x - x_hat at every position after BOS."""

    def edit(act):
        out = act.clone()
        x = act[0, 1:]
        x_hat = sae.decode(sae.encode(x), like=x)
        out[0, 1:] = x_hat + factor * (x - x_hat)
        return out

    return edit


def central_difference(lm, ids, pos, target, versus, make_edit) -> float:
    eps = STEP[lm.model.config.model_type][0]
    up = metric(lm, ids, pos, target, versus, make_edit(1 + eps))
    down = metric(lm, ids, pos, target, versus, make_edit(1 - eps))
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("model_type, architecture, versus", [
    ("llama", "standard", None),
    ("llama", "standard", " "),
    ("gpt2", "topk", None),
])
def test_scores_match_finite_differences(one_thread, model_type, architecture, versus):
    lm, sae = float64_pair(model_type, architecture)
    pos = 4
    result = attribute(lm, sae, PROMPT, position=pos, versus=versus, top=1000)
    ids, _ = encode_prompt(lm, PROMPT)
    assert result.target == int(ids[0, pos + 1])  # the actual next token by default
    assert result.metric == pytest.approx(metric(lm, ids, pos, result.target, result.versus), abs=1e-9)
    listed = result.positive[:4] + result.negative[:4]
    assert len(listed) == 8
    rel = STEP[model_type][1]
    for s in listed:
        fd = central_difference(lm, ids, pos, result.target, result.versus,
                                functools.partial(scale_feature, sae, s.position, s.feature))
        assert s.score == pytest.approx(fd, rel=rel, abs=1e-7), (s, fd)
    fd = central_difference(lm, ids, pos, result.target, result.versus, lambda factor: scale_error(sae, factor))
    assert result.error_share == pytest.approx(fd, rel=rel, abs=1e-7)


def test_lists_are_complete_sorted_and_cover_earlier_positions_only(one_thread, lm_sae):
    lm, sae = lm_sae
    result = attribute(lm, sae, PROMPT, position=6, top=10_000)
    scores = [s.score for s in result.positive] + [s.score for s in result.negative]
    assert all(s > 0 for s in scores[: len(result.positive)]) and all(s < 0 for s in scores[len(result.positive):])
    assert [s.score for s in result.positive] == sorted((s.score for s in result.positive), reverse=True)
    assert [s.score for s in result.negative] == sorted(s.score for s in result.negative)
    assert sum(scores) == pytest.approx(result.features_total, rel=1e-9)
    assert {s.position for s in result.positive + result.negative} <= set(range(1, 7))  # not BOS, not later
    assert len(result.tokens) == 7 and result.prompt_prefix == PROMPT[:6]


def test_shares_add_up_to_gradient_times_input(one_thread, lm_sae):
    # scaling the whole activation after BOS: d/dk metric(k x) = gradient . x = features + error + bias
    lm, sae = lm_sae
    result = attribute(lm, sae, PROMPT, position=5)
    ids, _ = encode_prompt(lm, PROMPT)

    def scale_all(factor):
        def edit(act):
            out = act.clone()
            out[0, 1:] = act[0, 1:] * factor
            return out
        return edit

    fd = central_difference(lm, ids, 5, result.target, None, scale_all)
    total = result.features_total + result.error_share + result.bias_share
    assert total == pytest.approx(fd, rel=STEP["llama"][1])


def test_last_position_targets_the_models_prediction(one_thread, lm_sae):
    lm, sae = lm_sae
    ids, _ = encode_prompt(lm, PROMPT)
    with torch.inference_mode():
        predicted = int(lm.model(ids).logits[0, -1].argmax())
    result = attribute(lm, sae, PROMPT)
    assert result.position == ids.shape[1] - 1 and result.target == predicted


def test_forward_pass_is_unchanged_and_hooks_are_removed(one_thread):
    lm = tiny_model(seed=3)
    sae = random_sae(lm.d_model, 48, architecture="topk", k=8, hook_name=HOOK, seed=1)
    ids, _ = encode_prompt(lm, PROMPT)
    result = attribute(lm, sae, PROMPT, position=3, target="q")
    with torch.inference_mode():
        plain = lm.model(ids).logits[0, 3, token_id(lm.tokenizer, "q")]
    assert result.metric == pytest.approx(float(plain), abs=1e-5)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())
    assert not any(p.requires_grad for p in lm.model.parameters())


@pytest.mark.skipif(not can_pack(), reason="this torch build has no oneDNN packed linear")
def test_packed_cpu_layout_gives_the_same_scores(one_thread):
    # the packed op has no backward of its own: torch silently returned no gradient
    lm = tiny_model(seed=4)
    sae = random_sae(lm.d_model, 48, architecture="standard", hook_name=HOOK, seed=2)
    packed_model = copy.deepcopy(lm.model)
    assert optimise_for_cpu(packed_model) == "oneDNN packed"
    packed = type(lm)(model=packed_model, tokenizer=lm.tokenizer, name="packed", device=lm.device, dtype=lm.dtype)
    want = attribute(lm, sae, PROMPT, position=5, versus="a")
    got = attribute(packed, sae, PROMPT, position=5, versus="a")
    assert [(s.feature, s.position) for s in got.positive[:5]] == [(s.feature, s.position) for s in want.positive[:5]]
    torch.testing.assert_close([s.score for s in got.positive], [s.score for s in want.positive], rtol=1e-4, atol=1e-5)
    assert got.error_share == pytest.approx(want.error_share, rel=1e-4, abs=1e-5)


def test_half_precision_model_with_a_float32_sae(one_thread):
    # the GPU case: the model in bfloat16, the SAE in float32; the splice must not change the forward pass
    lm = tiny_model(seed=5)
    lm.model.to(torch.bfloat16)
    sae = random_sae(lm.d_model, 48, architecture="topk", k=8, hook_name=HOOK, seed=6)
    result = attribute(lm, sae, PROMPT, position=5, versus="x")
    ids, _ = encode_prompt(lm, PROMPT)
    assert result.metric == metric(lm, ids, 5, result.target, result.versus)
    assert result.positive and result.negative
    assert all(torch.isfinite(torch.tensor(s.score)) for s in result.positive + result.negative)


def test_runs_under_inference_mode(one_thread, lm_sae):
    lm, sae = lm_sae
    want = attribute(lm, sae, PROMPT, position=4)
    with torch.inference_mode():
        got = attribute(lm, sae, PROMPT, position=4)
    assert got == want


def test_token_ids_from_text_glyphs_and_ids():
    tok = tiny_model().tokenizer
    space = tok(" ", add_special_tokens=False).input_ids[0]
    assert token_id(tok, " ") == space
    assert token_id(tok, "␣") == space  # the page shows a space as ␣
    assert token_id(tok, "id:65") == 65 and token_id(tok, 65) == 65


@pytest.mark.parametrize("token, message", [
    ("cat", "is 3 tokens"),
    ("", "empty"),
    ("id:9999", "does not exist"),
    (-1, "does not exist"),
])
def test_bad_tokens_say_how_to_fix(token, message):
    with pytest.raises(AttributionError, match=message) as err:
        token_id(tiny_model().tokenizer, token)
    assert "Fix:" in str(err.value)


def test_top_must_be_positive(lm_sae):
    with pytest.raises(AttributionError, match="Fix: use 1 or more"):
        attribute(*lm_sae, PROMPT, top=0)


@pytest.mark.parametrize("position, why", [(0, "BOS"), (8, "outside"), (-8, "BOS"), (-9, "outside")])
def test_bad_positions_say_how_to_fix(one_thread, lm_sae, position, why):
    lm, sae = lm_sae  # "the cat": BOS and 7 byte tokens
    with pytest.raises(AttributionError, match=rf"{why}.*Fix: pick a token position in 1\.\.7"):
        attribute(lm, sae, "the cat", position=position)


DEMO_PROMPT = "The capital of France is Paris. The capital of Germany is"


@pytest.fixture(scope="module")
def demo_ws():
    from explorer.workspace import open_workspace

    return open_workspace("demo", progress=False)


@pytest.mark.demo
def test_demo_ranking_is_stable_across_runs(demo_ws):
    runs = [attribute(demo_ws.lm, demo_ws.sae, DEMO_PROMPT, target=" Berlin", versus=" Paris") for _ in range(3)]
    for run in runs[1:]:
        for got, want in ((run.positive, runs[0].positive), (run.negative, runs[0].negative)):
            assert [(s.feature, s.position) for s in got] == [(s.feature, s.position) for s in want]
            torch.testing.assert_close([s.score for s in got], [s.score for s in want], rtol=1e-4, atol=1e-6)
    first = runs[0]
    assert first.target_token == "␣Berlin" and first.versus_token == "␣Paris"
    assert len(first.positive) == 20 and len(first.negative) == 20
    # the logit difference is explained mostly by the prompt's last two tokens and the error term,
    # but features at earlier positions take part too
    assert {s.position for s in first.positive + first.negative} - {len(first.tokens) - 1}


@pytest.mark.demo
def test_cli_attribute_prints_both_lists(capsys):
    from explorer.cli import main

    main(["attribute", DEMO_PROMPT, "--position", "-1", "--target", " Berlin", "--versus", " Paris", "--top", "3"])
    out = capsys.readouterr().out
    assert "logit of '␣Berlin' minus logit of '␣Paris'" in out
    assert out.count(" at ") == 6 and "Pushes towards" in out and "Pushes against" in out
    assert "SAE error term" in out


@pytest.mark.demo
def test_cli_attribute_bad_token_is_a_clean_error(capsys):
    from explorer.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["attribute", DEMO_PROMPT, "--target", "Berlin and Paris"])
    assert exit_.value.code == 2 and "not one" in capsys.readouterr().err


@pytest.mark.demo
def test_token_page_attributes_on_request():
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))  # as tests/test_app.py: AppTest does not put the app's folder on sys.path
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(root / "app.py"), default_timeout=180)
    at.query_params["prompt"] = DEMO_PROMPT
    at.run()
    assert not at.exception and not at.text_input  # the panel is closed: nothing built, nothing run
    at.session_state["attr_open"] = True
    at.run()
    at.text_input(key="attr_versus").input("␣Paris")
    next(b for b in at.button if b.label == "Attribute").click()
    at.run()
    assert not at.exception, at.exception
    links = [p.proto for p in at.get("page_link")]
    steer = [link for link in links if link.label == "steer"]
    cards = [link for link in links if link.page.endswith("feature")]
    assert len(steer) == 20 and len(cards) >= 20
    assert "prompt=The+capital+of+France+is+Paris.+The+capital+of+Germany+is" in steer[0].query_string
    assert "clamp%3A3x" in steer[0].query_string or "clamp:3x" in steer[0].query_string
    assert "Paris" in "".join(c.value for c in at.caption)
    at.text_input(key="attr_target").input("not one token")
    next(b for b in at.button if b.label == "Attribute").click()
    at.run()
    assert "not one" in "".join(e.value for e in at.error)
