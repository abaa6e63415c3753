"""Every setting a user gives, each declared once.

- `EnvSettings` / `env_settings()`: the EXPLORER_* environment variables, read and
  checked in one function at call time. The command line and the app take their
  defaults from it, and model.py its cache folder and thread count.
- `DEMO_MODEL`, `DEMO_HOOK`: the names of the demo model and of the hook its SAE reads,
  the defaults wherever a model or a hook is needed.
- `TrainConfig`: how to train an SAE. `explorer train` builds its options from these
  fields, so each one is settable under its own name.

This module imports neither torch nor the rest of the package, so the command line
can build its options (and answer --help) without loading torch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

DEMO_MODEL = "demo"
DEMO_HOOK = "blocks.15.hook_resid_post"

MODEL_ENV = "EXPLORER_MODEL"
SAE_ENV = "EXPLORER_SAE"
INDEX_ENV = "EXPLORER_INDEX"
CACHE_ENV = "EXPLORER_CACHE"
THREADS_ENV = "EXPLORER_THREADS"
DTYPE_ENV = "EXPLORER_DTYPE"
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}  # the names a user may give -> torch's name
ROOTS_ENV = "EXPLORER_ROOTS"

PROJECT_DIR = Path(__file__).resolve().parent.parent  # the checkout: app.py, data/, explorer/


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
    dtype: str | None
    """EXPLORER_DTYPE: the model's dtype, one of DTYPES; None: float32 on CPU, bf16 (else fp16) on CUDA."""
    roots: tuple[Path, ...]
    """EXPLORER_ROOTS: the only folders under which the app's load form opens a model, SAE or
    index (several separated by os.pathsep, ':' on Linux). Default: the project's data/ folder,
    the model cache and the working directory (unless that is the filesystem root, a service's
    usual one). Resolved: symlinks and '..' followed. The command line opens any path."""


def env_settings() -> EnvSettings:
    """Read the EXPLORER_* variables now: tests and the app may change them between calls."""
    env = {name: os.environ.get(name, "") for name in (MODEL_ENV, SAE_ENV, INDEX_ENV, CACHE_ENV, THREADS_ENV,
                                                  DTYPE_ENV, ROOTS_ENV)}
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    cache = Path(env[CACHE_ENV]).expanduser() if env[CACHE_ENV] else Path(xdg) / "sae-explorer"
    return EnvSettings(
        model=env[MODEL_ENV] or DEMO_MODEL,
        sae=env[SAE_ENV] or None,
        index=env[INDEX_ENV] or None,
        cache=cache,
        threads=_threads(env[THREADS_ENV]),
        dtype=_dtype(env[DTYPE_ENV]),
        roots=_roots(env[ROOTS_ENV], cache),
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


def _dtype(value: str) -> str | None:
    if value and value not in DTYPES:
        raise SettingsError(f"{DTYPE_ENV}={value!r} is not a dtype. Fix: set it to float32 or bfloat16 "
                            f"(or float16, on CUDA), or unset it")
    return value or None


def _roots(value: str, cache: Path) -> tuple[Path, ...]:
    folders = [Path(p) for p in value.split(os.pathsep) if p.strip()]
    try:
        if not folders:
            cwd = Path.cwd()
            folders = [PROJECT_DIR / "data", cache] + ([cwd] if cwd != Path(cwd.anchor) else [])
        resolved = [p.expanduser().resolve() for p in folders]
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte, a deleted working directory
        raise SettingsError(f"{ROOTS_ENV}={value!r} holds a folder that cannot be resolved ({err}). "
                            f"Fix: list existing folders separated by {os.pathsep!r}, or unset it") from None
    return tuple(dict.fromkeys(resolved))  # in order, without repeats


class TrainError(ValueError):
    """Training cannot start or resume; the message says why and how to fix it."""


@dataclass(frozen=True)
class TrainConfig:
    """How to train an SAE (see train.py). Each field is also an `explorer train` option,
    --lr for lr, --d-sae for d_sae, and its docstring is that option's help."""

    out_dir: str
    """Folder for the final SAE (SAELens format), train_config.json and checkpoint/."""
    hook_name: str = ""
    """Hook the SAE reads. Empty means the cache's hook; otherwise it must match the cache."""
    d_sae: int = 0
    """Number of latents; 0 means expansion_factor * d_in."""
    expansion_factor: int = 8
    """With d_sae 0: d_sae = expansion_factor * d_in."""
    architecture: Literal["topk", "relu"] = "topk"
    """topk: TopK + AuxK (saved as SAELens "topk"). relu: ReLU + L1 (saved as "standard")."""
    k: int = 32
    """topk: active latents per token."""
    lr: float = 0.0
    """Adam learning rate; 0 means 2e-4 / sqrt(d_sae / 2**14)."""
    lr_warmup_steps: int = 1000
    """Linear warmup from 0; capped at a tenth of the run."""
    lr_decay_fraction: float = 0.2
    """The lr decays linearly to 0 over this final fraction of the steps."""
    batch_size: int = 4096
    """Tokens per step."""
    n_tokens: int = 0
    """Training tokens; 0 means epochs * the cache's tokens."""
    epochs: float = 1.0
    """Passes over the cache, when n_tokens is 0."""
    auxk_alpha: float = 1 / 32
    """Weight of the AuxK loss (OpenAI, dictionary_learning)."""
    k_aux: int = 0
    """Dead latents used by AuxK; 0 means d_in // 2 (sparsify, SAELens)."""
    dead_after_tokens: int = 0
    """A latent that has not fired for this many tokens is dead. 0 means a tenth of the run,
    at most 10M tokens (the sparsify / OpenAI threshold)."""
    l1_coefficient: float = 0.03
    """relu: weight of the scale-free L1 penalty. A starting point only: tune it for the L0 you want."""
    b_dec_init: Literal["geometric_median", "mean"] = "geometric_median"
    """b_dec starts at the geometric median of a data sample (OpenAI) or at its mean."""
    b_dec_samples: int = 32_768
    """Tokens used to initialise b_dec and estimate the input scale (OpenAI uses 32768)."""
    normalize_activations: bool = True
    """Train on inputs scaled to mean norm sqrt(d_in); the saved SAE takes raw activations either way."""
    seed: int = 0
    """Seeds the initial weights and the data order. Same seed and cache give bit-identical weights
    on the CPU; CUDA's atomic adds make GPU runs only approximately reproducible."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (one is also written when training stops)."""
    device: str = ""
    """Empty means cuda when available, else cpu."""

    def __post_init__(self) -> None:
        if not self.out_dir:
            raise TrainError("out_dir is empty; pass the folder the SAE should be written to.")
        if self.architecture not in ("topk", "relu"):
            raise TrainError(f"architecture={self.architecture!r}; use 'topk' or 'relu'.")
        if self.b_dec_init not in ("geometric_median", "mean"):
            raise TrainError(f"b_dec_init={self.b_dec_init!r}; use 'geometric_median' or 'mean'.")
        positive = {"k": self.k, "batch_size": self.batch_size, "checkpoint_every": self.checkpoint_every,
                        "b_dec_samples": self.b_dec_samples, "expansion_factor": self.expansion_factor}
        bad = [f"{name}={value}" for name, value in positive.items() if value < 1]
        bad += [f"{name}={getattr(self, name)}" for name in
                ("d_sae", "n_tokens", "k_aux", "dead_after_tokens", "lr_warmup_steps", "lr", "auxk_alpha",
                 "l1_coefficient") if getattr(self, name) < 0]
        if bad:
            raise TrainError(f"Invalid training settings: {', '.join(bad)}. Fix: use positive values "
                             "(0 means 'automatic' where the field allows it).")
        if self.d_sae and self.k > self.d_sae:
            raise TrainError(f"k={self.k} is larger than d_sae={self.d_sae}; use k <= d_sae.")
        if self.n_tokens == 0 and self.epochs <= 0:
            raise TrainError(f"epochs={self.epochs} with n_tokens=0 trains nothing; set one of them.")
        if not 0.0 <= self.lr_decay_fraction < 1.0:
            raise TrainError(f"lr_decay_fraction={self.lr_decay_fraction}; use a value in [0, 1).")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
