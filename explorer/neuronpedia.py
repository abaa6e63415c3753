"""Neuronpedia exports of an index: SAEDashboard's batch files, and the body of Neuronpedia's upload route.

Two formats, both built from the index's feature cards plus the SAE and model weights:

- "neuronpedia": the files SAEDashboard's Neuronpedia runner writes (jbloomAus/SAEDashboard
  `sae_dashboard/neuronpedia/neuronpedia_runner.py`): a folder `{model}_{set}_{hook}_{d_sae}` with
  `batch-N.json` = `{model_id, layer, sae_set, [sae_id_suffix], features}` and a `run_settings.json`.
  Every feature has every key of `NeuronpediaDashboardFeature.to_dict` (`neuronpedia_dashboard.py`),
  empty lists where we have no data, so `neuronpedia_export.py` converts them for Neuronpedia's import.
- "neuronpedia-upload": the JSON body of Neuronpedia's `POST /api/feature/upload-batch`
  (hijohnnylin/neuronpedia `apps/webapp/app/api/feature/upload-batch/route.tsx`): camelCase,
  at most FEATURES_PER_BATCH features per body, user labels as explanations.

What each feature's numbers are, and which are estimated, is told in `explorer.neuronpedia_stats`.
Activation records are raw token strings (no display glyphs), position 0 dropped when it holds
BOS (as SAEDashboard drops it), values rounded to 3 decimals as its converter does.

Functions here take plain values (cards, arrays); `export_files` gathers them from a workspace
and yields the files batch by batch (a whole SAE's batches do not fit in memory at once).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from explorer.neuronpedia_stats import (
    N_INTERVALS,
    Activations,
    Corpus,
    FeatureWeights,
    _dec3,
    _round3,
    _share3,
    feature_weights,
    frac_nonzero,
    intervals,
    raw_strings,
    unit_norm_decoder,
)
from explorer.render import peak

if TYPE_CHECKING:
    from explorer.index import Example, FeatureCard

log = logging.getLogger(__name__)

SITE = "https://www.neuronpedia.org"
FORMATS = ("neuronpedia", "neuronpedia-upload")
INTERVAL_SIZE = 5  # NeuronpediaRunnerConfig.quantile_group_size
FEATURES_PER_BATCH = 128  # the runner's n_features_at_a_time, and the upload route's maximum
MAX_UPLOAD_TOKENS = 1024  # upload route: tokens and values of one activation
MAX_EXPLANATION = 512  # upload route: length of an explanation's text


# ---------------------------------------------------------------- ids


def slug(text: str) -> str:
    """`text` as a Neuronpedia id part: lower case, only a-z 0-9 - _ (its Model.id rule)."""
    return re.sub(r"[^a-z0-9_-]+", "-", str(text).lower()).strip("-")


@dataclass(frozen=True)
class NeuronpediaIds:
    """Where features live on Neuronpedia: a model id and a source "{layer}-{set}[__{suffix}]"."""

    model_id: str
    source: str

    @classmethod
    def parse(cls, neuronpedia_id: str) -> NeuronpediaIds:
        """From a SAELens `neuronpedia_id`, e.g. "gemma-2-2b/20-gemmascope-res-16k"."""
        model_id, _, source = str(neuronpedia_id).strip().partition("/")
        if not model_id or "-" not in source:
            raise ValueError(f"neuronpedia_id {neuronpedia_id!r} is not MODEL/LAYER-SET (e.g. gpt2-small/0-res-jb)")
        return cls(model_id, source)

    @classmethod
    def build(cls, model_id: str, layer: int | str, sae_set: str, suffix: str | None = None) -> NeuronpediaIds:
        """The source id as SAEDashboard's `_build_source_id` makes it (`layer` may be "e")."""
        return cls(slug(model_id), f"{slug(str(layer))}-{slug(sae_set)}" + (f"__{slug(suffix)}" if suffix else ""))

    @property
    def layer_part(self) -> str:
        return self.source.split("-")[0]

    @property
    def layer(self) -> int:
        """The source's layer; 0 for "e" (Neuronpedia's embedding layer)."""
        return int(self.layer_part) if self.layer_part.isdigit() else 0

    @property
    def sae_set(self) -> str:
        return self.source.partition("-")[2].split("__")[0]

    @property
    def suffix(self) -> str | None:
        return self.source.partition("__")[2] or None


def hook_layer(hook_name: str) -> int:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else 0


def resolve_ids(neuronpedia_id: str, model_name: str, hook_name: str, *, model_id: str | None = None,
                layer: int | None = None, sae_set: str | None = None, suffix: str | None = None) -> NeuronpediaIds:
    """The SAE's `neuronpedia_id` when it has one, else defaults from the model and hook names
    (set "explorer-<hook>"); each given part replaces its counterpart."""
    if neuronpedia_id:
        base = NeuronpediaIds.parse(neuronpedia_id)
    else:
        point = re.sub(r"^blocks\.\d+\.", "", hook_name).replace("hook_", "")
        base = NeuronpediaIds.build(slug(str(model_name).rstrip("/").rsplit("/", 1)[-1]) or "model",
                                    hook_layer(hook_name), "explorer-" + (slug(point) or "sae"))
    if (model_id, layer, sae_set, suffix) == (None, None, None, None):
        return base
    return NeuronpediaIds.build(
        model_id if model_id is not None else base.model_id,
        layer if layer is not None else base.layer_part,
        sae_set if sae_set is not None else base.sae_set,
        suffix if suffix is not None else base.suffix,
    )


def feature_url(neuronpedia_id: str, feature: int) -> str:
    """The feature's Neuronpedia page; "" when the SAE has no neuronpedia_id."""
    if not neuronpedia_id:
        return ""
    return f"{SITE}/{quote(str(neuronpedia_id).strip(), safe='/-_.')}/{int(feature)}"


# ---------------------------------------------------------------- the records


@dataclass(frozen=True)
class Record:
    """One activation record: a window and its bin, as SAEDashboard's converter writes it."""

    tokens: list[str]
    values: list[float]
    qualifying_token_index: int
    bin_min: float
    bin_max: float
    bin_contains: float
    top: bool  # in the top-activations group (bins -1 / max / -1)


def _record(ex: Example, corpus: Corpus, bins: tuple[float, float, float], top: bool) -> Record:
    p = peak(ex)
    values = list(ex.values)
    if 0 <= p < len(values):
        values[p] = ex.activation  # exact at the peak (the stored trace is float16)
    drop = int(corpus.bos_token_id is not None and bool(ex.token_ids) and ex.token_ids[0] == corpus.bos_token_id)
    tokens = raw_strings(ex.texts, ex.tokens)[drop:]
    return Record(tokens, _round3(values[drop:]), p - drop, *bins, top)


def records(card: FeatureCard, acts: Activations, corpus: Corpus) -> list[Record]:
    """The top examples, then up to INTERVAL_SIZE examples in each interval (highest first):
    the card's sampled examples that fall inside it first, then top examples."""
    out = [_record(ex, corpus, (-1, _dec3(card.max_activation), -1), True) for ex in card.top_examples]
    candidates = {}
    for ex in [e for q in card.quantiles for e in q.examples] + list(card.top_examples):
        candidates.setdefault((ex.window, ex.position), ex)
    used = set()
    for low, high, share in intervals(acts, corpus.n_all):
        inside = [key for key, ex in candidates.items() if key not in used and low <= ex.activation <= high]
        for key in inside[:INTERVAL_SIZE]:
            used.add(key)
            out.append(_record(candidates[key], corpus, (_dec3(low), _dec3(high), _share3(share)), False))
    return out


# ---------------------------------------------------------------- the two formats


def dashboard_feature(card: FeatureCard, weights: FeatureWeights, corpus: Corpus) -> dict:
    """One feature with every key of NeuronpediaDashboardFeature.to_dict, in its order. We have no
    correlations and no DFA: those lists stay empty, as SAEDashboard leaves them without data."""
    acts = Activations.from_card(card)
    heights, values = acts.histogram()
    return {
        "feature_index": int(card.feature),
        "neuron_alignment_indices": [i for i, _, _ in weights.alignment],
        "neuron_alignment_values": _round3(v for _, v, _ in weights.alignment),
        "neuron_alignment_l1": _round3(s for _, _, s in weights.alignment),
        "correlated_neurons_indices": [], "correlated_neurons_l1": [], "correlated_neurons_pearson": [],
        "correlated_features_indices": [], "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [t for t, _ in weights.neg],
        "neg_values": _round3(v for _, v in weights.neg),
        "pos_str": [t for t, _ in weights.pos],
        "pos_values": _round3(v for _, v in weights.pos),
        "frac_nonzero": frac_nonzero(acts, corpus),
        "freq_hist_data_bar_values": values,
        "freq_hist_data_bar_heights": heights,
        "logits_hist_data_bar_heights": list(weights.logit_heights),
        "logits_hist_data_bar_values": list(weights.logit_values),
        "n_prompts_total": corpus.n_prompts,
        "n_tokens_in_prompt": corpus.n_tokens_in_prompt,
        "dataset": corpus.dataset,
        "decoder_weights_dist": [],
        "activations": [
            {"bin_min": r.bin_min, "bin_max": r.bin_max, "bin_contains": r.bin_contains, "tokens": r.tokens,
             "values": r.values, "qualifying_token_index": r.qualifying_token_index}
            for r in records(card, acts, corpus)
        ],
    }


def _cut(r: Record) -> tuple[list[str], list[float]]:
    """At most MAX_UPLOAD_TOKENS tokens, the qualifying one kept."""
    if len(r.tokens) <= MAX_UPLOAD_TOKENS:
        return r.tokens, r.values
    a = min(max(0, r.qualifying_token_index - MAX_UPLOAD_TOKENS // 2), len(r.tokens) - MAX_UPLOAD_TOKENS)
    return r.tokens[a:a + MAX_UPLOAD_TOKENS], r.values[a:a + MAX_UPLOAD_TOKENS]


def user_label(card: FeatureCard) -> str:
    """The user's label ("" when the card shows the automatic one)."""
    return card.label if card.label and card.label != card.auto_label else ""


def upload_feature(card: FeatureCard, weights: FeatureWeights, corpus: Corpus) -> dict | None:
    """One feature of an upload-batch body; None when it has no example (the route needs one).
    A user label goes in as an explanation (cut to the route's 512 characters)."""
    acts = Activations.from_card(card)
    acts_out = []
    for r in records(card, acts, corpus):
        tokens, values = _cut(r)
        bins = (None, None, None) if r.top else (r.bin_min, r.bin_max, r.bin_contains)  # fraction must be >= 0
        acts_out.append({"tokens": tokens, "values": values,
                         "quantileMin": bins[0], "quantileMax": bins[1], "quantileFraction": bins[2]})
    if not acts_out:
        return None
    feature = {
        "index": int(card.feature),
        "density": frac_nonzero(acts, corpus),
        "topLogits": [{"token": t, "value": v} for t, v in zip([t for t, _ in weights.pos],
                                                               _round3(v for _, v in weights.pos))],
        "bottomLogits": [{"token": t, "value": v} for t, v in zip([t for t, _ in weights.neg],
                                                                  _round3(v for _, v in weights.neg))],
        "activations": acts_out,
    }
    label = user_label(card)
    if label:  # methodName / modelName must name types Neuronpedia knows: null is always accepted
        feature["explanations"] = [{"text": label[:MAX_EXPLANATION], "methodName": None, "modelName": None}]
    return feature


def batches(items: list, size: int = FEATURES_PER_BATCH) -> list[list]:
    """`items` in ceil(n / size) nearly equal runs, as the runner splits features (np.array_split)."""
    if not items:
        return []
    n = math.ceil(len(items) / size)
    cuts = [len(items) // n * i + min(i, len(items) % n) for i in range(n + 1)]  # the first len % n get one more
    return [items[cuts[i]:cuts[i + 1]] for i in range(n)]


def _dumps(obj) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False).encode()


def dashboard_folder(ids: NeuronpediaIds, hook_name: str, d_sae: int) -> str:
    """The runner's output folder name: {model_id}_{set}_{hook}_{d_sae}[_{suffix}]."""
    return f"{ids.model_id}_{ids.sae_set}_{hook_name}_{int(d_sae)}" + (f"_{ids.suffix}" if ids.suffix else "")


def dashboard_batch(features: list[dict], ids: NeuronpediaIds) -> dict:
    """One batch-N.json, as NeuronpediaConverter._create_batch_data makes it."""
    batch = {"model_id": ids.model_id, "layer": ids.layer, "sae_set": ids.sae_set}
    if ids.suffix:
        batch["sae_id_suffix"] = ids.suffix
    return {**batch, "features": features}


def run_settings(ids: NeuronpediaIds, hook_name: str, corpus: Corpus, top_n: int) -> dict:
    """run_settings.json: NeuronpediaRunnerConfig's names, for SAEDashboard's export step."""
    return {
        "model_id": ids.model_id, "layer": ids.layer, "sae_set": ids.sae_set, "np_set_name": ids.sae_set,
        "np_sae_id_suffix": ids.suffix, "hook_name": hook_name, "huggingface_dataset_path": corpus.dataset,
        "n_prompts_total": corpus.n_prompts, "n_tokens_in_prompt": corpus.n_tokens_in_prompt,
        "n_features_at_a_time": FEATURES_PER_BATCH, "n_quantiles": N_INTERVALS,
        "top_acts_group_size": top_n, "quantile_group_size": INTERVAL_SIZE, "generated_by": "sae-feature-explorer",
    }


def upload_body(features: list[dict], ids: NeuronpediaIds) -> dict:
    """One body for POST /api/feature/upload-batch."""
    if len(features) > FEATURES_PER_BATCH:
        raise ValueError(f"{len(features)} features in one upload; the route takes at most {FEATURES_PER_BATCH}")
    return {"modelId": ids.model_id, "source": ids.source, "features": features}


def workspace_ids(ws, **parts) -> NeuronpediaIds:
    """resolve_ids for a workspace's SAE (parts: model_id, layer, sae_set, suffix; None = default)."""
    cfg = ws.sae.cfg
    return resolve_ids(cfg.neuronpedia_id, cfg.model_name or ws.lm.name, ws.hook_name,
                       **{k: v for k, v in parts.items() if v is not None})


def dead_features(ws, features: Iterable[int]) -> list[int]:
    """Features that never fired in the index: no examples, so the upload route refuses them."""
    counts = ws.index.densities()
    return sorted(int(f) for f in set(features) if counts[int(f)] <= 0)


def export_files(ws, features: Iterable[int], fmt: str, *, dataset: str | None = None,
                 **parts) -> Iterator[tuple[str, bytes]]:
    """(relative path, bytes) of each file of `features` of the workspace's index in format `fmt`,
    one batch at a time. `dataset` defaults to the SAE's dataset_path (SAEDashboard's runner
    defaults it so); `parts` override the ids (workspace_ids). Upload bodies leave out
    dead_features."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown Neuronpedia format {fmt!r}. Fix: use one of {', '.join(FORMATS)}")
    if ws.index is None:
        raise ValueError("Neuronpedia exports need a feature index. Fix: build one with `explorer index`")
    ids = workspace_ids(ws, **parts)
    manifest = ws.index.manifest
    corpus = Corpus.from_manifest(manifest, ws.sae.cfg.dataset_path if dataset is None else dataset)
    features = sorted({int(f) for f in features})
    if fmt == "neuronpedia-upload":
        dead = set(dead_features(ws, features))
        features = [f for f in features if f not in dead]
    if not unit_norm_decoder(ws.sae):
        log.warning("the SAE's decoder rows are not unit-norm: SAEDashboard would fold their norms into the "
                    "encoder first, so its activations would be these times ||W_dec[i]||, its logits these over it")
    folder = dashboard_folder(ids, ws.hook_name, manifest.d_sae)
    for i, chunk in enumerate(batches(features)):
        weights = feature_weights(ws.lm, ws.sae, chunk)
        cards = [ws.index.card(f) for f in chunk]
        if fmt == "neuronpedia":
            batch = dashboard_batch([dashboard_feature(c, weights[c.feature], corpus) for c in cards], ids)
            yield f"{folder}/batch-{i}.json", _dumps(batch)
        else:
            built = [upload_feature(c, weights[c.feature], corpus) for c in cards]
            yield f"neuronpedia-upload/upload-{i}.json", _dumps(upload_body([b for b in built if b], ids))
    if fmt == "neuronpedia":
        settings = run_settings(ids, ws.hook_name, corpus, int(manifest.settings.get("top_n", 0)))
        yield f"{folder}/run_settings.json", json.dumps(settings, indent=1).encode() + b"\n"
