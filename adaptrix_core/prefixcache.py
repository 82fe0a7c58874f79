"""
Prompt prefixes computed once: the keys and values of recent prompts, reused by prompts that start the same.

Chat requests start alike: the template's system header, an application's own
system prompt, a block of examples. A prompt's key/value at position ``i``
depends only on tokens ``0..i`` and on the weights in force (base model,
adapters and their weights, merges), so what was computed for one prompt serves
any later prompt that begins with the same tokens under the same weights
(:meth:`AdaptedModel.weights_key`). The serving scheduler keeps recent prompts'
keys and values here and prefills only the part of a new prompt past the
longest cached match, as vLLM's automatic prefix caching and SGLang's radix
cache do. Entries are whole prompts, evicted least recently used first to stay
within a token budget; a match needs at least ``min_tokens`` tokens in common,
and always leaves the prompt's last token to compute (its logits pick the first
answer token).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import TYPE_CHECKING

import attrs


if TYPE_CHECKING:
    import torch


DEFAULT_PREFIX_CACHE_TOKENS = 2048
"""Prompt tokens the server keeps keys and values of by default (``--prefix-cache-tokens``)."""

MIN_SHARED_TOKENS = 16
"""Shortest match worth reusing: shorter ones save less than setting them up costs."""


@attrs.define(eq=False)
class PrefixEntry:
    """One cached prompt: its tokens and, per layer, keys and values shaped ``(heads, tokens, head_dim)``."""

    tokens: tuple[int, ...]
    layers: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@attrs.frozen
class PrefixHit:
    """The first *length* tokens of a prompt have their keys and values in *entry*."""

    entry: PrefixEntry
    length: int


class PrefixCache:
    """
    Keys and values of recent prompts, per weights key, least recently used evicted first.

    Args:
        max_tokens: Most prompt tokens held over all entries (0 holds nothing).
        min_tokens: Fewest tokens in common for a match to count.
    """

    def __init__(self, max_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS, *, min_tokens: int = MIN_SHARED_TOKENS) -> None:
        if max_tokens < 0:
            msg = f"max_tokens must be >= 0, got {max_tokens}"
            raise ValueError(msg)
        if min_tokens < 1:
            msg = f"min_tokens must be >= 1, got {min_tokens}"
            raise ValueError(msg)
        self.max_tokens = max_tokens
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[Hashable, tuple[int, ...]], PrefixEntry] = OrderedDict()
        self._buckets: dict[tuple[Hashable, tuple[int, ...]], list[PrefixEntry]] = {}
        """(weights key, first min_tokens tokens) -> entries: only those can match a prompt that starts so."""
        self.tokens = 0
        self.bytes = 0
        """Bytes of the keys and values held (kept as a count: stats are read from other threads)."""
        self.hits = self.misses = self.reused_tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def shared_starts(self, prompts: Sequence[tuple[Hashable, Sequence[int]]]) -> list[tuple[Hashable, tuple[int, ...], list[int]]]:
        """
        Starts that prompts admitted together have in common and the cache does not hold yet.

        Returns ``(key, start, members)`` for each group of two or more prompts (indexes into *prompts*) under
        one key whose common start is at least ``min_tokens`` longer than anything the cache already gives
        them: computing that start once, then the rest of each prompt, saves computing it
        once per prompt. Looks nothing up for good (no hits or misses are counted).
        """
        groups: dict[tuple[Hashable, tuple[int, ...]], list[int]] = {}
        for i, (key, prompt) in enumerate(prompts):
            if len(prompt) > self.min_tokens:
                groups.setdefault((key, tuple(prompt[: self.min_tokens])), []).append(i)
        found = []
        for (key, _), members in groups.items():
            if len(members) < 2:
                continue
            tokens = [tuple(prompts[i][1]) for i in members]
            length = min(_shared_length(tokens[0], t, len(t) - 1) for t in tokens)
            cached = max((hit.length for hit in (self._best(key, t) for t in tokens) if hit is not None), default=0)
            if length - cached >= self.min_tokens and length <= self.max_tokens:
                found.append((key, tokens[0][:length], members))
        return found

    def find(self, key: Hashable, prompt: Sequence[int]) -> PrefixHit | None:
        """The cached entry sharing the longest start with *prompt* under *key* (counted as a hit or a miss)."""
        hit = self._best(key, tuple(prompt))
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self.reused_tokens += hit.length
        self._entries.move_to_end((key, hit.entry.tokens))
        return hit

    def wants(self, key: Hashable, prompt: Sequence[int]) -> bool:
        """Whether adding *prompt* would hold anything new (no entry starts with all of it) and it fits."""
        tokens = tuple(prompt)
        if not self.min_tokens <= len(tokens) <= self.max_tokens:
            return False
        bucket = self._buckets.get((key, tokens[: self.min_tokens]), ())
        return not any(entry.tokens[: len(tokens)] == tokens for entry in bucket)

    def add(self, key: Hashable, prompt: Sequence[int], layers: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Keep *prompt*'s keys and values (one ``(heads, len(prompt), head_dim)`` pair per layer)."""
        tokens = tuple(prompt)
        if not self.wants(key, tokens):
            return
        entry = PrefixEntry(tokens, layers)
        self._entries[(key, tokens)] = entry
        self._buckets.setdefault((key, tokens[: self.min_tokens]), []).append(entry)
        self.tokens += len(tokens)
        self.bytes += entry.nbytes
        while self.tokens > self.max_tokens:
            self._evict()

    def clear(self) -> None:
        self._entries.clear()
        self._buckets.clear()
        self.tokens = self.bytes = 0

    def stats(self) -> dict[str, int]:
        """Counters only, never a walk over the entries: safe to call while another thread adds."""
        return {"entries": len(self._entries), "tokens": self.tokens, "max_tokens": self.max_tokens,
                "bytes": self.bytes, "hits": self.hits, "misses": self.misses, "reused_tokens": self.reused_tokens}

    def reset_stats(self) -> None:
        self.hits = self.misses = self.reused_tokens = 0

    def _best(self, key: Hashable, tokens: tuple[int, ...]) -> PrefixHit | None:
        usable = len(tokens) - 1  # the last prompt token is always computed: its logits give the first answer token
        if usable < self.min_tokens:
            return None
        best: PrefixHit | None = None
        for entry in self._buckets.get((key, tokens[: self.min_tokens]), ()):
            length = _shared_length(entry.tokens, tokens, usable)
            if best is None or length > best.length:
                best = PrefixHit(entry, length)
        return best if best is not None and best.length >= self.min_tokens else None

    def _evict(self) -> None:
        (key, tokens), entry = self._entries.popitem(last=False)
        bucket_key = (key, tokens[: self.min_tokens])
        bucket = self._buckets[bucket_key]
        bucket.remove(entry)
        if not bucket:
            del self._buckets[bucket_key]
        self.tokens -= len(tokens)
        self.bytes -= entry.nbytes


def _shared_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens *a* and *b* have in common, at most *limit*."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
