import pytest
import torch
from tiny import byte_tokenizer, tiny_model

from explorer.hooks import HookError, all_hook_names, hooked, parse_hook, run_to_hook
from explorer.tokens import display_token, token_strings

ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2", "gpt_neox"]


def _ids(lm, text="Hello, hooks!"):
    return lm.tokenizer(text, return_tensors="pt").input_ids


@pytest.mark.parametrize("model_type", ARCHS)
def test_resid_hooks_match_hidden_states(model_type):
    lm = tiny_model(model_type)
    ids = _ids(lm)
    hidden = lm.model(ids, output_hidden_states=True).hidden_states
    for layer in range(lm.n_layers):
        pre = run_to_hook(lm.model, f"blocks.{layer}.hook_resid_pre", ids)
        torch.testing.assert_close(pre, hidden[layer], rtol=0, atol=0)
        if layer < lm.n_layers - 1:  # the last hidden state is after the final norm
            post = run_to_hook(lm.model, f"blocks.{layer}.hook_resid_post", ids)
            torch.testing.assert_close(post, hidden[layer + 1], rtol=0, atol=0)


@pytest.mark.parametrize("model_type", ARCHS)
def test_attn_and_mlp_out_sum_to_residual_update(model_type):
    lm = tiny_model(model_type)
    ids = _ids(lm)
    layer = 1
    pre = run_to_hook(lm.model, f"blocks.{layer}.hook_resid_pre", ids)
    post = run_to_hook(lm.model, f"blocks.{layer}.hook_resid_post", ids)
    attn = run_to_hook(lm.model, f"blocks.{layer}.hook_attn_out", ids)
    mlp = run_to_hook(lm.model, f"blocks.{layer}.hook_mlp_out", ids)
    assert attn.shape == mlp.shape == pre.shape
    # Sequential blocks (and GPT-NeoX's parallel one) add both outputs to the residual.
    torch.testing.assert_close(pre + attn + mlp, post, rtol=1e-4, atol=1e-5)


def test_edit_changes_output_and_hooks_are_removed():
    lm = tiny_model()
    ids = _ids(lm)
    clean = lm.model(ids).logits
    with hooked(lm.model, {"blocks.1.hook_resid_post": lambda a: a * 0}):
        edited = lm.model(ids).logits
    after = lm.model(ids).logits
    assert not torch.allclose(clean, edited)
    torch.testing.assert_close(clean, after, rtol=0, atol=0)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in lm.model.modules())


def test_hooks_removed_after_exception_and_foreign_hooks_kept():
    lm = tiny_model()
    block = lm.model.model.layers[0]
    foreign = block.register_forward_hook(lambda *a: None)
    with pytest.raises(RuntimeError):
        with hooked(lm.model, {"blocks.0.hook_resid_post": lambda a: None}):
            raise RuntimeError("boom")
    assert list(block._forward_hooks) == [foreign.id]
    foreign.remove()


def test_bad_hook_names_say_what_exists():
    lm = tiny_model(n_layers=4)
    with pytest.raises(HookError, match="layers 0..3"):
        parse_hook(lm.model, "blocks.7.hook_resid_post")
    with pytest.raises(HookError, match="hook_resid_pre"):
        parse_hook(lm.model, "blocks.1.hook_z")
    assert "blocks.3.hook_mlp_out" in all_hook_names(lm.model)


def test_unknown_architecture_is_named():
    lm = tiny_model()
    lm.model.config.model_type = "mystery"
    with pytest.raises(HookError, match="mystery.*Supported"):
        parse_hook(lm.model, "blocks.0.hook_resid_post")


def test_display_tokens_make_whitespace_and_bytes_visible():
    assert display_token(" the") == "␣the"
    assert display_token("\n") == "↵"
    assert display_token("  x\t") == "␣␣x⇥"
    tok = byte_tokenizer()
    ids = tok("é").input_ids
    texts, shown = token_strings(tok, ids)
    assert shown == ["<0xC3>", "<0xA9>"]
    assert display_token("\ufffd", "<0xE2>") == "<0xE2>"
