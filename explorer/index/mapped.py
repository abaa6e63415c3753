"""A safetensors file mapped read-only into memory, each array a numpy view of the mapping.

`MappedFile(path)` reads only the header; `.array(name)` is a read-only view whose pages the
OS reads when they are touched, so opening an index and reading one feature's rows cost the
same at 4k and at 1M features. (safetensors' own `get_tensor` copies the whole array, and
`get_slice` copies the slice; both still work here under the same names for existing callers.)

The header is checked as safetensors checks it (a JSON object of dtype, shape and data offsets
that fit the file); `CorruptFile` says what is wrong.
"""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path

import numpy as np

# safetensors dtype code -> numpy dtype (little-endian, as the format stores them)
DTYPES = {"BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "<u2", "I16": "<i2", "F16": "<f2",
          "U32": "<u4", "I32": "<i4", "F32": "<f4", "U64": "<u8", "I64": "<i8", "F64": "<f8"}
_MAX_HEADER = 100_000_000  # safetensors' own limit


class CorruptFile(ValueError):
    """The file is no readable safetensors file; the message says why."""


class _Slice:
    """What safetensors' get_slice returns, as far as callers here use it."""

    def __init__(self, file: MappedFile, name: str):
        self._file, self._name = file, name

    def get_dtype(self) -> str:
        return self._file.header[self._name]["dtype"]

    def get_shape(self) -> list[int]:
        return list(self._file.header[self._name]["shape"])

    def __getitem__(self, index) -> np.ndarray:
        return np.array(self._file.array(self._name)[index])


class MappedFile:
    """One safetensors file, mapped; `header` maps each array name to its dtype, shape, offsets."""

    def __init__(self, path: str | Path):
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            if size < 8:
                raise CorruptFile(f"{size} bytes, too short for a header")
            fh.seek(0)
            n = int.from_bytes(fh.read(8), "little")
            if n > min(_MAX_HEADER, size - 8):
                raise CorruptFile(f"the header claims {n:,} bytes of a {size:,}-byte file")
            raw = fh.read(n)
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size > 8 + n else None
        self._start, data_size = 8 + n, size - 8 - n
        try:
            header = json.loads(raw)
        except ValueError as err:  # also UnicodeDecodeError
            raise CorruptFile(f"the header is not JSON ({err})") from None
        if not isinstance(header, dict):
            raise CorruptFile("the header is not a JSON object")
        header.pop("__metadata__", None)
        for name, info in header.items():
            _check_entry(name, info, data_size)
        self.header: dict[str, dict] = header
        self._views: dict[str, np.ndarray] = {}

    def keys(self) -> list[str]:
        return list(self.header)

    def array(self, name: str) -> np.ndarray:
        """The array `name`, a read-only view of the mapping (KeyError if absent)."""
        if name not in self._views:
            info = self.header[name]
            if info["dtype"] not in DTYPES:
                raise CorruptFile(f"{name} has dtype {info['dtype']}, which numpy cannot map")
            dtype = np.dtype(DTYPES[info["dtype"]])
            a, b = info["data_offsets"]
            count = (b - a) // dtype.itemsize
            flat = (np.frombuffer(self._map, dtype, count, self._start + a) if count
                    else np.zeros(0, dtype))
            self._views[name] = flat.reshape(info["shape"])
        return self._views[name]

    # safetensors.safe_open's names, for callers written against it
    def get_tensor(self, name: str) -> np.ndarray:
        return self.array(name)

    def get_slice(self, name: str) -> _Slice:
        if name not in self.header:
            raise KeyError(name)
        return _Slice(self, name)


_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2, "U32": 4, "I32": 4, "F32": 4,
          "U64": 8, "I64": 8, "F64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


def _check_entry(name: str, info, data_size: int) -> None:
    """One header entry: a known dtype, a shape of counts, offsets inside the data that hold
    exactly that many elements."""
    if not isinstance(info, dict) or info.get("dtype") not in _SIZES:
        raise CorruptFile(f"the header entry of {name!r} has no known dtype")
    shape, offsets = info.get("shape"), info.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                               for n in shape):
        raise CorruptFile(f"the header entry of {name!r} has no valid shape")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_size):
        raise CorruptFile(f"the data of {name!r} lies outside the file")
    if offsets[1] - offsets[0] != _SIZES[info["dtype"]] * math.prod(shape):
        raise CorruptFile(f"the data of {name!r} does not hold its shape {shape}")
