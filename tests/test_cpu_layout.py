"""CPU weight layouts: same results as the stock layout, weights the index reads kept."""

import pytest
import torch
from torch import nn

from explorer import cpu_layout
from explorer.cpu_layout import PackedLinear, can_pack, optimise_for_cpu
from explorer.model import load_model, new_cache
from tests.tiny import tiny_model

needs_onednn = pytest.mark.skipif(not can_pack(), reason="this torch build has no oneDNN packed linear")


@needs_onednn
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 24), (2, 24), (3, 7, 24)])
def test_packed_linear_equals_linear(bias, shape):
    torch.manual_seed(0)
    layer = nn.Linear(24, 40, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        assert torch.allclose(PackedLinear(layer)(x), layer(x), atol=1e-5)


needs_bf16 = pytest.mark.skipif(not can_pack(torch.bfloat16), reason="this CPU has no native bf16 (or no oneDNN)")


@needs_bf16
def test_bf16_packed_linear_agrees_with_linear():
    torch.manual_seed(0)
    layer = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(16, 64).to(torch.bfloat16)
    with torch.inference_mode():
        packed, stock = PackedLinear(layer)(x).float(), layer(x).float()
    # bf16 has 8 bits of mantissa: the sums may round differently, by about one unit in the last place
    assert torch.allclose(packed, stock, atol=0.05, rtol=0.02)
    assert torch.equal(PackedLinear(layer).dense_weight(), layer.weight)


def test_a_bf16_model_is_packed_only_where_the_cpu_computes_bf16(monkeypatch):
    stock = tiny_model("llama", d_model=64).model.to(torch.bfloat16)
    fast = tiny_model("llama", d_model=64).model.to(torch.bfloat16)
    layout = optimise_for_cpu(fast)
    assert layout == ("oneDNN packed" if can_pack(torch.bfloat16) else "stock")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(fast(ids).logits.float(), stock(ids).logits.float(), atol=0.1)
    monkeypatch.setattr(cpu_layout, "can_pack", lambda dtype=None: dtype != torch.bfloat16)
    emulated = tiny_model("llama", d_model=64).model.to(torch.bfloat16)
    assert optimise_for_cpu(emulated) == "stock"
    assert type(emulated.model.layers[0].mlp.down_proj) is nn.Linear


def _greedy(model, ids, n=12):
    out_ids = []
    with torch.inference_mode():
        cache = new_cache(model)
        out = model(ids, use_cache=True, **cache)
        for _ in range(n):
            nxt = out.logits[:, -1].argmax(-1)
            out_ids.append(nxt.tolist())
            out = model(nxt[:, None], use_cache=True, **cache)
    return out_ids


@pytest.mark.parametrize("model_type", ["llama", "gpt_neox", "qwen2"])
def test_optimised_model_matches_stock(model_type):
    stock = tiny_model(model_type, d_model=64).model
    fast = tiny_model(model_type, d_model=64).model
    layout = optimise_for_cpu(fast)
    assert layout == ("oneDNN packed" if can_pack() else "transposed")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        assert torch.allclose(fast(ids).logits, stock(ids).logits, atol=1e-4)
    assert _greedy(fast, ids) == _greedy(stock, ids)


@needs_onednn
def test_packing_keeps_the_head_weight_and_its_tie():
    model = tiny_model("llama").model
    model.config.tie_word_embeddings = True
    model.tie_weights()
    embedding = model.get_input_embeddings().weight
    optimise_for_cpu(model)
    head = model.get_output_embeddings()
    assert isinstance(head, PackedLinear) and head.weight is embedding  # the index reads it; no copy
    inner = model.model.layers[0].mlp.down_proj
    assert isinstance(inner, PackedLinear) and not hasattr(inner, "weight")  # packed copy replaces it


def test_without_onednn_weights_are_transposed(monkeypatch):
    monkeypatch.setattr(cpu_layout, "can_pack", lambda dtype=None: False)
    model = tiny_model("llama").model
    assert optimise_for_cpu(model) == "transposed"
    q = model.model.layers[0].self_attn.q_proj
    assert type(q) is nn.Linear and q.weight.t().is_contiguous()


def test_load_model_reports_its_layout(tmp_path):
    tiny_model("llama").model.save_pretrained(tmp_path / "m")
    from tests.tiny import byte_tokenizer

    byte_tokenizer().save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"), device="cpu")
    assert lm.layout == ("oneDNN packed" if can_pack() else "transposed")


def test_onednn_builds_can_pack():
    # Guards the skips above: a torch with oneDNN (every x86 CPU wheel) must pack.
    if torch.backends.mkldnn.is_available():
        assert can_pack()
