"""The index on disk: its folder layout, array names, sizes, manifest and errors.

Both the writer (`explorer.index.finalise`) and the reader (`explorer.index.reader`) take
every name and size from here, so the two cannot drift apart.

Files. `manifest.json` (IndexManifest); `features.safetensors` (FEATURE_ARRAYS: one row per
feature); `examples.safetensors` (EXAMPLE_ARRAYS: one flat example table, all of a feature's
examples contiguous, N_KINDS groups each, found through `ex_ptr`; and the sparse activation
traces with offsets `trace_ptr`); `windows.safetensors` (WINDOW_ARRAYS: the tokens of every
window an example uses, once; uint16 when the vocabulary fits); `labels_auto.json`; and
`labels_user.json` (user labels, carried over by rebuilds). The folder is written aside and
swapped in whole (explorer.files.replacing_dir).

Per feature (a token fires a feature when its activation is > 0):
- count, density = count / n_tokens, max, and sum (mean = sum / count);
- an N_BINS-bin histogram of the nonzero activations over HIST_DECADES decades of log-spaced
  edges, fixed before the pass (how: explorer.index.build) and kept in `hist_edges`. The end
  bins are open (bin 0 also holds values below edges[0], the last bin values above
  edges[-1]), so the counts sum to the firing count;
- the exact top-N examples in the total order (activation desc, window asc, position asc);
- N_QUANTILES quantile groups over (0, max] with up to SAMPLES_PER_BIN random examples each;
- the N_COOCCURRING features it fires together with most, by Jaccard index
  C_ij / (C_ii + C_jj - C_ij) over tokens;
- from the weights alone: the top and bottom N_LOGITS logit effects W_dec[i] @ W_U (W_U =
  lm_head.weight.T; no LayerNorm, no bias) and the N_NEIGHBOURS nearest decoder rows by cosine.
"""

from __future__ import annotations

import dataclasses
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

REBUILD_HINT = "Fix: rebuild it with `explorer index` (or explorer.index.build_index)"


class IndexMismatchError(ValueError):
    """The index was built from another model, hook, SAE or corpus than the one in use."""


class IndexFormatError(ValueError):
    """An index file is missing, corrupt or of an unknown format version."""


@dataclass(frozen=True)
class IndexManifest:
    format_version: int
    model_name: str
    hook_name: str
    sae_fingerprint: str
    corpus_hash: str
    n_windows: int
    window_len: int
    n_tokens: int
    d_sae: int
    settings: dict = field(default_factory=dict)
    created: str = ""

    @classmethod
    def from_dict(cls, d: dict) -> IndexManifest:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
