"""Reading text corpora and cutting them into fixed-length token windows.

Public names:
- `Document`, `read_documents(path)`: text files, folders, .jsonl, .csv, .parquet and
  `datasets` folders written by `save_to_disk`, read in one deterministic order.
- `Windows`, `tokenize_windows(docs, tokenizer)`: SAELens-style packing into `[n, window]` int32.
- `save_windows` / `load_windows`: one .safetensors or .npz file, no pickle, atomic write.
- `split_windows`: deterministic train / held-out split.
- Source ids: when .jsonl / .csv rows carry a `source` field ("austen:Emma:12"), each document
  keeps its source name (the part before the first ':', "austen"), and windows keep the source
  id of every token (`Windows.source`, names in `Windows.source_names`), so the index can say
  how a feature's activation splits over sources. Windows files without them still load.
- `CorpusError`: every user-facing problem, with the fix in the message.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from explorer.files import replacing

log = logging.getLogger(__name__)

TEXT_SUFFIXES = frozenset({".txt", ".md", ".py", ".rst", ".text"})
TABLE_SUFFIXES = frozenset({".jsonl", ".csv", ".parquet"})
# Files that mark a folder as written by `datasets.Dataset(Dict).save_to_disk`.
DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
WINDOW_KEYS = ("tokens", "doc_id", "offset")
SOURCE_FIELD = "source"  # the row field that names a document's source, as the demo corpus writes it
MAX_SOURCES = 64  # more distinct source names than this give no source mix (the index keeps d_sae x n floats)


class CorpusError(ValueError):
    """A corpus cannot be read or windowed; the message names the problem and the fix."""


@dataclass(frozen=True)
class Document:
    doc_id: int
    """Position in the deterministic reading order (0, 1, 2, ...; empty texts are skipped)."""
    source: str
    """Where the text came from: a file path, or "name.jsonl:17" (jsonl line, 1-based; table row, 0-based)."""
    text: str
    source_name: str = ""
    """The row's own `source` field up to its first ':' ("austen" for "austen:Emma:12"); "" when it has none."""


# ---------------------------------------------------------------------------------------------
# Reading


def read_documents(path: str | Path, text_field: str = "text") -> Iterator[Document]:
    """Yield the documents under `path` in a deterministic order.

    `path` may be a text file (one document), a folder (every supported file below it, sorted,
    recursively), a .jsonl / .csv / .parquet file (one document per row, from `text_field`), or a
    folder written by `datasets`' `save_to_disk` (its arrow files, read with pyarrow).
    Rows whose text is empty or whitespace are skipped. Path problems raise `CorpusError` here;
    field problems and an empty corpus raise it while iterating.
    """
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"Corpus path {str(path)!r} does not exist. Check the spelling, or build "
                          f"the demo corpus with `python -m tools.demo_corpus --out data/corpus` (from a source checkout).")
    if path.is_file() and _kind(path) is None:
        raise CorpusError(f"Cannot read {str(path)!r}: unknown extension {path.suffix!r}. Supported: "
                          f"{', '.join(sorted(TEXT_SUFFIXES | TABLE_SUFFIXES))}, a folder, or a "
                          f"`datasets` save_to_disk folder.")
    return _numbered(_texts(path, text_field), path)


def _numbered(texts: Iterator[tuple[str, str]], root: Path) -> Iterator[Document]:
    doc_id = 0
    for source, text, *name in texts:
        if text.strip():
            yield Document(doc_id, source, text, *name)
            doc_id += 1
    if doc_id == 0:
        raise CorpusError(f"Corpus {str(root)!r} holds no non-empty text. Point it at a file or folder "
                          f"with text ({', '.join(sorted(TEXT_SUFFIXES | TABLE_SUFFIXES))}).")


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return "text"
    if suffix in TABLE_SUFFIXES:
        return suffix[1:]
    return None


def _is_dataset_dir(path: Path) -> bool:
    return path.is_dir() and any((path / m).is_file() for m in DATASET_MARKERS)


def _texts(path: Path, field: str) -> Iterator[tuple[str, str]]:
    if _is_dataset_dir(path):
        yield from _read_dataset_dir(path, field, str(path))
    elif path.is_dir():
        yield from _read_folder(path, field)
    else:
        yield from _read_file(path, field, str(path))


def _read_folder(root: Path, field: str) -> Iterator[tuple[str, str]]:
    # Sorted walk so the reading order (and so every doc_id) is the same on every machine.
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        # A `datasets` folder nested in a folder is read as a dataset, not as loose files.
        if here != root and _is_dataset_dir(here):
            dirnames[:] = []
            yield from _read_dataset_dir(here, field, here.relative_to(root).as_posix())
            continue
        for name in sorted(filenames):
            file = here / name
            if name.startswith(".") or _kind(file) is None:
                continue
            yield from _read_file(file, field, file.relative_to(root).as_posix())


def _read_file(path: Path, field: str, label: str) -> Iterator[tuple[str, str]]:
    kind = _kind(path)
    if kind == "text":
        yield label, path.read_text(encoding="utf-8", errors="replace")
    elif kind == "jsonl":
        yield from _read_jsonl(path, field, label)
    elif kind == "csv":
        yield from _read_csv(path, field, label)
    elif kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        yield from _read_batches(pf.iter_batches(columns=[field]) if field in pf.schema_arrow.names else None,
                                 pf.schema_arrow.names, field, label)


def _read_jsonl(path: Path, field: str, label: str) -> Iterator[tuple[str, str]]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{label}:{lineno} is not valid JSON ({e.msg}). Each line of a .jsonl "
                                  f"file must be one JSON object.") from None
            if not isinstance(row, dict) or field not in row:
                present = sorted(row) if isinstance(row, dict) else []
                raise CorpusError(f"{label}:{lineno} has no field {field!r}; fields present: {present}. "
                                  f"Pass the right one as text_field.")
            yield f"{label}:{lineno}", _as_text(row[field], label, lineno), _source_name(row.get(SOURCE_FIELD))


def _read_csv(path: Path, field: str, label: str) -> Iterator[tuple[str, str]]:
    # Documents can be long; the csv module's default 128 kB field limit would reject them.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if field not in columns:
            raise CorpusError(f"{label} has no column {field!r}; columns present: {list(columns)}. "
                              f"Pass the right one as text_field.")
        for row_index, row in enumerate(reader):
            yield f"{label}:{row_index}", row[field] or "", _source_name(row.get(SOURCE_FIELD))


def _read_batches(batches, columns: list[str], field: str, label: str) -> Iterator[tuple[str, str]]:
    if batches is None:
        raise CorpusError(f"{label} has no column {field!r}; columns present: {columns}. "
                          f"Pass the right one as text_field.")
    row_index = 0
    for batch in batches:
        for value in batch.column(field).to_pylist():
            yield f"{label}:{row_index}", _as_text(value, label, row_index)
            row_index += 1


def _source_name(value: object) -> str:
    return value.split(":", 1)[0].strip() if isinstance(value, str) else ""


def _as_text(value: object, label: str, row: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise CorpusError(f"{label}:{row} holds a {type(value).__name__}, not text, in the text field. "
                          f"Pass the name of a string field as text_field.")
    return value


def _read_dataset_dir(path: Path, field: str, label: str) -> Iterator[tuple[str, str]]:
    """Read a `save_to_disk` folder with pyarrow only (importing `datasets` is slow and optional)."""
    if (path / "dataset_dict.json").is_file():  # a DatasetDict: one sub-folder per split
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        for split in splits:
            yield from _read_dataset_dir(path / split, field, f"{label}/{split}")
        return
    files: list[str] = []
    if (path / "state.json").is_file():
        files = [d["filename"] for d in json.loads((path / "state.json").read_text()).get("_data_files", [])]
    if not files:
        files = sorted(p.name for p in path.glob("*.arrow"))
    for name in files:
        table = _read_arrow(path / name)
        yield from _read_batches(table.to_batches() if field in table.column_names else None,
                                 table.column_names, field, f"{label}/{name}")


def _read_arrow(path: Path):
    import pyarrow as pa

    # `datasets` writes the IPC *stream* format; plain Arrow files use the *file* format.
    with pa.memory_map(str(path)) as source:
        try:
            return pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_file(source).read_all()


# ---------------------------------------------------------------------------------------------
# Windows


@dataclass
class Windows:
    tokens: np.ndarray
    """(n, window) int32 token ids; with bos, column 0 is BOS."""
    doc_id: np.ndarray
    """(n,) int64: the document of each window's first corpus token."""
    offset: np.ndarray
    """(n,) int64: token offset of that first corpus token inside its document (its eos counts as the last token)."""
    source: np.ndarray | None = None
    """(n, window) uint8: the source id of every token's document (BOS takes its window's first
    token's); None when the corpus names no sources."""
    source_names: tuple[str, ...] = ()
    """Name of each source id, sorted."""

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index) -> Windows:
        """Select windows with a slice, an index array or a boolean mask."""
        source = None if self.source is None else self.source[index]
        return Windows(self.tokens[index], self.doc_id[index], self.offset[index], source, self.source_names)


def tokenize_windows(docs: Iterable[Document], tokenizer, window: int = 128, max_windows: int | None = None,
                     bos: bool = True, batch_docs: int = 256) -> Windows:
    """Pack documents into windows of `window` tokens, as SAELens does.

    Each document's tokens (`tokenizer(text, add_special_tokens=False)`) are followed by eos and
    concatenated in order; the stream is cut into consecutive windows and the final partial window is
    dropped. With `bos` (and a tokenizer that has `bos_token_id`), every window is BOS + `window - 1`
    corpus tokens, so each window looks like the start of a sequence to the model.
    Stops once `max_windows` windows are full. Tokenizes `batch_docs` documents per call, for speed.
    """
    if window < 2:
        raise CorpusError(f"window={window} is too short; use at least 2 tokens (128 is typical).")
    if max_windows is not None and max_windows < 1:
        raise CorpusError(f"max_windows={max_windows}; use a positive number or None for all.")
    bos_id = getattr(tokenizer, "bos_token_id", None) if bos else None
    eos_id = getattr(tokenizer, "eos_token_id", None)
    body = window - 1 if bos_id is not None else window  # corpus tokens per window

    out_tok: list[np.ndarray] = []
    out_doc: list[np.ndarray] = []
    out_off: list[np.ndarray] = []
    out_src: list[np.ndarray] = []
    source_ids: dict[str, int] = {}  # in order of first appearance; sorted at the end
    n_out = 0
    # Tokens carried over from the previous batch that did not fill a window yet.
    rest_tok = np.zeros(0, np.int64)
    rest_doc = np.zeros(0, np.int64)
    rest_off = np.zeros(0, np.int64)
    rest_src = np.zeros(0, np.int64)

    progress = tqdm(desc="tokenizing", unit="win", total=max_windows, leave=False)
    for batch in _batched(docs, batch_docs):
        ids = tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"]
        toks, doc_ids, offs, srcs = [rest_tok], [rest_doc], [rest_off], [rest_src]
        for doc, doc_tokens in zip(batch, ids, strict=True):
            t = np.asarray(doc_tokens, dtype=np.int64)
            if eos_id is not None:
                t = np.append(t, eos_id)
            toks.append(t)
            doc_ids.append(np.full(len(t), doc.doc_id, np.int64))
            offs.append(np.arange(len(t), dtype=np.int64))
            srcs.append(np.full(len(t), source_ids.setdefault(doc.source_name, len(source_ids)), np.int64))
        stream, stream_doc, stream_off = np.concatenate(toks), np.concatenate(doc_ids), np.concatenate(offs)
        stream_src = np.concatenate(srcs)

        n_full = len(stream) // body
        if max_windows is not None:
            n_full = min(n_full, max_windows - n_out)
        cut = n_full * body
        if n_full:
            out_tok.append(stream[:cut].reshape(n_full, body))
            out_doc.append(stream_doc[:cut:body])
            out_off.append(stream_off[:cut:body])
            out_src.append(stream_src[:cut].reshape(n_full, body))
            n_out += n_full
            progress.update(n_full)
        rest_tok, rest_doc, rest_off, rest_src = stream[cut:], stream_doc[cut:], stream_off[cut:], stream_src[cut:]
        if max_windows is not None and n_out >= max_windows:
            break
    progress.close()

    tokens = np.concatenate(out_tok) if out_tok else np.zeros((0, body), np.int64)
    if bos_id is not None:
        tokens = np.concatenate([np.full((len(tokens), 1), bos_id, np.int64), tokens], axis=1)
    if len(tokens) == 0:
        log.warning("The corpus is shorter than one window of %d tokens; no windows were made.", window)
    source, names = _token_sources(out_src, source_ids, bos_id is not None, body)
    return Windows(tokens.astype(np.int32),
                   np.concatenate(out_doc) if out_doc else np.zeros(0, np.int64),
                   np.concatenate(out_off) if out_off else np.zeros(0, np.int64), source, names)


def _token_sources(parts: list[np.ndarray], ids: dict[str, int], bos: bool,
                   body: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """(n, window) uint8 source ids numbered by sorted name, or (None, ()) when no document named
    a source or there are more than MAX_SOURCES."""
    if set(ids) <= {""}:
        return None, ()
    if len(ids) > MAX_SOURCES:
        log.warning("The corpus names %d sources (more than %d), so the index keeps no source mix. Use a "
                    "coarser `source` field (the part before ':' is the name).", len(ids), MAX_SOURCES)
        return None, ()
    names = tuple(sorted(name or "(none)" for name in ids))
    remap = np.array([names.index(name or "(none)") for name in ids], np.uint8)  # first-seen id -> sorted id
    src = remap[np.concatenate(parts)] if parts else np.zeros((0, body), np.uint8)
    if bos:
        src = np.concatenate([src[:, :1], src], axis=1)  # BOS belongs to its window's first token
    return src, names


def _batched(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def save_windows(w: Windows, path: str | Path) -> None:
    """Write `w` to one .safetensors or .npz file, atomically (files.replacing)."""
    path = Path(path)
    arrays = {"tokens": np.ascontiguousarray(w.tokens, np.int32),
              "doc_id": np.ascontiguousarray(w.doc_id, np.int64),
              "offset": np.ascontiguousarray(w.offset, np.int64)}
    if w.source is not None:
        arrays["source"] = np.ascontiguousarray(w.source, np.uint8)
        # the names as UTF-8 JSON bytes: a plain array, so both formats hold them alike, unpickled
        arrays["source_names"] = np.frombuffer(json.dumps(list(w.source_names)).encode(), np.uint8)
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".npz"):
        raise CorpusError(f"Cannot save windows as {path.name!r}; use a .safetensors or .npz file name.")
    with replacing(path) as tmp, open(tmp, "wb") as f:
        if suffix == ".npz":
            np.savez(f, **arrays)  # a file object, since np.savez adds .npz to a path without it
        else:
            from safetensors.numpy import save

            f.write(save(arrays))


def load_windows(path: str | Path) -> Windows:
    """Read windows written by `save_windows` (never unpickles)."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"Windows file {str(path)!r} does not exist; write it with save_windows first.")
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    elif path.suffix.lower() == ".safetensors":
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    else:
        raise CorpusError(f"Cannot load windows from {path.name!r}; expected a .safetensors or .npz file.")
    missing = [k for k in WINDOW_KEYS if k not in arrays]
    if missing:
        raise CorpusError(f"{path.name} is not a windows file: missing {missing}, found {sorted(arrays)}.")
    source, names = None, ()
    if "source" in arrays and "source_names" in arrays:  # older windows files have neither
        source = arrays["source"].astype(np.uint8)
        names = tuple(json.loads(arrays["source_names"].astype(np.uint8).tobytes().decode()))
    return Windows(arrays["tokens"].astype(np.int32), arrays["doc_id"].astype(np.int64),
                   arrays["offset"].astype(np.int64), source, names)


def split_windows(w: Windows, held_out_fraction: float = 0.05, seed: int = 0) -> tuple[Windows, Windows]:
    """Split into (train, held_out) by a seeded permutation; each part keeps the original order.

    Held-out gets round(n * fraction) windows, at least one when the fraction is positive and n > 1.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise CorpusError(f"held_out_fraction={held_out_fraction}; use a value in [0, 1), e.g. 0.05.")
    n = len(w)
    n_held = round(n * held_out_fraction)
    if held_out_fraction > 0 and n > 1:
        n_held = max(1, n_held)
    held = np.zeros(n, dtype=bool)
    held[np.random.default_rng(seed).permutation(n)[:n_held]] = True
    return w[~held], w[held]
