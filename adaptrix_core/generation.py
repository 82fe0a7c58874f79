"""
Token-by-token decoding for a batch in which every row has its own adapter selection.

One loop serves the Python API, the CLI and the server, batched or not, so a
request gives the same text whichever path runs it. A :class:`Batch` is a set
of rows decoding together: :meth:`Decoder.prefill` runs new prompts (logits
only for the last position), :meth:`Batch.merge` lets them join a running
batch between two steps (see :mod:`adaptrix_core.kvbatch`), and
:meth:`Decoder.step` runs one forward over every live row under
:meth:`AdaptedModel.using_rows`, picks each row's next token (greedy, or
sampled with the row's own temperature, top-p, repetition penalty and seed),
and turns new tokens into text pieces incrementally (holding back incomplete
UTF-8 and possible stop strings).
"""

from __future__ import annotations

import functools
import inspect

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import GenerationError


if TYPE_CHECKING:
    import torch

    from .kvbatch import KVBatch
    from .prefixcache import PrefixCache, PrefixHit
    from .runtime import AdaptedModel


@attrs.define
class GenerationRequest:
    """
    One row of a batch.

    Attributes:
        input_ids: The prompt's token ids.
        selection: Adapter name -> weight (resolved and resident); empty = the base model.
        max_new_tokens: Upper bound on generated tokens.
        temperature: 0 = greedy; otherwise sample from ``softmax(logits / temperature)``.
        top_p: Nucleus sampling mass (1.0 = off).
        seed: Makes sampling reproducible.
        stop: Strings that end the text (not included in it).
        ignore_eos: Keep going past end-of-sequence tokens (benchmarks use it for fixed-length answers).
        repetition_penalty: > 1 discourages tokens already in the prompt or the answer (1.0 = off), as in
            transformers: a seen token's positive logit is divided by it, a negative one multiplied.
    """

    input_ids: Sequence[int]
    selection: Mapping[str, float] = attrs.field(factory=dict)
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    ignore_eos: bool = False
    repetition_penalty: float = 1.0


@attrs.frozen
class Piece:
    """New text for row *index* after one step; *finish_reason* is set on the row's last piece."""

    index: int
    text: str
    finish_reason: str | None = None
    """``"stop"`` (end-of-sequence token or stop string), ``"length"`` (token limit or context full), or ``None``."""
    tokens: int = 0
    """Tokens generated for this row so far."""


class Row:
    """
    Decoding state of one row: its tokens, its text so far, its sampler.

    Text is decoded incrementally (the text-generation-inference way): only the
    tokens since a recent *prefix* offset are decoded each step, and the new
    text is the part beyond the prefix's own decoding, so a step costs the same
    however long the answer already is.
    """

    def __init__(self, index: int, request: GenerationRequest, decode: Callable[[list[int]], str]) -> None:
        self.index = index
        self.request = request
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0
        self.done = False
        self._decode = decode
        self._prefix = 0
        self._read = 0
        self._stop_max = max((len(s) for s in request.stop), default=0)
        self.generator: Any = None
        self.seen: Any = None
        """Token ids the repetition penalty applies to (a tensor), when it is on."""
        self.reuse: PrefixHit | None = None
        """Cached keys and values of the prompt's first tokens (set before :meth:`Decoder.prefill`)."""

    @property
    def prefill_tokens(self) -> int:
        """Prompt tokens the prefill computes (those past a reused prefix)."""
        return len(self.request.input_ids) - (self.reuse.length if self.reuse is not None else 0)

    def push(self, token: int, *, eos: bool, full: bool) -> Piece:
        """Take one generated token; return the text that is now safe to send."""
        if eos:
            return self._finish("stop")
        self.tokens.append(token)
        self._read_new()
        text = self.text
        if self._stop_max:
            start = max(0, self.sent - self._stop_max)
            hits = [i for i in (text.find(s, start) for s in self.request.stop) if i >= 0]
            if hits:
                cut = min(hits)
                piece = text[self.sent : cut] if cut > self.sent else ""
                self.sent = max(self.sent, cut)
                self.done = True
                return Piece(self.index, piece, "stop", len(self.tokens))
        if len(self.tokens) >= self.request.max_new_tokens or full:
            return self._finish("length")
        end = len(text) - self._held_back(text)
        piece = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return Piece(self.index, piece, None, len(self.tokens))

    def _read_new(self, *, flush: bool = False) -> None:
        """Append the text of tokens not yet read, unless they end inside a UTF-8 sequence (and not flushing)."""
        if self._read == len(self.tokens):
            return
        before = self._decode(self.tokens[self._prefix : self._read])
        after = self._decode(self.tokens[self._prefix :])
        if len(after) > len(before) and (flush or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self._prefix, self._read = self._read, len(self.tokens)
        elif flush:
            self._read = len(self.tokens)

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of *text* that could be the start of a stop string."""
        for n in range(min(self._stop_max - 1, len(text) - self.sent), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.request.stop):
                return n
        return 0

    def _finish(self, reason: str) -> Piece:
        self._read_new(flush=True)
        piece = self.text[self.sent :]
        self.sent = len(self.text)
        self.done = True
        return Piece(self.index, piece, reason, len(self.tokens))


class Batch:
    """Rows decoding together and their tensors (row ``i`` of ``kv`` is ``rows[i]``)."""

    def __init__(self, rows: list[Row], kv: KVBatch) -> None:
        self.rows = rows
        self.kv = kv

    def __len__(self) -> int:
        return len(self.rows)

    def merge(self, other: Batch) -> None:
        """Let *other*'s rows join this batch before the next step."""
        self.kv.merge(other.kv)
        self.rows.extend(other.rows)

    def retire(self, cancelled: Callable[[Row], bool] | None = None) -> list[Row]:
        """Drop rows that finished (or are *cancelled*); return them."""
        keep = [i for i, row in enumerate(self.rows) if not row.done and not (cancelled and cancelled(row))]
        if len(keep) == len(self.rows):
            return []
        kept = set(keep)
        gone = [row for i, row in enumerate(self.rows) if i not in kept]
        self.rows = [self.rows[i] for i in keep]
        if keep:
            self.kv.keep(keep)
        return gone


@attrs.define(eq=False)
class Filling:
    """
    A prefill under way: its rows' left-padded inputs, and the keys and values of the columns done so far.

    ``mask`` covers any reused prefix columns (those already in ``cache`` at the start) and then the
    ``width`` columns of ``ids``; ``done`` of those have been computed.
    """

    rows: list[Row]
    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    cache: Any
    done: int = 0

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @property
    def left(self) -> int:
        """Columns still to compute."""
        return self.width - self.done

    @property
    def past(self) -> int:
        """Columns whose keys and values are known: a reused prefix's and those done."""
        return int(self.mask.shape[1]) - self.width + self.done


class Decoder:
    """
    Runs :class:`GenerationRequest` rows on an attached model.

    Args:
        am: The adapted model.
        tokenizer: Its tokenizer (used to turn tokens into text).
        eos_token_ids: Tokens that end a row.
        pad_token_id: Filler for left padding (never attended to).
    """

    def __init__(self, am: AdaptedModel, tokenizer: Any, *, eos_token_ids: Sequence[int], pad_token_id: int) -> None:
        self.am = am
        self.tokenizer = tokenizer
        self.eos_token_ids = frozenset(int(t) for t in eos_token_ids)
        self.pad_token_id = int(pad_token_id)
        config = getattr(am.model, "config", None)
        self.max_positions: int | None = (
            getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None) or None
        )
        params = inspect.signature(am.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._last_logits_only = "logits_to_keep" in params

    def _decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def check(self, request: GenerationRequest) -> None:
        """
        Refuse a request the model cannot run, before any work is done.

        Raises:
            GenerationError: Empty prompt, a prompt longer than the context, bad sampling options.
        """
        if not request.input_ids:
            raise GenerationError("the prompt is empty after tokenization; give at least one token of text.")
        if request.max_new_tokens < 1:
            raise GenerationError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}.")
        if request.temperature < 0:
            raise GenerationError(f"temperature must be >= 0, got {request.temperature}.")
        if not 0 < request.top_p <= 1:
            raise GenerationError(f"top_p must be in (0, 1], got {request.top_p}.")
        if not request.repetition_penalty > 0:
            raise GenerationError(f"repetition_penalty must be > 0 (1.0 = off), got {request.repetition_penalty}.")
        if self.max_positions is not None and len(request.input_ids) >= self.max_positions:
            raise GenerationError(
                f"the prompt has {len(request.input_ids)} tokens but the model's context holds {self.max_positions}; "
                "shorten the prompt."
            )

    def new_row(self, index: int, request: GenerationRequest) -> Row:
        """A checked row ready for :meth:`prefill` (its sampler seeded)."""
        import torch

        self.check(request)
        row = Row(index, request, self._decode)
        if request.temperature > 0:
            row.generator = torch.Generator(device="cpu")
            if request.seed is None:
                row.generator.seed()
            else:
                row.generator.manual_seed(int(request.seed))
        if request.repetition_penalty != 1.0:
            row.seen = torch.tensor(sorted(set(request.input_ids)), dtype=torch.long)
        return row

    def prefill(self, rows: list[Row]) -> tuple[Batch, list[Piece]]:
        """
        Run new rows' prompts together (left-padded) and pick their first tokens.

        Rows with a :attr:`Row.reuse` start from those cached keys and values and compute only the rest
        of their prompt.
        """
        done = self.fill(self.begin_prefill(rows))
        assert done is not None
        return done

    def begin_prefill(self, rows: list[Row]) -> Filling:
        """The inputs of a prefill of *rows*, to run all at once or a few columns at a time with :meth:`fill`."""
        from .kvbatch import left_padded, left_padded_after

        device = next(self.am.model.parameters()).device
        prompts = [r.request.input_ids for r in rows]
        if any(r.reuse is not None for r in rows):
            known = [(r.reuse.entry.layers, r.reuse.length) if r.reuse is not None else None for r in rows]
            ids, mask, positions, cache = left_padded_after(prompts, known, self.pad_token_id, device)
        else:
            ids, mask, positions = left_padded(prompts, self.pad_token_id, device)
            cache = None
        return Filling(list(rows), ids, mask, positions, cache)

    def fill(self, filling: Filling, columns: int | None = None) -> tuple[Batch, list[Piece]] | None:
        """
        Compute the next *columns* prompt columns of *filling* (all that are left when ``None``).

        Returns the new batch and its rows' first pieces once the last column is done, else ``None``:
        the keys and values so far wait in *filling*, so other forwards (a running batch's steps) can
        run in between (chunked prefill).
        """
        import torch

        from .kvbatch import KVBatch

        start = filling.done
        end = filling.width if columns is None else min(filling.width, start + max(1, columns))
        last = end == filling.width
        inputs: dict[str, Any] = {
            "input_ids": filling.ids[:, start:end],
            "attention_mask": filling.mask[:, : filling.past + end - start],  # what is known, then these columns
            "position_ids": filling.positions[:, start:end],
            "use_cache": True,
        }
        model, cache_arg = (self.am.model, self._cache_arg) if last else self._body
        if filling.cache is not None:
            inputs[cache_arg] = filling.cache
        if last and self._last_logits_only:
            inputs["logits_to_keep"] = 1
        with torch.inference_mode(), self.am.using_rows([dict(r.request.selection) for r in filling.rows]):
            out = model(**inputs)
        filling.cache = _cache_of(out)
        filling.done = end
        if not last:
            return None
        rows = filling.rows
        positions = filling.positions
        batch = Batch(list(rows), KVBatch(filling.cache, filling.mask, positions[:, -1] + 1, positions.new_zeros(len(rows))))
        pieces, batch.kv.last = self._pick(batch, out.logits[:, -1, :])
        return batch, pieces

    @functools.cached_property
    def _body(self) -> tuple[Any, str]:
        """The model without its output head (and its cache argument), for prefill chunks that need no logits."""
        body = getattr(self.am.model, "base_model", None)
        if body is None or body is self.am.model:
            return self.am.model, self._cache_arg
        params = inspect.signature(body.forward).parameters
        if not {"input_ids", "attention_mask", "position_ids"} <= params.keys():
            return self.am.model, self._cache_arg
        return body, "cache" if "cache" in params else "past_key_values"

    def find_prefixes(self, rows: Sequence[Row], cache: PrefixCache) -> None:
        """
        Set each row's :attr:`Row.reuse` to the longest start of its prompt *cache* holds under its weights.

        Rows that start alike but find nothing cached (the first burst of requests for an adapter) have
        their common start computed once, in one forward for all such groups, and kept first.
        """
        keys = [self.am.weights_key(row.request.selection) for row in rows]
        starts = cache.shared_starts([(key, row.request.input_ids) for key, row in zip(keys, rows, strict=True)])
        if starts:
            firsts = [Row(-1 - i, GenerationRequest(start, rows[members[0]].request.selection, 1), self._decode)
                      for i, (_, start, members) in enumerate(starts)]
            batch, _ = self.prefill(firsts)
            self.remember_prompts(batch, cache)
        for row, key in zip(rows, keys, strict=True):
            row.reuse = cache.find(key, row.request.input_ids)

    def remember_prompts(self, batch: Batch, cache: PrefixCache) -> None:
        """Keep the prompts' keys and values of a batch :meth:`prefill` just returned in *cache*."""
        from .kvbatch import row_prompt_kv

        for i, row in enumerate(batch.rows):
            key = self.am.weights_key(row.request.selection)
            if cache.wants(key, row.request.input_ids):
                cache.add(key, row.request.input_ids, row_prompt_kv(batch.kv, i))

    def step(self, batch: Batch) -> list[Piece]:
        """One decode step over every row of *batch*: one piece per row."""
        import torch

        inputs = batch.kv.forward_inputs()
        if self._cache_arg != "cache":
            inputs[self._cache_arg] = inputs.pop("cache")
        with torch.inference_mode(), self.am.using_rows([dict(r.request.selection) for r in batch.rows]):
            out = self.am.model(**inputs)
        pieces, last = self._pick(batch, out.logits[:, -1, :])
        batch.kv.advance(_cache_of(out), last)
        return pieces

    def _pick(self, batch: Batch, logits: torch.Tensor) -> tuple[list[Piece], torch.Tensor]:
        """Each row's next token, pushed into the row; the pieces and the tokens as the next input."""
        import torch

        chosen = choose_tokens(logits, batch.rows)
        pieces = []
        for row, token in zip(batch.rows, chosen):
            used = len(row.request.input_ids) + len(row.tokens)
            full = self.max_positions is not None and used >= self.max_positions
            eos = token in self.eos_token_ids and not row.request.ignore_eos
            pieces.append(row.push(token, eos=eos, full=full))
            if row.seen is not None:
                row.seen = torch.cat([row.seen, torch.tensor([token])]).unique()
        return pieces, torch.tensor(chosen, dtype=torch.long, device=batch.kv.mask.device)

    def stream(
        self, requests: Sequence[GenerationRequest], *, cancelled: Callable[[int], bool] | None = None
    ) -> Iterator[list[Piece]]:
        """
        Decode *requests* together; after each step yield the new pieces (one per live row).

        *cancelled(index)* is asked every step; a cancelled row is dropped
        without a final piece. Rows stop at an end-of-sequence token, a stop
        string, ``max_new_tokens`` or a full context.
        """
        rows = [self.new_row(i, r) for i, r in enumerate(requests)]
        if not rows:
            return
        batch, pieces = self.prefill(rows)
        while True:
            yield [p for p in pieces if cancelled is None or not cancelled(p.index)]
            batch.retire(None if cancelled is None else lambda row: cancelled(row.index))
            if not batch.rows:
                return
            pieces = self.step(batch)


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def choose_tokens(logits: torch.Tensor, rows: Sequence[Row]) -> list[int]:
    """Each row's next token: argmax for greedy rows, a draw from its own generator otherwise."""
    import torch

    logits = logits.float()
    penalized = [b for b, row in enumerate(rows) if row.seen is not None]
    if penalized:
        logits = logits.clone()
        for b in penalized:
            apply_repetition_penalty(logits[b], rows[b].seen.to(logits.device), rows[b].request.repetition_penalty)
    chosen = logits.argmax(dim=-1).tolist()
    for b, row in enumerate(rows):
        if row.generator is None:
            continue
        probs = torch.softmax(logits[b] / row.request.temperature, dim=-1).cpu()
        if row.request.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            cumulative = sorted_probs.cumsum(0)
            cut = cumulative - sorted_probs >= row.request.top_p  # keep the smallest set reaching top_p
            sorted_probs[cut] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        chosen[b] = int(torch.multinomial(probs, 1, generator=row.generator).item())
    return [int(t) for t in chosen]


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> None:
    """In place, as transformers' ``RepetitionPenaltyLogitsProcessor``: seen tokens' logits move toward "less likely"."""
    import torch

    values = logits.index_select(0, seen)
    logits.index_copy_(0, seen, torch.where(values > 0, values / penalty, values * penalty))
