"""User labels: the names a person typed for features, in `labels_user.json` of an index folder.

They are the only thing in an index that cannot be rebuilt, so no file holding them is ever
overwritten or deleted here. The file names the SAE they were written for:

    {"sae_fingerprint": "<the manifest's sae_fingerprint>", "labels": {"7": "dog", ...}}

A file that cannot be read (bad JSON, not UTF-8, wrong types, a feature the SAE lacks) is moved
aside to `labels_user.unreadable-<UTC time>.json`; labels of another SAE to
`labels_user.<its fingerprint[:12]>.json`, and moved back when the folder is rebuilt for that
SAE. A file without `sae_fingerprint` (written before labels named their SAE) belongs to the
index it sits in; a rebuild names it after the SAE of the index it replaces (`carry_over`).
`UserLabels.notice()` says which files are kept aside, why, and how to restore them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from explorer.files import write_json
from explorer.index.format import LABELS_USER_FILE, MANIFEST_FILE

ASIDE_GLOB = "labels_user.*.json"  # LABELS_USER_FILE with a tag: files kept aside
UNKNOWN_SAE = "unknown-sae"  # tag of labels whose SAE a rebuild could not tell


class UnreadableLabels(ValueError):
    """A labels file whose content is not a valid user-labels file; the message says why."""


@dataclass(frozen=True)
class LabelsFile:
    sae_fingerprint: str | None  # None: written before labels named their SAE
    labels: dict[int, str]


def parse(raw: bytes) -> LabelsFile:
    """The content of a labels file, checked strictly: anything else raises UnreadableLabels."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise UnreadableLabels(f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    except ValueError as err:
        raise UnreadableLabels(f"not valid JSON ({err})") from None
    if not isinstance(body, dict) or not isinstance(body.get("labels"), dict):
        raise UnreadableLabels('not of the form {"sae_fingerprint": ..., "labels": {"7": "text", ...}}')
    # The messages name no content of the file: it may hold anything, and they are shown as is.
    if set(body) - {"sae_fingerprint", "labels"}:
        raise UnreadableLabels("it has keys other than sae_fingerprint and labels")
    fingerprint = body.get("sae_fingerprint")
    if fingerprint is not None and (not isinstance(fingerprint, str) or not fingerprint):
        raise UnreadableLabels("its sae_fingerprint is not a non-empty string")
    labels = {}
    for n, (key, text) in enumerate(body["labels"].items(), 1):
        if not re.fullmatch(r"[0-9]+", key) or not isinstance(text, str):
            raise UnreadableLabels(f"label {n} is not of the form \"feature number\": \"text\"")
        labels[int(key)] = text
    return LabelsFile(fingerprint, labels)


def _tag(fingerprint: str) -> str:
    """A file-name-safe short name for an SAE (the fingerprint comes from a file, so it may be anything)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", fingerprint)[:12]


def _read(file: Path) -> LabelsFile | None:
    """The labels file, or None when there is none. OSError (say, no permission) propagates."""
    try:
        return parse(file.read_bytes())
    except FileNotFoundError:
        return None


def _move_aside(file: Path, name_tag: str) -> Path:
    """Rename `file` to labels_user.<name_tag>.json (or -2, -3 ... when taken), never over another file."""
    for n in range(1, 1000):
        target = file.with_name(f"labels_user.{name_tag}{'' if n == 1 else f'-{n}'}.json")
        try:
            os.link(file, target)  # unlike rename, fails when the target exists
        except FileExistsError:
            continue
        file.unlink()
        return target
    raise OSError(f"{file.parent} already holds 999 files named labels_user.{name_tag}*.json")


def _utc_stamp() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def _write(file: Path, labels: LabelsFile) -> None:
    """Write a labels file atomically (explorer.files)."""
    body = {"sae_fingerprint": labels.sae_fingerprint,
            "labels": {str(k): v for k, v in sorted(labels.labels.items())}}
    write_json(file, body)


class UserLabels:
    """The user labels of one index folder, in use for the SAE with fingerprint `sae_fingerprint`."""

    def __init__(self, folder: Path, sae_fingerprint: str, d_sae: int):
        self.folder = Path(folder)
        self.file = self.folder / LABELS_USER_FILE
        self.sae_fingerprint = sae_fingerprint
        self.d_sae = d_sae

    def load(self) -> dict[int, str]:
        """The labels in use. First moves aside a labels file that cannot be read or is another
        SAE's, and moves back this SAE's labels kept aside by an earlier rebuild.

        Raises OSError when the file cannot be read, or must move and cannot (a read-only folder)."""
        current = self._check_current()
        if current is None:
            current = self._restore()
        return current.labels if current is not None else {}

    def save(self, labels: dict[int, str]) -> None:
        """Write `labels` as this SAE's. Call `load` first, under the same lock: it keeps aside
        whatever is there that is not this SAE's labels."""
        _write(self.file, LabelsFile(self.sae_fingerprint, labels))

    def _parse(self, file: Path) -> LabelsFile | None:
        """`file` parsed; labels for this SAE (or of no recorded SAE) must name its features."""
        labels = _read(file)
        if labels is not None and labels.sae_fingerprint in (None, self.sae_fingerprint):
            outside = [f for f in labels.labels if f >= self.d_sae]
            if outside:
                raise UnreadableLabels(f"feature {min(outside)} does not exist: this SAE has features "
                                       f"0..{self.d_sae - 1}")
        return labels

    def _check_current(self) -> LabelsFile | None:
        try:
            current = self._parse(self.file)
        except UnreadableLabels:
            _move_aside(self.file, f"unreadable-{_utc_stamp()}")
            return None
        if current is not None and current.sae_fingerprint not in (None, self.sae_fingerprint):
            _move_aside(self.file, _tag(current.sae_fingerprint))
            return None
        return current

    def _restore(self) -> LabelsFile | None:
        kept = self.folder / f"labels_user.{_tag(self.sae_fingerprint)}.json"
        try:
            labels = self._parse(kept)
        except (OSError, UnreadableLabels):
            return None  # notice() reports it
        if labels is None or labels.sae_fingerprint != self.sae_fingerprint:
            return None
        try:
            os.link(kept, self.file)  # never over a labels file written meanwhile
        except FileExistsError:
            return None
        kept.unlink()
        return labels

    def notice(self) -> str:
        """Which labels files are kept aside, why, and how to use them again; "" when there are none."""
        described = [self._describe(p) for p in sorted(self.folder.glob(ASIDE_GLOB))]
        if not described:
            return ""
        text = f"User labels not in use are kept in {self.folder}: " + "; ".join(d for d, _ in described) + "."
        if any(to_rename for _, to_rename in described):
            text += (f" To use such a file, fix it if needed and rename it to {LABELS_USER_FILE} (merging by "
                     "hand with any labels saved since).")
        return text + " Delete a file once you no longer need it."

    def _describe(self, file: Path) -> tuple[str, bool]:
        """What `file` holds, and whether renaming it is the way to use it."""
        try:
            kept = self._parse(file)
        except (OSError, UnreadableLabels) as err:
            return f"{file.name} (could not be read: {err})", True
        n = f"{len(kept.labels)} label{'s' if len(kept.labels) != 1 else ''}"
        if kept.sae_fingerprint is None:
            return f"{file.name} ({n} of an SAE not recorded)", True
        if kept.sae_fingerprint == self.sae_fingerprint:
            return f"{file.name} ({n} of this SAE)", True
        return (f"{file.name} ({n} of another SAE, {_tag(kept.sae_fingerprint)}: used again when this folder "
                "is rebuilt for it)"), False


def carry_over(old: Path, new: Path, sae_fingerprint: str, d_sae: int) -> None:
    """A rebuild of index folder `old` into `new`: copy every user-labels file across, keeping
    aside those not of this SAE (UserLabels.notice says which).

    A file without sae_fingerprint belonged to the old index, so it is named after the old
    manifest's SAE; when that cannot be read, it is kept aside as an unknown SAE's."""
    for file in [old / LABELS_USER_FILE, *old.glob(ASIDE_GLOB)]:
        if file.is_file():
            shutil.copy2(file, new / file.name)
    labels = new / LABELS_USER_FILE
    try:
        legacy = _read(labels)
    except UnreadableLabels:
        legacy = None  # kept aside by load() below
    if legacy is not None and legacy.sae_fingerprint is None:
        old_sae = _manifest_fingerprint(old)
        if old_sae is None:
            _move_aside(labels, UNKNOWN_SAE)
        else:
            _write(labels, LabelsFile(old_sae, legacy.labels))
    UserLabels(new, sae_fingerprint, d_sae).load()


def _manifest_fingerprint(folder: Path) -> str | None:
    try:
        fingerprint = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))["sae_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return fingerprint if isinstance(fingerprint, str) and fingerprint else None
