"""Atomic writes: readers (and a resumed job) never see a half-written file or folder.

Every file and folder this project writes goes through here, so they all get one
permission rule: files 0644, folders 0755 (readable by everyone, writable by the
owner), whatever `mkstemp`/`mkdtemp` chose. Temporary names are hidden siblings,
`.NAME.<random>.tmp`, so a crash leaves them beside the target, where
`remove_leftovers` finds them on the next run. Folders these helpers create on
the way (`make_dirs`) get the same rule.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

FILE_MODE = 0o644
DIR_MODE = 0o755


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def make_dirs(path: str | os.PathLike) -> Path:
    """Create folder `path` and its missing parents, each 0755 (`mkdir` alone follows the umask).

    Folders that already exist keep their mode: they are the user's."""
    path = Path(path)
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    for p in reversed(missing):
        os.chmod(p, DIR_MODE)
    return path


@contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside `path`; when the block succeeds it replaces `path`."""
    path = Path(path)
    make_dirs(path.parent)
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

    An existing `path` is moved aside first and deleted after the swap, so `path` is
    never half-written: it is the old folder, the complete new one, or for an instant
    between two renames absent (Linux has no portable atomic swap of folders). If the
    second rename fails, the old folder is put back."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
    try:
        yield tmp
        _set_modes(tmp)
        aside = None
        if path.exists():
            aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp"))
            os.replace(path, aside / path.name)
        try:
            os.replace(tmp, path)
        except BaseException:
            if aside is not None:  # put the old folder back rather than lose it
                os.replace(aside / path.name, path)
                aside.rmdir()
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _set_modes(folder: Path) -> None:
    os.chmod(folder, DIR_MODE)
    for root, dirs, files in os.walk(folder):
        for names, mode in ((dirs, DIR_MODE), (files, FILE_MODE)):
            for name in names:
                p = os.path.join(root, name)
                if not os.path.islink(p):  # chmod follows links, possibly out of the folder
                    os.chmod(p, mode)


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete temp files and folders that an interrupted write of `path` left beside it.

    Only call this while holding the right to write `path` (no other writer is
    running), since another writer's temp files look the same."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    # The random part has no dot, so the temp files of `a.b` never match those of `a`.
    temp_name = re.compile(re.escape(_temp_prefix(path)) + r"[^.]+\.tmp")
    gone = []
    for p in path.parent.iterdir():
        if not temp_name.fullmatch(p.name):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        gone.append(p)
    return gone
