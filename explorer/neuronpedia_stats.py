"""What SAEDashboard computes for a feature, rebuilt from an index's feature card and the SAE and
model weights: the numbers behind both Neuronpedia exports (`explorer.neuronpedia`).

What is computed as SAEDashboard computes it, and what is estimated (see `Activations`):
- logits histogram, top/bottom logits, neuron alignment: exact, from W_dec @ W_U and W_dec
  (`sae_vis_runner.py`, `data_parsing_fns.py`; `utils_fns.py` HistogramData.from_data);
- frac_nonzero: exact (firing tokens / all tokens of the indexed windows, "%.3f%%" rounded);
- activation histogram (50 linear bins from the smallest to the largest nonzero activation) and
  the share of all tokens in each of the 5 equal-width intervals over [0, max] (`sequence_data_
  generator.py`): exact when the feature fired on at most top_n tokens (the index then holds all
  of them); otherwise the tokens at or above its top_n-th activation are placed exactly and the
  rest are spread log-uniformly inside the index's log-spaced bins (10 per decade).

Rounding follows SAEDashboard's Neuronpedia converter, so the values match its batch files.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from explorer.tokens import token_strings

if TYPE_CHECKING:
    from explorer.index import FeatureCard

N_BINS = 50  # ActsHistogramConfig.n_bins and LogitsHistogramConfig.n_bins
N_INTERVALS = 5  # NeuronpediaRunnerConfig.n_quantiles
N_LOGITS = 10  # LogitsTableConfig.n_rows
N_ALIGNMENT = 3  # FeatureTablesConfig.n_rows


# ---------------------------------------------------------------- rounding as SAEDashboard does


def _dec3(x: float) -> float:
    """A bound as SAEDashboard's converter reads it back from a "{x:.3f}" group title."""
    return float(f"{float(x):.3f}")


def _share3(x: float) -> float:
    """A share as the converter reads it back from a "{x:.3%}" title: 5 decimals."""
    return float(f"{float(x):.3%}".rstrip("%")) / 100


def _round3(values: Iterable[float]) -> list[float]:
    """FeatureProcessor.round_list: numpy rounding to 3 decimals (half to even)."""
    return [float(v) for v in np.round(np.asarray(list(values), dtype=np.float64), 3)]


def histogram(data: Sequence[float], n_bins: int = N_BINS) -> tuple[list[int], list[float]]:
    """(bar heights, bar centres) as HistogramData.from_data and then the converter make them:
    torch.histc over min..max of `data` (float32), centres rounded to 5 then 3 decimals."""
    import torch

    data = torch.as_tensor(np.asarray(data, dtype=np.float32))
    if data.numel() == 0:
        return [], []
    lo, hi = data.min().item(), data.max().item()
    edges = torch.linspace(lo, hi, n_bins + 1)
    heights = torch.histc(data, bins=n_bins).int().tolist()
    return heights, _round3(round(x, 5) for x in (edges[:-1] + (hi - lo) / n_bins / 2).tolist())


# ---------------------------------------------------------------- the corpus


@dataclass(frozen=True)
class Corpus:
    """What the index was built from, as SAEDashboard's runner records it."""

    n_prompts: int  # windows indexed (n_prompts_total)
    n_tokens_in_prompt: int  # tokens per window
    dataset: str  # recorded as `dataset`; "" when unknown
    bos_token_id: int | None  # a window's position 0 holding it is dropped from the records

    @property
    def n_all(self) -> int:
        return self.n_prompts * self.n_tokens_in_prompt

    @classmethod
    def from_manifest(cls, manifest, dataset: str = "") -> Corpus:
        bos = manifest.settings.get("skip_bos_token_id")
        return cls(manifest.n_windows, manifest.window_len, dataset, None if bos is None else int(bos))


# ---------------------------------------------------------------- a feature's activations


@dataclass(frozen=True)
class Activations:
    """A feature's nonzero activations as far as its card tells them.

    The index keeps the exact top_n activations and a log-spaced histogram of all of them.
    When the feature fired on at most top_n tokens, `exact` holds every activation. Otherwise the
    tokens below the top_n-th activation are known only by histogram bin: `spread` holds them as
    (low, high, count) pieces, taken to be log-uniform inside each piece."""

    exact: np.ndarray  # float32, the top activations
    spread: tuple[tuple[float, float, int], ...]
    vmax: float
    seen_min: float  # the smallest activation on the card (top or sampled examples)

    @property
    def count(self) -> int:
        return len(self.exact) + sum(n for *_, n in self.spread)

    @property
    def complete(self) -> bool:
        return not self.spread

    @classmethod
    def from_card(cls, card: FeatureCard) -> Activations:
        exact = np.array([ex.activation for ex in card.top_examples], np.float32)
        count = int(sum(card.hist_counts))
        vmax = float(card.max_activation)
        sampled = [ex.activation for q in card.quantiles for ex in q.examples]
        seen_min = float(min([*exact.tolist(), *sampled], default=vmax))
        if count <= len(exact):
            return cls(exact, (), vmax, seen_min)
        # Bin of each exact value, as the index bins (explorer.index.pass_state._hist_bins).
        edges = np.asarray(card.hist_edges, np.float64)
        n_bins = len(card.hist_counts)
        rest = np.asarray(card.hist_counts, np.int64) - np.bincount(
            np.searchsorted(edges[1:-1], exact, side="right"), minlength=n_bins)[:n_bins]
        ceiling = min(float(exact.min()), vmax) if len(exact) else vmax  # the others lie at or below it
        spread = []
        for k in np.flatnonzero(rest > 0):
            high = min(ceiling, float(edges[k + 1]) if k < n_bins - 1 else vmax)
            spread.append((min(float(edges[k]), high), high, int(rest[k])))
        return cls(exact, tuple(spread), vmax, seen_min)

    def _cdf(self, x: float) -> float:
        """How many spread activations lie at or below x."""
        total = 0.0
        for low, high, n in self.spread:
            if x >= high:
                total += n
            elif x > low:
                total += n * math.log(x / low) / math.log(high / low)
        return total

    def count_between(self, low: float, high: float) -> float:
        """Activations v with low <= v <= high (expected count where spread)."""
        exact = int(((self.exact >= low) & (self.exact <= high)).sum())
        return exact + (self._cdf(high) - self._cdf(low) if self.spread else 0.0)

    def minimum(self) -> float:
        """The smallest activation: exact when complete, else the smaller of the smallest one seen
        and the lower edge of the lowest histogram bin that holds any."""
        if self.complete:
            return float(self.exact.min()) if len(self.exact) else 0.0
        return min(self.seen_min, self.spread[0][0])

    def histogram(self, n_bins: int = N_BINS) -> tuple[list[int], list[float]]:
        """SAEDashboard's activation histogram (`histogram` of the nonzero activations)."""
        import torch

        if self.complete:
            return histogram(self.exact, n_bins)
        lo, hi = float(np.float32(self.minimum())), float(np.float32(self.vmax))
        edges = torch.linspace(lo, hi, n_bins + 1)
        exact = torch.histc(torch.from_numpy(self.exact), bins=n_bins, min=lo, max=hi).long().numpy()
        # Whole counts from the rounded running total: each differs from the estimate by < 1/2,
        # at every edge, and they add up to the count exactly.
        cdf = np.rint([self._cdf(e) for e in edges.double().tolist()]).astype(np.int64)
        cdf[0], cdf[-1] = 0, sum(n for *_, n in self.spread)  # all of them lie within min..max
        spread = np.diff(cdf)
        values = _round3(round(x, 5) for x in (edges[:-1] + (hi - lo) / n_bins / 2).tolist())
        return [int(c) for c in exact + spread], values


def intervals(acts: Activations, n_all: int) -> list[tuple[float, float, float]]:
    """SAEDashboard's interval groups, highest first: (low, high, share of ALL tokens with
    low <= activation <= high). The lowest interval starts at 0, so it holds every token where
    the feature is zero too. Bounds are torch.linspace(0, max, 6) in float32."""
    import torch

    if acts.count == 0 or not acts.vmax > 0:
        return []
    q = torch.linspace(0, acts.vmax, N_INTERVALS + 1).tolist()
    zeros = n_all - acts.count
    out = []
    for i in range(N_INTERVALS - 1, -1, -1):
        inside = acts.count_between(q[i], q[i + 1]) + (zeros if q[i] <= 0 else 0)
        # a float32 mean there (mask.float().mean()): its rounding decides "%.3%" at a tie
        out.append((q[i], q[i + 1], float(np.float32(inside) / np.float32(max(n_all, 1)))))
    return out


def frac_nonzero(acts: Activations, corpus: Corpus) -> float:
    """Share of all tokens where the feature fires, as the converter reads it ("%.3f%%")."""
    return _share3(acts.count / max(corpus.n_all, 1))


# ---------------------------------------------------------------- what the weights give


@dataclass(frozen=True)
class FeatureWeights:
    """What SAEDashboard reads from the weights for one feature (logits = W_dec[i] @ W_U, as the
    index computes them: lm_head.weight, no final norm)."""

    logit_heights: list[int]
    logit_values: list[float]
    pos: list[tuple[str, float]]  # raw token string, logit; strongest first
    neg: list[tuple[str, float]]
    alignment: list[tuple[int, float, float]]  # (d_model index, W_dec value, share of |W_dec[i]|_1)


def raw_strings(texts: Sequence[str], shown: Sequence[str]) -> list[str]:
    """Raw token text; the display string where the text is empty or a broken UTF-8 piece (the
    display string then spells its bytes, <0xE2>), so no token is empty or U+FFFD."""
    return [t if t and "\ufffd" not in t else (s or t or "\ufffd") for t, s in zip(texts, shown)]


def feature_weights(lm, sae, features: Sequence[int], chunk: int = 256) -> dict[int, FeatureWeights]:
    """FeatureWeights of each feature."""
    import torch

    head = lm.model.get_output_embeddings()
    with torch.inference_mode():
        W_dec = sae.W_dec.detach().float().cpu()
        W_U = None
        if head is not None and head.weight.shape[-1] == sae.cfg.d_in:
            W_U = head.weight.detach().float().cpu().T  # (d_in, vocab)
        out = {}
        features = [int(f) for f in features]
        for a in range(0, len(features), chunk):
            rows = W_dec[features[a:a + chunk]]  # (chunk, d_in)
            logits = rows @ W_U if W_U is not None else None  # (chunk, vocab)
            for i, f in enumerate(features[a:a + chunk]):
                out[f] = _one_feature(rows[i], None if logits is None else logits[i], lm.tokenizer)
    return out


def unit_norm_decoder(sae) -> bool:
    """Whether every decoder row has norm 1. SAEDashboard folds the norms into the encoder first
    (fold_W_dec_norm): otherwise its activations are ours times ||W_dec[i]||, its logits ours over it."""
    import torch

    with torch.inference_mode():
        return bool(((sae.W_dec.detach().float().norm(dim=1) - 1).abs() <= 1e-3).all())


def _one_feature(row, logits, tokenizer) -> FeatureWeights:
    import torch

    k = min(N_ALIGNMENT, len(row))
    top = torch.topk(row, k)
    l1 = float(row.abs().sum()) or 1.0
    alignment = [(int(i), float(v), abs(float(v)) / l1) for v, i in zip(top.values, top.indices)]
    if logits is None:
        return FeatureWeights([], [], [], [], alignment)
    heights, values = histogram(logits.numpy())
    n = min(N_LOGITS, len(logits))
    pos, neg = torch.topk(logits, n), torch.topk(logits, n, largest=False)
    strings = raw_strings(*token_strings(tokenizer, pos.indices.tolist() + neg.indices.tolist()))
    pairs = list(zip(strings, pos.values.tolist() + neg.values.tolist()))
    return FeatureWeights(heights, values, pairs[:n], pairs[n:], alignment)
