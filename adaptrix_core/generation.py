"""
Token-by-token decoding for a batch in which every row has its own adapter selection.

One loop serves the Python API, the CLI and the server, batched or not, so a
request gives the same text whichever path runs it. Per step it runs one
forward over the live rows under :meth:`AdaptedModel.using_rows`, picks each
row's next token (greedy, or sampled with the row's own temperature, top-p and
seed), turns new tokens into text pieces (holding back incomplete UTF-8 and
possible stop strings), and drops rows that finished. Prompts of different
lengths are left-padded with an attention mask and matching position ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import GenerationError


if TYPE_CHECKING:
    import torch

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
        repetition_penalty: > 1 makes tokens already in the prompt or the answer less likely (CTRL-style:
            their logits are divided by it when positive, multiplied when negative); 1.0 = off.
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


class _Row:
    """Decoding state of one row: its tokens, the text already sent, its sampler."""

    def __init__(self, index: int, request: GenerationRequest, decode: Callable[[list[int]], str]) -> None:
        self.index = index
        self.request = request
        self.tokens: list[int] = []
        self.sent = 0
        self._decode = decode
        self._stop_max = max((len(s) for s in request.stop), default=0)
        self.generator: Any = None

    def push(self, token: int, *, eos: bool, full: bool) -> Piece:
        """Take one generated token; return the text that is now safe to send."""
        if eos:
            return self._finish("stop")
        self.tokens.append(token)
        text = self._decode(self.tokens)
        if self._stop_max:
            start = max(0, self.sent - self._stop_max)
            hits = [i for i in (text.find(s, start) for s in self.request.stop) if i >= 0]
            if hits:
                cut = min(hits)
                piece = text[self.sent : cut] if cut > self.sent else ""
                self.sent = max(self.sent, cut)
                return Piece(self.index, piece, "stop", len(self.tokens))
        if len(self.tokens) >= self.request.max_new_tokens or full:
            return self._finish("length", text)
        end = len(text)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            end -= 1
        end -= self._held_back(text[:end])
        piece = text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return Piece(self.index, piece, None, len(self.tokens))

    def _held_back(self, text: str) -> int:
        """Length of the longest tail of *text* that could be the start of a stop string."""
        for n in range(min(self._stop_max - 1, len(text) - self.sent), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.request.stop):
                return n
        return 0

    def _finish(self, reason: str, text: str | None = None) -> Piece:
        text = self._decode(self.tokens) if text is None else text
        piece = text[self.sent :]
        self.sent = len(text)
        return Piece(self.index, piece, reason, len(self.tokens))


class Decoder:
    """
    Runs :class:`GenerationRequest` batches on an attached model.

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

    def stream(
        self, requests: Sequence[GenerationRequest], *, cancelled: Callable[[int], bool] | None = None
    ) -> Iterator[list[Piece]]:
        """
        Decode *requests* together; after each step yield the new pieces (one per live row).

        *cancelled(index)* is asked every step; a cancelled row is dropped
        without a final piece. Rows stop at an end-of-sequence token, a stop
        string, ``max_new_tokens`` or a full context.
        """
        import torch

        for request in requests:
            self.check(request)
        if not requests:
            return
        model = self.am.model
        device = next(model.parameters()).device
        rows = [_Row(i, r, self._decode) for i, r in enumerate(requests)]
        for row in rows:
            if row.request.temperature > 0:
                row.generator = torch.Generator(device="cpu")
                if row.request.seed is None:
                    row.generator.seed()
                else:
                    row.generator.manual_seed(int(row.request.seed))
        lengths = [len(r.input_ids) for r in requests]
        width = max(lengths)
        ids = torch.full((len(requests), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(requests), width), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, width - lengths[i] :] = torch.tensor(list(r.input_ids), dtype=torch.long)
            mask[i, width - lengths[i] :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        ids, mask, positions = ids.to(device), mask.to(device), positions.to(device)
        live = list(range(len(requests)))
        past: Any = None
        with torch.inference_mode():
            while live:
                with self.am.using_rows([dict(requests[i].selection) for i in live]):
                    out = model(
                        input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=past,
                        use_cache=True,
                    )
                past = out.past_key_values
                chosen = self._choose(out.logits[:, -1, :], [rows[i] for i in live])
                full = self.max_positions is not None and mask.shape[1] >= self.max_positions
                pieces = []
                keep = []
                for b, i in enumerate(live):
                    if cancelled is not None and cancelled(i):
                        continue
                    token = chosen[b]
                    eos = token in self.eos_token_ids and not requests[i].ignore_eos
                    piece = rows[i].push(token, eos=eos, full=full)
                    pieces.append(piece)
                    if piece.finish_reason is None:
                        keep.append(b)
                yield pieces
                if not keep:
                    return
                next_ids = torch.tensor([[chosen[b]] for b in keep], dtype=torch.long, device=device)
                if len(keep) < len(live):
                    index = torch.tensor(keep, dtype=torch.long, device=device)
                    select = getattr(past, "batch_select_indices", None) or past.reorder_cache
                    select(index)
                    mask = mask.index_select(0, index)
                    positions = positions.index_select(0, index)
                    live = [live[b] for b in keep]
                ids = next_ids
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
                positions = positions[:, -1:] + 1

    def _choose(self, logits: torch.Tensor, rows: Sequence[_Row]) -> list[int]:
        """Each row's next token: argmax for greedy rows, a draw from its own generator otherwise."""
        import torch

        logits = logits.float()
        for b, row in enumerate(rows):
            penalty = row.request.repetition_penalty
            if penalty != 1.0:
                seen = torch.tensor(sorted({*row.request.input_ids, *row.tokens}), device=logits.device)
                scores = logits[b, seen]
                logits[b, seen] = torch.where(scores > 0, scores / penalty, scores * penalty)
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
