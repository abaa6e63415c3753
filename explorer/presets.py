"""Steering presets: named sets of interventions, saved per SAE.

A preset is what the steering page steers (interventions, each with its
optional condition, and an optional stop condition) plus optional default
generation settings, under a name. `explorer serve` lists every preset as a
model of its own (`<model>:<name>`), so any OpenAI-compatible client can use a
steered model by naming it.

Presets live in one JSON file per SAE, `<cache>/presets/<sae fingerprint[:16]>.json`
(the cache is EXPLORER_CACHE, else ~/.cache/sae-explorer). Keyed by the SAE and
not by its index, they survive index rebuilds and never touch a committed
folder. The interventions are stored as the steer text of deep links
(`links.format_steer`, e.g. `123:clamp:3x,45:ablate@gen`), so a preset reads
like a link:

    {"sae_fingerprint": "<sha256>", "presets": {"calm": {"steer": "123:clamp:3x",
     "stop": "45>0.5", "settings": {"temperature": 0.7}}}}

A file that does not read as presets raises PresetError naming the file, the
preset and the fix; nothing here overwrites a file it could not read.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from explorer.files import write_json
from explorer.links import format_steer, parse_steer
from explorer.steering import GenerationSettings, Intervention, SteeringError, StopCondition, check_condition, parse_stop

PRESETS_DIR = "presets"
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
NAME_RULE = "1 to 64 characters: lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
# The defaults a preset may set; a request's own values win over them.
SETTING_NAMES = ("max_new_tokens", "temperature", "top_p", "seed")
_save_lock = threading.Lock()  # read-modify-write of one file by two sessions of this process


class PresetError(ValueError):
    """A preset or presets file cannot be used; the message says why and how to fix it."""


@dataclass(frozen=True)
class Preset:
    name: str
    interventions: tuple[Intervention, ...]
    stop: StopCondition | None = None
    settings: dict[str, float] = field(default_factory=dict)  # defaults, by GenerationSettings field name

    def describe(self) -> str:
        text = ", ".join(iv.describe() for iv in self.interventions)
        return f"{text}; {self.stop.describe()}" if self.stop else text


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.match(name):
        raise PresetError(f"Preset name {name!r} is not allowed. Fix: use {NAME_RULE}, e.g. 'calm-2'")
    return name


def presets_path(cache: Path, sae_id: str) -> Path:
    """The presets file of the SAE with this fingerprint."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", sae_id)[:16] or "unknown-sae"
    return Path(cache) / PRESETS_DIR / f"{safe}.json"


def make_preset(name: str, interventions, stop: StopCondition | None = None,
                settings: dict | None = None, d_sae: int | None = None) -> Preset:
    """A checked preset: a valid name, at least one intervention, features inside the SAE, valid settings."""
    check_name(name)
    interventions = tuple(interventions)
    if not interventions:
        raise PresetError(f"Preset {name!r} steers nothing. Fix: add at least one feature to steer before saving")
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(SETTING_NAMES))
    if unknown:
        raise PresetError(f"Preset {name!r} has unknown settings {', '.join(unknown)}. "
                          f"Fix: use only {', '.join(SETTING_NAMES)}")
    try:
        for iv in interventions:
            if d_sae is not None and not 0 <= iv.feature < d_sae:
                raise SteeringError(f"feature {iv.feature} does not exist (this SAE's features are 0..{d_sae - 1})")
            check_condition(iv.condition, d_sae)
        check_condition(stop, d_sae)
        GenerationSettings(**settings)
    except (SteeringError, TypeError) as err:
        raise PresetError(f"Preset {name!r}: {err}") from None
    return Preset(name, interventions, stop, settings)


def to_json(preset: Preset) -> dict:
    out: dict = {"steer": format_steer(preset.interventions)}
    if preset.stop is not None:
        out["stop"] = preset.stop.spec()
    if preset.settings:
        out["settings"] = dict(preset.settings)
    return out


def from_json(name: str, obj, d_sae: int | None = None) -> Preset:
    if not isinstance(obj, dict) or not isinstance(obj.get("steer"), str):
        raise PresetError(f"Preset {name!r} is not an object with a 'steer' text")
    interventions, problems = parse_steer(obj["steer"], d_sae)
    if problems:
        raise PresetError(f"Preset {name!r}: {problems[0]}")
    stop = None
    if obj.get("stop"):
        try:
            stop = parse_stop(str(obj["stop"]))
        except SteeringError as err:
            raise PresetError(f"Preset {name!r}: stop {obj['stop']!r}: {err}") from None
    settings = obj.get("settings") or {}
    if not isinstance(settings, dict):
        raise PresetError(f"Preset {name!r}: 'settings' is not an object")
    return make_preset(name, interventions, stop, settings, d_sae)


def load_presets(path: Path, sae_id: str | None = None, d_sae: int | None = None) -> dict[str, Preset]:
    """Every preset in the file, by name ({} when there is no file).

    Raises PresetError when the file is not valid presets JSON, or names another SAE."""
    path = Path(path)
    if not path.exists():
        return {}
    fix = f"Fix: correct or move away {path}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PresetError(f"The presets file {path} is not valid JSON ({err}). {fix}") from None
    if not isinstance(data, dict) or not isinstance(data.get("presets"), dict):
        raise PresetError(f"The presets file {path} has no 'presets' object. {fix}")
    if sae_id is not None and data.get("sae_fingerprint") not in (None, sae_id):
        raise PresetError(f"The presets file {path} was written for another SAE "
                          f"({str(data['sae_fingerprint'])[:12]}…, not {sae_id[:12]}…). {fix}")
    presets = {}
    for name, obj in data["presets"].items():
        try:
            presets[name] = from_json(check_name(name), obj, d_sae)
        except PresetError as err:
            raise PresetError(f"In {path}: {err}. {fix}") from None
    return presets


def save_preset(path: Path, preset: Preset, sae_id: str, d_sae: int | None = None) -> None:
    """Add or replace one preset in the file (atomic write; the other presets are kept)."""
    with _save_lock:
        presets = load_presets(path, sae_id, d_sae)
        presets[preset.name] = preset
        _write(path, presets, sae_id)


def delete_preset(path: Path, name: str, sae_id: str) -> None:
    with _save_lock:
        presets = load_presets(path, sae_id)
        if presets.pop(name, None) is None:
            raise PresetError(f"There is no preset {name!r}. Fix: pick one of {', '.join(sorted(presets)) or 'none'}")
        _write(path, presets, sae_id)


def _write(path: Path, presets: dict[str, Preset], sae_id: str) -> None:
    write_json(path, {"sae_fingerprint": sae_id,
                      "presets": {name: to_json(p) for name, p in sorted(presets.items())}})
