"""Every setting a user gives, each declared once.

- `EnvSettings` / `env_settings()`: the EXPLORER_* environment variables, read and
  checked in one function at call time. The command line and the app take their
  defaults from it, and model.py its cache folder and thread count.
- `DEMO_MODEL`, `DEMO_HOOK`: the names of the demo model and of the hook its SAE reads,
  the defaults wherever a model or a hook is needed.

This module imports neither torch nor the rest of the package, so the command line
can use it without loading torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEMO_MODEL = "demo"
DEMO_HOOK = "blocks.15.hook_resid_post"

MODEL_ENV = "EXPLORER_MODEL"
SAE_ENV = "EXPLORER_SAE"
INDEX_ENV = "EXPLORER_INDEX"
CACHE_ENV = "EXPLORER_CACHE"
THREADS_ENV = "EXPLORER_THREADS"


class SettingsError(ValueError):
    """An environment variable holds a value that cannot be used; the message says the fix."""


@dataclass(frozen=True)
class EnvSettings:
    """What the EXPLORER_* variables ask for; an unset or empty variable means the default."""

    model: str
    """EXPLORER_MODEL: 'demo' (the default), a local model folder, a .gguf file or a hub id."""
    sae: str | None
    """EXPLORER_SAE: an SAE folder, a params.npz or 'random'; None means the demo SAE."""
    index: str | None
    """EXPLORER_INDEX: a feature index folder; None means the demo index (with the demo SAE)."""
    cache: Path
    """Where converted models live: EXPLORER_CACHE, else $XDG_CACHE_HOME/sae-explorer,
    else ~/.cache/sae-explorer."""
    threads: int | None
    """EXPLORER_THREADS: torch threads; None leaves torch's default (one per core)."""


def env_settings() -> EnvSettings:
    """Read the EXPLORER_* variables now: tests and the app may change them between calls."""
    env = {name: os.environ.get(name, "") for name in (MODEL_ENV, SAE_ENV, INDEX_ENV, CACHE_ENV, THREADS_ENV)}
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return EnvSettings(
        model=env[MODEL_ENV] or DEMO_MODEL,
        sae=env[SAE_ENV] or None,
        index=env[INDEX_ENV] or None,
        cache=Path(env[CACHE_ENV]).expanduser() if env[CACHE_ENV] else Path(xdg) / "sae-explorer",
        threads=_threads(env[THREADS_ENV]),
    )


def _threads(value: str) -> int | None:
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise SettingsError(f"{THREADS_ENV}={value!r} is not a positive whole number. "
                            f"Fix: set it to a thread count, e.g. {THREADS_ENV}=1, or unset it")
    return threads
