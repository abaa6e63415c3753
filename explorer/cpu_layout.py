"""Weight layouts that make small-batch decoding fast on CPU.

Decoding runs one or two rows at a time (a plain completion, or the unclamped
and clamped rows of a steering pair). MKL's GEMM on AVX2 handles such tiny
batches almost row by row: with transformers' stock layout a batch of two
costs 1.6-1.8x a batch of one (../shared/reference/cpu-performance-notes.md).
oneDNN's pre-packed ("blocked") weight layout, the one torch.compile's CPU
backend uses, runs a two-row batch at about the cost of one row, and a one-row
batch no slower than the best MKL layout (bench/bench_steering.py).

`optimise_for_cpu` swaps every fp32 `nn.Linear` for a `PackedLinear` holding
that layout. A bf16 model is packed too where the CPU computes in bf16
natively (AVX512-BF16 or AMX): oneDNN then reads half the bytes per weight,
and on AMX a 16-row batch costs little more than a 2-row batch. Where bf16
would be emulated, a bf16 model keeps the stock layout. The packed copy
replaces the weight, so memory does not grow, except for the output head,
whose plain weight is kept because the feature index reads it (for a tied
head it is the input embedding's own storage). Where this torch build has no
oneDNN linear ops, fp32 weights are stored pre-transposed instead, the next
best layout for MKL.
"""

from __future__ import annotations

import torch
from torch import nn

# The batch size oneDNN tunes the packed layout for. Measured on the demo
# model: a hint of 64 serves 1-, 2- and prompt-sized batches equally well.
PACK_BATCH_HINT = 64


class PackedLinear(nn.Module):
    """y = x @ W.T + b with W in oneDNN's packed layout (CPU, fp32 or bf16; gradients reach the input only)."""

    def __init__(self, linear: nn.Linear, keep_weight: bool = False):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # An opaque oneDNN tensor: not a parameter or buffer, so state_dict and
        # .to() never see it; the model must stay on CPU once packed.
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), PACK_BATCH_HINT)
        self.bias = linear.bias
        if keep_weight:
            self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad and torch.is_grad_enabled():
            return _PackedLinearFunction.apply(x, self)
        return _packed_linear(x, self)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a plain [out, in] tensor (a copy unless the plain weight was kept)."""
        return self.weight if hasattr(self, "weight") else self.packed.to_dense()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, layout=oneDNN packed"


def _packed_linear(x: torch.Tensor, linear: PackedLinear) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, linear.packed, linear.bias, "none", [], "")


class _PackedLinearFunction(torch.autograd.Function):
    """The packed op with a backward to its input (attribution needs one).

    oneDNN's op has no autograd formula: torch warns and then silently returns
    no gradient through it. Weights are frozen, so only the input's gradient
    is computed, from the weight unpacked for the backward pass only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, linear: PackedLinear) -> torch.Tensor:
        ctx.linear = linear
        return _packed_linear(x, linear)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad @ ctx.linear.dense_weight().to(grad.dtype), None


def can_pack(dtype: torch.dtype = torch.float32) -> bool:
    """True when this torch build runs oneDNN's packed linear for `dtype` (float32, or
    bfloat16 on a CPU with native bf16) and it agrees with F.linear."""
    ops = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(ops, "_linear_pointwise")
            and hasattr(ops, "_reorder_linear_weight")):
        return False
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    if dtype == torch.bfloat16 and not (hasattr(ops, "_is_mkldnn_bf16_supported") and ops._is_mkldnn_bf16_supported()):
        return False
    try:
        layer = nn.Linear(8, 3).to(dtype)
        x = torch.randn(2, 8).to(dtype)
        with torch.inference_mode():
            # bf16 keeps 8 bits of mantissa: the two may round their sums differently
            return torch.allclose(PackedLinear(layer)(x).float(), layer(x).float(),
                                  atol=1e-5 if dtype == torch.float32 else 3e-2)
    except (RuntimeError, NotImplementedError):
        return False


def optimise_for_cpu(model: nn.Module) -> str:
    """Give every Linear of a CPU model the fastest layout available; returns its name."""
    dtype = next(model.parameters()).dtype
    if not can_pack(dtype):
        if dtype != torch.float32:  # fp16, or bf16 that this CPU would emulate: as loaded
            return "stock"
        transpose_linear_weights(model)
        return "transposed"
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.dtype == dtype:
                setattr(parent, name, PackedLinear(child, keep_weight=child is head))
    return "oneDNN packed"


def transpose_linear_weights(model: nn.Module) -> None:
    """Store every Linear weight as the transpose of a contiguous [in, out] matrix.

    Same values, same results; only the memory layout changes. F.linear then
    multiplies by a contiguous [in, out] matrix, which MKL runs about twice as
    fast for one- and two-row batches. A tied input embedding keeps sharing
    the head's storage, so no memory is added."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.is_contiguous():
            shared = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.weight is module.weight]
            module.weight = nn.Parameter(module.weight.detach().t().contiguous().t(), requires_grad=False)
            for embedding in shared:
                embedding.weight = module.weight
