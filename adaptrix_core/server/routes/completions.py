"""``POST /v1/chat/completions`` and ``POST /v1/completions``, plain or streamed as server-sent events."""

from __future__ import annotations

import asyncio
import time
import uuid

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from ...exceptions import AdaptrixError
from ..backend import Admitted
from ..deps import BackendDep, MetricsDep, EngineDep, SettingsDep
from ..errors import APIError, from_adaptrix
from ..generate import admit, collect, event_stream, extra, max_tokens_of, pieces, reply_model, sse, usage
from ..schemas import ChatCompletionRequest, CompletionRequest


router = APIRouter()


def _stream_error(e: APIError) -> bytes:
    return sse(e.body())


async def _chat_events(
    stream: AsyncIterator[Any], admitted: Admitted, head: dict[str, Any], prompt_tokens: int, include_usage: bool,
) -> AsyncIterator[bytes]:
    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                "adaptrix": extra(admitted)}

    yield sse(chunk({"role": "assistant", "content": ""}, None))
    tokens = 0
    try:
        async for piece in stream:
            tokens = piece.tokens
            if piece.text:
                yield sse(chunk({"content": piece.text}, None))
            if piece.finish_reason is not None:
                yield sse(chunk({}, piece.finish_reason))
    except APIError as e:
        yield _stream_error(e)
        return
    if include_usage:
        yield sse({**head, "choices": [], "usage": usage(prompt_tokens, tokens)})
    yield sse("[DONE]")


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, engine: EngineDep, settings: SettingsDep, backend: BackendDep, metrics: MetricsDep,
) -> Any:
    messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
    max_tokens = max_tokens_of(settings, body.max_completion_tokens or body.max_tokens, settings.default_max_tokens)
    try:
        ids = await run_in_threadpool(engine.encode_chat, messages)
    except AdaptrixError as e:
        raise from_adaptrix(e, "messages") from None
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    admitted = await admit(engine, body, ids, last_user, max_tokens)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": reply_model(body.model, admitted)}
    stream = pieces(backend, metrics, admitted)
    if body.stream:
        return event_stream(_chat_events(stream, admitted, head, len(ids), body.include_usage()), admitted)
    text, reason, tokens = await collect(stream)
    return {
        **head, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                     "logprobs": None}],
        "usage": usage(len(ids), tokens),
        "system_fingerprint": None,
        "adaptrix": extra(admitted),
    }


async def _completion_events(
    stream: AsyncIterator[Any], admitted: Admitted, head: dict[str, Any], prompt_tokens: int, include_usage: bool,
) -> AsyncIterator[bytes]:
    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        return {**head, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                "adaptrix": extra(admitted)}

    tokens = 0
    try:
        async for piece in stream:
            tokens = piece.tokens
            if piece.text or piece.finish_reason is not None:
                yield sse(chunk(piece.text, piece.finish_reason))
    except APIError as e:
        yield _stream_error(e)
        return
    if include_usage:
        yield sse({**head, "choices": [], "usage": usage(prompt_tokens, tokens)})
    yield sse("[DONE]")


async def _admit_all(engine: Any, body: CompletionRequest, prompts: list[str], max_tokens: int) -> list[tuple[list[int], Admitted]]:
    """Encode and admit every prompt; if one fails, release the leases the others took."""
    prepared: list[tuple[list[int], Admitted]] = []
    try:
        for prompt in prompts:
            ids = await run_in_threadpool(engine.encode, prompt)
            prepared.append((ids, await admit(engine, body, ids, prompt, max_tokens)))
    except BaseException:
        for _, admitted in prepared:
            admitted.release()
        raise
    return prepared


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, engine: EngineDep, settings: SettingsDep, backend: BackendDep, metrics: MetricsDep,
) -> Any:
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    if not prompts:
        raise APIError(400, "prompt must not be an empty list.", param="prompt")
    if body.stream and len(prompts) > 1:
        raise APIError(400, "streaming supports one prompt per request.", param="prompt")
    max_tokens = max_tokens_of(settings, body.max_tokens, 16)
    prepared = await _admit_all(engine, body, prompts, max_tokens)
    head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": reply_model(body.model, prepared[0][1])}
    if body.stream:
        ids, admitted = prepared[0]
        stream = pieces(backend, metrics, admitted)
        return event_stream(_completion_events(stream, admitted, head, len(ids), body.include_usage()), admitted)
    results = await asyncio.gather(*(collect(pieces(backend, metrics, admitted)) for _, admitted in prepared))
    return {
        **head,
        "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                    for i, (text, reason, _) in enumerate(results)],
        "usage": usage(sum(len(ids) for ids, _ in prepared), sum(tokens for _, _, tokens in results)),
        "adaptrix": extra(prepared[0][1]),
    }
