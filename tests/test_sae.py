"""explorer.sae, sae_config, sae_files: hand-computed forward passes, the SAELens format, errors, folds, purity."""

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from explorer.sae import (
    SAE,
    check_compatible,
    fold_activation_norm_scaling_factor,
    fold_W_dec_norm,
    random_sae,
)
from explorer.sae_config import SAEConfig, SAEError, convert_pre_6_0_config
from explorer.sae_files import load_gemma_scope_npz, load_sae, sae_fingerprint, save_sae

# One small SAE (d_in=2, d_sae=3) for every hand-computed case below.
W_ENC = [[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]
W_DEC = [[1.0, 0.0], [0.0, 3.0], [1.0, 1.0]]  # row norms 1, 3, sqrt(2)
B_DEC = [1.0, 0.0]
B_ENC = [0.0, -1.0, 0.5]
X = torch.tensor([[3.0, 2.0], [0.0, 0.0]])
# With b_dec subtracted: x' = [2, 2] -> pre = [2, 2, 0] + b_enc = [2, 1, 0.5];
#                        x' = [-1, 0] -> pre = [-1, 0, -1] + b_enc = [-1, -1, -0.5].


def make_sae(cfg: SAEConfig, **tensors) -> SAE:
    sae = SAE(cfg)
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(sae, name).copy_(torch.tensor(value))
    return sae


def hand_sae(architecture="standard", **cfg_kw) -> SAE:
    extra = {
        "standard": {"b_enc": B_ENC},
        "topk": {"b_enc": B_ENC},
        "jumprelu": {"b_enc": B_ENC, "threshold": [1.5, 1.0, 0.1]},
        "gated": {"b_gate": [0.0, -1.5, 0.0], "r_mag": [0.0, math.log(2), 0.0], "b_mag": [0.0, 0.0, 1.0]},
    }[architecture]
    cfg = SAEConfig(d_in=2, d_sae=3, architecture=architecture, **cfg_kw)
    return make_sae(cfg, W_enc=W_ENC, W_dec=W_DEC, b_dec=B_DEC, **extra)


def assert_close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual.detach().float(), torch.tensor(expected, dtype=torch.float32), atol=atol, rtol=0)


# ---- hand-computed forward passes -------------------------------------------------------------

def test_standard_by_hand():
    sae = hand_sae("standard")
    assert_close(sae.encode(X), [[2, 1, 0.5], [0, 0, 0]])  # ReLU zeroes the second token
    # 2*[1,0] + 1*[0,3] + 0.5*[1,1] + b_dec
    assert_close(sae(X), [[3.5, 3.5], [1, 0]])


def test_apply_b_dec_to_input_false_by_hand():
    sae = hand_sae("standard", apply_b_dec_to_input=False)
    # pre = x W_enc + b_enc = [3, 2, 1] + b_enc and [0, 0, 0] + b_enc
    assert_close(sae.encode(X), [[3, 1, 1.5], [0, 0, 0.5]])
    assert_close(sae(X), [[5.5, 4.5], [1.5, 0.5]])


def test_jumprelu_by_hand_strict_threshold():
    sae = hand_sae("jumprelu")
    # pre = [2, 1, 0.5] vs threshold [1.5, 1.0, 0.1]: feature 1 sits exactly on it and stays off.
    assert_close(sae.encode(X), [[2, 0, 0.5], [0, 0, 0]])
    assert_close(sae(X), [[3.5, 0.5], [1, 0]])


def test_topk_by_hand_relu_after_topk():
    sae = hand_sae("topk", k=2)
    # top 2 of [2, 1, 0.5]; for the second token the top 2 are negative and ReLU zeroes them.
    f = sae.encode(X)
    assert_close(f, [[2, 1, 0], [0, 0, 0]])
    assert (f > 0).sum(-1).tolist() == [2, 0]
    assert_close(sae(X), [[3, 3], [1, 0]])


def test_topk_rescale_by_hand():
    sae = hand_sae("topk", k=2, rescale_acts_by_decoder_norm=True)
    # pre * ||W_dec|| = [2*1, 1*3, 0.5*sqrt2]: the top 2 are now features 1 and 0.
    assert_close(sae.encode(X), [[2, 3, 0], [0, 0, 0]])
    # decode divides by the norms again: [2/1, 3/3, 0] @ W_dec + b_dec
    assert_close(sae(X), [[3, 3], [1, 0]])


def test_gated_by_hand():
    sae = hand_sae("gated")
    # x' W_enc = [2, 2, 0]; gate: [2, 0.5, 0] > 0 -> [1, 1, 0]
    # magnitude: relu([2*1, 2*2, 0*1] + b_mag) = [2, 4, 1]; the gate closes feature 2.
    assert_close(sae.encode(X), [[2, 4, 0], [0, 0, 0]])
    assert_close(sae(X), [[3, 12], [1, 0]])
    assert not hasattr(sae, "b_enc")


def test_expected_average_only_in_is_identity_at_run_time():
    plain, scaled = hand_sae("standard"), hand_sae("standard", normalize_activations="expected_average_only_in")
    torch.testing.assert_close(scaled.encode(X), plain.encode(X))
    torch.testing.assert_close(scaled.decode(scaled.encode(X)), plain(X))


def test_constant_norm_rescale_by_hand():
    sae = make_sae(SAEConfig(2, 3, normalize_activations="constant_norm_rescale"),
                   W_enc=W_ENC, W_dec=W_DEC, b_dec=B_DEC)
    x = torch.tensor([[2.0, 2.0]])
    # coeff = sqrt(2)/||x|| = 1/2 -> [1, 1]; minus b_dec -> [0, 1]; pre = [0, 1, -1]
    f = sae.encode(x)
    assert_close(f, [[0, 1, 0]])
    # f W_dec + b_dec = [1, 3], then divided by the coefficient 1/2
    assert_close(sae.decode(f, like=x), [[2, 6]])
    assert_close(sae(x), [[2, 6]])


def test_layer_norm_by_hand():
    cfg = SAEConfig(3, 2, normalize_activations="layer_norm")
    sae = make_sae(cfg, W_enc=[[0.0, -1.0], [0.0, 0.0], [1.0, 0.0]], W_dec=[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    x = torch.tensor([[1.0, 2.0, 3.0]])
    # mu = 2, unbiased std = 1 -> x_n = [-1, 0, 1] / (1 + 1e-5)
    e = 1 / (1 + 1e-5)
    f = sae.encode(x)
    assert_close(f, [[e, e]], atol=1e-7)
    # [e, 0, e] * std + mu
    assert_close(sae(x), [[2 + e, 2, 2 + e]], atol=1e-6)


@pytest.mark.parametrize("norm", ["constant_norm_rescale", "layer_norm"])
def test_per_token_normalisation_needs_like(norm):
    sae = random_sae(4, 6, "standard")
    sae = make_sae(SAEConfig(4, 6, normalize_activations=norm), **{n: p.tolist() for n, p in sae.named_parameters()})
    f = sae.encode(torch.randn(2, 4))
    with pytest.raises(SAEError, match=r"like=x"):
        sae.decode(f)


def test_decode_ignores_like_without_per_token_normalisation():
    sae = hand_sae("standard")
    f = sae.encode(X)
    torch.testing.assert_close(sae.decode(f, like=X * 100), sae.decode(f))


def test_batch_dims_and_dtype():
    sae = random_sae(4, 8, "topk", k=3)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    f = sae.encode(x)
    assert f.shape == (2, 5, 8) and f.dtype == torch.float32
    torch.testing.assert_close(f[1, 3], sae.encode(x[1, 3].float()))
    assert sae(x).shape == (2, 5, 4)


def test_wrong_width_is_clear():
    sae = random_sae(4, 8, "standard")
    with pytest.raises(SAEError, match=r"shape \[2, 5\].*d_in is 4"):
        sae.encode(torch.randn(2, 5))
    with pytest.raises(SAEError, match=r"d_sae is 8"):
        sae.decode(torch.randn(2, 7))


# ---- purity ----------------------------------------------------------------------------------

def test_encode_decode_store_nothing_on_module():
    sae = make_sae(SAEConfig(4, 6, normalize_activations="layer_norm"), W_enc=torch.randn(4, 6).tolist(),
                   W_dec=torch.randn(6, 4).tolist())
    before = set(vars(sae))
    sae(torch.randn(3, 4))
    assert set(vars(sae)) == before


def test_threads_encode_different_inputs_concurrently():
    torch.manual_seed(0)
    sae = make_sae(SAEConfig(8, 16, normalize_activations="layer_norm"),
                   W_enc=torch.randn(8, 16).tolist(), W_dec=torch.randn(16, 8).tolist())
    inputs = [torch.randn(4, 8) * (i + 1) + i for i in range(2)]
    expected = [sae(x).detach() for x in inputs]
    failures = []

    def work(i):
        for _ in range(200):
            if not torch.equal(sae(inputs[i]).detach(), expected[i]):
                failures.append(i)
                return

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


# ---- config ----------------------------------------------------------------------------------

def test_to_dict_is_saelens_v6():
    cfg = SAEConfig(8, 16, "topk", k=4, hook_name="blocks.1.hook_resid_post", model_name="m",
                    metadata={"context_size": 128})
    d = cfg.to_dict()
    assert d["architecture"] == "topk" and d["k"] == 4 and d["rescale_acts_by_decoder_norm"] is False
    assert d["reshape_activations"] == "none" and d["dtype"] == "float32"
    assert d["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    assert d["metadata"]["model_name"] == "m" and d["metadata"]["context_size"] == 128
    assert d["metadata"]["sae_lens_version"] == "6.0.0"
    assert SAEConfig.from_dict(d) == cfg
    assert "k" not in SAEConfig(8, 16).to_dict()


def test_from_dict_ignores_unknown_keys_and_accepts_torch_dtype_strings():
    d = SAEConfig(8, 16).to_dict() | {"dtype": "torch.bfloat16", "some_future_key": 1}
    cfg = SAEConfig.from_dict(d)
    assert cfg.dtype == "bfloat16"
    assert SAEConfig(2, 3, dtype="torch.float32").dtype == "float32"
    with pytest.raises(SAEError, match="unsupported dtype 'int8'"):
        SAEConfig(2, 3, dtype="int8")


def test_v6_topk_without_k_gets_saelens_default():
    d = SAEConfig(8, 200, "topk", k=5).to_dict()
    del d["k"]
    assert SAEConfig.from_dict(d).k == 100


# The pre-6.0 cfg of gpt2-small-res-jb blocks.0.hook_resid_pre (as SAELens's old test lists it).
GPT2_RES_JB_LEGACY = {
    "activation_fn_str": "relu", "apply_b_dec_to_input": True, "architecture": "standard",
    "model_name": "gpt2-small", "hook_point": "blocks.0.hook_resid_pre", "hook_point_layer": 0,
    "hook_point_head_index": None, "dataset_path": "Skylion007/openwebtext",
    "dataset_trust_remote_code": True, "is_dataset_tokenized": False, "context_size": 128,
    "d_in": 768, "device": "cpu", "seed": 42, "dtype": "torch.float32", "expansion_factor": 32,
    "l1_coefficient": 8e-05, "lr": 0.0004, "model_from_pretrained_kwargs": {"center_writing_weights": True},
    "finetuning_scaling_factor": False, "d_sae": 24576, "neuronpedia_id": "gpt2-small/0-res-jb",
    "normalize_activations": "none", "prepend_bos": True, "sae_lens_training_version": None,
}
# What SAELens's handle_pre_6_0_config makes of it (SAELens's current test).
GPT2_RES_JB_V6 = {
    "d_in": 768, "device": "cpu", "dtype": "torch.float32", "d_sae": 24576,
    "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
    "metadata": {
        "model_name": "gpt2-small", "hook_name": "blocks.0.hook_resid_pre", "hook_head_index": None,
        "context_size": 128, "model_from_pretrained_kwargs": {"center_writing_weights": True},
        "neuronpedia_id": "gpt2-small/0-res-jb", "prepend_bos": True,
        "dataset_path": "Skylion007/openwebtext", "sae_lens_training_version": None,
    },
    "architecture": "standard",
}


def test_pre_6_0_conversion_matches_saelens():
    assert convert_pre_6_0_config(GPT2_RES_JB_LEGACY) == GPT2_RES_JB_V6
    cfg = SAEConfig.from_dict(GPT2_RES_JB_LEGACY)
    assert (cfg.d_in, cfg.d_sae, cfg.architecture, cfg.dtype) == (768, 24576, "standard", "float32")
    assert cfg.hook_name == "blocks.0.hook_resid_pre" and cfg.model_name == "gpt2-small"
    assert cfg.metadata["model_from_pretrained_kwargs"] == {"center_writing_weights": True}
    assert "l1_coefficient" not in cfg.metadata
    # Written back it is a v6 config, so a second read does not convert again.
    again = cfg.to_dict()
    assert again["metadata"]["sae_lens_version"] == "6.0.0"
    assert SAEConfig.from_dict(again) == cfg


@pytest.mark.parametrize("legacy, expected", [(True, "expected_average_only_in"), (False, "none"), (None, "none")])
def test_pre_6_0_boolean_normalize_activations(legacy, expected):
    d = {"d_in": 4, "d_sae": 8, "hook_point": "blocks.2.hook_resid_pre", "normalize_activations": legacy,
         "sae_lens_version": "3.13.0"}
    assert SAEConfig.from_dict(d).normalize_activations == expected


def test_pre_6_0_topk_activation_fn():
    d = {"d_in": 4, "d_sae": 8, "hook_point": "blocks.2.hook_resid_post", "activation_fn_str": "topk",
         "activation_fn_kwargs": {"k": 3}, "model_name": "gemma-2-2b"}
    cfg = SAEConfig.from_dict(d)
    assert (cfg.architecture, cfg.k, cfg.hook_name) == ("topk", 3, "blocks.2.hook_resid_post")
    assert cfg.metadata["neuronpedia_id"] is None and cfg.metadata["prepend_bos"] is True


# ---- files: round trips ----------------------------------------------------------------------

@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu", "gated"])
def test_round_trip(tmp_path, architecture):
    sae = random_sae(4, 8, architecture, k=3, hook_name="blocks.0.hook_resid_post", model_name="tiny", seed=1)
    with torch.no_grad():  # non-trivial values for every tensor
        for p in sae.parameters():
            p.add_(torch.rand(p.shape) * 0.1)
    sparsity = torch.log10(torch.rand(8) + 1e-10)
    save_sae(sae, tmp_path / "sae", sparsity=sparsity)
    assert sorted(p.name for p in (tmp_path / "sae").iterdir()) == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sae"]  # no temp leftovers
    loaded = load_sae(tmp_path / "sae")
    assert loaded.cfg == sae.cfg
    for name, p in sae.named_parameters():
        torch.testing.assert_close(getattr(loaded, name), p, atol=0, rtol=0)
    torch.testing.assert_close(loaded.sparsity, sparsity)
    x = torch.randn(5, 4)
    torch.testing.assert_close(loaded(x), sae(x))
    assert set(load_file(tmp_path / "sae" / "sae_weights.safetensors")) == {n for n, _ in sae.named_parameters()}


def test_round_trip_normalisation_and_dtype(tmp_path):
    base = random_sae(4, 8, "standard")
    cfg = SAEConfig(4, 8, apply_b_dec_to_input=False, normalize_activations="layer_norm", metadata={"note": "x"})
    sae = make_sae(cfg, **{n: p.tolist() for n, p in base.named_parameters()})
    save_sae(sae.to(torch.float64), tmp_path / "s")
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["dtype"] == "float64"
    loaded = load_sae(tmp_path / "s")
    assert loaded.dtype == torch.float64 and loaded.cfg.normalize_activations == "layer_norm"
    assert loaded.cfg.metadata["note"] == "x" and loaded.sparsity is None
    assert load_sae(tmp_path / "s", dtype=torch.bfloat16).W_enc.dtype == torch.bfloat16


def test_save_over_existing_folder(tmp_path):
    folder = tmp_path / "s"
    save_sae(random_sae(4, 8, "topk", k=2), folder, sparsity=torch.zeros(8))
    (folder / "notes.txt").write_text("mine")
    save_sae(random_sae(4, 8, "topk", k=2, seed=5), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["cfg.json", "notes.txt", "sae_weights.safetensors"]
    torch.testing.assert_close(load_sae(folder).W_dec, random_sae(4, 8, "topk", k=2, seed=5).W_dec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_fingerprint(tmp_path):
    sae = random_sae(4, 8, "standard")
    save_sae(sae, tmp_path / "a")
    save_sae(sae, tmp_path / "b")
    save_sae(random_sae(4, 8, "standard", seed=3), tmp_path / "c")
    fa = sae_fingerprint(tmp_path / "a")
    assert len(fa) == 64 and fa == sae_fingerprint(tmp_path / "b") != sae_fingerprint(tmp_path / "c")


def test_random_sae():
    sae = random_sae(6, 10, "topk", k=50, seed=2)
    assert sae.cfg.k == 10 and sae.cfg.metadata == {"untrained": True}
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(random_sae(6, 10, seed=2).W_dec, sae.W_dec)


# ---- Gemma Scope npz -------------------------------------------------------------------------

def write_npz(path: Path, **extra) -> Path:
    """A tiny Gemma Scope params.npz with the hand-case weights; extra=None drops a key."""
    arrays = {"w_enc": np.array(W_ENC, np.float32), "w_dec": np.array(W_DEC, np.float32),
              "b_enc": np.array(B_ENC, np.float32), "b_dec": np.array(B_DEC, np.float32),
              "threshold": np.array([1.5, 1.0, 0.1], np.float32)} | extra
    path.mkdir(parents=True, exist_ok=True)
    np.savez(path / "params.npz", **{key: a for key, a in arrays.items() if a is not None})
    return path / "params.npz"


def test_gemma_scope_npz_by_hand(tmp_path):
    file = write_npz(tmp_path / "layer_0" / "width_16k" / "average_l0_5")
    sae = load_gemma_scope_npz(file.parent, hook_name="blocks.0.hook_resid_post", model_name="gemma-2-2b")
    cfg = sae.cfg
    assert (cfg.architecture, cfg.d_in, cfg.d_sae, cfg.apply_b_dec_to_input) == ("jumprelu", 2, 3, False)
    assert cfg.metadata["context_size"] == 1024 and cfg.metadata["prepend_bos"] is True
    torch.testing.assert_close(sae.W_enc, torch.tensor(W_ENC))
    # No b_dec subtraction: pre = [3, 2, 1] + b_enc = [3, 1, 1.5] vs threshold [1.5, 1, 0.1]
    x = torch.tensor([[3.0, 2.0]])
    assert_close(sae.encode(x), [[3, 0, 1.5]])
    assert_close(sae(x), [[5.5, 1.5]])
    # It saves as an ordinary SAELens folder.
    save_sae(sae, tmp_path / "converted")
    torch.testing.assert_close(load_sae(tmp_path / "converted")(x), sae(x))
    assert len(sae_fingerprint(file)) == 64


def test_gemma_scope_npz_errors(tmp_path):
    file = write_npz(tmp_path / "g")
    with pytest.raises(SAEError, match=r"3 features but d_sae=16384"):
        load_gemma_scope_npz(file, hook_name="blocks.0.hook_resid_post", d_sae=16384)
    assert load_gemma_scope_npz(file, hook_name="blocks.0.attn.hook_z").cfg.reshape_activations == "hook_z"
    with pytest.raises(SAEError, match=r"does not exist.*params.npz"):
        load_gemma_scope_npz(tmp_path / "nowhere.npz", hook_name="x")
    with pytest.raises(SAEError, match=r"missing tensor\(s\) \['threshold'\]"):
        load_gemma_scope_npz(write_npz(tmp_path / "h", threshold=None), hook_name="x")


def test_gemma_scope_npz_is_never_unpickled(tmp_path):
    file = write_npz(tmp_path / "p", b_enc=np.array([{"evil": 1}, 2, 3], dtype=object))
    with pytest.raises(SAEError, match="cannot read"):
        load_gemma_scope_npz(file, hook_name="x")


def test_gemma_scope_embedding_scaling(tmp_path):
    file = write_npz(tmp_path / "e")
    plain = load_gemma_scope_npz(file, hook_name="blocks.0.hook_resid_post")
    embed = load_gemma_scope_npz(file, hook_name="hook_embed")
    torch.testing.assert_close(embed.W_enc, plain.W_enc / math.sqrt(2))
    torch.testing.assert_close(embed.W_dec, plain.W_dec * math.sqrt(2))


# ---- errors ----------------------------------------------------------------------------------

def saved(tmp_path, architecture="standard", **edit) -> Path:
    """A saved tiny SAE folder whose weights file is then edited (None deletes a tensor)."""
    folder = tmp_path / "sae"
    save_sae(random_sae(2, 3, architecture, k=2), folder)
    tensors = load_file(folder / "sae_weights.safetensors")
    for name, value in edit.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    save_file(tensors, folder / "sae_weights.safetensors")
    return folder


def test_missing_folder(tmp_path):
    with pytest.raises(SAEError, match=r"does not exist.*cfg.json"):
        load_sae(tmp_path / "nope")


def test_missing_file_lists_folder(tmp_path):
    (tmp_path / "cfg.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(SAEError, match=r"lacks sae_weights.safetensors.*contains: cfg.json, notes.txt"):
        load_sae(tmp_path)


def test_folder_hints(tmp_path):
    write_npz(tmp_path / "gemma")
    with pytest.raises(SAEError, match="load_gemma_scope_npz"):
        load_sae(tmp_path / "gemma")
    save_sae(random_sae(2, 3), tmp_path / "release" / "blocks.0")
    with pytest.raises(SAEError, match=r"SAE folders below it: blocks.0"):
        load_sae(tmp_path / "release")
    with pytest.raises(SAEError, match=r"is a file; pass the SAE folder"):
        load_sae(tmp_path / "release" / "blocks.0" / "cfg.json")


def test_missing_tensor(tmp_path):
    with pytest.raises(SAEError, match=r"missing tensor\(s\) \['b_enc'\].*holds: W_dec \[3, 2\], W_enc \[2, 3\], b_dec \[2\]"):
        load_sae(saved(tmp_path, b_enc=None))


def test_unexpected_tensor(tmp_path):
    with pytest.raises(SAEError, match=r"unexpected tensor\(s\) \['threshold'\].*architecture"):
        load_sae(saved(tmp_path, threshold=torch.zeros(3)))


def test_inconsistent_shape(tmp_path):
    with pytest.raises(SAEError, match=r"W_enc has shape \[3, 2\], expected \[2, 3\]"):
        load_sae(saved(tmp_path, W_enc=torch.zeros(3, 2)))


def test_non_finite_weights(tmp_path):
    W_dec = torch.zeros(3, 2)
    W_dec[0, 0], W_dec[2, 1] = float("nan"), float("inf")
    with pytest.raises(SAEError, match=r"W_dec has 2 NaN/inf value\(s\) of 6"):
        load_sae(saved(tmp_path, W_dec=W_dec))


def test_non_finite_after_cast(tmp_path):
    with pytest.raises(SAEError, match=r"W_enc has 1 NaN/inf.*float16"):
        load_sae(saved(tmp_path, W_enc=torch.tensor([[1e6, 0, 0], [0, 0, 0]])), dtype=torch.float16)


def test_unknown_architecture(tmp_path):
    folder = saved(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text()) | {"architecture": "transcoder"}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match=r"unknown SAE architecture 'transcoder'; supported: standard, topk, jumprelu, gated"):
        load_sae(folder)


def test_hook_z_reshape_is_read_and_kept():
    cfg = SAEConfig(4, 8, hook_name="blocks.0.attn.hook_z", reshape_activations="hook_z")
    assert SAEConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["reshape_activations"] == "hook_z"
    legacy = {"d_in": 768, "d_sae": 24576, "hook_point": "blocks.0.attn.hook_z"}
    assert SAEConfig.from_dict(legacy).reshape_activations == "hook_z"  # as SAELens's conversion sets it
    with pytest.raises(SAEError, match=r"reshape_activations='hook_z' with hook 'blocks.0.hook_resid_post'"):
        SAEConfig(4, 8, hook_name="blocks.0.hook_resid_post", reshape_activations="hook_z")


def test_bad_json_and_bad_config(tmp_path):
    folder = saved(tmp_path)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match="not valid JSON"):
        load_sae(folder)
    with pytest.raises(SAEError, match=r"lacks \['d_sae'\]"):
        SAEConfig.from_dict({"d_in": 4, "metadata": {"sae_lens_version": "6.1.0"}})
    with pytest.raises(SAEError, match=r"k in 1..d_sae=8"):
        SAEConfig(4, 8, "topk", k=9)
    with pytest.raises(SAEError, match="only apply to topk"):
        SAEConfig(4, 8, "standard", k=2)
    with pytest.raises(SAEError, match="covariance_whitening"):
        SAEConfig(4, 8, normalize_activations="covariance_whitening")


def test_bad_sparsity_file(tmp_path):
    folder = saved(tmp_path)
    save_file({"sparsity": torch.zeros(5)}, folder / "sparsity.safetensors")
    with pytest.raises(SAEError, match=r"'sparsity' of shape \[3\]"):
        load_sae(folder)
    with pytest.raises(SAEError, match=r"sparsity must have shape \[3\]"):
        save_sae(random_sae(2, 3), tmp_path / "x", sparsity=torch.zeros(4))


def test_legacy_scaling_factor(tmp_path):
    ones = saved(tmp_path, scaling_factor=torch.ones(3))
    assert not hasattr(load_sae(ones), "scaling_factor")  # all ones: dropped

    factor = torch.tensor([2.0, 0.5, 3.0])
    folder = saved(tmp_path, scaling_factor=factor)
    with pytest.raises(SAEError, match=r"scaling_factor is not all ones.*finetuning_scaling_factor"):
        load_sae(folder)
    cfg = json.loads((folder / "cfg.json").read_text()) | {"finetuning_scaling_factor": True}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sae, reference = load_sae(folder), random_sae(2, 3, "standard", k=2)
    f = torch.rand(4, 3)
    # old SAELens decode: (f * scaling_factor) @ W_dec + b_dec
    torch.testing.assert_close(sae.decode(f), (f * factor) @ reference.W_dec + reference.b_dec)


def test_check_compatible():
    sae = random_sae(4, 8, model_name="gpt2-small")
    check_compatible(sae, 4)
    with pytest.raises(SAEError, match=r"4-wide activations.*hidden size is 768.*gpt2-small"):
        check_compatible(sae, 768)


# ---- folds -----------------------------------------------------------------------------------

def uneven_sae(architecture: str, **cfg_kw) -> SAE:
    """A random SAE whose decoder rows have norms far from 1, and non-zero biases."""
    torch.manual_seed(3)
    cfg = SAEConfig(4, 8, architecture, **cfg_kw)
    sae = SAE(cfg)
    with torch.no_grad():
        for name, p in sae.named_parameters():
            p.copy_(torch.randn(p.shape) * 0.3)
        sae.W_dec.mul_(torch.rand(8, 1) * 3 + 0.2)
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.rand(8) * 0.2)
    return sae


@pytest.mark.parametrize("architecture, cfg_kw", [
    ("standard", {}), ("jumprelu", {}), ("gated", {}), ("topk", {"k": 3, "rescale_acts_by_decoder_norm": True}),
])
def test_fold_W_dec_norm_keeps_reconstruction(architecture, cfg_kw):
    sae = uneven_sae(architecture, **cfg_kw)
    before = sae.W_dec.detach().clone()
    folded = fold_W_dec_norm(sae)
    x = torch.randn(6, 4)
    torch.testing.assert_close(folded(x), sae(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded.W_dec.norm(dim=-1), torch.ones(8))
    torch.testing.assert_close((folded.encode(x) > 0), (sae.encode(x) > 0))  # same active set
    torch.testing.assert_close(sae.W_dec, before)  # the original is untouched


def test_fold_W_dec_norm_refuses_plain_topk():
    with pytest.raises(SAEError, match="rescale_acts_by_decoder_norm"):
        fold_W_dec_norm(uneven_sae("topk", k=3))


@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "gated", "topk"])
def test_fold_activation_norm_scaling_factor(architecture):
    sae = uneven_sae(architecture, normalize_activations="expected_average_only_in",
                     **({"k": 3} if architecture == "topk" else {}))
    s = 2.5
    folded = fold_activation_norm_scaling_factor(sae, s)
    assert folded.cfg.normalize_activations == "none"
    x = torch.randn(6, 4)
    torch.testing.assert_close(folded.encode(x), sae.encode(x * s), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(folded(x), sae(x * s) / s, atol=1e-5, rtol=1e-5)


def test_fold_activation_norm_scaling_factor_refuses_per_token_norms():
    with pytest.raises(SAEError, match="cannot be folded"):
        fold_activation_norm_scaling_factor(uneven_sae("standard", normalize_activations="layer_norm"), 2.0)


@pytest.mark.parametrize("architecture, cfg_kw", [
    ("standard", {}), ("gated", {}), ("jumprelu", {"normalize_activations": "layer_norm"}),
    ("topk", {"k": 3, "rescale_acts_by_decoder_norm": True}),
    ("topk", {"k": 3, "normalize_activations": "constant_norm_rescale"}),
])
def test_decode_change_equals_difference_of_decodes(architecture, cfg_kw):
    sae = uneven_sae(architecture, **cfg_kw)
    x = torch.randn(6, 4)
    f = sae.encode(x)
    f_new = f.clone()
    f_new[:, 2] = 5.0
    f_new[:, 6] *= 3.0
    want = sae.decode(f_new, like=x) - sae.decode(f, like=x)
    torch.testing.assert_close(sae.decode_change(f, f_new, [2, 6], like=x), want, atol=1e-5, rtol=1e-5)


def test_folder_hints_follow_no_links_and_stay_shallow(tmp_path):
    """The hint lists SAE folders under the path only: not through a symlink that
    leads out of it, and not past a few levels (a mistyped `/` must not walk the disk)."""
    save_sae(random_sae(2, 3), tmp_path / "outside" / "secret_sae")
    (tmp_path / "asked").mkdir()
    (tmp_path / "asked" / "link").symlink_to(tmp_path / "outside")
    save_sae(random_sae(2, 3), tmp_path / "asked" / "a" / "b" / "c" / "d" / "deep_sae")
    save_sae(random_sae(2, 3), tmp_path / "asked" / "near" / "sae")
    with pytest.raises(SAEError) as err:
        load_sae(tmp_path / "asked")
    assert "near/sae" in str(err.value)
    assert "secret_sae" not in str(err.value) and "deep_sae" not in str(err.value)
