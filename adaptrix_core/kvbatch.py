"""
A running batch whose rows come and go: the KV cache, the mask and each row's position.

This is the continuous-batching half of decoding (text-generation-inference's
approach). New rows are *prefilled* into a batch of their own (left-padded to
their longest prompt, logits kept only for the last position), then *merged*
into the running batch: every layer's keys and values are left-padded with
zeros to the wider of the two and concatenated along the batch, and the
attention mask is padded the same way, so a padded slot is never attended to.
Rows that finish are dropped with one ``index_select`` per layer, and columns
that every remaining row has as padding are trimmed off the left.

Each row carries its own position counter, so position ids stay what the row
would see alone whatever padding the batch has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812


def cache_can_merge(cache: Any) -> bool:
    """Whether *cache* is a plain per-layer key/value cache this module knows how to pad, merge and slice."""
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


class KVBatch:
    """
    The tensors of a running batch, row ``i`` of every tensor being the same request.

    Attributes:
        cache: The model's key/value cache (a transformers ``DynamicCache``).
        mask: ``(rows, width)`` attention mask, 0 on left padding.
        positions: ``(rows,)`` position id of each row's next token.
        last: ``(rows,)`` each row's latest token (the next forward's input).
    """

    def __init__(self, cache: Any, mask: torch.Tensor, positions: torch.Tensor, last: torch.Tensor) -> None:
        self.cache = cache
        self.mask = mask
        self.positions = positions
        self.last = last

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def forward_inputs(self) -> dict[str, Any]:
        """Keyword arguments of one decode step: each row's latest token at its own position."""
        mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        return {
            "input_ids": self.last.view(-1, 1),
            "attention_mask": mask,
            "position_ids": self.positions.view(-1, 1),
            "cache": self.cache,
            "use_cache": True,
        }

    def advance(self, cache: Any, chosen: torch.Tensor) -> None:
        """After a decode step: the new cache, one more attended column, each row's new token."""
        self.cache = cache
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        self.positions = self.positions + 1
        self.last = chosen

    def keep(self, index: Sequence[int]) -> None:
        """Keep only rows *index* (in that order), then trim padding no remaining row needs."""
        if list(index) == list(range(self.rows)):
            return
        select = torch.tensor(list(index), dtype=torch.long, device=self.mask.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, select)
            layer.values = layer.values.index_select(0, select)
        self.mask = self.mask.index_select(0, select)
        self.positions = self.positions.index_select(0, select)
        self.last = self.last.index_select(0, select)
        self.trim()

    def trim(self) -> None:
        """Drop the leading columns that are padding in every row (they cost attention work and memory)."""
        if self.rows == 0:
            return
        attended = self.mask.any(dim=0)
        if bool(attended[0]):
            return
        first = int(attended.int().argmax())
        if not bool(attended[first]):
            return
        for layer in self.cache.layers:
            layer.keys = layer.keys[:, :, first:, :]
            layer.values = layer.values[:, :, first:, :]
        self.mask = self.mask[:, first:]

    def merge(self, other: KVBatch) -> None:
        """Append *other*'s rows after this batch's, left-padding the narrower one's cache and mask with zeros."""
        width = max(self.width, other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)], dim=0)
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)], dim=0)
        self.mask = torch.cat([_left_pad_mask(self.mask, width), _left_pad_mask(other.mask, width)], dim=0)
        self.positions = torch.cat([self.positions, other.positions])
        self.last = torch.cat([self.last, other.last])


def _left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """``(rows, heads, length, dim)`` -> ``(rows, heads, width, dim)`` with zeros on the left."""
    missing = width - t.shape[-2]
    return F.pad(t, (0, 0, missing, 0)) if missing else t


def _left_pad_mask(mask: torch.Tensor, width: int) -> torch.Tensor:
    missing = width - mask.shape[1]
    return F.pad(mask, (missing, 0)) if missing else mask


def left_padded(prompts: Sequence[Sequence[int]], pad_token_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, mask and position ids of *prompts* left-padded to the longest one."""
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids = torch.full((len(prompts), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - lengths[i] :] = torch.tensor(list(prompt), dtype=torch.long)
        mask[i, width - lengths[i] :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


def left_padded_after(
    prompts: Sequence[Sequence[int]],
    prefixes: Sequence[tuple[list[tuple[torch.Tensor, torch.Tensor]], int] | None],
    pad_token_id: int,
    device: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """
    Inputs to prefill *prompts* whose first tokens' keys and values are known already.

    ``prefixes[i]`` is ``(layers, n)``: the first ``n`` tokens of prompt ``i`` have keys and values
    ``layers[l][0][:, :n]`` and ``layers[l][1][:, :n]`` (``(heads, tokens, head_dim)``), or ``None``.
    Returns the ids, mask and position ids of the rest, left-padded as :func:`left_padded` does, and a cache
    holding the known prefixes right-aligned before them: row ``i`` reads
    ``[padding][its prefix][padding][its rest]``, the mask zero wherever it is padding, and each token
    keeps the position it has in the whole prompt.
    """
    from transformers import DynamicCache

    starts = [hit[1] if hit is not None else 0 for hit in prefixes]
    ids, rest_mask, positions = left_padded([p[n:] for p, n in zip(prompts, starts, strict=True)], pad_token_id, device)
    width = max(starts)
    rows = len(prompts)
    mask = torch.zeros((rows, width), dtype=rest_mask.dtype, device=device)
    known = next(hit[0] for hit in prefixes if hit is not None)
    layers = []
    for layer, (k0, v0) in enumerate(known):
        keys = k0.new_zeros((rows, k0.shape[0], width, k0.shape[-1]))
        values = v0.new_zeros((rows, v0.shape[0], width, v0.shape[-1]))
        for i, hit in enumerate(prefixes):
            if hit is not None:
                k, v = hit[0][layer]
                keys[i, :, width - hit[1] :] = k[:, : hit[1]]
                values[i, :, width - hit[1] :] = v[:, : hit[1]]
        layers.append((keys, values))
    for i, n in enumerate(starts):
        mask[i, width - n :] = 1
    shift = torch.tensor(starts, dtype=positions.dtype, device=device).view(-1, 1)
    return ids, torch.cat([mask, rest_mask], dim=1), positions + shift, DynamicCache(ddp_cache_data=layers)


def row_prompt_kv(kv: KVBatch, row: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Row *row*'s keys and values on its attended columns, in order, per layer (copies, ``(heads, tokens, dim)``)."""
    columns = kv.mask[row].nonzero().view(-1)
    return [(layer.keys[row].index_select(1, columns), layer.values[row].index_select(1, columns))
            for layer in kv.cache.layers]
