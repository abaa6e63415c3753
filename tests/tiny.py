"""Tiny random models and a byte-level tokenizer for fast unit tests (no files, no network)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from explorer.model import LoadedModel


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A real byte-level BPE tokenizer with no merges: one token per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab["<eos>"] = 256
    vocab["<bos>"] = 257
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<eos>")


def tiny_config(model_type: str = "llama", d_model: int = 32, n_layers: int = 4):
    from transformers import AutoConfig

    common = dict(vocab_size=258, bos_token_id=257, eos_token_id=256)
    if model_type == "gpt2":
        return AutoConfig.for_model("gpt2", n_embd=d_model, n_layer=n_layers, n_head=4, n_positions=256, **common)
    if model_type == "gpt_neox":
        return AutoConfig.for_model(
            "gpt_neox", hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=4,
            intermediate_size=2 * d_model, max_position_embeddings=256, **common,
        )
    extra = {"head_dim": d_model // 4} if model_type in ("gemma", "gemma2", "qwen3") else {}
    return AutoConfig.for_model(
        model_type, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=2 * d_model, max_position_embeddings=256, **extra, **common,
    )


def tiny_model(model_type: str = "llama", seed: int = 0, n_layers: int = 4, d_model: int = 32) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, d_model, n_layers)).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=byte_tokenizer(), name=f"tiny-{model_type}",
                       device=torch.device("cpu"), dtype=torch.float32)
