"""Neuronpedia exports (explorer.neuronpedia) against the projects they must be read by, and the
SAE metadata (neuronpedia_id, model name, dataset...) shown with a workspace.

The schemas and the converter below are written from these files (not run: neither project is
installed here):
- jbloomAus/SAEDashboard `sae_dashboard/neuronpedia/neuronpedia_dashboard.py`: the keys of
  NeuronpediaDashboardBatch / Feature / Activation `to_dict`;
  `sae_dashboard/neuronpedia/neuronpedia_converter.py`: types, rounding, group-title parsing,
  `qualifying_token_index - 1` (BOS dropped);
  `sae_dashboard/neuronpedia/neuronpedia_export.py` (`_process_batch`): the keys it reads, in order;
  `sae_dashboard/utils_fns.py` (HistogramData.from_data), `sae_dashboard/sae_vis_runner.py`
  (frac_nonzero, the histogram of nonzero activations), `sae_dashboard/sequence_data_generator.py`
  (get_indices_dict: the intervals and their shares), `sae_dashboard/neuronpedia/neuronpedia_runner.py`
  (batch-N.json in `{model}_{set}_{hook}_{d_sae}`, n_features_at_a_time).
- hijohnnylin/neuronpedia `apps/webapp/app/api/feature/upload-batch/route.tsx` (uploadBatchSchema, as
  in its fork mitre/neuronpedia at 00aa0a19, which has topLogits/bottomLogits),
  `apps/webapp/lib/utils/source.ts` (source ids), `apps/webapp/prisma/schema.prisma` (Model.id rule).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from types import SimpleNamespace

import jsonschema
import numpy as np
import pytest
import torch
from tiny import tiny_model

from explorer import neuronpedia as npx
from explorer import render
from explorer.corpus import Windows
from explorer.hooks import run_to_hook
from explorer.index import FeatureIndex, build_index
from explorer.neuronpedia import Activations, Corpus, NeuronpediaIds
from explorer.sae import random_sae
from explorer.sae_config import SAEConfig

HOOK = "blocks.1.hook_resid_post"
D_SAE, N_WIN, L, BOS = 64, 40, 16, 257

# ---------------------------------------------------------------- schemas from the sources

_NUMS = {"type": "array", "items": {"type": "number"}}
_INTS = {"type": "array", "items": {"type": "integer"}}
_STRS = {"type": "array", "items": {"type": "string"}}
# NeuronpediaDashboardActivation.to_dict (dfa_* only when set)
ACTIVATION_KEYS = ["bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index"]
ACTIVATION_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ACTIVATION_KEYS,
    "properties": {"bin_min": {"type": "number"}, "bin_max": {"type": "number"}, "bin_contains": {"type": "number"},
                   "tokens": _STRS, "values": _NUMS, "qualifying_token_index": {"type": "integer"},
                   "dfa_values": _NUMS, "dfa_maxValue": {"type": "number"}, "dfa_targetIndex": {"type": "integer"}},
}
# NeuronpediaDashboardFeature.to_dict, in its order
FEATURE_KEYS = [
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations",
]
FEATURE_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": FEATURE_KEYS,
    "properties": {
        "feature_index": {"type": "integer", "minimum": 0},
        "neuron_alignment_indices": _INTS, "neuron_alignment_values": _NUMS, "neuron_alignment_l1": _NUMS,
        "correlated_neurons_indices": _INTS, "correlated_neurons_l1": _NUMS, "correlated_neurons_pearson": _NUMS,
        "correlated_features_indices": _INTS, "correlated_features_l1": _NUMS, "correlated_features_pearson": _NUMS,
        "neg_str": _STRS, "neg_values": _NUMS, "pos_str": _STRS, "pos_values": _NUMS,
        "frac_nonzero": {"type": "number", "minimum": 0, "maximum": 1},
        "freq_hist_data_bar_values": _NUMS, "freq_hist_data_bar_heights": _INTS,
        "logits_hist_data_bar_heights": _INTS, "logits_hist_data_bar_values": _NUMS,
        "n_prompts_total": {"type": "integer"}, "n_tokens_in_prompt": {"type": "integer"},
        "dataset": {"type": "string"}, "decoder_weights_dist": _NUMS,
        "activations": {"type": "array", "items": ACTIVATION_SCHEMA},
    },
}
# NeuronpediaDashboardBatch.to_dict; the converter adds sae_id_suffix when the runner has one
BATCH_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["model_id", "layer", "sae_set", "features"],
    "properties": {"model_id": {"type": "string"}, "layer": {"type": "integer"}, "sae_set": {"type": "string"},
                   "sae_id_suffix": {"type": "string"}, "features": {"type": "array", "items": FEATURE_SCHEMA}},
}
# route.tsx uploadBatchSchema (yup). yup's string().required() refuses "", so tokens have minLength 1.
_LOGITS = {"type": ["array", "null"], "maxItems": 20, "items": {
    "type": "object", "required": ["token", "value"],
    "properties": {"token": {"type": "string"}, "value": {"type": "number"}}}}
_NULLABLE_NAME = {"type": ["string", "null"]}
UPLOAD_SCHEMA = {
    "type": "object", "required": ["modelId", "source", "features"],
    "properties": {
        "modelId": {"type": "string", "pattern": "^[a-z0-9_-]+$"},  # lowercased; prisma Model.id rule
        "source": {"type": "string", "minLength": 1},
        "features": {"type": "array", "minItems": 1, "maxItems": 128, "items": {
            "type": "object", "required": ["index", "activations"],
            "properties": {
                "index": {"type": "integer", "minimum": 0, "maximum": 10_000_000},
                "density": {"type": "number", "minimum": 0, "maximum": 1},
                "topLogits": _LOGITS, "bottomLogits": _LOGITS,
                "explanations": {"type": "array", "items": {
                    "type": "object", "required": ["text"],
                    "properties": {"text": {"type": "string", "minLength": 1, "maxLength": 512},
                                   "methodName": _NULLABLE_NAME, "modelName": _NULLABLE_NAME}}},
                "activations": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["tokens", "values"],
                    "properties": {
                        "tokens": {"type": "array", "minItems": 1, "maxItems": 1024,
                                   "items": {"type": "string", "minLength": 1}},
                        "values": {"type": "array", "minItems": 1, "maxItems": 1024, "items": {"type": "number"}},
                        "quantileMax": {"type": ["number", "null"], "maximum": 99999999},
                        "quantileMin": {"type": ["number", "null"], "maximum": 99999999},
                        "quantileFraction": {"type": ["number", "null"], "minimum": 0, "maximum": 1}}}},
            }}},
    },
}


def convert_like_saedashboard(batch: dict, layer_num: int, set_id: str) -> tuple[list[dict], list[dict]]:
    """neuronpedia_export.py `_process_batch`, key by key: a missing key raises KeyError there."""
    suffix = batch.get("sae_id_suffix")
    source_id = f"{layer_num}-{set_id}" + (f"__{suffix}" if suffix else "")  # _build_source_id
    features, activations = [], []
    for fd in batch["features"]:
        feature = {"layer": source_id, "index": fd["feature_index"], "hasVector": bool(fd.get("vector"))}
        for key in ("neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                    "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
                    "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
                    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
                    "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
                    "logits_hist_data_bar_values", "decoder_weights_dist"):
            feature[key] = fd[key]
        max_act_approx = 0.0
        for ad in fd["activations"]:
            values = ad["values"]
            max_value = max(values)
            max_act_approx = max(max_act_approx, max_value)
            activations.append({
                "tokens": ad["tokens"], "index": fd["feature_index"], "layer": source_id, "maxValue": max_value,
                "maxValueTokenIndex": values.index(max_value), "minValue": min(values), "values": values,
                "dfaValues": ad.get("dfa_values", []), "binContains": ad["bin_contains"], "binMax": ad["bin_max"],
                "binMin": ad["bin_min"], "qualifyingTokenIndex": ad["qualifying_token_index"],
            })
        feature["maxActApprox"] = max_act_approx
        features.append(feature)
    return features, activations


# ---------------------------------------------------------------- SAEDashboard's numbers, from the dense activations


def title_number(title: str) -> float:
    return float(title.split(" = ")[-1])


def expected_histogram(data: torch.Tensor, n_bins: int = 50) -> tuple[list[int], list[float]]:
    """HistogramData.from_data, then the converter's round_list."""
    if data.numel() == 0:
        return [], []
    max_value, min_value = data.max().item(), data.min().item()
    bin_size = (max_value - min_value) / n_bins
    bin_edges = torch.linspace(min_value, max_value, n_bins + 1)
    heights = torch.histc(data, bins=n_bins).int().tolist()
    values = [round(x, 5) for x in (bin_edges[:-1] + bin_size / 2).tolist()]
    return [int(h) for h in np.round(heights, 3)], [float(v) for v in np.round(values, 3)]


def expected_feature(feat_acts: torch.Tensor) -> dict:
    """frac_nonzero (sae_vis_runner), the histogram, and the interval groups (get_indices_dict)
    as the converter parses their titles; `feat_acts` is (windows, seq), skipped BOS set to 0."""
    nonzero = feat_acts[feat_acts > 0]
    frac = nonzero.numel() / feat_acts.numel()
    title = f"ACTIVATIONS<br>DENSITY = {frac:.3%}"
    out = {"frac_nonzero": float(title.split(" = ")[1].split("%")[0]) / 100}
    out["heights"], out["values"] = expected_histogram(nonzero)
    out["top_max"] = title_number(f"TOP ACTIVATIONS<br>MAX = {feat_acts.max():.3f}")
    quantiles = torch.linspace(0, feat_acts.max().item(), 6)
    groups = []
    for i in range(4, -1, -1):
        lower, upper = quantiles[i:i + 2].tolist()
        pct = ((feat_acts >= lower) & (feat_acts <= upper)).float().mean()
        title = f"INTERVAL {lower:.3f} - {upper:.3f}<br>CONTAINS {pct:.3%}"
        split = title.split("<br>")
        first = split[0].split(" ")
        groups.append((float(first[1]), float(first[-1]), float(split[1].split(" ")[-1].rstrip("%")) / 100))
    out["groups"] = groups
    return out


# ---------------------------------------------------------------- fixtures


def make_windows() -> Windows:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 256, size=(N_WIN, L)).astype(np.int32)
    tokens[:, 0] = BOS
    tokens[7, 0] = 65  # a window without BOS keeps its position 0
    tokens[5, 3] = 10  # a newline and a space, which must stay raw text
    tokens[5, 4] = 32
    return Windows(tokens, np.arange(N_WIN, dtype=np.int64), np.zeros(N_WIN, dtype=np.int64))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    lm = tiny_model()
    sae = random_sae(32, D_SAE, architecture="topk", k=8, hook_name=HOOK, model_name=lm.name, seed=1)
    windows = make_windows()
    root = tmp_path_factory.mktemp("np")
    # top_n above every count: the index holds every activation, so everything is exact
    full = build_index(lm, sae, windows, root / "full", top_n=1000, batch_size=16, progress=False)
    part = build_index(lm, sae, windows, root / "part", top_n=4, batch_size=16, progress=False)
    with torch.inference_mode():
        dense = torch.cat([sae.encode(run_to_hook(lm.model, HOOK, torch.from_numpy(windows.tokens[a:a + 16]).long()))
                           for a in range(0, N_WIN, 16)]).float()
    dense = dense.clone()  # a normal tensor, to edit
    dense[torch.from_numpy(windows.tokens[:, 0] == BOS), 0, :] = 0.0  # skipped by the index, as SAEDashboard ignores BOS
    ix_full, ix_part = FeatureIndex.open(full, lm.tokenizer), FeatureIndex.open(part, lm.tokenizer)
    return SimpleNamespace(lm=lm, sae=sae, windows=windows, dense=dense, full=ix_full, part=ix_part)


def workspace(s, index, **metadata) -> SimpleNamespace:
    cfg = dataclasses.replace(s.sae.cfg, metadata={**s.sae.cfg.metadata, **metadata})
    sae = SimpleNamespace(cfg=cfg, W_dec=s.sae.W_dec)
    return SimpleNamespace(lm=s.lm, sae=sae, index=index, hook_name=HOOK, sae_id="sae-x")


def corpus(dataset="") -> Corpus:
    return Corpus(N_WIN, L, dataset, BOS)


# ---------------------------------------------------------------- ids


def test_ids_from_neuronpedia_id_and_defaults():
    ids = NeuronpediaIds.parse("gemma-2-2b/20-gemmascope-res-16k")
    assert (ids.model_id, ids.source, ids.layer, ids.sae_set, ids.suffix) == (
        "gemma-2-2b", "20-gemmascope-res-16k", 20, "gemmascope-res-16k", None)
    ids = NeuronpediaIds.parse("gpt2-small/8-res_post_32k-oai__l0-32")
    assert (ids.layer, ids.sae_set, ids.suffix) == (8, "res_post_32k-oai", "l0-32")
    assert NeuronpediaIds.parse("pythia-70m-deduped/e-res-sm").layer == 0  # "e": the embedding layer
    assert NeuronpediaIds.build("GPT2-Small", 3, "res jb", "x").source == "3-res-jb__x"
    with pytest.raises(ValueError, match="MODEL/LAYER-SET"):
        NeuronpediaIds.parse("gpt2-small")
    # defaults without a neuronpedia_id; each flag replaces its part
    ids = npx.resolve_ids("", "HuggingFaceTB/SmolLM2-135M", "blocks.15.hook_resid_post")
    assert (ids.model_id, ids.source) == ("smollm2-135m", "15-explorer-resid_post")
    ids = npx.resolve_ids("gpt2-small/0-res-jb", "gpt2", HOOK, layer=4, suffix="v2")
    assert (ids.model_id, ids.source) == ("gpt2-small", "4-res-jb__v2")
    assert npx.resolve_ids("pythia-70m-deduped/e-res-sm", "x", HOOK) == NeuronpediaIds("pythia-70m-deduped", "e-res-sm")
    assert npx.resolve_ids("pythia-70m-deduped/e-res-sm", "x", HOOK, suffix="b").source == "e-res-sm__b"
    assert npx.feature_url("gpt2-small/0-res-jb", 17) == "https://www.neuronpedia.org/gpt2-small/0-res-jb/17"
    assert npx.feature_url('x/0-a"><script>', 1) == "https://www.neuronpedia.org/x/0-a%22%3E%3Cscript%3E/1"
    assert npx.feature_url("", 17) == ""


def test_batches_split_as_the_runner_does():
    assert [len(b) for b in npx.batches(list(range(300)))] == [100, 100, 100]  # np.array_split into ceil(300/128)
    assert [len(b) for b in npx.batches(list(range(257)))] == [86, 86, 85]
    assert [len(b) for b in npx.batches(list(range(128)))] == [128] and npx.batches([]) == []
    assert [i for b in npx.batches(list(range(1000))) for i in b] == list(range(1000))
    with pytest.raises(ValueError, match="at most 128"):
        npx.upload_body([{"index": i} for i in range(129)], NeuronpediaIds("m", "0-s"))


# ---------------------------------------------------------------- numbers as SAEDashboard computes them


def test_exact_when_the_index_holds_every_activation(setup):
    """top_n above every count: frac_nonzero, the 50 linear bins and every interval's share equal
    SAEDashboard's computation on the same activations, digit for digit."""
    c = corpus()
    for f in range(D_SAE):
        card = setup.full.card(f)
        acts = Activations.from_card(card)
        want = expected_feature(setup.dense[:, :, f])
        assert acts.complete and acts.count == int((setup.dense[:, :, f] > 0).sum())
        assert npx.frac_nonzero(acts, c) == want["frac_nonzero"], f
        assert acts.histogram() == (want["heights"], want["values"]), f
        got = [(npx._dec3(lo), npx._dec3(hi), npx._share3(share)) for lo, hi, share in npx.intervals(acts, c.n_all)]
        assert got == want["groups"], f
        assert npx._dec3(card.max_activation) == want["top_max"]


def test_estimates_when_the_index_holds_only_the_top(setup):
    """top_n = 4: the counts still sum exactly, linear bins wholly above the 4th activation are
    exact, and below it the running count is off by at most the tokens of the one log bin (of the
    index's histogram) the edge falls in: where inside that bin they lie is all we do not know."""
    c = corpus()
    worst = 0.0
    for f in range(D_SAE):
        card = setup.part.card(f)
        acts = Activations.from_card(card)
        feat = setup.dense[:, :, f]
        nonzero = np.sort(feat[feat > 0].numpy())
        if len(nonzero) <= 4:
            continue
        assert not acts.complete and acts.count == len(nonzero)
        heights, values = acts.histogram()
        assert sum(heights) == len(nonzero) and len(heights) == len(values) == 50
        assert npx.frac_nonzero(acts, c) == expected_feature(feat)["frac_nonzero"]  # exact from the count
        # the tokens below the top 4, per log bin of the index: what the index knows only by bin
        log_edges = np.asarray(card.hist_edges)
        n_log = len(card.hist_counts)
        rest = np.bincount(np.searchsorted(log_edges[1:-1], nonzero[:-4], side="right"), minlength=n_log)

        def unknown(x, rest=rest, log_edges=log_edges):
            return rest[np.searchsorted(log_edges[1:-1], x, side="right")] + 1  # +1: edge ties

        edges = np.linspace(acts.minimum(), acts.vmax, 51)
        truth = np.histogram(nonzero, bins=edges)[0]
        est_run, true_run = np.cumsum([0, *heights]), np.cumsum([0, *truth])
        assert (np.abs(est_run - true_run) <= unknown(edges)).all(), f
        above = edges[:-1] > nonzero[-4]
        assert (np.asarray(heights)[above] == truth[above]).all(), f
        worst = max(worst, np.abs(est_run - true_run).max() / len(nonzero))
        for (lo, hi, share), (_, _, want) in zip(npx.intervals(acts, c.n_all), expected_feature(feat)["groups"]):
            assert abs(share - want) <= (unknown(lo) + unknown(hi)) / c.n_all + 1e-5, f
    assert worst < 0.25


def test_feature_weights_are_the_logit_effects(setup):
    w = npx.feature_weights(setup.lm, setup.sae, [0, 5])
    W_U = setup.lm.model.get_output_embeddings().weight.detach().float()  # (vocab, d_in)
    for f in (0, 5):
        logits = setup.sae.W_dec[f].detach().float() @ W_U.T
        assert (w[f].logit_heights, w[f].logit_values) == expected_histogram(logits)
        top = torch.topk(logits, 10)
        assert [v for _, v in w[f].pos] == pytest.approx(top.values.tolist())
        texts = [setup.lm.tokenizer.decode([i]) for i in top.indices.tolist()]
        for (shown, _), raw in zip(w[f].pos, texts):  # raw text; a broken UTF-8 piece spelled as its byte
            assert shown == raw if "\ufffd" not in raw else shown.startswith("<0x")
        row = setup.sae.W_dec[f].detach().float()
        best = torch.topk(row, 3)
        assert [i for i, _, _ in w[f].alignment] == best.indices.tolist()
        assert [s for _, _, s in w[f].alignment] == pytest.approx((best.values.abs() / row.abs().sum()).tolist())


def test_records_are_raw_text_without_bos_and_exact_at_the_peak(setup):
    c = corpus()
    seen_newline = False
    for f in range(D_SAE):
        card = setup.full.card(f)
        recs = npx.records(card, Activations.from_card(card), c)
        top = [r for r in recs if r.top]
        assert len(top) == len(card.top_examples)
        for r, ex in zip(top, card.top_examples):
            drop = 1 if ex.token_ids[0] == BOS else 0
            assert len(r.tokens) == len(r.values) == L - drop
            assert r.tokens == npx.raw_strings(ex.texts, ex.tokens)[drop:]
            assert r.values[r.qualifying_token_index] == round(ex.activation, 3)
            assert (r.bin_min, r.bin_max, r.bin_contains) == (-1, npx._dec3(card.max_activation), -1)
            seen_newline |= "\n" in r.tokens
            assert not any("␣" in t or "↵" in t or "\ufffd" in t or t == "" for t in r.tokens)
        for r in recs[len(top):]:  # interval groups: each example lies inside its interval
            v = r.values[r.qualifying_token_index]
            assert r.bin_min - 1e-3 <= v <= r.bin_max + 1e-3 and 0 <= r.bin_contains <= 1
        bins = [(r.bin_min, r.bin_max) for r in recs[len(top):]]
        assert bins == sorted(bins, reverse=True)  # highest interval first
    assert seen_newline
    assert npx.raw_strings([" ", "\ufffd", ""], ["␣", "<0xE2>", ""]) == [" ", "<0xE2>", "\ufffd"]


# ---------------------------------------------------------------- the files


def files_of(ws, features, fmt, **kw) -> dict[str, bytes]:
    return dict(npx.export_files(ws, features, fmt, **kw))


def test_batch_files_pass_the_schema_and_the_saedashboard_converter(setup):
    ws = workspace(setup, setup.full, neuronpedia_id="tiny-llama/1-res-test__v1", dataset_path="org/corpus")
    files = files_of(ws, range(D_SAE), "neuronpedia")
    folder = f"tiny-llama_res-test_{HOOK}_{D_SAE}_v1"
    assert sorted(files) == [f"{folder}/batch-0.json", f"{folder}/run_settings.json"]
    batch = json.loads(files[f"{folder}/batch-0.json"])
    jsonschema.validate(batch, BATCH_SCHEMA)
    assert (batch["model_id"], batch["layer"], batch["sae_set"], batch["sae_id_suffix"]) == (
        "tiny-llama", 1, "res-test", "v1")
    assert [f["feature_index"] for f in batch["features"]] == list(range(D_SAE))
    for feature in batch["features"]:
        assert list(feature) == FEATURE_KEYS
        assert (feature["n_prompts_total"], feature["n_tokens_in_prompt"], feature["dataset"]) == (N_WIN, L, "org/corpus")
        for act in feature["activations"]:
            assert list(act) == ACTIVATION_KEYS and len(act["tokens"]) == len(act["values"])
            assert 0 <= act["qualifying_token_index"] < len(act["tokens"])
    features, activations = convert_like_saedashboard(batch, layer_num=1, set_id="res-test")
    assert len(features) == D_SAE and {a["layer"] for a in activations} == {"1-res-test__v1"}
    assert len(activations) == sum(len(f["activations"]) for f in batch["features"])
    settings = json.loads(files[f"{folder}/run_settings.json"])
    assert (settings["n_prompts_total"], settings["top_acts_group_size"]) == (N_WIN, 1000)


def test_the_converter_stops_at_a_missing_key(setup):
    """The check above can fail: SAEDashboard's converter reads keys with [], so a missing one stops it."""
    ws = workspace(setup, setup.full)
    batch = json.loads(next(iter(files_of(ws, [3], "neuronpedia").values())))
    del batch["features"][0]["decoder_weights_dist"]
    with pytest.raises(KeyError, match="decoder_weights_dist"):
        convert_like_saedashboard(batch, 1, "s")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(batch, BATCH_SCHEMA)


def test_upload_bodies_pass_the_route_schema(setup):
    ix = setup.full
    ix.set_label(3, "my label for three")
    try:
        ws = workspace(setup, ix)
        files = files_of(ws, range(D_SAE), "neuronpedia-upload")
    finally:
        ix.set_label(3, "")
    assert list(files) == ["neuronpedia-upload/upload-0.json"]
    body = json.loads(files["neuronpedia-upload/upload-0.json"])
    jsonschema.validate(body, UPLOAD_SCHEMA)
    assert (body["modelId"], body["source"]) == ("tiny-llama", "1-explorer-resid_post")
    assert body["modelId"] == body["modelId"].lower() and body["source"] == body["source"].lower()
    indexes = [f["index"] for f in body["features"]]
    assert len(set(indexes)) == len(indexes) and indexes == sorted(indexes)  # the route wants them unique
    by_index = {f["index"]: f for f in body["features"]}
    assert by_index[3]["explanations"] == [{"text": "my label for three", "methodName": None, "modelName": None}]
    assert all("explanations" not in f for i, f in by_index.items() if i != 3)  # automatic labels are not sent
    for feature in body["features"]:
        for act in feature["activations"]:
            assert len(act["tokens"]) == len(act["values"])  # the route's own check
        top = [a for a in feature["activations"] if a["quantileFraction"] is None]
        assert len(top) == len(ix.card(feature["index"]).top_examples)


def test_dead_features_are_left_out_of_the_upload(setup):
    ws = workspace(setup, setup.full)
    dead = [f for f in range(D_SAE) if setup.full.card(f).top_examples == []]
    card = setup.full.card(0)
    empty = dataclasses.replace(card, top_examples=[], quantiles=[], hist_counts=[0] * len(card.hist_counts),
                                density=0.0, max_activation=0.0)
    assert npx.upload_feature(empty, npx.FeatureWeights([], [], [], [], []), corpus()) is None
    assert npx.dead_features(ws, range(D_SAE)) == dead


def test_a_long_window_is_cut_around_its_peak():
    r = npx.Record([str(i) for i in range(3000)], [0.0] * 3000, 2500, 0.0, 1.0, 0.5, False)
    tokens, values = npx._cut(r)
    assert len(tokens) == len(values) == 1024 and "2500" in tokens


# ---------------------------------------------------------------- the command line


def test_cli_writes_both_formats_and_zips_them(setup, tmp_path, monkeypatch):
    from explorer import cli, commands

    ws = workspace(setup, setup.full)
    monkeypatch.setattr(commands, "workspace", lambda args, with_index=True: ws)
    cli.main(["export", "2", "3", "--format", "json", "neuronpedia", "neuronpedia-upload", "--out", str(tmp_path / "o"),
              "--np-sae-set", "mine", "--np-model-id", "tiny"])
    written = sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*") if p.is_file())
    folder = f"tiny_mine_{HOOK}_{D_SAE}"
    assert written == sorted(["feature_00002.json", "feature_00003.json", f"{folder}/batch-0.json",
                              f"{folder}/run_settings.json", "neuronpedia-upload/upload-0.json"])
    body = json.loads((tmp_path / "o/neuronpedia-upload/upload-0.json").read_text())
    assert (body["modelId"], body["source"], [f["index"] for f in body["features"]]) == ("tiny", "1-mine", [2, 3])
    cli.main(["export", "--all", "--format", "neuronpedia", "--zip", "--out", str(tmp_path / "np.zip")])
    with zipfile.ZipFile(tmp_path / "np.zip") as zf:
        assert any(n.endswith("batch-0.json") for n in zf.namelist())
    with pytest.raises(SystemExit):
        cli.main(["export", "--format", "neuronpedia", "--out", str(tmp_path / "x")])  # no features named


# ---------------------------------------------------------------- SAE metadata


def test_config_keeps_and_shows_saelens_metadata():
    legacy = {"d_in": 768, "d_sae": 24576, "model_name": "gpt2-small", "hook_point": "blocks.0.hook_resid_pre",
              "dataset_path": "Skylion007/openwebtext", "context_size": 128, "prepend_bos": True,
              "neuronpedia_id": "gpt2-small/0-res-jb", "sae_lens_version": "3.0.0"}
    cfg = SAEConfig.from_dict(legacy)
    assert (cfg.model_name, cfg.neuronpedia_id, cfg.dataset_path, cfg.context_size, cfg.prepend_bos) == (
        "gpt2-small", "gpt2-small/0-res-jb", "Skylion007/openwebtext", 128, True)
    assert cfg.provenance() == ("model gpt2-small · dataset Skylion007/openwebtext · context 128 tokens · "
                                "BOS prepended · Neuronpedia gpt2-small/0-res-jb")
    again = SAEConfig.from_dict(cfg.to_dict())  # kept through a save
    assert again.neuronpedia_id == cfg.neuronpedia_id and again.context_size == 128
    bare = SAEConfig(d_in=4, d_sae=8)
    assert (bare.neuronpedia_id, bare.context_size, bare.prepend_bos, bare.provenance()) == ("", None, None, "")


def test_workspace_says_when_the_sae_names_another_model():
    from explorer.workspace import Workspace, model_mismatch

    assert model_mismatch("gpt2-small", "openai-community/gpt2") == ""  # TransformerLens alias, hub organisation
    assert model_mismatch("demo", "SmolLM2-135M-Instruct") == ""
    assert model_mismatch("", "anything") == ""
    assert model_mismatch("gemma-2-2b", "/models/gemma-2-2b/") == ""
    warning = model_mismatch("gemma-2-2b", "gpt2")
    assert "gemma-2-2b" in warning and "gpt2" in warning and "Fix" in warning
    lm = tiny_model()
    sae = random_sae(32, 16, model_name="gemma-2-2b", hook_name=HOOK)
    ws = Workspace(lm=lm, sae=sae, sae_source="x", sae_id="y", index=None)
    assert ws.notices() == [model_mismatch("gemma-2-2b", lm.name)]
    assert ws.describe().splitlines()[1:] == ["SAE metadata: model gemma-2-2b", f"WARNING: {ws.notices()[0]}"]
    ws = Workspace(lm=lm, sae=random_sae(32, 16, model_name=lm.name, hook_name=HOOK), sae_source="x", sae_id="y",
                   index=None)
    assert ws.notices() == []


def test_card_links_to_neuronpedia_only_when_known(setup):
    card = setup.full.card(3)
    url = npx.feature_url("gpt2-small/0-res-jb", 3)
    top = render.card_html(card, neuronpedia_url=url).top
    assert f'<a href="{url}" target="_blank" rel="noopener noreferrer">Open on Neuronpedia</a>' in top
    assert "neuronpedia" not in render.card_html(card).top.lower()
    assert "<a" not in render.card_html(card, neuronpedia_url='javascript:alert("x")').top  # https only
    assert "neuronpedia.org" not in render.card_page(card, source="s")  # the offline page has no link


# ---------------------------------------------------------------- the app


@pytest.mark.demo
def test_the_export_menu_offers_both_neuronpedia_formats():
    from test_app import app, no_exception

    at = app("pages/feature.py", feature="3")
    at.session_state["export_open"] = True
    at.run()
    assert "SAEDashboard batch files" not in [b.proto.label for b in at.get("download_button")]  # not built yet
    at.session_state["np_open"] = True  # the "For Neuronpedia" popover
    at.run()
    no_exception(at)
    assert [b.proto.label for b in at.get("download_button")][-2:] == ["SAEDashboard batch files", "Upload-batch bodies"]
    assert "15-explorer-resid_post" in "\n".join(c.value for c in at.caption)
