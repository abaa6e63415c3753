"""The feature index: every feature's statistics and examples, from one pass over a corpus.

`build_index(lm, sae, windows, out_dir)` streams token windows once through the model (up to
the SAE's hook only) and the SAE encoder, and writes a folder; `FeatureIndex.open(path,
tokenizer).card(feature)` reads one feature's `FeatureCard` from it, memory-mapped.

Where things are:
- format.py      the folder on disk: file and array names, sizes, IndexManifest, errors;
- pass_state.py  PassState, the running summaries of the pass (the top-N merge, quantile
                 samples, co-occurrence counts, traces), exact and mergeable across shards;
- build.py       build_index: the pass itself, checkpoints and resume;
- finalise.py    PassState -> index folder: logit effects, neighbours, co-occurring
                 features, quantile groups, the example table, automatic labels;
- reader.py      FeatureIndex and the cards it reads (FeatureCard, Example, QuantileBin);
- mapped.py      MappedFile: a safetensors file mapped read-only, arrays as numpy views;
- text_column.py labels_auto.json read a line at a time, and vectorised label search;
- user_labels.py labels_user.json: user labels keyed to their SAE, never overwritten when unreadable;
- integrity.py   the checks of a folder at open (manifest, sizes, array shapes) and by
                 `explorer index --verify` (sha256 of every file).
"""

from explorer.index.build import build_index
from explorer.index.format import FORMAT_VERSION, IndexFormatError, IndexManifest, IndexMismatchError
from explorer.index.pass_state import PassState
from explorer.index.reader import SEARCH_BY, Example, FeatureCard, FeatureIndex, QuantileBin

__all__ = ["FORMAT_VERSION", "SEARCH_BY", "Example", "FeatureCard", "FeatureIndex", "IndexFormatError",
           "IndexManifest", "IndexMismatchError", "PassState", "QuantileBin", "build_index"]
