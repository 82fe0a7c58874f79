"""
From a validated body to pieces and back: resolve the model, check limits, lease adapters, shape responses.

Shared by the chat and completion routes; nothing here knows about HTTP routing.
"""

from __future__ import annotations

import json
import time

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ..exceptions import AdaptrixError, GenerationError
from ..generation import GenerationRequest, Piece
from ..selection import BASE_NAMES, format_selection, parse_selection
from .backend import Admitted, Backend, lease_adapters
from .errors import APIError, from_adaptrix
from .metrics import ServerMetrics
from .schemas import SamplingBody
from .settings import ServerSettings


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine
    from ..types import Routing


def resolve_model(engine: AdaptrixEngine, model: str, text: str) -> tuple[dict[str, float], Routing | None]:
    """The request's ``model`` as adapter weights: ``base``, ``auto`` (the router reads *text``) or a selection."""
    name = model.strip()
    if name.lower() in BASE_NAMES or name == engine.model_name:
        return {}, None
    if name.lower() == "auto":
        routing = engine.route(text)
        return dict(routing.adapters), routing
    selection = parse_selection(name)
    _refuse_zero_weights(name)
    return selection, None


def _refuse_zero_weights(model: str) -> None:
    """``pirate:0`` would silently answer with the base model: say so instead (the parser drops zero terms)."""
    for term in model.split("+"):
        adapter, _, weight = term.partition(":")
        if weight.strip() and float(weight) == 0.0:
            raise APIError(
                400, f"model {model!r} gives adapter {adapter.strip()!r} weight 0, which applies nothing. "
                "Drop the term, give it a non-zero weight, or ask for model 'base'.", param="model", code="zero_weight",
            )


def max_tokens_of(settings: ServerSettings, asked: int | None, default: int) -> int:
    if asked is not None and asked > settings.max_tokens_limit:
        raise APIError(
            400, f"max_tokens={asked} exceeds this server's limit of {settings.max_tokens_limit} "
            "(adaptrix serve --max-tokens-limit).", param="max_tokens", code="max_tokens_too_large",
        )
    return asked if asked is not None else min(default, settings.max_tokens_limit)


async def admit(engine: AdaptrixEngine, body: SamplingBody, ids: list[int], text: str, max_tokens: int) -> Admitted:
    """Resolve the model, check the request and lease its adapters (loading on demand) off the event loop."""
    admitted_at = time.perf_counter()
    try:
        selection, routing = await run_in_threadpool(resolve_model, engine, body.model, text)
        request = GenerationRequest(
            ids, selection, max_tokens, body.temperature, body.top_p, body.seed, body.stop_strings(),
            ignore_eos=body.ignore_eos, repetition_penalty=body.repetition_penalty,
        )
        cold = tuple(n for n in selection if n not in engine.cache)
        held = await lease_adapters(engine, request)
    except AdaptrixError as e:
        raise from_adaptrix(e, None if isinstance(e, GenerationError) else "model") from None
    return Admitted(request, held, routing, cold, engine.cache.release, admitted_at=admitted_at)


def pieces(backend: Backend, metrics: ServerMetrics, admitted: Admitted) -> AsyncIterator[Piece]:
    """The admitted row's pieces from the backend, measured (requests, tokens, latencies) on the way."""
    request = admitted.request
    return metrics.observe(
        backend.stream_pieces(admitted), request.selection, len(request.input_ids), admitted.admitted_at,
    )


def reply_model(asked: str, admitted: Admitted) -> str:
    """The response's ``model``: what was asked, except that ``auto`` is replaced by the router's choice."""
    if admitted.routing is None:
        return asked
    return format_selection(dict(admitted.request.selection)) or "base"


def extra(admitted: Admitted) -> dict[str, Any]:
    """
    Adaptrix's own response field: the adapters applied (a list, like ``cold``) and their weights, those
    loaded for this request, and the router's reason when ``auto`` chose.
    """
    selection = dict(admitted.request.selection)
    out: dict[str, Any] = {"adapters": list(selection), "weights": selection}
    if admitted.cold:
        out["cold"] = list(admitted.cold)
    if admitted.routing is not None:
        out["routing"] = admitted.routing.reason
    return out


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def event_stream(events: AsyncIterator[bytes], admitted: Admitted) -> StreamingResponse:
    """SSE response whose lease is released however the stream ends (done, error, client gone, never started)."""

    async def guarded() -> AsyncIterator[bytes]:
        try:
            async for event in events:
                yield event
        finally:
            admitted.release()

    async def release() -> None:  # async: runs on the event loop, like the generator's finally
        admitted.release()

    return StreamingResponse(
        guarded(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"},
        background=BackgroundTask(release),
    )


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def collect(stream: AsyncIterator[Piece]) -> tuple[str, str, int]:
    """Join a row's pieces: its text, finish reason and token count."""
    text: list[str] = []
    reason = "length"
    tokens = 0
    async for piece in stream:
        text.append(piece.text)
        tokens = piece.tokens
        if piece.finish_reason is not None:
            reason = piece.finish_reason
    return "".join(text), reason, tokens
