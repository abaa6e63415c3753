"""Is a folder an intact index? Checked cheaply at open, and byte for byte by `--verify`.

At open (`open_checked`, which FeatureIndex.open uses) nothing that grows with the number of
features is read, so opening takes the same time at 4k and at 1M features: the manifest's
fields (IndexManifest), each recorded file's size, every array's dtype and shape from the
safetensors headers (explorer.index.format.ARRAY_SPECS), the histogram edges, the window ids
(one per corpus window), and the ends of the example pointers. The per-feature locators (its
count, its example pointers) are checked when a card reads them (`check_feature_rows`). So a
damaged index fails with the rebuild hint, at open or at the card it damages, rather than with
a traceback.
Damage that leaves all of these plausible (noise inside the example values, say) is found
only by reading everything: `verify_index` compares each file's sha256 with the manifest's.

The build records sizes and checksums with `file_records`; `record_checksums` adds them to an
index whose files are known to be good (the committed demo index got them this way).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from explorer.files import write_atomic
from explorer.index.format import (
    ARRAY_SPECS,
    EXAMPLE_ARRAYS,
    EXAMPLES_FILE,
    FEATURE_ARRAYS,
    FEATURES_FILE,
    FORMAT_VERSION,
    MANIFEST_FILE,
    N_KINDS,
    REBUILD_HINT,
    RECORDED_FILES,
    WINDOW_ARRAYS,
    WINDOWS_FILE,
    IndexFormatError,
    IndexManifest,
)
from explorer.index.mapped import CorruptFile, MappedFile

TENSOR_FILES = {FEATURES_FILE: FEATURE_ARRAYS, EXAMPLES_FILE: EXAMPLE_ARRAYS, WINDOWS_FILE: WINDOW_ARRAYS}
# safetensors' dtype codes, as numpy names them (the names ARRAY_SPECS uses)
_DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
           "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64",
           "I64": "int64", "F64": "float64"}
_CHUNK = 1 << 22


def manifest_text(manifest: dict) -> str:
    """manifest.json's bytes: the build and record_checksums write it alike."""
    return json.dumps(manifest, indent=2)


def _sha256(file: Path, bar=None) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return digest.hexdigest()


def file_records(folder: Path) -> dict[str, dict]:
    """{name: {"bytes", "sha256"}} of each of RECORDED_FILES in `folder`: the manifest's `files`."""
    return {name: {"bytes": (folder / name).stat().st_size, "sha256": _sha256(folder / name)}
            for name in RECORDED_FILES}


def record_checksums(path: str | Path) -> Path:
    """Add the sizes and checksums of its files to the manifest of the index at `path`, as a
    build would have written them. Only for files known to be good: it blesses them as they are."""
    path = Path(path).expanduser()
    open_checked(path)
    raw = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
    raw["files"] = file_records(path)
    return write_atomic(path / MANIFEST_FILE, manifest_text(raw))


def read_manifest(path: Path) -> IndexManifest:
    """The manifest of the index folder `path`, every field checked (IndexFormatError if not)."""
    file = path / MANIFEST_FILE
    if not file.is_file():
        raise IndexFormatError(f"No feature index at {path} (no {MANIFEST_FILE}). {REBUILD_HINT}, "
                               "or pass the folder that holds manifest.json")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:  # also UnicodeDecodeError
        raise IndexFormatError(f"{file} is not a valid index manifest ({err}). {REBUILD_HINT}") from None
    # A newer format may differ in any field, so its version is the one thing worth reporting.
    if isinstance(raw, dict) and raw.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise IndexFormatError(f"The index at {path} has format version {raw['format_version']!r}, but this "
                               f"version of the explorer reads version {FORMAT_VERSION}. {REBUILD_HINT}")
    try:
        return IndexManifest.from_dict(raw)
    except ValueError as err:
        raise IndexFormatError(f"{file} is not a valid index manifest ({err}). {REBUILD_HINT}") from None


def _size_problems(path: Path, manifest: IndexManifest) -> list[str]:
    problems = []
    for name, record in manifest.files.items():
        file = path / name
        if not file.is_file():
            problems.append(f"The index file {file} is missing")
        elif (size := file.stat().st_size) != record["bytes"]:
            how = "cut short" if size < record["bytes"] else "grown"
            problems.append(f"The index file {file} is {size:,} bytes, but the build wrote {record['bytes']:,} "
                            f"(it was {how} or replaced)")
    return problems


def _open_tensors(file: Path, keys: tuple[str, ...]) -> MappedFile:
    if not file.is_file():
        raise IndexFormatError(f"The index file {file} is missing. {REBUILD_HINT}")
    try:
        handle = MappedFile(file)
    except (OSError, CorruptFile) as err:
        raise IndexFormatError(f"The index file {file} is corrupt ({err}). {REBUILD_HINT}") from None
    missing = sorted(set(keys) - set(handle.keys()))
    if missing:
        raise IndexFormatError(f"The index file {file} lacks {missing}; it is from another version or damaged. "
                               f"{REBUILD_HINT}")
    return handle


def _fits(dim: int | str, n: int, sizes: dict[str, int]) -> bool:
    """Does length `n` fit dimension `dim` of ARRAY_SPECS? Binds a size seen the first time."""
    if isinstance(dim, int):
        return n == dim
    name, plus, _ = dim.partition("+")
    n -= 1 if plus else 0
    sizes.setdefault(name, n)
    return n >= 0 and sizes[name] == n


def _check_arrays(path: Path, manifest: IndexManifest, handles: dict) -> dict[str, int]:
    """Every array's dtype and shape against ARRAY_SPECS (headers only); returns the sizes."""
    sizes = {"d_sae": manifest.d_sae, "window_len": manifest.window_len, "n_groups": manifest.d_sae * N_KINDS}
    for file, names in TENSOR_FILES.items():
        for name in names:
            dtypes, dims = ARRAY_SPECS[name]
            piece = handles[file].get_slice(name)
            dtype = _DTYPES.get(piece.get_dtype(), piece.get_dtype())
            if dtype not in dtypes:
                raise IndexFormatError(f"The index file {path / file} holds {name} as {dtype}, but the format "
                                       f"says {' or '.join(dtypes)}. {REBUILD_HINT}")
            shape = list(piece.get_shape())
            if len(shape) != len(dims) or not all(_fits(dim, n, sizes) for dim, n in zip(dims, shape)):
                expected = [dim if isinstance(dim, int) else sizes.get(dim, dim) for dim in dims]
                raise IndexFormatError(f"The index file {path / file} holds {name} of shape {shape}, but the "
                                       f"format says {expected} for this manifest. {REBUILD_HINT}")
    if sizes["n_used_windows"] > manifest.n_windows:
        raise IndexFormatError(f"The index file {path / WINDOWS_FILE} holds {sizes['n_used_windows']} windows, "
                               f"but the manifest says the corpus had {manifest.n_windows}. {REBUILD_HINT}")
    return sizes


def _damaged(path: Path, file: str, what: str) -> IndexFormatError:
    return IndexFormatError(f"The index file {path / file} is damaged: {what}. {REBUILD_HINT}")


def _check_locators(path: Path, manifest: IndexManifest, handles: dict, sizes: dict[str, int]) -> None:
    """The locators whose size does not grow with the features: histogram edges, the ends of the
    example pointers, window ids (one per corpus window at most)."""
    edges = handles[FEATURES_FILE].array("hist_edges")
    if not (np.isfinite(edges).all() and edges[0] > 0 and (np.diff(edges) > 0).all()):
        raise _damaged(path, FEATURES_FILE, "the histogram edges are not positive and increasing")
    ptr = handles[EXAMPLES_FILE].array("ex_ptr")
    if ptr[0] != 0 or ptr[-1] != sizes["n_examples"]:
        raise _damaged(path, EXAMPLES_FILE, f"the example pointers do not run from 0 up to {sizes['n_examples']}")
    ids = handles[WINDOWS_FILE].array("window_ids")
    if len(ids) and (ids[0] < 0 or ids[-1] >= manifest.n_windows or (np.diff(ids) <= 0).any()):
        raise _damaged(path, WINDOWS_FILE, f"the window ids are not increasing ids below {manifest.n_windows}")


def check_feature_rows(path: Path, manifest: IndexManifest, count: int, ptr: np.ndarray, n_examples: int) -> None:
    """One feature's locators, as a card reads them: its firing count and its N_KINDS + 1 example
    pointers (IndexFormatError when damaged)."""
    if not 0 <= count <= manifest.n_tokens:
        raise _damaged(path, FEATURES_FILE, f"a feature count falls outside 0..{manifest.n_tokens} (the tokens indexed)")
    if ptr[0] < 0 or ptr[-1] > n_examples or (np.diff(ptr) < 0).any():
        raise _damaged(path, EXAMPLES_FILE, f"the example pointers do not run from 0 up to {n_examples}")


def open_checked(path: Path) -> tuple[IndexManifest, dict[str, MappedFile]]:
    """(manifest, {file name: MappedFile}) of the index folder `path`, after every check that
    reads no more than headers and arrays whose size does not grow with the features;
    IndexFormatError names the first problem."""
    manifest = read_manifest(path)
    problems = _size_problems(path, manifest)
    if problems:
        raise IndexFormatError(f"{problems[0]}. {REBUILD_HINT}")
    handles = {file: _open_tensors(path / file, names) for file, names in TENSOR_FILES.items()}
    sizes = _check_arrays(path, manifest, handles)
    _check_locators(path, manifest, handles, sizes)
    return manifest, handles


def verify_index(path: str | Path, progress: bool = True) -> list[str]:
    """Every problem of the index at `path`, one line each; empty when each recorded file has its
    recorded size and sha256 and the checks at open pass. Reads every file whole."""
    path = Path(path).expanduser()
    try:
        manifest = read_manifest(path)
    except IndexFormatError as err:
        return [str(err)]
    if not manifest.files:
        problems = [f"The manifest of {path} records no checksums (the index was built before they were), so its "
                    "files cannot be verified. Fix: rebuild it with `explorer index` to record them"]
    else:
        problems = [f"{p}. {REBUILD_HINT}" for p in _size_problems(path, manifest)]
        problems += _checksum_problems(path, manifest, progress)
    if not manifest.files or not problems:  # else a changed file already explains what open would find
        try:
            open_checked(path)
        except IndexFormatError as err:
            problems.append(str(err))
    return problems


def _checksum_problems(path: Path, manifest: IndexManifest, progress: bool) -> list[str]:
    """sha256 of each recorded file that has its recorded size (the others are reported already)."""
    same_size = {name: record for name, record in manifest.files.items()
                 if (path / name).is_file() and (path / name).stat().st_size == record["bytes"]}
    problems = []
    with tqdm(total=sum(r["bytes"] for r in same_size.values()), unit="B", unit_scale=True, desc="verifying",
              disable=not progress) as bar:
        for name, record in same_size.items():
            digest = _sha256(path / name, bar)
            if digest != record["sha256"]:
                problems.append(f"The index file {path / name} has sha256 {digest[:16]}..., but the build recorded "
                                f"{record['sha256'][:16]}...: its contents changed. {REBUILD_HINT}")
    return problems
