import contextlib
import threading

import pytest
import torch
from tiny import tiny_model

from explorer.activations import encode_prompt, token_activations
from explorer.hooks import hooked, run_to_hook
from explorer.sae import random_sae
from explorer.steering import (
    VALUE_RANGES,
    GenerationSettings,
    Intervention,
    RowEdit,
    SteeringError,
    edit_features,
    generate_pair,
    generate_rows,
    resolve,
    stream_rows,
)

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    return tiny_model(seed=1)


@pytest.fixture(scope="module")
def sae(lm):
    return random_sae(lm.d_model, 64, architecture="standard", hook_name=HOOK, seed=3)


def no_hooks_left(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_no_intervention_leaves_logits_unchanged(lm, sae):
    ids = lm.tokenizer("steer me gently", return_tensors="pt").input_ids
    clean = lm.model(ids).logits
    with hooked(lm.model, {HOOK: RowEdit(sae, [[]])}):
        same = lm.model(ids).logits
    torch.testing.assert_close(same, clean, rtol=0, atol=0)
    # an edit that changes nothing goes through encode/decode and must still be exact to 1e-5
    identity = resolve([Intervention(5, "scale", 1.0)], sae.cfg.d_sae)
    with hooked(lm.model, {HOOK: RowEdit(sae, [identity])}):
        near = lm.model(ids).logits
    torch.testing.assert_close(near, clean, rtol=0, atol=1e-5)


def test_clamp_moves_activation_by_delta_f_times_decoder_row(lm, sae):
    ids = lm.tokenizer("a clamp test", return_tensors="pt").input_ids
    x = run_to_hook(lm.model, HOOK, ids)[0]
    f = sae.encode(x)
    edits = resolve([Intervention(7, "clamp", 4.0)], sae.cfg.d_sae)
    patched = RowEdit(sae, [edits])(x[None])[0]
    expected = x + (4.0 - f[:, 7:8]) * sae.W_dec[7]
    torch.testing.assert_close(patched, expected, rtol=1e-5, atol=1e-5)


def test_edit_modes():
    f = torch.tensor([[1.0, 2.0, 3.0]])
    modes = [("clamp", 5.0, 5.0), ("scale", 2.0, 4.0), ("add", -1.0, 1.0), ("ablate", 9.0, 0.0)]
    for mode, value, want in modes:
        out = edit_features(f, resolve([Intervention(1, mode, value)], 3))
        assert out[0, 1].item() == want and out[0, 0].item() == 1.0
    assert f[0, 1].item() == 2.0  # the input is not modified


def test_relative_values_use_max_activation(lm, sae):
    (r,) = resolve([Intervention(3, "clamp", 3.0, relative=True)], sae.cfg.d_sae, {3: 2.5})
    assert r.value == pytest.approx(7.5)
    with pytest.raises(SteeringError, match="max activation is unknown"):
        resolve([Intervention(3, "clamp", 3.0, relative=True)], sae.cfg.d_sae, None)


@pytest.mark.parametrize("iv, message", [
    (Intervention(1, "boost", 1.0), "Unknown mode"),
    (Intervention(640, "clamp", 1.0), "does not exist"),
    (Intervention(1, "clamp", float("nan")), "finite"),
])
def test_bad_interventions_are_explained(sae, iv, message):
    with pytest.raises(SteeringError, match=message):
        resolve([iv], sae.cfg.d_sae)


def test_decode_steps_are_steered_too(lm, sae):
    """Greedy tokens from the KV-cached loop must equal a full recompute with the
    edit applied at every position (which fails if decode steps are skipped)."""
    settings = GenerationSettings(max_new_tokens=12, stop_at_eos=False)
    ivs = [Intervention(11, "clamp", 30.0)]
    (steered,) = generate_rows(lm, sae, "The cat", [ivs], settings)
    prompt_ids, _ = encode_prompt(lm, "The cat")
    full = torch.cat([prompt_ids, torch.tensor([steered.token_ids])], dim=1)
    with hooked(lm.model, {HOOK: RowEdit(sae, [resolve(ivs, sae.cfg.d_sae)])}):
        logits = lm.model(full).logits[0]
    n = prompt_ids.shape[1]
    recomputed = logits[n - 1 : n - 1 + len(steered.token_ids)].argmax(-1).tolist()
    assert recomputed == steered.token_ids
    (clean,) = generate_rows(lm, sae, "The cat", [[]], settings)
    assert clean.token_ids != steered.token_ids


@pytest.mark.parametrize("settings", [
    GenerationSettings(max_new_tokens=10, stop_at_eos=False),
    GenerationSettings(max_new_tokens=10, temperature=0.9, top_p=0.9, seed=7, stop_at_eos=False),
])
def test_pair_rows_equal_separate_generations(lm, sae, settings):
    ivs = [Intervention(11, "clamp", 30.0)]
    pair = generate_pair(lm, sae, "Once upon", ivs, settings)
    (alone_clean,) = generate_rows(lm, sae, "Once upon", [[]], settings)
    (alone_steered,) = generate_rows(lm, sae, "Once upon", [ivs], settings)
    assert pair.clean.token_ids == alone_clean.token_ids
    assert pair.steered.token_ids == alone_steered.token_ids
    assert pair.diverge_at is not None


def test_pair_reuses_an_earlier_clean_completion(lm, sae):
    settings = GenerationSettings(max_new_tokens=8, stop_at_eos=False)
    first = generate_pair(lm, sae, "Once upon", [Intervention(11, "clamp", 30.0)], settings)
    ivs = [Intervention(5, "add", -20.0)]
    again = generate_pair(lm, sae, "Once upon", ivs, settings, clean=first.clean)
    fresh = generate_pair(lm, sae, "Once upon", ivs, settings)
    assert again.clean is first.clean
    assert again.steered == fresh.steered and again.diverge_at == fresh.diverge_at


def test_pair_needs_an_intervention(lm, sae):
    with pytest.raises(SteeringError, match="No feature"):
        generate_pair(lm, sae, "hi", [])


def test_stream_matches_batch_and_closing_early_releases_everything(lm, sae):
    settings = GenerationSettings(max_new_tokens=8, stop_at_eos=False)
    rows = [[], [Intervention(2, "add", 10.0)]]
    steps = list(stream_rows(lm, sae, "stream", rows, settings))
    batch = generate_rows(lm, sae, "stream", rows, settings)
    assert [s[0] for s in steps] == batch[0].token_ids
    assert [s[1] for s in steps] == batch[1].token_ids
    with contextlib.closing(stream_rows(lm, sae, "stream", rows, settings)) as stream:
        next(stream)
    assert no_hooks_left(lm.model)
    assert lm.lock.acquire(blocking=False)
    lm.lock.release()


def test_concurrent_threads_do_not_see_each_others_interventions(lm, sae):
    settings = GenerationSettings(max_new_tokens=10, stop_at_eos=False)
    jobs = {f: [Intervention(f, "clamp", 25.0)] for f in (3, 11, 20, 42)}
    alone = {f: generate_pair(lm, sae, "Threads", ivs, settings) for f, ivs in jobs.items()}
    results: dict[int, object] = {}
    errors = []

    def work(f):
        try:
            for _ in range(3):
                results[f] = generate_pair(lm, sae, "Threads", jobs[f], settings)
                assert results[f] == alone[f]
        except Exception as err:  # reported below, with the thread's feature
            errors.append((f, err))

    threads = [threading.Thread(target=work, args=(f,)) for f in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == alone
    assert len({tuple(r.steered.token_ids) for r in results.values()}) > 1
    assert no_hooks_left(lm.model)


def test_bad_settings_are_explained(lm, sae):
    with pytest.raises(SteeringError, match="max_new_tokens"):
        generate_rows(lm, sae, "x", [[]], GenerationSettings(max_new_tokens=0))
    with pytest.raises(SteeringError, match="top_p"):
        generate_rows(lm, sae, "x", [[]], GenerationSettings(top_p=0))


@pytest.mark.parametrize("field, value", [
    ("temperature", float("nan")), ("temperature", float("inf")), ("temperature", -1.0), ("temperature", 1e-30),
    ("top_p", float("nan")), ("top_p", 0.0), ("seed", -1), ("seed", 2**64), ("max_new_tokens", 0), ("max_new_tokens", 2.5),
])
def test_settings_are_checked_when_made(field, value):
    with pytest.raises(SteeringError, match=rf"{field}=.*\. Fix: "):
        GenerationSettings(**{field: value})


@pytest.mark.parametrize("iv, max_acts, message", [
    (Intervention(5, "clamp", 1e300), None, "outside -10000..10000"),
    (Intervention(5, "add", -2e4), None, "outside -10000..10000"),
    (Intervention(5, "scale", 1e30), None, "outside -20..20"),
    (Intervention(5, "clamp", 25.0, relative=True), {5: 1.0}, "outside -20..20"),
    (Intervention(5, "clamp", 20.0, relative=True), {5: 1000.0}, "20000 activation units"),  # 20x a big max
    (Intervention(5, "clamp", 2.0, relative=True), {5: float("inf")}, "inf activation units"),
    (Intervention(5, "add", 2.0, relative=True), {5: float("nan")}, "nan activation units"),
])
def test_values_have_one_cap_everywhere(sae, iv, max_acts, message):
    assert VALUE_RANGES["absolute"] == (-1e4, 1e4)  # the app's cap
    with pytest.raises(SteeringError, match=message):
        resolve([iv], sae.cfg.d_sae, max_acts)


def test_a_sweep_value_of_1e300_is_refused_not_a_runtime_error(lm, sae):
    settings = GenerationSettings(max_new_tokens=2, temperature=0.7)
    with pytest.raises(SteeringError, match="outside"):
        generate_rows(lm, sae, "x", [[], [Intervention(5, "clamp", 1e300)]], settings)


def test_prompts_are_cut_to_the_models_context():
    gpt2 = tiny_model("gpt2", seed=2)  # learned positions: position 256 does not exist
    small = random_sae(gpt2.d_model, 64, architecture="standard", hook_name=HOOK, seed=3)
    acts = token_activations(gpt2, small, "ab" * 200)
    assert (len(acts.tokens), acts.truncated_from) == (256, 401)  # BOS + 400 bytes
    pair = generate_pair(gpt2, small, "ab" * 200, [Intervention(3, "ablate")], GenerationSettings(max_new_tokens=6))
    assert pair.truncated_from == 401
    assert generate_pair(gpt2, small, "ab", [Intervention(3, "ablate")], GenerationSettings(max_new_tokens=6)).truncated_from is None
    with pytest.raises(SteeringError, match="no room for the prompt"):
        generate_rows(gpt2, small, "ab", [[]], GenerationSettings(max_new_tokens=300))
