"""The KV cache of a decoding batch whose rows come from different prompts.

Rows are left-padded: every row's newest token sits in the last column, and a
(rows, columns) mask says which columns hold real tokens. Each row also keeps
its own next position, so rotary and learned position embeddings see the
positions the row would have alone. The requests that arrive together are
prefilled as one batch, left-padded to the longest prompt (`prefill_args`), then
join the decoding batch (`join` pads the shorter side on the left); rows leave
with `keep` (which also drops columns that are padding for every remaining row).

While no row is padded the forward gets no mask and no positions, exactly as a
batch of one prompt does (`forward_args`), so a request decoded alone is
computed exactly as before the scheduler existed.
"""

from __future__ import annotations

import torch


def can_splice(cache) -> bool:
    """Whether this cache's layers are plain growing tensors that `join` and `keep` can
    reshape (sliding-window and other layer kinds are not: their requests run one at a time)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


class BatchCache:
    """One DynamicCache plus the padding mask and per-row positions that go with it.

    `kwargs` is the cache as the model's forward takes it (model.new_cache)."""

    def __init__(self, kwargs: dict, pads: list[int], length: int, device: torch.device):
        """Rows whose prompts, each left-padded by its `pads` entry, fill `length` columns:
        the state after their prefill (`prefill_args`) has run."""
        self.kwargs = kwargs
        pad = torch.tensor(pads, dtype=torch.long, device=device)
        self.mask = (torch.arange(length, device=device)[None] >= pad[:, None]).long()  # (rows, columns)
        self.positions = length - pad  # each row's next position

    @property
    def cache(self):
        return next(iter(self.kwargs.values()))

    @property
    def n_rows(self) -> int:
        return self.mask.shape[0]

    @property
    def padded(self) -> bool:
        return not bool(self.mask.all())

    def prefill_args(self) -> dict:
        """The keyword arguments of the prefill of every row's (left-padded) prompt."""
        if not self.padded:
            return dict(self.kwargs)
        return {**self.kwargs, "attention_mask": self.mask, "position_ids": (self.mask.cumsum(1) - 1).clamp(min=0)}

    def forward_args(self) -> dict:
        """The keyword arguments of a one-token decoding step of every row."""
        if not self.padded:
            return dict(self.kwargs)
        new = torch.ones(self.n_rows, 1, dtype=self.mask.dtype, device=self.mask.device)
        return {**self.kwargs, "attention_mask": torch.cat([self.mask, new], dim=1),
                "position_ids": self.positions[:, None]}

    def stepped(self) -> None:
        """Account for the token the last forward added to every row."""
        new = torch.ones(self.n_rows, 1, dtype=self.mask.dtype, device=self.mask.device)
        self.mask = torch.cat([self.mask, new], dim=1)
        self.positions = self.positions + 1

    def join(self, other: BatchCache) -> None:
        """Append `other`'s rows after ours, left-padding whichever side is shorter."""
        ours, theirs = self.mask.shape[1], other.mask.shape[1]
        width = max(ours, theirs)
        for mine, new in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_pad_left(mine.keys, width), _pad_left(new.keys, width)])  # (rows, heads, cols, d)
            mine.values = torch.cat([_pad_left(mine.values, width), _pad_left(new.values, width)])
        self.mask = torch.cat([_pad_left(self.mask, width, dim=1), _pad_left(other.mask, width, dim=1)])
        self.positions = torch.cat([self.positions, other.positions])

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), then drop the leading columns no kept row uses."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        used = self.mask.any(0).nonzero()
        start = int(used[0]) if len(used) else self.mask.shape[1]
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]


def _pad_left(x: torch.Tensor, width: int, dim: int = 2) -> torch.Tensor:
    """Zeros before x along `dim` up to `width` (the KV tensors' column dim is 2)."""
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)
