"""A workspace: the model, the SAE on one of its hooks, and optionally that SAE's
feature index, loaded together and checked against each other.

The command line and the app both open one; the app keeps a single workspace
per process and shares it between browser sessions (the model's lock guards
forward passes). The app opens only paths under the configured roots
(`check_inside_roots`, EXPLORER_ROOTS); the command line opens any path.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from explorer.hooks import hook_width, parse_hook
from explorer.model import DEMO_MODEL, DEMO_NAME, LoadedModel, load_model
from explorer.sae import SAE, check_compatible, random_sae
from explorer.sae_files import load_gemma_scope_npz, load_sae, sae_fingerprint
from explorer.settings import DEMO_HOOK, PROJECT_DIR, ROOTS_ENV
from explorer.tl_processing import TLProcessing, describe

log = logging.getLogger(__name__)

DATA_DIR = PROJECT_DIR / "data"
DEMO_SAE = DATA_DIR / "demo" / "sae"
DEMO_INDEX = DATA_DIR / "demo" / "index"
RANDOM_SAE = "random"  # an untrained SAE of the right shape, for trying the tool without one


class WorkspaceError(ValueError):
    """Model, SAE and index do not fit together; the message says how to fix it."""


@dataclass(frozen=True)
class Workspace:
    lm: LoadedModel
    sae: SAE
    sae_source: str  # a path, or "random"
    sae_id: str  # fingerprint of the SAE files ("random-<seed>" for untrained ones)
    index: object | None  # explorer.index.FeatureIndex, when one is loaded

    @property
    def untrained(self) -> bool:
        return bool(self.sae.cfg.metadata.get("untrained"))

    @property
    def hook_name(self) -> str:
        return self.sae.cfg.hook_name

    def max_acts(self) -> dict[int, float] | None:
        """Per-feature max activation from the index, for 'N x max' steering."""
        if self.index is None:
            return None
        return {i: float(v) for i, v in enumerate(self.index.max_activations())}

    def notices(self) -> list[str]:
        """Warnings about the loaded combination: an SAE that names another model."""
        problem = model_mismatch(self.sae.cfg.model_name, self.lm.name)
        return [problem] if problem else []

    def describe(self) -> str:
        """One line on what is loaded; then the SAE's training metadata and any notices, a line each."""
        trained = "UNTRAINED random SAE" if self.untrained else f"SAE {self.sae_source}"
        index = "no index" if self.index is None else f"index of {self.index.manifest.n_tokens:,} tokens"
        processing = TLProcessing.from_metadata(self.sae.cfg.metadata)
        processed = f", TransformerLens-processed ({processing.describe()})" if processing.on() else ""
        lines = [(f"{self.lm.name} on {self.lm.device} ({str(self.lm.dtype).removeprefix('torch.')}), "
                  f"{self.hook_name}, {trained} (d_sae {self.sae.cfg.d_sae}){processed}, {index}")]
        if self.sae.cfg.provenance():
            lines.append(f"SAE metadata: {self.sae.cfg.provenance()}")
        lines += [f"WARNING: {notice}" for notice in self.notices()]
        return "\n".join(lines)


# TransformerLens names that differ from the hub's (TransformerLens `loading_from_pretrained.py` aliases).
_MODEL_ALIASES = {"gpt2-small": "gpt2"}


def _model_key(name: str) -> str:
    """A model name without its hub organisation or folder, lower case: "openai-community/gpt2" -> "gpt2"."""
    key = str(name).strip().rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gguf")
    if key in (DEMO_MODEL, DEMO_NAME.lower()):
        return DEMO_MODEL
    return _MODEL_ALIASES.get(key, key)


def model_mismatch(sae_model: str, loaded: str) -> str:
    """A warning when the SAE names a model other than the loaded one ("" when they agree or it names none)."""
    if not sae_model or _model_key(sae_model) == _model_key(loaded):
        return ""
    return (f"The SAE says it was trained on model {sae_model!r}, but the loaded model is {loaded!r}: its features "
            "may mean nothing here. Fix: load that model (--model), or use an SAE trained on this one")



def check_inside_roots(what: str, value: str, roots: Sequence[Path]) -> Path:
    """`value` as a resolved path (symlinks and '..' followed) when it lies under one
    of `roots`; else a WorkspaceError that names the roots and EXPLORER_ROOTS.

    The app's load form is open to whoever reaches the page, and a folder that
    fails to load is described in the error (its contents, the SAE folders below
    it): so the app opens nothing outside the roots."""
    shown = ", ".join(str(r) for r in roots) or "none"
    fix = (f"Fix: use a path under {shown}, or start the app with {ROOTS_ENV} naming the folder "
           f"(several separated by {os.pathsep!r}).")
    try:
        path = Path(value).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as err:  # a symlink loop, a NUL byte
        raise WorkspaceError(f"{what} path {value!r} cannot be resolved ({err}). {fix}") from None
    if not any(path == root or root in path.parents for root in roots):
        raise WorkspaceError(f"{what} path {value!r} is outside the folders this app opens models, SAEs "
                             f"and indexes from. {fix}")
    return path


def open_sae(lm: LoadedModel, sae: str | None, hook: str | None = None, d_sae: int | None = None, seed: int = 0) -> tuple[SAE, str, str]:
    """Load an SAE folder (default: the demo SAE when it exists, else a random
    one). Returns (sae, source, fingerprint)."""
    if sae is None:
        sae = str(DEMO_SAE) if (DEMO_SAE / "cfg.json").exists() and lm.name == DEMO_MODEL else RANDOM_SAE
    if sae == RANDOM_SAE:
        hook = hook or DEMO_HOOK
        d_in = hook_width(lm.model, parse_hook(lm.model, hook))
        width = d_sae or 8 * d_in
        loaded = random_sae(d_in, width, architecture="topk", k=32, hook_name=hook, model_name=lm.name, seed=seed)
        return loaded.to(lm.device), RANDOM_SAE, f"random-{seed}"
    if str(sae).endswith(".npz"):  # Gemma Scope params.npz: the hook is not in the file
        if not hook:
            raise WorkspaceError(f"{sae} is a Gemma Scope params.npz, which does not name its hook. "
                                 "Fix: pass --hook, e.g. blocks.20.hook_resid_post")
        loaded = load_gemma_scope_npz(sae, hook_name=hook, model_name=lm.name).to(lm.device)
    else:
        loaded = load_sae(sae, device=lm.device)
    if hook and loaded.cfg.hook_name and hook != loaded.cfg.hook_name:
        raise WorkspaceError(
            f"The SAE at {sae} was trained on {loaded.cfg.hook_name}, not {hook}. "
            "Fix: leave out the hook, or pick the SAE trained for that hook"
        )
    if hook and not loaded.cfg.hook_name:
        loaded.cfg.hook_name = hook
    if not loaded.cfg.hook_name:
        raise WorkspaceError(f"The SAE at {sae} does not say which hook it reads. Fix: pass --hook blocks.L.hook_resid_post")
    check_compatible(loaded, hook_width(lm.model, parse_hook(lm.model, loaded.cfg.hook_name)), loaded.cfg.hook_name)
    log.info("%s: %s", sae, describe(lm.model, loaded.cfg))  # raises when a setting cannot be honoured
    return loaded, str(sae), sae_fingerprint(sae)


def open_index(path: str | Path | None, lm: LoadedModel, sae: SAE, sae_id: str):
    if path is None:
        return None
    from explorer.index import FeatureIndex

    index = FeatureIndex.open(path, lm.tokenizer)
    index.check_matches(lm.name, sae.cfg.hook_name, sae_id)
    return index


def open_workspace(
    model: str = DEMO_MODEL,
    sae: str | None = None,
    index: str | None = None,
    hook: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
    pack: bool = True,
) -> Workspace:
    """Load model, SAE and index, checking that they belong together.

    With no SAE given, the demo model gets the committed demo SAE and index.
    `pack`: as `load_model`'s."""
    lm = load_model(model, device=device, dtype=dtype, progress=progress, pack=pack)
    loaded, source, sae_id = open_sae(lm, sae, hook)
    if index is None and sae is None and source != RANDOM_SAE and (DEMO_INDEX / "manifest.json").exists():
        index = str(DEMO_INDEX)
    return Workspace(lm=lm, sae=loaded, sae_source=source, sae_id=sae_id, index=open_index(index, lm, loaded, sae_id))
