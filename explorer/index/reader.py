"""Reading an index: `FeatureIndex` and the `FeatureCard` it reads for one feature.

`FeatureIndex.open(path, tokenizer)` checks the folder (explorer.index.integrity) and maps the
three safetensors files (explorer.index.mapped; names in explorer.index.format); `.card(feature)`
reads that feature's rows from them. Nothing at open or per card grows with the number of
features: arrays are views of the mapped files, and the automatic labels are read one line at
a time (explorer.index.text_column). Labels (`label`, `set_label`; user labels are kept by
explorer.index.user_labels, `label_notice` says what is kept aside), `search` (vectorised; its
structures are built on first use) and `check_matches` (is this index for the loaded model and
SAE?) read the same files.
`TokenText` caches token strings per id; the build uses it too, for the automatic labels.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from explorer.index.format import (
    EXAMPLES_FILE,
    FEATURES_FILE,
    LABELS_AUTO_FILE,
    N_KINDS,
    N_QUANTILES,
    SOURCE_MASS,
    WINDOWS_FILE,
    IndexFormatError,
    IndexManifest,
    IndexMismatchError,
)
from explorer.index.explanations import Explanation, read_explanations, search_explanations
from explorer.index.integrity import check_feature_rows, open_checked
from explorer.index.text_column import LabelLines, TextColumn, rank
from explorer.index.user_labels import UserLabels
from explorer.tokens import token_strings

SEARCH_BY = ("label", "top_token", "logit_token", "explanation")


@dataclass(frozen=True)
class Example:
    window: int
    position: int  # the example's token inside the window
    activation: float  # exact (float32) activation at that token
    token_ids: list[int]
    tokens: list[str]  # display strings (explorer.tokens.token_strings)
    texts: list[str]  # raw decoded text per token
    values: list[float]  # this feature's activation at every token of the window (float16-rounded)


@dataclass(frozen=True)
class QuantileBin:
    low: float
    high: float
    fraction: float  # share of the feature's active tokens in this bin
    examples: list[Example]


@dataclass(frozen=True)
class FeatureCard:
    feature: int
    label: str  # the user's label if set, else the automatic one
    auto_label: str
    density: float  # share of indexed tokens where the feature fires (> 0)
    max_activation: float
    mean_activation: float  # over the tokens where it fires
    n_tokens: int  # tokens indexed
    hist_edges: list[float]  # N_BINS + 1 edges; the first and last bins are open-ended
    hist_counts: list[int]
    top_logits: list[tuple[str, float]]  # display string, W_dec[i] @ W_U
    bottom_logits: list[tuple[str, float]]
    top_examples: list[Example]
    quantiles: list[QuantileBin]
    neighbours: list[tuple[int, float]]  # (feature, decoder cosine)
    cooccurring: list[tuple[int, float]]  # (feature, jaccard)
    # True when the index counted co-occurrence approximately (past the exact bound; the
    # manifest's settings["cooccurrence"] states the error): explorer.index.cooccurrence
    cooccurrence_approximate: bool = False
    # (source, share of the feature's activation mass), largest first; empty when the corpus named no sources
    source_mix: list[tuple[str, float]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain JSON-ready types (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def _best_keys(key: np.ndarray, limit: int) -> np.ndarray:
    """Where `key` is at most its limit-th smallest value (all of it when shorter)."""
    if len(key) <= limit:
        return np.arange(len(key))
    return np.flatnonzero(key <= np.partition(key, limit - 1)[limit - 1])


class TokenText:
    """Cached raw text and display string per token id.

    A card reads ~45 windows of 128 tokens: the lookups are C-level (set
    difference, map over dict.__getitem__), which keeps them near 1 ms."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}
        self._shown: dict[int, str] = {}

    def _ids(self, ids) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # plain ints
        missing = sorted(set(ids).difference(self._texts))
        if missing:
            texts, shown = token_strings(self.tokenizer, missing)
            self._texts.update(zip(missing, texts))
            self._shown.update(zip(missing, shown))
        return ids

    def texts(self, ids) -> list[str]:
        return list(map(self._texts.__getitem__, self._ids(ids)))

    def shown(self, ids) -> list[str]:
        return list(map(self._shown.__getitem__, self._ids(ids)))


class FeatureIndex:
    """A built index, read lazily from memory-mapped safetensors files. Thread-safe for reading."""

    def __init__(self, path: Path, manifest: IndexManifest, tokenizer, features, examples, windows,
                 auto_labels: LabelLines):
        self.path = path
        self.manifest = manifest
        self.d_sae = manifest.d_sae
        self._features, self._examples, self._windows = features, examples, windows
        self._auto = auto_labels
        self._text = TokenText(tokenizer)
        self._lock = threading.Lock()
        self._user_labels = UserLabels(path, manifest.sae_fingerprint, manifest.d_sae)
        # label_notice: what of the user labels is not in use and how to restore it ("" when all is)
        self._user, self.label_notice = self._open_user_labels()
        self._cache: dict[str, np.ndarray] = {}
        self._search: dict[str, object] = {}  # search structures, built on first use

    @classmethod
    def open(cls, path: str | Path, tokenizer) -> FeatureIndex:
        """The index at `path`, checked as far as headers and small arrays go (IndexFormatError)."""
        path = Path(path).expanduser()
        manifest, handles = open_checked(path)
        features, examples, windows = handles[FEATURES_FILE], handles[EXAMPLES_FILE], handles[WINDOWS_FILE]
        auto = LabelLines(path / LABELS_AUTO_FILE, manifest.d_sae)
        return cls(path, manifest, tokenizer, features, examples, windows, auto)

    # -- whole-index arrays: read-only views of the mapped files (pages are read when touched)

    def _array(self, handle, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = handle.array(name)
        return self._cache[name]

    def max_activations(self) -> np.ndarray:
        return self._array(self._features, "act_max")

    def densities(self) -> np.ndarray:
        return self._array(self._features, "count") / max(self.manifest.n_tokens, 1)

    def source_names(self) -> list[str]:
        """The corpus sources of `source_masses`' columns; empty when the corpus named none."""
        names = self.manifest.settings.get("source_names") or []
        return [str(n) for n in names] if SOURCE_MASS in self._features.keys() else []  # noqa: SIM118

    def source_masses(self) -> np.ndarray | None:
        """(d_sae, n_sources) float64 activation sum per feature and source, or None."""
        names = self.source_names()
        if not names:
            return None
        mass = self._array(self._features, SOURCE_MASS)
        if mass.shape != (self.d_sae, len(names)):
            raise IndexFormatError(f"The index file {self.path / FEATURES_FILE} holds {SOURCE_MASS} of shape "
                                   f"{list(mass.shape)}, but the manifest names {len(names)} sources for "
                                   f"{self.d_sae} features. Fix: rebuild it with `explorer index`")
        return mass

    def _source_mix(self, f: int) -> list[tuple[str, float]]:
        mass = self.source_masses()
        if mass is None or mass[f].sum() <= 0:
            return []
        row, names = mass[f], self.source_names()
        order = np.lexsort((np.arange(len(row)), -row))  # largest first, ties by name order
        return [(names[i], float(row[i] / row.sum())) for i in order if row[i] > 0]

    # -- labels

    def _open_user_labels(self) -> tuple[dict[int, str], str]:
        """The user labels in use (explorer.index.user_labels), and the notice about the rest.
        An index in a folder that cannot be written still opens, with no user labels."""
        try:
            labels, problem = self._user_labels.load(), ""
        except OSError as err:
            labels = {}
            problem = (f"{self._user_labels.file} could not be read or moved aside ({err}): no user labels "
                       "are shown, and saving one fails until that is fixed. ")
        return labels, problem + self._user_labels.notice()

    def _check_feature(self, feature) -> int:
        if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < self.d_sae:
            raise ValueError(f"Feature {feature!r} does not exist: this index has features 0..{self.d_sae - 1}")
        return int(feature)

    def label(self, feature: int) -> str:
        """The user's label when set, else the automatic one."""
        feature = self._check_feature(feature)
        return self._user.get(feature) or self._auto.get(feature)

    def set_label(self, feature: int, text: str) -> None:
        """Set a user label (empty text removes it), in labels_user.json; rebuilds for the same SAE keep it."""
        feature = self._check_feature(feature)
        text = (text or "").strip()
        with self._lock:
            # Read again: another process may have written meanwhile, or a hand edit broken the
            # file (then it is moved aside first). OSError: nothing was written.
            labels = self._user_labels.load()
            if text:
                labels[feature] = text
            else:
                labels.pop(feature, None)
            self._user_labels.save(labels)
            self._user = labels
            self.label_notice = self._user_labels.notice()

    # -- search

    def search(self, query: str, by: str = "label", limit: int = 20, explanations: bool = True) -> list[int]:
        """Features whose label / top-example peak tokens / promoted logit tokens / LLM
        explanation contain `query` (case-insensitive substring), best first. By label,
        features whose explanation matches come first (unless `explanations` is False).

        label: exact match, then prefix, then earliest match; top_token: most top examples
        peaking on a matching token, then max activation; logit_token: best rank of a
        matching promoted token, then its logit."""
        if by not in SEARCH_BY:
            raise ValueError(f"search by {by!r} is not supported; use one of {', '.join(SEARCH_BY)}")
        q = (query or "").strip().casefold()
        if not q or limit <= 0:
            return []
        if by == "explanation" or (by == "label" and explanations and self.explanations()):
            # LLM explanations first (explorer.index.explanations), then the labels' own ranking.
            found = search_explanations(self.explanations(), q, limit)
            if by == "label":
                found += [f for f in self.search(query, "label", limit, explanations=False) if f not in found]
            return found[:limit]
        if by == "label":
            return self._search_labels(q, limit)
        name = "peak_token_ids" if by == "top_token" else "logit_top_ids"
        ids = self._array(self._features, name)
        present, texts = self._token_texts(name, ids)
        wanted = np.zeros(int(present[-1]) + 2 if len(present) else 1, bool)  # by token id; -1 -> the last
        wanted[present[[q in t for t in texts]]] = True
        hit = wanted[ids]
        n_hits = hit.sum(1)
        found = np.flatnonzero(n_hits)
        # The primary key first: only features that tie with the limit-th or beat it are sorted.
        if by == "top_token":
            found = found[_best_keys(-n_hits[found], limit)]
            order = np.lexsort((found, -self.max_activations()[found].astype(np.float64), -n_hits[found]))
        else:
            first = hit[found].argmax(1)  # the best-ranked matching promoted token
            keep = _best_keys(first, limit)
            found, first = found[keep], first[keep]
            value = self._array(self._features, "logit_top_values")[found, first]
            order = np.lexsort((found, -value.astype(np.float64), first))
        return [int(f) for f in found[order][:limit]]

    def _search_labels(self, q: str, limit: int) -> list[int]:
        """Label search: the automatic labels through a TextColumn, the user labels (few) directly;
        a user label hides the automatic one of its feature."""
        with self._lock:
            if "label" not in self._search:
                self._search["label"] = TextColumn(self._auto.all())
            column = self._search["label"]
        features, at, exact = column.find(q)
        user = {f: text.casefold() for f, text in self._user.items() if text}
        if user:
            keep = ~np.isin(features, np.fromiter(user, np.int64, len(user)))
            features, at, exact = features[keep], at[keep], exact[keep]
            mine = [(f, text.find(q), text == q) for f, text in user.items() if q in text]
            features = np.concatenate([features, np.array([f for f, _, _ in mine], np.int64)])
            at = np.concatenate([at, np.array([a for _, a, _ in mine], np.int64)])
            exact = np.concatenate([exact, np.array([e for _, _, e in mine], bool)])
        return [int(f) for f in rank(features, at, exact, limit)]

    def _token_texts(self, name: str, ids: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """The token ids present in column `name` and their stripped, case-folded texts (cached)."""
        with self._lock:
            if name not in self._search:
                present = np.flatnonzero(np.bincount(ids[ids >= 0]))  # ids are token ids: bincount beats unique
                self._search[name] = present, [t.strip().casefold() for t in self._text.texts(present)]
            return self._search[name]
    # -- explanations (explorer.explain writes them; read on first use)

    def explanations(self) -> dict[tuple[int, str], Explanation]:
        """(feature, method) -> Explanation; {} when none were made."""
        if getattr(self, "_explanations", None) is None:
            self._explanations = read_explanations(self.path)
        return self._explanations

    def reload_explanations(self) -> None:
        """Read the file again on next use (after `explorer explain` wrote to it)."""
        self._explanations = None

    def feature_explanations(self, feature: int) -> list[Explanation]:
        """This feature's records, LLM first."""
        f = self._check_feature(feature)
        recs = self.explanations()
        return [recs[(f, m)] for m in ("llm", "heuristic") if (f, m) in recs]

    def window_tokens(self) -> np.ndarray:
        """(window, token) ids of every window the index keeps."""
        return self._array(self._windows, "tokens")

    def token_texts(self, ids) -> list[str]:
        return self._text.texts(ids)

    # -- cards

    def check_matches(self, model_name: str | None, hook_name: str, sae_fingerprint: str | None) -> None:
        """Raise IndexMismatchError unless the index was built for this model, hook and SAE
        (a None model name or fingerprint is not checked)."""
        m = self.manifest
        wrong = []
        if model_name is not None and model_name != m.model_name:
            wrong.append(f"the loaded model is {model_name!r}")
        if hook_name != m.hook_name:
            wrong.append(f"the SAE reads hook {hook_name}")
        if sae_fingerprint is not None and sae_fingerprint != m.sae_fingerprint:
            wrong.append(f"the loaded SAE is {sae_fingerprint[:16]}")
        if wrong:
            raise IndexMismatchError(
                f"The index at {self.path} was built for hook {m.hook_name} of model {m.model_name!r} with SAE "
                f"{m.sae_fingerprint[:16]}, but {' and '.join(wrong)}. Fix: rebuild the index with `explorer index` "
                "for this model and SAE, or load the model and SAE it was built with")

    def _row(self, handle, name: str, i) -> np.ndarray:
        return self._array(handle, name)[i]

    def card(self, feature: int) -> FeatureCard:
        """Everything the app shows for one feature."""
        f = self._check_feature(feature)
        F = self._features
        count = int(self._array(F, "count")[f])
        total = float(self._array(F, "act_sum")[f])
        top_logits = self._logits(f, "top")
        bottom_logits = self._logits(f, "bottom")
        ptr = self._row(self._examples, "ex_ptr", slice(f * N_KINDS, (f + 1) * N_KINDS + 1))
        check_feature_rows(self.path, self.manifest, count, ptr, len(self._array(self._examples, "ex_window")))
        examples = self._read_examples(int(ptr[0]), int(ptr[-1]))
        groups = [examples[int(ptr[k] - ptr[0]):int(ptr[k + 1] - ptr[0])] for k in range(N_KINDS)]
        q_valid, q_low = self._row(F, "q_valid", f), self._row(F, "q_low", f)
        q_high, q_frac = self._row(F, "q_high", f), self._row(F, "q_fraction", f)
        quantiles = [QuantileBin(float(q_low[g]), float(q_high[g]), float(q_frac[g]), groups[1 + g])
                     for g in range(N_QUANTILES) if q_valid[g]]
        return FeatureCard(
            feature=f, label=self.label(f), auto_label=self._auto.get(f),
            density=count / max(self.manifest.n_tokens, 1),
            max_activation=float(self._array(F, "act_max")[f]),
            mean_activation=total / count if count else 0.0,
            n_tokens=self.manifest.n_tokens,
            hist_edges=[float(e) for e in self._array(F, "hist_edges")],
            hist_counts=[int(c) for c in self._row(F, "hist_counts", f)],
            top_logits=top_logits, bottom_logits=bottom_logits,
            top_examples=groups[0], quantiles=quantiles,
            neighbours=self._pairs(f, "neighbour_ids", "neighbour_cos"),
            cooccurring=self._pairs(f, "cooc_ids", "cooc_jaccard"),
            cooccurrence_approximate=str(self.manifest.settings.get("cooccurrence", "")).startswith("approximate"),
            source_mix=self._source_mix(f),
        )

    def _logits(self, f: int, which: str) -> list[tuple[str, float]]:
        ids = self._row(self._features, f"logit_{which}_ids", f)
        vals = self._row(self._features, f"logit_{which}_values", f)
        keep = ids >= 0
        return list(zip(self._text.shown(ids[keep]), (float(v) for v in vals[keep])))

    def _pairs(self, f: int, ids_name: str, vals_name: str) -> list[tuple[int, float]]:
        ids, vals = self._row(self._features, ids_name, f), self._row(self._features, vals_name, f)
        return [(int(i), float(v)) for i, v in zip(ids, vals) if i >= 0]

    def _read_examples(self, a: int, b: int) -> list[Example]:
        if b <= a:
            return []
        E, W = self._examples, self._windows
        windows = self._row(E, "ex_window", slice(a, b))
        positions = self._row(E, "ex_position", slice(a, b))
        acts = self._row(E, "ex_activation", slice(a, b))
        traces = self._row(E, "ex_trace", slice(a, b))
        rows = np.searchsorted(self._array(W, "window_ids"), windows)
        tokens = {int(r): self._row(W, "tokens", int(r)) for r in np.unique(rows)}
        trace_ptr = self._array(E, "trace_ptr")
        trace_pos, trace_val = self._array(E, "trace_pos"), self._array(E, "trace_val")
        L = self.manifest.window_len
        out = []
        for w, p, v, r, t in zip(windows, positions, acts, rows, traces):
            ids = tokens[int(r)].tolist()
            lo, hi = trace_ptr[int(t):int(t) + 2]
            values = np.zeros(L, np.float32)
            values[trace_pos[int(lo):int(hi)].astype(np.int64)] = trace_val[int(lo):int(hi)]
            out.append(Example(window=int(w), position=int(p), activation=float(v), token_ids=ids,
                               tokens=self._text.shown(ids), texts=self._text.texts(ids), values=values.tolist()))
        return out
