"""Atomic writes: readers (and a resumed job) never see a half-written file or folder.

Every file and folder this project writes goes through here, so they all get one
permission rule: files 0644, folders 0755 (readable by everyone, writable by the
owner), whatever `mkstemp`/`mkdtemp` chose. Temporary names are hidden siblings,
`.NAME.<random>.tmp`, so a crash leaves them beside the target, where
`remove_leftovers` finds them on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FILE_MODE = 0o644
DIR_MODE = 0o755


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside `path`; when the block succeeds it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` (str as UTF-8) to `path` atomically, flushed to disk."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    with replacing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int = 1) -> Path:
    return write_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


@contextmanager
def replacing_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; when the block succeeds it replaces `path` whole.

    An existing `path` is moved aside first and deleted after the swap, so at every
    moment `path` is either the old folder or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        yield tmp
        _set_modes(tmp)
        aside = None
        if path.exists():
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
            os.replace(path, aside / path.name)
        os.replace(tmp, path)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _set_modes(folder: Path) -> None:
    os.chmod(folder, DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), DIR_MODE)
        for name in files:
            os.chmod(os.path.join(root, name), FILE_MODE)


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete temp files and folders that an interrupted write of `path` left beside it.

    Only call this while holding the right to write `path` (no other writer is
    running), since another writer's temp files look the same."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    gone = []
    for p in path.parent.glob(f"{_temp_prefix(path)}*.tmp"):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    return gone
