"""SAELens hook names mapped onto the transformers module tree, and scoped hooks.

A hook name such as `blocks.15.hook_resid_post` names an activation in
TransformerLens terms. Here it becomes a forward (pre-)hook on one module of a
transformers model. Hooks are registered for one call and removed in `finally`,
only the handles we made: the model is shared, so we never clear other hooks.

`blocks.L.attn.hook_z` is every head's attention output before the output
projection, heads concatenated: the input of GPT-2's attn.c_proj or Llama's
self_attn.o_proj, (..., n_heads * d_head), as SAELens's hook_z reshape makes it.
The values are those of a plain transformers model; explorer.tl_processing maps
them into the space of an SAE trained on a processed TransformerLens model.
`value_vectors` and `is_layernorm` give it what it needs from the module tree.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

HOOK_KINDS = ("hook_resid_pre", "hook_resid_post", "hook_mlp_out", "hook_attn_out", "attn.hook_z")
_HOOK_RE = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out|attn\.hook_z)$")
# Kinds read from a module's input (a pre-hook) rather than its output.
_INPUT_KINDS = ("hook_resid_pre", "attn.hook_z")


class HookError(ValueError):
    """Unknown architecture, hook name or layer; the message lists what exists."""


@dataclass(frozen=True)
class Arch:
    """Where the pieces of one architecture family live in the module tree."""

    layers: str  # dotted path to the ModuleList of blocks
    attn_out: str  # submodule of a block whose output is hook_attn_out
    mlp_out: str  # submodule of a block whose output is hook_mlp_out
    final_norm: str  # dotted path to the norm before the unembedding
    attn_norm: str  # submodule of a block: the norm attention reads the residual through
    attn_proj: str  # submodule of a block: attention's output projection; its input is attn.hook_z


_LLAMA = Arch("model.layers", "self_attn", "mlp", "model.norm", "input_layernorm", "self_attn.o_proj")
# Gemma 2/3 normalise each sublayer's output before adding it to the residual;
# TransformerLens (and so Gemma Scope) hooks attn/mlp out after those norms.
_GEMMA2 = Arch("model.layers", "post_attention_layernorm", "post_feedforward_layernorm", "model.norm",
               "input_layernorm", "self_attn.o_proj")
ARCHS: dict[str, Arch] = {
    **{t: _LLAMA for t in ("llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "olmo", "olmo2", "phi3", "smollm3")},
    "gemma2": _GEMMA2,
    "gemma3_text": _GEMMA2,
    "gpt2": Arch("transformer.h", "attn", "mlp", "transformer.ln_f", "ln_1", "attn.c_proj"),
    "gpt_neox": Arch("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm", "input_layernorm",
                     "attention.dense"),
}


@dataclass(frozen=True)
class HookPoint:
    name: str
    layer: int
    kind: str  # one of HOOK_KINDS


def arch_of(model: torch.nn.Module) -> Arch:
    model_type = getattr(model.config, "model_type", "?")
    if model_type not in ARCHS:
        raise HookError(
            f"Unsupported architecture {model_type!r}. Supported: {', '.join(sorted(ARCHS))}. "
            "Fix: add its module paths to explorer.hooks.ARCHS"
        )
    return ARCHS[model_type]


def _get(root: torch.nn.Module, dotted: str) -> torch.nn.Module:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    return _get(model, arch_of(model).layers)


def parse_hook(model: torch.nn.Module, name: str) -> HookPoint:
    match = _HOOK_RE.match(name)
    n_layers = len(blocks(model))
    if not match:
        raise HookError(
            f"Unknown hook {name!r}. Hooks look like blocks.L.KIND with KIND in {', '.join(HOOK_KINDS)} "
            f"and L in 0..{n_layers - 1}"
        )
    layer = int(match.group(1))
    if layer >= n_layers:
        raise HookError(f"Layer {layer} out of range in {name!r}: this model has layers 0..{n_layers - 1}")
    return HookPoint(name, layer, match.group(2))


def all_hook_names(model: torch.nn.Module) -> list[str]:
    return [f"blocks.{layer}.{kind}" for layer in range(len(blocks(model))) for kind in HOOK_KINDS]


def hook_module(model: torch.nn.Module, point: HookPoint) -> torch.nn.Module:
    block = blocks(model)[point.layer]
    arch = arch_of(model)
    if point.kind == "attn.hook_z":
        return _get(block, arch.attn_proj)
    if point.kind == "hook_attn_out":
        return _get(block, arch.attn_out)
    if point.kind == "hook_mlp_out":
        return _get(block, arch.mlp_out)
    return block


def _head_shape(model: torch.nn.Module) -> tuple[int, int, int]:
    """(n_heads, n_kv_heads, d_head) from the model's config."""
    config = model.config
    n_heads = config.num_attention_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_heads, getattr(config, "num_key_value_heads", None) or n_heads, d_head


def hook_width(model: torch.nn.Module, point: HookPoint) -> int:
    """The last dimension of the activation at `point`: d_model, or n_heads * d_head at attn.hook_z."""
    if point.kind == "attn.hook_z":
        n_heads, _, d_head = _head_shape(model)
        return n_heads * d_head
    return model.config.hidden_size


def is_layernorm(model: torch.nn.Module) -> bool:
    """True when the model normalises with LayerNorm (mean removed), False for RMSNorm."""
    norm = type(_get(model, arch_of(model).final_norm)).__name__
    return "LayerNorm" in norm and "RMS" not in norm


def attn_norm_bias(model: torch.nn.Module, layer: int) -> torch.Tensor | None:
    """The bias of the norm before attention at `layer` (None for RMSNorm)."""
    return getattr(_get(blocks(model)[layer], arch_of(model).attn_norm), "bias", None)


def value_vectors(model: torch.nn.Module, layer: int, x: torch.Tensor) -> torch.Tensor:
    """What attention's value projection at `layer` makes of one normalised input x (d_model,),
    biases included, for every query head in attn.hook_z's order: (n_heads * d_head,).

    The projection module is called (not its weight read), so packed CPU layouts work too.
    Grouped-query models repeat each key/value head for the query heads that share it."""
    model_type = model.config.model_type
    block = blocks(model)[layer]
    n_heads, n_kv, d_head = _head_shape(model)
    x = x[None]  # (1, d_model)
    with torch.no_grad():
        if model_type == "gpt2":  # c_attn packs [q | k | v], each n_heads * d_head wide
            return block.attn.c_attn(x)[0, 2 * n_heads * d_head:]
        if model_type == "gpt_neox":  # query_key_value packs [q k v] per head
            return block.attention.query_key_value(x)[0].view(n_heads, 3 * d_head)[:, 2 * d_head:].reshape(-1)
        if model_type == "phi3":  # qkv_proj packs [q | k | v] with n_kv_heads keys and values
            v = block.self_attn.qkv_proj(x)[0, (n_heads + n_kv) * d_head:]
        else:
            v = block.self_attn.v_proj(x)[0]
    return v.view(n_kv, d_head).repeat_interleave(n_heads // n_kv, dim=0).reshape(-1)


def residual_directions(model: torch.nn.Module, hook_name: str, directions: torch.Tensor) -> torch.Tensor:
    """Directions (n, width) at `hook_name` as directions in the residual stream: attn.hook_z's
    go through attention's output projection, without its bias; the other hooks' already are.
    (Gemma 2's post-attention norm after that projection is not applied: it is not linear.)"""
    point = parse_hook(model, hook_name)
    if point.kind != "attn.hook_z":
        return directions
    proj = hook_module(model, point)
    param = next(model.parameters())
    with torch.no_grad():
        d = directions.to(device=param.device, dtype=param.dtype)
        out = proj(d) - proj(torch.zeros_like(d[:1]))  # called, not read: packed CPU layouts work too
    return out.to(device=directions.device, dtype=directions.dtype)


# An edit takes the activation [batch, seq, d] and returns a replacement, or None to keep it.
Edit = Callable[[torch.Tensor], torch.Tensor | None]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, new):
    return (new, *output[1:]) if isinstance(output, tuple) else new


def _register(model: torch.nn.Module, point: HookPoint, edit: Edit) -> torch.utils.hooks.RemovableHandle:
    module = hook_module(model, point)
    if point.kind in _INPUT_KINDS:

        def pre_hook(mod, args, kwargs):
            if args:
                new = edit(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = edit(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return module.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(mod, args, output):
        new = edit(_first(output))
        return None if new is None else _replace_first(output, new)

    return module.register_forward_hook(post_hook)


@contextmanager
def hooked(model: torch.nn.Module, edits: dict[str, Edit]) -> Iterator[None]:
    """Attach `edits` (hook name -> function) for the duration of the block.

    Registration happens inside the try, so a failure half-way still removes
    the handles already made (baukit's Trace leaks them in that case)."""
    handles = []
    try:
        for name, edit in edits.items():
            handles.append(_register(model, parse_hook(model, name), edit))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


class _StopForward(Exception):
    """Raised from a hook to end a forward pass once the wanted layer has run."""


def run_to_hook(model: torch.nn.Module, hook_name: str, input_ids: torch.Tensor, **kwargs) -> torch.Tensor:
    """Activations at `hook_name` for `input_ids`, without running later layers."""
    captured: list[torch.Tensor] = []

    def capture(act: torch.Tensor) -> None:
        captured.append(act)
        raise _StopForward

    try:
        with hooked(model, {hook_name: capture}):
            model(input_ids, use_cache=False, **kwargs)
    except _StopForward:
        pass
    if not captured:
        raise HookError(f"Hook {hook_name!r} never ran; its module was not called by the forward pass")
    return captured[0]
