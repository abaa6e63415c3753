"""Finishing an index: from a complete `PassState` to the index folder on disk.

`write_index(out, run, lm, sae, windows, manifest)` computes what the pass does not need to
stream (logit effects and decoder neighbours from the weights; co-occurrence partners,
quantile groups and the example table from the pass state), adds the automatic labels, and
writes the files named in explorer.index.format into a folder swapped in whole, the manifest
last with the size and sha256 of every other file, carrying the user labels over
(explorer.index.user_labels).

Quantile groups. SAEDashboard's groups are equal-width over (0, max], but max is known only at
the end, so the pass keeps a bottom-k sample per (feature, histogram bin). Here each group
boundary j * max / N_QUANTILES moves to the nearest histogram edge (at most a factor
10^0.05 = 1.12 away), so every group is a union of whole bins. A group's examples are the
SAMPLES_PER_BIN smallest sample keys among its bins' samples, which is exactly the bottom-k of
all its tokens (a uniform sample without replacement), and its fraction of the active tokens
is exact from the histogram. Groups that get no bins are left out (this happens when max lies
below the histogram range).

Ties. Every ranking here breaks ties by the lower id (`_ordered_topk`, `smallest_per_group`),
so the same inputs give the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from explorer import neighbours
from explorer.feature_map import carry_over_map
from explorer.files import replacing_dir
from explorer.hooks import residual_directions
from explorer.index.format import (
    EXAMPLE_ARRAYS,
    EXAMPLES_FILE,
    FEATURE_ARRAYS,
    FEATURES_FILE,
    LABELS_AUTO_FILE,
    MANIFEST_FILE,
    N_BINS,
    N_COOCCURRING,
    N_KINDS,
    N_LOGITS,
    N_NEIGHBOURS,
    N_QUANTILES,
    SAMPLES_PER_BIN,
    SOURCE_MASS,
    WINDOW_ARRAYS,
    WINDOWS_FILE,
)
from explorer.index.integrity import file_records, manifest_text
from explorer.index.pass_state import EMPTY, LOW32, PassState, decode_top_keys, smallest_per_group
from explorer.index.reader import TokenText
from explorer.index.user_labels import UserLabels, carry_over
from explorer.labels import auto_label

log = logging.getLogger(__name__)


def _ordered_topk(values: Tensor, k: int, largest: bool = True) -> tuple[Tensor, Tensor]:
    """torch.topk over the last dim of 2-D `values`, ties going to the lower index (torch.topk
    leaves the order of ties unspecified). Returns (values, indices).

    A plain topk of k + 8 candidates, re-sorted stably by index then value, is exact for every
    row whose last candidate is below the k-th value; rows with longer ties are sorted whole."""
    n = values.shape[-1]
    k = min(k, n)
    signed = values if largest else -values
    m = min(n, k + 8)
    cand, idx = signed.topk(m, dim=-1)
    last = cand[:, -1]
    by_index = torch.sort(idx, dim=-1).indices
    cand, idx = cand.gather(-1, by_index), idx.gather(-1, by_index)
    order = torch.sort(cand, dim=-1, descending=True, stable=True).indices
    cand, idx = cand.gather(-1, order)[:, :k], idx.gather(-1, order)[:, :k]
    if m < n:
        tied = (last >= cand[:, -1]).nonzero().squeeze(1)
        if len(tied):  # rare: a tie runs past the candidates, so sort those rows whole
            full = torch.sort(signed[tied], dim=-1, descending=True, stable=True)
            cand[tied], idx[tied] = full.values[:, :k], full.indices[:, :k]
    return (cand if largest else -cand), idx


@torch.inference_mode()
def _logit_effects(lm, sae, chunk: int = 256) -> dict[str, np.ndarray]:
    """Top and bottom N_LOGITS of W_dec[i] @ W_U per feature, W_U = lm_head.weight.T."""
    d = sae.cfg.d_sae
    out = {}
    for which in ("top", "bottom"):
        out[f"logit_{which}_ids"] = np.full((d, N_LOGITS), -1, np.int32)  # -1 pads
        out[f"logit_{which}_values"] = np.zeros((d, N_LOGITS), np.float32)
    head = lm.model.get_output_embeddings()
    W_dec = residual_directions(lm.model, sae.cfg.hook_name, sae.W_dec.detach().float())  # hook_z: via W_O
    if head is None or head.weight.shape[-1] != W_dec.shape[-1]:
        log.warning("no unembedding of width %d: logit effects are left empty", W_dec.shape[-1])
        return out
    W = head.weight.detach().to(sae.device, torch.float32)  # (vocab, d_model): W_U.T
    k = min(N_LOGITS, W.shape[0])
    for a in range(0, d, chunk):
        effects = W_dec[a:a + chunk] @ W.T  # (chunk, vocab)
        for which, largest in (("top", True), ("bottom", False)):
            vals, ids = _ordered_topk(effects, k, largest=largest)
            out[f"logit_{which}_ids"][a:a + chunk, :k] = ids.cpu().numpy()
            out[f"logit_{which}_values"][a:a + chunk, :k] = vals.cpu().numpy()
    return out


@torch.inference_mode()
def _neighbours(sae, chunk: int = 512) -> tuple[np.ndarray, np.ndarray, dict]:
    """N_NEIGHBOURS nearest other features by decoder cosine: (ids, cosines, method), -1/0 padded.
    Exact on a GPU, and on CPU up to explorer.neighbours.EXACT_MAX_CPU features; wider on CPU,
    approximately (faiss, explorer.neighbours). `method` goes into the manifest's settings."""
    d = sae.cfg.d_sae
    ids = np.full((d, N_NEIGHBOURS), -1, np.int32)
    cos = np.zeros((d, N_NEIGHBOURS), np.float32)
    k = min(N_NEIGHBOURS, d - 1)
    W = neighbours.normalised(sae.W_dec)
    if W.device.type == "cpu" and d > neighbours.EXACT_MAX_CPU and k > 0:
        ids[:, :k], cos[:, :k], method = neighbours.approximate_neighbours(W, k)
        return ids, cos, {**method, "exact_max_cpu": neighbours.EXACT_MAX_CPU}
    method = {"method": "exact", "exact_max_cpu": neighbours.EXACT_MAX_CPU}
    if k == 0:
        return ids, cos, method
    for a in range(0, d, chunk):
        sims = W[a:a + chunk] @ W.T  # (chunk, d_sae)
        rows = torch.arange(len(sims), device=sims.device)
        sims[rows, a + rows] = -math.inf  # not its own neighbour
        v, i = _ordered_topk(sims, k)
        ids[a:a + chunk, :k], cos[a:a + chunk, :k] = i.cpu().numpy(), v.cpu().numpy()
    return ids, cos, method


def _cooccurring(run: PassState) -> tuple[np.ndarray, np.ndarray]:
    """N_COOCCURRING partners by Jaccard C_ij / (C_ii + C_jj - C_ij), ties to the lower id."""
    d = run.d_sae
    rows, cols, c = run.cooc.directed()
    c = c.double()
    jac = (c / (run.count[rows] + run.count[cols] - c).double()).float()
    bits = jac.view(torch.int32).to(torch.int64)
    order_key = -((bits << 32) | (LOW32 - cols))  # smallest first == jaccard desc, then id asc
    chosen = smallest_per_group(rows, order_key, N_COOCCURRING)
    r, slot = rows[chosen], torch.zeros_like(chosen)
    if len(r):
        slot = torch.arange(len(r), device=r.device) - torch.searchsorted(r, r)
    ids = np.full((d, N_COOCCURRING), -1, np.int32)
    vals = np.zeros((d, N_COOCCURRING), np.float32)
    r_np, s_np = r.cpu().numpy(), slot.cpu().numpy()
    ids[r_np, s_np] = cols[chosen].cpu().numpy()
    vals[r_np, s_np] = jac[chosen].cpu().numpy()
    return ids, vals


def _quantile_starts(vmax: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(d_sae, N_QUANTILES + 1) first bin of each quantile group (and N_BINS at the end):
    boundary j * max / N_QUANTILES moved to the nearest edge in log space."""
    log_lo = math.log10(float(edges[0]))
    step = (math.log10(float(edges[-1])) - log_lo) / N_BINS
    j = np.arange(1, N_QUANTILES)
    with np.errstate(divide="ignore"):
        bounds = np.log10(vmax.astype(np.float64)[:, None] * j[None, :] / N_QUANTILES)
    snapped = np.clip(np.rint((bounds - log_lo) / step), 0, N_BINS)
    snapped = np.where(np.isfinite(snapped), snapped, 0).astype(np.int64)
    snapped = np.maximum.accumulate(snapped, axis=1)
    d = len(vmax)
    return np.concatenate([np.zeros((d, 1), np.int64), snapped, np.full((d, 1), N_BINS, np.int64)], axis=1)


def _examples(run: PassState) -> dict[str, np.ndarray]:
    """The flat example table: per feature its top examples, then each quantile group's."""
    d = run.d_sae
    count, vmax = run.count.cpu().numpy(), run.vmax.cpu().numpy()
    hist = run.hist.view(d, N_BINS).cpu().numpy().astype(np.int64)
    edges = run.edges.cpu().numpy()

    # Top examples: kind 0, rank = slot in the sorted buffer.
    top = -run.top.cpu()
    used = (top != -EMPTY).numpy()
    top_vals, top_tok = decode_top_keys(top)
    t_feat = np.broadcast_to(np.arange(d)[:, None], used.shape)[used]
    t_tok, t_val = top_tok.numpy()[used], top_vals.numpy()[used]
    t_rank = np.broadcast_to(np.arange(used.shape[1])[None, :], used.shape)[used]

    # Quantile groups: group of each bin, then the SAMPLES_PER_BIN smallest sample keys per group.
    starts = _quantile_starts(vmax, edges)  # (d, N_QUANTILES + 1)
    bin_group = (np.arange(N_BINS)[None, None, :] >= starts[:, 1:-1, None]).sum(1)  # (d, N_BINS)
    skeys = run.samples.view(d, N_BINS * SAMPLES_PER_BIN).cpu().numpy()  # (d_sae, bins * k)
    svals = run.sample_values.view(d, N_BINS * SAMPLES_PER_BIN).cpu().numpy()
    valid = skeys != EMPTY
    s_feat = np.broadcast_to(np.arange(d)[:, None], valid.shape)[valid]
    s_group = np.repeat(bin_group, SAMPLES_PER_BIN, axis=1)[valid]
    s_key, s_val = skeys[valid], svals[valid]
    chosen = smallest_per_group(torch.from_numpy(s_feat * N_QUANTILES + s_group),
                                torch.from_numpy(s_key), SAMPLES_PER_BIN).numpy()
    q_feat, q_kind = s_feat[chosen], 1 + s_group[chosen]
    q_tok, q_val = s_key[chosen] & LOW32, s_val[chosen]

    feat = np.concatenate([t_feat, q_feat]).astype(np.int64)
    kind = np.concatenate([np.zeros(len(t_feat), np.int64), q_kind])
    tok = np.concatenate([t_tok, q_tok]).astype(np.int64)
    val = np.concatenate([t_val, q_val]).astype(np.float32)
    # Top examples keep their rank; quantile examples show strongest first (ties: token asc).
    sub = np.where(kind == 0, np.concatenate([t_rank, np.zeros(len(q_feat), np.int64)]), 0)
    order = np.lexsort((tok, -val.astype(np.float64), sub, kind, feat))
    feat, kind, tok, val = feat[order], kind[order], tok[order], val[order]
    ptr = np.searchsorted(feat * N_KINDS + kind, np.arange(d * N_KINDS + 1))

    q_low = np.zeros((d, N_QUANTILES), np.float32)
    q_high = np.zeros((d, N_QUANTILES), np.float32)
    q_frac = np.zeros((d, N_QUANTILES), np.float32)
    q_valid = np.zeros((d, N_QUANTILES), np.uint8)
    cum = np.concatenate([np.zeros((d, 1), np.int64), np.cumsum(hist, axis=1)], axis=1)
    for g in range(N_QUANTILES):
        a, b = starts[:, g], starts[:, g + 1]
        in_group = cum[np.arange(d), b] - cum[np.arange(d), a]
        q_valid[:, g] = in_group > 0  # groups holding no token are left out
        q_low[:, g] = np.where(a == 0, 0.0, edges[np.minimum(a, N_BINS)])
        q_high[:, g] = np.where(b == N_BINS, vmax, np.minimum(edges[np.minimum(b, N_BINS)], vmax))
        q_frac[:, g] = in_group / np.maximum(count, 1)
    return {"ex_feature": feat, "ex_kind": kind, "ex_token": tok, "ex_activation": val, "ex_ptr": ptr,
            "q_low": q_low, "q_high": q_high, "q_fraction": q_frac, "q_valid": q_valid}


def _auto_labels(text: TokenText, peak_ids: np.ndarray, logit_ids: np.ndarray) -> list[str]:
    """explorer.labels.auto_label for every feature. Tokens go in as raw text, except pieces of
    a UTF-8 character (which decode to U+FFFD), which go in as their display string (<0xE2>)."""
    def readable(ids: np.ndarray) -> list[str]:
        return [raw if "\ufffd" not in raw else shown for raw, shown in zip(text.texts(ids), text.shown(ids))]

    peaks = readable(peak_ids[peak_ids >= 0])  # row-major: grouped by feature
    ends = np.cumsum((peak_ids >= 0).sum(1))
    labels = []
    for f in range(len(peak_ids)):
        promoted = logit_ids[f][logit_ids[f] >= 0][:3]
        labels.append(auto_label(peaks[ends[f] - (peak_ids[f] >= 0).sum():ends[f]], readable(promoted)))
    return labels


def _save_arrays(file: Path, arrays: dict[str, np.ndarray], names: tuple[str, ...]) -> None:
    """One safetensors file holding exactly the arrays that explorer.index.format names."""
    from safetensors.numpy import save_file

    if set(arrays) != set(names):
        raise RuntimeError(f"internal error: {file.name} would hold {sorted(arrays)}, the format says {sorted(names)}")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(file))


def write_index(out: Path, run: PassState, lm, sae, windows, manifest: dict) -> None:
    """Write the finished index folder `out` (replacing a previous one whole, keeping its user labels)."""
    d, L = run.d_sae, run.window_len
    ex = _examples(run)
    window = ex["ex_token"] // L
    position = (ex["ex_token"] % L).astype(np.int32)

    # Traces: the ones the final examples use, sorted by key; each example points at one.
    wf = torch.from_numpy(np.unique(window * d + ex["ex_feature"])).to(run.device)
    run.traces.keep_only(wf)
    t_keys, t_lens, t_pos, t_vals = (x.cpu().numpy() for x in run.traces.arrays())
    ex_trace = np.searchsorted(t_keys, window * d + ex["ex_feature"])
    if len(t_keys) != len(wf) or not np.array_equal(t_keys[ex_trace], window * d + ex["ex_feature"]):
        raise RuntimeError("internal error: an example's activation trace was not kept")
    trace_ptr = np.concatenate([[0], np.cumsum(t_lens)]).astype(np.int64)

    # Windows used by any example, each once.
    used_windows = np.unique(window)
    vocab = max(int(getattr(lm.model.config, "vocab_size", 0) or 0), len(lm.tokenizer))
    token_dtype = np.uint16 if vocab < 65536 else np.int32
    win_tokens = np.asarray(windows.tokens)[used_windows].astype(token_dtype)

    logits = _logit_effects(lm, sae)
    nb_ids, nb_cos, nb_method = _neighbours(sae)
    manifest = {**manifest, "settings": {**manifest["settings"], "neighbours": nb_method}}
    co_ids, co_jac = _cooccurring(run)

    top_mask = ex["ex_kind"] == 0
    peak_ids = np.full((d, run.top_n), -1, np.int32)
    top_rows = np.flatnonzero(top_mask)
    rank = top_rows - ex["ex_ptr"][ex["ex_feature"][top_rows] * N_KINDS]
    peak_ids[ex["ex_feature"][top_rows], rank] = np.asarray(windows.tokens)[window[top_rows], position[top_rows]]

    features = {
        "count": run.count.cpu().numpy(), "act_sum": run.total.cpu().numpy(), "act_max": run.vmax.cpu().numpy(),
        "hist_counts": run.hist.view(d, N_BINS).cpu().numpy().astype(np.int64), "hist_edges": run.edges.cpu().numpy(),
        "q_low": ex["q_low"], "q_high": ex["q_high"], "q_fraction": ex["q_fraction"], "q_valid": ex["q_valid"],
        **logits, "neighbour_ids": nb_ids, "neighbour_cos": nb_cos, "cooc_ids": co_ids, "cooc_jaccard": co_jac,
        "peak_token_ids": peak_ids,
    }
    feature_names = FEATURE_ARRAYS
    if run.source_mass is not None:  # optional: only corpora that name their sources have it
        features[SOURCE_MASS] = run.source_mass.view(d, run.n_sources).cpu().numpy()
        feature_names = FEATURE_ARRAYS + (SOURCE_MASS,)
    examples = {
        "ex_ptr": ex["ex_ptr"].astype(np.int64), "ex_window": window.astype(np.int64), "ex_position": position,
        "ex_activation": ex["ex_activation"], "ex_trace": ex_trace.astype(np.int64), "trace_ptr": trace_ptr,
        "trace_pos": t_pos.astype(np.int16 if L < 32768 else np.int32), "trace_val": t_vals.astype(np.float16),
    }
    win = {"window_ids": used_windows.astype(np.int64), "tokens": win_tokens,
           "doc_id": np.asarray(windows.doc_id, np.int64)[used_windows],
           "offset": np.asarray(windows.offset, np.int64)[used_windows]}

    labels = _auto_labels(TokenText(lm.tokenizer), peak_ids, logits["logit_top_ids"])

    with replacing_dir(out) as tmp:
        _save_arrays(tmp / FEATURES_FILE, features, feature_names)
        _save_arrays(tmp / EXAMPLES_FILE, examples, EXAMPLE_ARRAYS)
        _save_arrays(tmp / WINDOWS_FILE, win, WINDOW_ARRAYS)
        (tmp / LABELS_AUTO_FILE).write_text(json.dumps({"method": "explorer.labels.auto_label", "labels": labels},
                                                       ensure_ascii=False, indent=0), encoding="utf-8")
        # After the files it records (not the user labels: they change after the build).
        (tmp / MANIFEST_FILE).write_text(manifest_text({**manifest, "files": file_records(tmp)}), encoding="utf-8")
        carry_over(out, tmp, manifest["sae_fingerprint"], d)  # user labels outlive rebuilds
        carry_over_map(out, tmp, manifest["sae_fingerprint"])  # so does the feature map (it needs only the SAE)
    notice = UserLabels(out, manifest["sae_fingerprint"], d).notice()
    if notice:  # labels of another SAE were kept aside (now, or by an earlier rebuild)
        log.warning("%s", notice)
