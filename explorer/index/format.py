"""The index on disk: its folder layout, array names, sizes, manifest and errors.

Both the writer (`explorer.index.finalise`) and the reader (`explorer.index.reader`) take
every name and size from here, so the two cannot drift apart.

Files. `manifest.json` (IndexManifest); `features.safetensors` (FEATURE_ARRAYS: one row per
feature); `examples.safetensors` (EXAMPLE_ARRAYS: one flat example table, all of a feature's
examples contiguous, N_KINDS groups each, found through `ex_ptr`; and the sparse activation
traces with offsets `trace_ptr`); `windows.safetensors` (WINDOW_ARRAYS: the tokens of every
window an example uses, once; uint16 when the vocabulary fits); `labels_auto.json`; and
`labels_user.json` (user labels, carried over by rebuilds). The folder is written aside and
swapped in whole (explorer.files.replacing_dir). ARRAY_SPECS gives every array's dtype and
shape; the manifest records the size and sha256 of each of RECORDED_FILES (how they are
checked: explorer.index.integrity).

Per feature (a token fires a feature when its activation is > 0):
- count, density = count / n_tokens, max, and sum (mean = sum / count);
- an N_BINS-bin histogram of the nonzero activations over HIST_DECADES decades of log-spaced
  edges, fixed before the pass (how: explorer.index.build) and kept in `hist_edges`. The end
  bins are open (bin 0 also holds values below edges[0], the last bin values above
  edges[-1]), so the counts sum to the firing count;
- the exact top-N examples in the total order (activation desc, window asc, position asc);
- N_QUANTILES quantile groups over (0, max] with up to SAMPLES_PER_BIN random examples each;
- when the corpus names sources, its activation sum per source (SOURCE_MASS, optional);
- the N_COOCCURRING features it fires together with most, by Jaccard index
  C_ij / (C_ii + C_jj - C_ij) over tokens;
- from the weights alone: the top and bottom N_LOGITS logit effects W_dec[i] @ W_U (W_U =
  lm_head.weight.T; no LayerNorm, no bias) and the N_NEIGHBOURS nearest decoder rows by cosine.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
FEATURES_FILE = "features.safetensors"
EXAMPLES_FILE = "examples.safetensors"
WINDOWS_FILE = "windows.safetensors"
LABELS_AUTO_FILE = "labels_auto.json"
LABELS_USER_FILE = "labels_user.json"

N_BINS = 50
HIST_DECADES = 5  # the histogram spans hi * 1e-5 .. hi: 10 bins per decade
N_QUANTILES = 5
SAMPLES_PER_BIN = 5  # random examples kept per histogram bin, and shown per quantile group
N_LOGITS = 10
N_NEIGHBOURS = 10
N_COOCCURRING = 10
N_KINDS = 1 + N_QUANTILES  # example groups per feature: top, then each quantile group

FEATURE_ARRAYS = ("count", "act_sum", "act_max", "hist_counts", "hist_edges", "q_low", "q_high", "q_fraction",
                  "q_valid", "logit_top_ids", "logit_top_values", "logit_bottom_ids", "logit_bottom_values",
                  "neighbour_ids", "neighbour_cos", "cooc_ids", "cooc_jaccard", "peak_token_ids")
EXAMPLE_ARRAYS = ("ex_ptr", "ex_window", "ex_position", "ex_activation", "ex_trace",
                  "trace_ptr", "trace_pos", "trace_val")
WINDOW_ARRAYS = ("window_ids", "tokens", "doc_id", "offset")
# Optional, in FEATURES_FILE when the corpus named sources (names: manifest settings "source_names"):
# each feature's activation sum per source, float64 (d_sae, n_sources).
SOURCE_MASS = "source_mass"
# Every file the build writes but the manifest; labels_user.json changes after the build.
RECORDED_FILES = (FEATURES_FILE, EXAMPLES_FILE, WINDOWS_FILE, LABELS_AUTO_FILE)

# Each array's allowed dtypes and its shape. A dimension is a number, a size the manifest
# gives (d_sae, window_len, n_groups = d_sae * N_KINDS), or a size the arrays themselves give
# (n_examples, ...), which must then be the same in every array naming it; "+1" adds one.
_STATS, _IDS = ("float32",), ("int32",)
ARRAY_SPECS: dict[str, tuple[tuple[str, ...], tuple[int | str, ...]]] = {
    "count": (("int64",), ("d_sae",)),
    "act_sum": (("float64",), ("d_sae",)),
    "act_max": (_STATS, ("d_sae",)),
    "hist_counts": (("int64",), ("d_sae", N_BINS)),
    "hist_edges": (_STATS, (N_BINS + 1,)),
    "q_low": (_STATS, ("d_sae", N_QUANTILES)),
    "q_high": (_STATS, ("d_sae", N_QUANTILES)),
    "q_fraction": (_STATS, ("d_sae", N_QUANTILES)),
    "q_valid": (("uint8",), ("d_sae", N_QUANTILES)),
    "logit_top_ids": (_IDS, ("d_sae", N_LOGITS)),
    "logit_top_values": (_STATS, ("d_sae", N_LOGITS)),
    "logit_bottom_ids": (_IDS, ("d_sae", N_LOGITS)),
    "logit_bottom_values": (_STATS, ("d_sae", N_LOGITS)),
    "neighbour_ids": (_IDS, ("d_sae", N_NEIGHBOURS)),
    "neighbour_cos": (_STATS, ("d_sae", N_NEIGHBOURS)),
    "cooc_ids": (_IDS, ("d_sae", N_COOCCURRING)),
    "cooc_jaccard": (_STATS, ("d_sae", N_COOCCURRING)),
    "peak_token_ids": (_IDS, ("d_sae", "top_n")),
    "ex_ptr": (("int64",), ("n_groups+1",)),
    "ex_window": (("int64",), ("n_examples",)),
    "ex_position": (("int32",), ("n_examples",)),
    "ex_activation": (_STATS, ("n_examples",)),
    "ex_trace": (("int64",), ("n_examples",)),
    "trace_ptr": (("int64",), ("n_traces+1",)),
    "trace_pos": (("int16", "int32"), ("n_trace_values",)),  # int16 while window_len < 32768
    "trace_val": (("float16",), ("n_trace_values",)),
    "window_ids": (("int64",), ("n_used_windows",)),
    "tokens": (("uint16", "int32"), ("n_used_windows", "window_len")),  # uint16 while the vocabulary fits
    "doc_id": (("int64",), ("n_used_windows",)),
    "offset": (("int64",), ("n_used_windows",)),
    SOURCE_MASS: (("float64",), ("d_sae", "n_sources")),
}

REBUILD_HINT = "Fix: rebuild it with `explorer index` (or explorer.index.build_index)"


class IndexMismatchError(ValueError):
    """The index was built from another model, hook, SAE or corpus than the one in use."""


class IndexFormatError(ValueError):
    """An index file is missing, corrupt or of an unknown format version."""


class IndexBusyError(ValueError):
    """Another build is writing the same index folder."""


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _short(value) -> str:
    """repr, cut: a damaged manifest can hold a megabyte where a number belongs."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class IndexManifest:
    """manifest.json. Construction checks every field's type and range (ValueError)."""

    format_version: int
    model_name: str
    hook_name: str
    sae_fingerprint: str
    corpus_hash: str
    n_windows: int
    window_len: int
    n_tokens: int  # tokens indexed: BOS positions that were skipped do not count
    d_sae: int
    settings: dict = field(default_factory=dict)
    created: str = ""
    files: dict = field(default_factory=dict)  # {name: {"bytes": int, "sha256": hex}}; empty before they were recorded

    def __post_init__(self):
        kinds = {"int": int, "str": str, "dict": dict}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # bool is an int to Python, never a count here
            if not isinstance(value, kinds[f.type]) or isinstance(value, bool):
                raise ValueError(f"{f.name} is {_short(value)}, not {'an' if f.type == 'int' else 'a'} {f.type}")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version is {self.format_version}, this version of the explorer reads "
                             f"{FORMAT_VERSION}")
        for name in ("n_windows", "window_len", "d_sae"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} is {getattr(self, name)}, it must be at least 1")
        if not 0 <= self.n_tokens <= self.n_windows * self.window_len:
            raise ValueError(f"n_tokens is {self.n_tokens}, outside 0..{self.n_windows * self.window_len} "
                             f"({self.n_windows} windows of {self.window_len} tokens)")
        for name, record in self.files.items():
            if name not in RECORDED_FILES:
                raise ValueError(f"files names {name!r}, which is no index file")
            if (not isinstance(record, dict) or not isinstance(record.get("bytes"), int)
                    or isinstance(record["bytes"], bool) or record["bytes"] < 0
                    or not isinstance(record.get("sha256"), str) or not _SHA256.fullmatch(record["sha256"])):
                raise ValueError(f'files[{name!r}] is {_short(record)}, not {{"bytes": size, "sha256": hex}}')

    @classmethod
    def from_dict(cls, d: dict) -> IndexManifest:
        """The manifest in `d` (parsed manifest.json); ValueError names what is wrong. Unknown
        keys are ignored."""
        if not isinstance(d, dict):
            raise ValueError(f"it holds a JSON {type(d).__name__}, not an object")
        fields = dataclasses.fields(cls)
        missing = [f.name for f in fields if f.name not in d
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"it lacks {', '.join(missing)}")
        return cls(**{f.name: d[f.name] for f in fields if f.name in d})
