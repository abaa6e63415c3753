"""SAEs trained on TransformerLens-processed models, against TransformerLens itself.

TransformerLens is not needed here: tests/fixtures/transformerlens/ holds what it computed
(transformer-lens 2.17.0, transformers 4.57.6, torch 2.13.0+cpu, recorded in manifest.json):

    python3 -m venv /tmp/tlvenv
    /tmp/tlvenv/bin/pip install torch==2.13.0
    /tmp/tlvenv/bin/pip install transformer-lens==2.17.0 'pyarrow<22' 'numpy<2'
    /tmp/tlvenv/bin/python tests/fixtures/make_transformerlens_fixtures.py

Per model family (gpt2 and gpt_neox with LayerNorm; llama and qwen2 with RMSNorm and
grouped-query attention, qwen2 with value biases) the raw transformers weights, and per
processing setting TransformerLens's activations at every supported hook, its log-probs, and
its log-probs and greedy tokens with one feature of a random SAE clamped at a hook.

Here the same weights run in this project's transformers: activations mapped into the SAE's
space (explorer.tl_processing) must equal TransformerLens's within 1e-5, and steering through
the SAE must give TransformerLens's log-probs and tokens.
"""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tiny import byte_tokenizer, tiny_model

from explorer.activations import encode_prompt, token_activations
from explorer.corpus import Windows
from explorer.cpu_layout import can_pack, optimise_for_cpu
from explorer.evaluate import evaluate_sae
from explorer.hooks import (
    HOOK_KINDS,
    hook_module,
    hook_width,
    hooked,
    parse_hook,
    run_to_hook,
)
from explorer.index import FeatureIndex, build_index
from explorer.model import LoadedModel
from explorer.sae import SAE, SAEConfig, SAEError, build_sae
from explorer.sae_files import load_sae, save_sae
from explorer.steering import (
    GenerationSettings,
    Intervention,
    RowEdit,
    generate_rows,
    resolve,
)
from explorer.tl_processing import SAESpace, TLProcessing, describe, sae_space
from explorer.workspace import Workspace, open_sae

FIXTURES = Path(__file__).parent / "fixtures" / "transformerlens"
MANIFEST = json.loads((FIXTURES / "manifest.json").read_text())
CASES = [(model, processing) for model, names in MANIFEST["cases"].items() for processing in names]
STEER = [(model, processing, hook) for model, processing in CASES for hook in MANIFEST["steer_hooks"]]
LAST = MANIFEST["last_positions"]
ATOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


def _id(case) -> str:
    return "-".join(case)


@functools.cache
def fixture_model(model_type: str) -> LoadedModel:
    """The fixture's weights in this project's transformers (default attention kernel)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **MANIFEST["models"][model_type], **MANIFEST["common_config"])
    model = AutoModelForCausalLM.from_config(config).eval()
    weights = load_file(FIXTURES / model_type / "hf_weights.safetensors")
    assert set(dict(model.named_parameters())) == set(weights)  # tied lm_head is listed once
    model.load_state_dict(weights, strict=False)
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=byte_tokenizer(), name=f"tiny-{model_type}",
                       device=torch.device("cpu"), dtype=torch.float32)


@functools.cache
def expected(model_type: str, processing: str) -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / model_type / f"{processing}.safetensors")


def case_sae(model_type: str, processing: str, hook: str) -> SAE:
    """The fixture's SAE at `hook`, its cfg.json saying it was trained under `processing`."""
    saes = load_file(FIXTURES / model_type / "saes.safetensors")
    tensors = {key.split("/", 1)[1]: t for key, t in saes.items() if key.startswith(hook + "/")}
    cfg = SAEConfig(
        d_in=tensors["W_dec"].shape[1], d_sae=MANIFEST["d_sae"], hook_name=hook, model_name=f"tiny-{model_type}",
        reshape_activations="hook_z" if hook.endswith("hook_z") else "none",
        metadata={"model_from_pretrained_kwargs": MANIFEST["processings"][processing]},
    )
    return build_sae(cfg, tensors, f"{model_type}/saes.safetensors")


def prompt_ids(lm: LoadedModel) -> torch.Tensor:
    ids, _ = encode_prompt(lm, MANIFEST["prompt"])
    assert ids[0].tolist() == MANIFEST["token_ids"]
    return ids


def clamp(model_type: str, processing: str, hook: str) -> Intervention:
    feature = MANIFEST["features"][f"{model_type}/{processing}/{hook}"]
    return Intervention(feature, "clamp", MANIFEST["clamp_value"])


def all_hooks(lm: LoadedModel) -> list[str]:
    return [f"blocks.{layer}.{kind}" for layer in range(lm.n_layers) for kind in HOOK_KINDS]


# ---- the models are the same ------------------------------------------------------------------

@pytest.mark.parametrize("model_type", list(MANIFEST["cases"]))
def test_fixture_weights_give_transformerlens_log_probs(model_type):
    lm = fixture_model(model_type)
    with torch.inference_mode():
        ours = lm.model(prompt_ids(lm)).logits[0, -LAST:].log_softmax(-1)
    for processing in MANIFEST["cases"][model_type]:  # center_unembed shifts logits, not log-probs
        torch.testing.assert_close(ours, expected(model_type, processing)["log_probs"], atol=ATOL, rtol=0)


# ---- activations ------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=_id)
def test_activations_in_sae_space_equal_transformerlens(case):
    model_type, processing = case
    lm = fixture_model(model_type)
    ids = prompt_ids(lm)
    tl = expected(model_type, processing)
    for hook in all_hooks(lm):
        space = sae_space(lm.model, case_sae_cfg(model_type, processing, hook))
        with torch.inference_mode():
            raw = run_to_hook(lm.model, hook, ids)[0]
        torch.testing.assert_close(space.to_sae(raw), tl[hook], atol=ATOL, rtol=0, msg=lambda m, h=hook: f"{h}: {m}")
        # The map is applied exactly where TransformerLens's activation differs from the raw one.
        assert space.is_identity == torch.allclose(raw, tl[hook], atol=ATOL, rtol=0), hook


def case_sae_cfg(model_type: str, processing: str, hook: str) -> SAEConfig:
    return SAEConfig(d_in=1, d_sae=1, hook_name=hook,
                     metadata={"model_from_pretrained_kwargs": MANIFEST["processings"][processing]})


def test_processing_does_change_these_activations():
    """The fixtures are sensitive: processed activations are far from raw ones where it matters."""
    for model_type, hook in [("gpt2", "blocks.1.hook_resid_pre"), ("gpt2", "blocks.0.hook_mlp_out"),
                             ("gpt2", "blocks.1.attn.hook_z"), ("gpt_neox", "blocks.1.hook_resid_post"),
                             ("gpt_neox", "blocks.0.attn.hook_z")]:
        gap = (expected(model_type, "from_pretrained")[hook] - expected(model_type, "no_processing")[hook]).abs()
        assert float(gap.max()) > 0.05, (model_type, hook)
    qwen = expected("qwen2", "value_biases_only")["blocks.1.attn.hook_z"]
    assert float((qwen - expected("qwen2", "no_processing")["blocks.1.attn.hook_z"]).abs().max()) > 0.05


@pytest.mark.parametrize("case", [("gpt_neox", "from_pretrained"), ("qwen2", "value_biases_only")], ids=_id)
def test_packed_cpu_layout_gives_the_same_space(case):
    if not can_pack():
        pytest.skip("this torch build has no oneDNN packed linear")
    from transformers import AutoConfig, AutoModelForCausalLM

    model_type, processing = case
    config = AutoConfig.for_model(model_type, **MANIFEST["models"][model_type], **MANIFEST["common_config"])
    model = AutoModelForCausalLM.from_config(config).eval()
    model.load_state_dict(load_file(FIXTURES / model_type / "hf_weights.safetensors"), strict=False)
    assert optimise_for_cpu(model) != "stock"
    hook = "blocks.1.attn.hook_z"
    with torch.inference_mode():
        raw = run_to_hook(model, hook, torch.tensor([MANIFEST["token_ids"]]))[0]
        mapped = sae_space(model, case_sae_cfg(model_type, processing, hook)).to_sae(raw)
    torch.testing.assert_close(mapped, expected(model_type, processing)[hook], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_token_activations_are_the_sae_of_transformerlens_activations(case):
    model_type, processing = case
    lm = fixture_model(model_type)
    for hook in MANIFEST["steer_hooks"]:
        sae = case_sae(model_type, processing, hook)
        acts = token_activations(lm, sae, MANIFEST["prompt"], top_k=MANIFEST["d_sae"])
        with torch.inference_mode():
            want = sae.encode(expected(model_type, processing)[hook])
        got = torch.tensor([acts.feature_values(f) for f in range(MANIFEST["d_sae"])]).T
        torch.testing.assert_close(got[1:], want[1:], atol=ATOL, rtol=0)  # BOS lists no features


# ---- steering ---------------------------------------------------------------------------------

def steered_log_probs(lm, sae, iv, space: SAESpace) -> torch.Tensor:
    edit = RowEdit(sae, [resolve([iv], sae.cfg.d_sae)])
    with torch.inference_mode(), hooked(lm.model, {sae.cfg.hook_name: space.wrap(edit)}):
        return lm.model(prompt_ids(lm)).logits[0, -LAST:].log_softmax(-1)


@pytest.mark.parametrize("case", STEER, ids=_id)
def test_steering_matches_transformerlens(case):
    model_type, processing, hook = case
    lm = fixture_model(model_type)
    sae = case_sae(model_type, processing, hook)
    iv = clamp(model_type, processing, hook)
    space = sae_space(lm.model, sae.cfg)
    want = expected(model_type, processing)[f"steer/{hook}/log_probs"]
    torch.testing.assert_close(steered_log_probs(lm, sae, iv, space), want, atol=ATOL, rtol=0)
    if not space.is_identity:  # the same steering in the raw space would not match: the test can fail
        assert float((steered_log_probs(lm, sae, iv, SAESpace()) - want).abs().max()) > 1e-3


@pytest.mark.parametrize("case", STEER, ids=_id)
def test_generation_follows_transformerlens(case):
    """generate_rows (explorer's steering seam, KV cache) against TransformerLens: the first
    step's log-probs of both rows, and the greedy tokens."""
    model_type, processing, hook = case
    lm = fixture_model(model_type)
    settings = GenerationSettings(max_new_tokens=MANIFEST["greedy_steps"], stop_at_eos=False)
    logits = []
    spy = lm.model.get_output_embeddings().register_forward_hook(lambda mod, args, out: logits.append(out))
    try:
        clean, steered = generate_rows(lm, case_sae(model_type, processing, hook), MANIFEST["prompt"],
                                       [[], [clamp(model_type, processing, hook)]], settings)
    finally:
        spy.remove()
    tl = expected(model_type, processing)
    first = logits[0][:, -1].log_softmax(-1)  # (rows, vocab) after the prompt
    torch.testing.assert_close(first[0], tl["log_probs"][-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(first[1], tl[f"steer/{hook}/log_probs"][-1], atol=ATOL, rtol=0)
    assert clean.token_ids == tl["greedy"].tolist()
    assert steered.token_ids == tl[f"steer/{hook}/greedy"].tolist()


# ---- the index and the evaluation read the SAE's space too --------------------------------------

def prompt_windows(lm) -> Windows:
    tokens = prompt_ids(lm).numpy().astype(np.int32)
    return Windows(tokens, np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64))


@pytest.mark.parametrize("hook", ["blocks.1.hook_resid_pre", "blocks.1.attn.hook_z"])
def test_index_max_activations_are_transformerlens_ones(tmp_path, hook):
    lm = fixture_model("gpt2")
    saes = load_file(FIXTURES / "gpt2" / "saes.safetensors")
    steer_hook = "blocks.1.attn.hook_z" if hook.endswith("hook_z") else "blocks.0.hook_resid_post"
    tensors = {key.split("/", 1)[1]: t for key, t in saes.items() if key.startswith(steer_hook + "/")}
    cfg = SAEConfig(d_in=16, d_sae=MANIFEST["d_sae"], hook_name=hook,
                    metadata={"model_from_pretrained_kwargs": MANIFEST["processings"]["from_pretrained"]})
    sae = build_sae(cfg, tensors, "fixture")
    build_index(lm, sae, prompt_windows(lm), tmp_path / "idx", top_n=2, batch_size=1, progress=False)
    index = FeatureIndex.open(tmp_path / "idx", lm.tokenizer)
    with torch.inference_mode():
        want = sae.encode(expected("gpt2", "from_pretrained")[hook])[1:].max(0).values  # BOS skipped
    np.testing.assert_allclose(index.max_activations(), want.numpy(), atol=ATOL, rtol=0)
    # Logit effects: a hook_z feature reaches the residual stream through W_O (GPT-2's c_proj).
    block = lm.model.transformer.h[1]
    W_dec = sae.W_dec.detach()
    direction = W_dec @ block.attn.c_proj.weight if hook.endswith("hook_z") else W_dec
    effects = direction @ lm.model.get_output_embeddings().weight.T  # (d_sae, vocab)
    for f in range(MANIFEST["d_sae"]):
        top = [value for _, value in index.card(f).top_logits]
        np.testing.assert_allclose(top, effects[f].topk(len(top)).values.numpy(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("hook", MANIFEST["eval_hooks"])
def test_evaluation_scores_as_transformerlens_would(hook):
    """evaluate_sae reads x in the SAE's space and splices the reconstruction (and the zero
    ablation) back through the map: the losses are TransformerLens's with the activation
    replaced there."""
    model_type, processing = MANIFEST["eval_case"]
    lm = fixture_model(model_type)
    sae = case_sae(model_type, processing, hook)
    report = evaluate_sae(lm, sae, prompt_windows(lm), progress=False)  # BOS window: positions 1.. scored
    tl = expected(model_type, processing)
    targets = torch.tensor(MANIFEST["token_ids"][2:])[:, None]  # position p predicts token p + 1

    def ce(log_probs):
        return float(-log_probs[1:-1].gather(-1, targets).mean())

    def kl(log_probs):
        clean = tl["log_probs_all"][1:]
        return float((clean.exp() * (clean - log_probs[1:])).sum(-1).mean())

    splice, zero = tl[f"splice/{hook}/log_probs_all"], tl[f"zero/{hook}/log_probs_all"]
    assert report.ce_loss_clean == pytest.approx(ce(tl["log_probs_all"]), abs=ATOL)
    assert report.ce_loss_sae == pytest.approx(ce(splice), abs=ATOL)
    assert report.ce_loss_zero == pytest.approx(ce(zero), abs=ATOL)
    assert report.kl_div_sae == pytest.approx(kl(splice), abs=ATOL)
    assert report.kl_div_zero == pytest.approx(kl(zero), abs=ATOL)
    with torch.inference_mode():
        l0 = (sae.encode(tl[hook])[1:] > 0).sum(-1).float().mean()
    assert report.l0 == pytest.approx(float(l0))


# ---- reading the settings ---------------------------------------------------------------------

def test_processing_flags_read_as_saelens_does():
    assert TLProcessing.from_metadata({}) == TLProcessing()
    assert TLProcessing.from_metadata({"model_from_pretrained_kwargs": {}}) == TLProcessing()
    centred = TLProcessing.from_metadata({"model_from_pretrained_kwargs": {"center_writing_weights": True}})
    assert centred.on() == ["center_writing_weights"]
    # SAELens's own training default: over from_pretrained_no_processing, nothing is processed
    assert TLProcessing.from_metadata({"model_from_pretrained_kwargs": {"center_writing_weights": False,
                                                                         "dtype": "float32"}}) == TLProcessing()
    # a transformers model: the kwargs are transformers' own
    hf = {"model_class_name": "AutoModelForCausalLM", "model_from_pretrained_kwargs": {"fold_ln": True}}
    assert TLProcessing.from_metadata(hf) == TLProcessing()
    with pytest.raises(SAEError, match="must be an object"):
        TLProcessing.from_metadata({"model_from_pretrained_kwargs": ["fold_ln"]})


ALL_ON = ["fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases"]


@pytest.mark.parametrize("cfg, flags", [
    # gpt2-small-res-jb as on the Hub: a pre-6.0 config that names no kwargs (mats_sae_training
    # and SAELens < 3.19.2 loaded the model with from_pretrained's defaults)
    ({"d_in": 4, "d_sae": 8, "hook_point": "blocks.0.hook_resid_pre", "model_name": "gpt2-small"}, ALL_ON),
    # the same SAE through SAELens today: its pretrained_saes.yaml adds center_writing_weights
    ({"d_in": 4, "d_sae": 8, "hook_point": "blocks.0.hook_resid_pre",
      "model_from_pretrained_kwargs": {"center_writing_weights": True}}, ["center_writing_weights"]),
    # trained by SAELens 3.13 (from_pretrained, its runner's center_writing_weights=False)
    ({"d_in": 4, "d_sae": 8, "hook_point": "blocks.0.attn.hook_z", "sae_lens_training_version": "3.13.0",
      "model_from_pretrained_kwargs": {"center_writing_weights": False}},
     ["fold_ln", "center_unembed", "fold_value_biases"]),
    # trained by SAELens 6 (from_pretrained_no_processing, the same runner default)
    ({"d_in": 4, "d_sae": 8, "metadata": {"hook_name": "blocks.0.attn.hook_z", "sae_lens_version": "6.54.12",
                                          "sae_lens_training_version": "6.54.12",
                                          "model_from_pretrained_kwargs": {"center_writing_weights": False}}}, []),
    # a v6 config that names none (explorer's own SAEs, SAELens's conversions)
    ({"d_in": 4, "d_sae": 8, "metadata": {"sae_lens_version": "6.0.0"}}, []),
    # a transformers model: never TransformerLens-processed
    ({"d_in": 4, "d_sae": 8, "hook_point": "blocks.0.hook_resid_pre", "model_class_name": "AutoModelForCausalLM"}, []),
])
def test_cfg_json_processing(cfg, flags, tmp_path):
    read = SAEConfig.from_dict(cfg)
    assert TLProcessing.from_metadata(read.metadata).on() == flags
    again = SAEConfig.from_dict(read.to_dict())  # written back, it means the same
    assert again == read and TLProcessing.from_metadata(again.metadata).on() == flags


def test_saelens_written_folders():
    saelens = Path(__file__).parent / "fixtures" / "saelens"
    assert TLProcessing.from_metadata(load_sae(saelens / "standard").cfg.metadata).on() == []
    assert TLProcessing.from_metadata(load_sae(saelens / "legacy_topk").cfg.metadata).on() == ALL_ON


def test_settings_that_cannot_be_honoured_are_refused():
    lm = fixture_model("gpt2")
    refactored = {"model_from_pretrained_kwargs": {"refactor_factored_attn_matrices": True}}
    with pytest.raises(SAEError, match="refactor_factored_attn_matrices.*blocks.1.attn.hook_z"):
        sae_space(lm.model, SAEConfig(16, 8, hook_name="blocks.1.attn.hook_z", metadata=refactored))
    assert sae_space(lm.model, SAEConfig(16, 8, hook_name="blocks.1.hook_resid_pre", metadata=refactored)).is_identity
    with pytest.raises(SAEError, match="one attention head"):
        sae_space(lm.model, SAEConfig(16, 8, hook_name="blocks.1.attn.hook_z", metadata={"hook_head_index": 3}))


def test_describe_says_what_each_flag_does_here():
    gpt2, llama = fixture_model("gpt2"), fixture_model("llama")
    on = {"model_from_pretrained_kwargs": dict.fromkeys(ALL_ON, True)}
    line = describe(gpt2.model, SAEConfig(16, 8, hook_name="blocks.0.hook_resid_post", metadata=on))
    assert "center_writing_weights: activations centred along d_model" in line
    assert "fold_value_biases: no change at hook_resid_post" in line
    line = describe(llama.model, SAEConfig(16, 8, hook_name="blocks.0.hook_resid_post", metadata=on))
    assert "skipped, as TransformerLens does for RMSNorm models" in line
    line = describe(gpt2.model, SAEConfig(16, 8, hook_name="blocks.0.attn.hook_z", metadata=on))
    assert "value bias (LayerNorm bias folded in) subtracted" in line
    assert describe(gpt2.model, SAEConfig(16, 8, hook_name="blocks.0.attn.hook_z")) == \
        "TransformerLens processing: none (raw activations)"


def test_workspace_says_so_and_refuses_what_it_cannot_honour(tmp_path):
    lm = fixture_model("gpt2")
    save_sae(case_sae("gpt2", "from_pretrained", "blocks.1.attn.hook_z"), tmp_path / "z")
    sae, source, sae_id = open_sae(lm, str(tmp_path / "z"))
    assert sae.cfg.reshape_activations == "hook_z"
    ws = Workspace(lm=lm, sae=sae, sae_source=source, sae_id=sae_id, index=None)
    assert "TransformerLens-processed (fold_ln, center_writing_weights, center_unembed, fold_value_biases)" \
        in ws.describe()
    cfg = json.loads((tmp_path / "z" / "cfg.json").read_text())
    cfg["metadata"]["model_from_pretrained_kwargs"]["refactor_factored_attn_matrices"] = True
    (tmp_path / "z" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="refactor_factored_attn_matrices"):
        open_sae(lm, str(tmp_path / "z"))


# ---- attn.hook_z on every supported architecture --------------------------------------------

@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gpt2", "gpt_neox"])
def test_hook_z_is_the_input_of_the_output_projection(model_type):
    lm = tiny_model(model_type, n_layers=2)
    ids = torch.tensor([[257, 40, 41, 42, 43]])
    point = parse_hook(lm.model, "blocks.1.attn.hook_z")
    with torch.inference_mode():
        z = run_to_hook(lm.model, "blocks.1.attn.hook_z", ids)
        assert z.shape == (1, 5, hook_width(lm.model, point))
        projected = hook_module(lm.model, point)(z)
        if model_type != "gemma2":  # Gemma 2's hook_attn_out is after its post-attention norm
            torch.testing.assert_close(projected, run_to_hook(lm.model, "blocks.1.hook_attn_out", ids))
        clean = lm.model(ids).logits
        with hooked(lm.model, {"blocks.1.attn.hook_z": lambda z: z * 0}):
            assert not torch.allclose(lm.model(ids).logits, clean)


def test_hook_z_width_is_heads_times_head_dim():
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gemma2", hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  num_key_value_heads=2, head_dim=16, intermediate_size=64, vocab_size=258)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert hook_width(model, parse_hook(model, "blocks.0.attn.hook_z")) == 64
    assert run_to_hook(model, "blocks.0.attn.hook_z", torch.tensor([[1, 2, 3]])).shape == (1, 3, 64)
