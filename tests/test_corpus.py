"""Tests for explorer.corpus: readers, packing into windows, save/load, split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from explorer.corpus import (
    CorpusError,
    Document,
    Windows,
    load_windows,
    read_documents,
    save_windows,
    split_windows,
    tokenize_windows,
)

BOS, EOS = 1, 2


class CharTokenizer:
    """One token per character (its code point + 10), like a HF tokenizer's batched __call__."""

    bos_token_id: int | None = BOS
    eos_token_id: int | None = EOS

    def __init__(self):
        self.calls = 0

    def __call__(self, texts, add_special_tokens=True):
        assert add_special_tokens is False
        self.calls += 1
        return {"input_ids": [[ord(c) + 10 for c in t] for t in texts]}


class NoBosTokenizer(CharTokenizer):
    bos_token_id = None


def docs(*texts: str) -> list[Document]:
    return [Document(i, f"d{i}", t) for i, t in enumerate(texts)]


def expected_stream(texts):
    """(token, doc_id, offset) per position of the packed stream, eos after each document."""
    out = []
    for doc_id, text in enumerate(texts):
        ids = [ord(c) + 10 for c in text] + [EOS]
        out += [(tok, doc_id, off) for off, tok in enumerate(ids)]
    return out


# ---------------------------------------------------------------------------------------------
# Readers


def test_text_file_is_one_document(tmp_path):
    path = tmp_path / "note.txt"
    path.write_text("hello\nworld\n")
    assert list(read_documents(path)) == [Document(0, str(path), "hello\nworld\n")]


@pytest.mark.parametrize("suffix", [".md", ".py", ".rst"])
def test_other_text_suffixes(tmp_path, suffix):
    path = tmp_path / f"x{suffix}"
    path.write_text("body")
    assert [d.text for d in read_documents(path)] == ["body"]


def test_folder_is_read_sorted_and_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.txt").write_text("B")
    (tmp_path / "a.md").write_text("A")
    (tmp_path / "sub" / "c.py").write_text("C")
    (tmp_path / "sub" / "rows.jsonl").write_text('{"text": "R1"}\n{"text": "R2"}\n')
    (tmp_path / "image.png").write_bytes(b"\x89PNG")  # unknown suffix: skipped inside a folder
    (tmp_path / ".hidden.txt").write_text("H")
    (tmp_path / "empty.txt").write_text("  \n")  # empty documents are skipped
    got = list(read_documents(tmp_path))
    assert [d.source for d in got] == ["a.md", "b.txt", "sub/c.py", "sub/rows.jsonl:1", "sub/rows.jsonl:2"]
    assert [d.text for d in got] == ["A", "B", "C", "R1", "R2"]
    assert [d.doc_id for d in got] == [0, 1, 2, 3, 4]
    assert list(read_documents(tmp_path)) == got  # deterministic


def test_jsonl_reads_the_field_and_skips_blank_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "one", "n": 1}\n\n{"body": "x", "text": "two"}\n{"text": ""}\n')
    got = list(read_documents(path))
    assert [(d.doc_id, d.source, d.text) for d in got] == [(0, f"{path}:1", "one"), (1, f"{path}:3", "two")]


def test_jsonl_custom_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"content": "a"}\n{"content": "b"}\n')
    assert [d.text for d in read_documents(path, text_field="content")] == ["a", "b"]


def test_csv_reads_the_column_with_multiline_cells(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('id,text\n1,"first line\nsecond line"\n2,plain\n')
    got = list(read_documents(path))
    assert [d.text for d in got] == ["first line\nsecond line", "plain"]
    assert [d.source for d in got] == [f"{path}:0", f"{path}:1"]


def test_parquet_reads_the_column(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["alpha", None, "beta"], "label": [1, 2, 3]}), path)
    assert [(d.doc_id, d.text, d.source) for d in read_documents(path)] == [
        (0, "alpha", f"{path}:0"), (1, "beta", f"{path}:2")]


def write_saved_dataset(folder: Path, texts: list[str], shards: int = 1) -> None:
    """What `datasets.Dataset.save_to_disk` writes: arrow *stream* shards + dataset_info + state."""
    folder.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{shards:05d}.arrow" for i in range(shards)]
    per = -(-len(texts) // shards)
    for i, name in enumerate(names):
        part = texts[i * per:(i + 1) * per]
        table = pa.table({"text": part, "id": list(range(i * per, i * per + len(part)))})
        with pa.OSFile(str(folder / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "dataset_info.json").write_text(json.dumps({"features": {"text": {"dtype": "string"}}}))
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))


def test_datasets_save_to_disk_folder(tmp_path):
    write_saved_dataset(tmp_path / "ds", ["d0", "d1", "d2"], shards=2)
    got = list(read_documents(tmp_path / "ds"))
    assert [d.text for d in got] == ["d0", "d1", "d2"]
    assert got[2].source.endswith("data-00001-of-00002.arrow:0")


def test_datasets_dict_folder_reads_splits_in_order(tmp_path):
    write_saved_dataset(tmp_path / "dd" / "train", ["t0", "t1"])
    write_saved_dataset(tmp_path / "dd" / "test", ["e0"])
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert [d.text for d in read_documents(tmp_path / "dd")] == ["t0", "t1", "e0"]


def test_dataset_nested_in_a_folder(tmp_path):
    (tmp_path / "a.txt").write_text("loose")
    write_saved_dataset(tmp_path / "saved", ["row"])
    assert [d.text for d in read_documents(tmp_path)] == ["loose", "row"]


# ---------------------------------------------------------------------------------------------
# Reader errors: each names the problem and the fix


def test_missing_path(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_documents(tmp_path / "nope.txt")


def test_unknown_extension(tmp_path):
    path = tmp_path / "book.docx"
    path.write_bytes(b"PK")
    with pytest.raises(CorpusError, match=r"unknown extension '\.docx'.*Supported: .*\.jsonl"):
        read_documents(path)


def test_corpus_error_is_a_value_error():
    assert issubclass(CorpusError, ValueError)


def test_jsonl_missing_field_lists_present_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "x", "id": 1}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:1 has no field 'text'; fields present: \['body', 'id'\]"):
        list(read_documents(path))


def test_jsonl_invalid_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2 is not valid JSON"):
        list(read_documents(path))


def test_csv_missing_column_lists_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("id,body\n1,x\n")
    with pytest.raises(CorpusError, match=r"no column 'text'; columns present: \['id', 'body'\]"):
        list(read_documents(path))


def test_parquet_missing_column_lists_columns(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"content": ["a"]}), path)
    with pytest.raises(CorpusError, match=r"no column 'text'; columns present: \['content'\].*text_field"):
        list(read_documents(path))


def test_dataset_missing_column(tmp_path):
    write_saved_dataset(tmp_path / "ds", ["a"])
    with pytest.raises(CorpusError, match=r"no column 'body'; columns present: \['text', 'id'\]"):
        list(read_documents(tmp_path / "ds", text_field="body"))


def test_non_string_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": 5}\n')
    with pytest.raises(CorpusError, match="holds a int, not text"):
        list(read_documents(path))


@pytest.mark.parametrize("make", ["empty_folder", "only_blank", "only_unknown"])
def test_empty_corpus(tmp_path, make):
    if make == "only_blank":
        (tmp_path / "a.txt").write_text("   \n")
    elif make == "only_unknown":
        (tmp_path / "a.bin").write_bytes(b"\x00")
    with pytest.raises(CorpusError, match="holds no non-empty text"):
        list(read_documents(tmp_path))


# ---------------------------------------------------------------------------------------------
# Packing into windows


def test_packing_with_bos_matches_the_reference_stream():
    texts = ["abcdefg", "hi", "jklmnopqrstu"]  # 8 + 3 + 13 = 24 stream tokens
    w = tokenize_windows(docs(*texts), CharTokenizer(), window=5)  # 4 corpus tokens per window
    stream = expected_stream(texts)
    assert w.tokens.shape == (6, 5) and w.tokens.dtype == np.int32
    assert w.doc_id.dtype == np.int64 and w.offset.dtype == np.int64
    assert (w.tokens[:, 0] == BOS).all()
    for i in range(6):
        body = stream[4 * i:4 * i + 4]
        assert w.tokens[i, 1:].tolist() == [t for t, _, _ in body]
        assert (w.doc_id[i], w.offset[i]) == body[0][1:]
    # Window 2 starts at stream position 8: the first token of document 1.
    assert (w.doc_id[2], w.offset[2]) == (1, 0)


def test_packing_without_bos_and_drops_the_partial_window():
    texts = ["abcdefg", "hi"]  # 11 stream tokens -> 2 full windows of 5, 1 token dropped
    w = tokenize_windows(docs(*texts), CharTokenizer(), window=5, bos=False)
    stream = expected_stream(texts)
    assert w.tokens.tolist() == [[t for t, _, _ in stream[:5]], [t for t, _, _ in stream[5:10]]]
    assert w.doc_id.tolist() == [0, 0] and w.offset.tolist() == [0, 5]


def test_tokenizer_without_bos_gets_no_bos():
    w = tokenize_windows(docs("abcdefghij"), NoBosTokenizer(), window=4)
    assert w.tokens[0].tolist() == [ord(c) + 10 for c in "abcd"]


def test_eos_offset_is_the_document_length():
    w = tokenize_windows(docs("abc", "defgh"), CharTokenizer(), window=4, bos=False)
    # stream: a b c EOS | d e f g | h EOS ... -> window 0 covers doc 0 incl. its eos
    assert w.tokens[0].tolist()[-1] == EOS
    assert (w.doc_id[1], w.offset[1]) == (1, 0)


def test_max_windows_stops_early():
    tok = CharTokenizer()
    many = docs(*["x" * 50] * 100)
    w = tokenize_windows(many, tok, window=11, max_windows=3, batch_docs=2)
    assert len(w) == 3
    assert tok.calls == 1  # the first batch already filled 3 windows


def test_batching_does_not_change_the_result():
    texts = [chr(97 + i % 26) * (i % 7 + 1) for i in range(60)]
    a = tokenize_windows(docs(*texts), CharTokenizer(), window=6, batch_docs=1)
    b = tokenize_windows(docs(*texts), CharTokenizer(), window=6, batch_docs=64)
    c = tokenize_windows(docs(*texts), CharTokenizer(), window=6, batch_docs=7)
    for other in (b, c):
        assert np.array_equal(a.tokens, other.tokens)
        assert np.array_equal(a.doc_id, other.doc_id) and np.array_equal(a.offset, other.offset)


def test_too_short_corpus_gives_zero_windows():
    w = tokenize_windows(docs("ab"), CharTokenizer(), window=16)
    assert w.tokens.shape == (0, 16) and len(w.doc_id) == 0


@pytest.mark.parametrize("kwargs", [{"window": 1}, {"max_windows": 0}])
def test_bad_window_arguments(kwargs):
    with pytest.raises(CorpusError):
        tokenize_windows(docs("abc"), CharTokenizer(), **kwargs)


def test_read_then_tokenize_end_to_end(tmp_path):
    (tmp_path / "a.txt").write_text("hello world")
    (tmp_path / "b.txt").write_text("second doc")
    w = tokenize_windows(read_documents(tmp_path), CharTokenizer(), window=8)
    assert len(w) == (11 + 1 + 10 + 1) // 7
    assert w.doc_id.tolist()[-1] == 1


# ---------------------------------------------------------------------------------------------
# Save / load / split


def sample_windows(n: int = 20, length: int = 8) -> Windows:
    rng = np.random.default_rng(0)
    return Windows(rng.integers(0, 50_000, (n, length)).astype(np.int32),
                   np.arange(n, dtype=np.int64) // 3, (np.arange(n, dtype=np.int64) % 3) * length)


@pytest.mark.parametrize("name", ["w.npz", "w.safetensors"])
def test_save_load_round_trip(tmp_path, name):
    w = sample_windows()
    save_windows(w, tmp_path / "sub" / name)
    back = load_windows(tmp_path / "sub" / name)
    assert back.tokens.dtype == np.int32 and back.doc_id.dtype == np.int64
    assert np.array_equal(back.tokens, w.tokens)
    assert np.array_equal(back.doc_id, w.doc_id) and np.array_equal(back.offset, w.offset)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == [name]  # no temp file left behind


def test_save_overwrites_atomically(tmp_path):
    save_windows(sample_windows(5), tmp_path / "w.npz")
    save_windows(sample_windows(7), tmp_path / "w.npz")
    assert len(load_windows(tmp_path / "w.npz")) == 7


def test_save_and_load_reject_other_formats(tmp_path):
    with pytest.raises(CorpusError, match=r"\.safetensors or \.npz"):
        save_windows(sample_windows(), tmp_path / "w.pkl")
    with pytest.raises(CorpusError, match="does not exist"):
        load_windows(tmp_path / "missing.npz")


def test_load_rejects_a_file_without_window_arrays(tmp_path):
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(CorpusError, match=r"missing \['tokens', 'doc_id', 'offset'\]"):
        load_windows(tmp_path / "other.npz")


def test_split_is_deterministic_disjoint_and_ordered():
    w = sample_windows(100)
    train, held = split_windows(w, 0.1, seed=3)
    again_train, again_held = split_windows(w, 0.1, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert np.array_equal(train.tokens, again_train.tokens) and np.array_equal(held.tokens, again_held.tokens)
    rows = {tuple(r) for r in w.tokens.tolist()}
    assert {tuple(r) for r in train.tokens.tolist()} | {tuple(r) for r in held.tokens.tolist()} == rows
    assert not {tuple(r) for r in train.tokens.tolist()} & {tuple(r) for r in held.tokens.tolist()}
    # Each part keeps corpus order (doc ids never decrease).
    assert (np.diff(train.doc_id) >= 0).all() and (np.diff(held.doc_id) >= 0).all()
    other_train, _ = split_windows(w, 0.1, seed=4)
    assert not np.array_equal(train.tokens, other_train.tokens)


def test_split_edge_cases():
    assert len(split_windows(sample_windows(3), 0.01)[1]) == 1  # at least one held-out window
    assert len(split_windows(sample_windows(3), 0.0)[1]) == 0
    with pytest.raises(CorpusError, match=r"\[0, 1\)"):
        split_windows(sample_windows(3), 1.0)
