"""
``adaptrix serve``: an OpenAI-compatible HTTP API over one engine.

Built on FastAPI + uvicorn: well maintained, pydantic validates every request
body into precise 400 errors, and ``StreamingResponse`` gives server-sent
events without extra dependencies. The request's ``model`` picks the adapters:

- ``"pirate"`` one adapter, ``"pirate:0.7+json:0.3"`` a weighted composition,
- ``"base"`` (or the base model's own name) no adapter,
- ``"auto"`` the configured router decides from the prompt.

Adapters not resident are loaded on demand by the engine's dynamic loader
(the request holds a lease on them, so they are never evicted mid-request).
Concurrent requests are batched by :class:`adaptrix_core.scheduler.BatchScheduler`.
Every error is a JSON body in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import asyncio
import hmac
import threading
import json
import time
import uuid

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal

import attrs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from .routing import resolve_router_name
from starlette.exceptions import HTTPException as StarletteHTTPException

from .exceptions import AdapterInUseError, AdapterNotFoundError, AdaptrixError, GenerationError
from .generation import GenerationRequest, Piece
from .scheduler import DEFAULT_MAX_BATCH, BatchScheduler, Job
from .selection import BASE_NAMES, format_selection, parse_selection


if TYPE_CHECKING:
    from .engine import AdaptrixEngine
    from .types import Routing


API_KEY_ENV = "ADAPTRIX_API_KEY"
DEFAULT_PORT = 8000


@attrs.define(eq=False)
class _Admitted:
    """A request that passed the checks and holds leases on its adapters (released exactly once)."""

    request: GenerationRequest
    held: list[str]
    routing: Routing | None
    cold: tuple[str, ...]
    """Adapters that were not resident when it arrived."""
    release_lease: Callable[[list[str]], None]
    released: bool = False
    job: Job | None = None
    """The row once queued: its lease is released only when the row has left the batch."""
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def release(self) -> None:
        """Release now, or (while the row may still be in a forward pass) cancel it and release when it leaves."""
        job = self.job
        if job is not None and not job.finished:
            job.cancelled = True
            return
        self.release_now()

    def release_now(self) -> None:
        with self._lock:
            if self.released:
                return
            self.released = True
        self.release_lease(self.held)


@attrs.frozen
class ServerSettings:
    """
    Limits and batching of one server.

    Attributes:
        api_key: When set, every request needs ``Authorization: Bearer <key>`` (or ``x-api-key``).
        max_tokens_limit: Largest ``max_tokens`` a request may ask for.
        default_max_tokens: Used when a chat request gives no ``max_tokens``.
        max_body_bytes: Largest request body accepted (413 beyond).
        max_batch: Most rows decoded together (continuous batching: rows join and leave at every step).
        batch_window_ms: How long a lone request waits for others to batch with.
        exact: Old grouping: equal-length prompts only, no joining a running batch (output identical to a lone run).
    """

    api_key: str | None = None
    max_tokens_limit: int = attrs.field(default=1024, validator=attrs.validators.gt(0))
    default_max_tokens: int = attrs.field(default=256, validator=attrs.validators.gt(0))
    max_body_bytes: int = attrs.field(default=1 << 20, validator=attrs.validators.gt(0))
    max_batch: int = attrs.field(default=DEFAULT_MAX_BATCH, validator=attrs.validators.gt(0))
    batch_window_ms: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    exact: bool = False


# request bodies -------------------------------------------------------------------


class _Body(BaseModel):
    """OpenAI clients send fields we do not use (``user``, ``logit_bias``...): accept and ignore them."""

    model_config = ConfigDict(extra="allow")


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str = Field(min_length=1, max_length=1024)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1, description="Only n=1 is supported.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None)
    seed: int | None = None
    ignore_eos: bool = Field(False, description="vLLM's extension: generate max_tokens even past end-of-sequence.")

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        stops = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        return tuple(s for s in stops if s)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)
    echo: Literal[False] = False


class LoadAdapterRequest(_Body):
    pin: bool = False


# errors -------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered with OpenAI's JSON shape."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, type=self.type, param=self.param, code=self.code)


def error_response(
    status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
    code: str | None = None,
) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


def _from_adaptrix(e: AdaptrixError, param: str | None = "model") -> APIError:
    if isinstance(e, AdapterNotFoundError):
        return APIError(404, str(e), param=param, code="model_not_found")
    if isinstance(e, AdapterInUseError):
        return APIError(409, str(e), param=param, code="adapter_in_use")
    return APIError(400, str(e), param=param, code=type(e).__name__)


# middleware -------------------------------------------------------------------------

ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """
    Checks the API key and the body size of every HTTP request before any route runs.

    Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses are untouched
    and chunked bodies are counted as they arrive.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None:
            given = headers.get("x-api-key") or ""
            auth = headers.get("authorization", "")
            if auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                response = error_response(
                    401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.", code="invalid_api_key"
                )
                await response(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        response = error_response(
            413, f"request body is larger than this server's limit of {self.max_body_bytes} bytes.",
            code="request_too_large",
        )
        await response(scope, receive, send)


# the app ------------------------------------------------------------------------------


def create_app(engine: AdaptrixEngine, settings: ServerSettings | None = None) -> FastAPI:
    """The ASGI app serving *engine* (the scheduler thread starts with the app's lifespan)."""
    settings = settings or ServerSettings()
    scheduler = BatchScheduler(
        engine.decoder, max_batch=settings.max_batch, window_s=settings.batch_window_ms / 1000,
        exact=settings.exact,
    )
    started = time.time()
    counters = {"requests": 0, "errors": 0}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="Adaptrix", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.scheduler = scheduler
    app.state.settings = settings
    app.add_middleware(GuardMiddleware, api_key=settings.api_key, max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        counters["errors"] += 1
        return exc.response()

    @app.exception_handler(AdaptrixError)
    async def _adaptrix_error(request: Request, exc: AdaptrixError) -> JSONResponse:
        counters["errors"] += 1
        return _from_adaptrix(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        counters["errors"] += 1
        problems = []
        param = None
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if p != "body"]
            param = param or ".".join(loc) or None
            problems.append(f"{'.'.join(loc) or 'body'}: {err.get('msg')}")
        return error_response(400, "invalid request: " + "; ".join(problems), param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        counters["errors"] += 1
        kind = "not_found" if exc.status_code == 404 else None
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=kind)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        counters["errors"] += 1
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error")

    # helpers ----------------------------------------------------------------------

    def resolve_model(model: str, text: str) -> tuple[dict[str, float], Routing | None]:
        name = model.strip()
        if name.lower() in BASE_NAMES or name == engine.model_name:
            return {}, None
        if name.lower() == "auto":
            routing = engine.route(text)
            return dict(routing.adapters), routing
        return parse_selection(name), None

    def max_tokens_of(asked: int | None, default: int) -> int:
        if asked is not None and asked > settings.max_tokens_limit:
            raise APIError(
                400, f"max_tokens={asked} exceeds this server's limit of {settings.max_tokens_limit} "
                "(adaptrix serve --max-tokens-limit).", param="max_tokens", code="max_tokens_too_large",
            )
        return asked if asked is not None else min(default, settings.max_tokens_limit)

    async def admit(body: _Sampling, ids: list[int], text: str, max_tokens: int) -> _Admitted:
        """Resolve the model, check the request and lease its adapters (loading on demand) off the event loop."""
        try:
            selection, routing = await run_in_threadpool(resolve_model, body.model, text)
            request = GenerationRequest(
                ids, selection, max_tokens, body.temperature, body.top_p, body.seed, body.stop_strings(),
                ignore_eos=body.ignore_eos,
            )
            cold = tuple(n for n in selection if n not in engine.cache)
            held = await _lease(engine, request)
        except AdaptrixError as e:
            raise _from_adaptrix(e, None if isinstance(e, GenerationError) else "model") from None
        return _Admitted(request, held, routing, cold, engine.cache.release)

    async def run(admitted: _Admitted) -> AsyncIterator[Piece]:
        """Queue one row and yield its pieces; release the lease when done or abandoned."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Piece | BaseException] = asyncio.Queue()
        job = Job(
            admitted.request,
            on_piece=lambda p: loop.call_soon_threadsafe(pieces.put_nowait, p),
            on_error=lambda e: loop.call_soon_threadsafe(pieces.put_nowait, e),
            on_done=admitted.release_now,
        )
        admitted.job = job
        counters["requests"] += 1
        scheduler.submit(job)
        try:
            while True:
                item = await pieces.get()
                if isinstance(item, BaseException):
                    if isinstance(item, AdaptrixError):
                        raise _from_adaptrix(item, None)
                    raise APIError(500, f"generation failed: {type(item).__name__}: {item}", type="server_error")
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True
            admitted.release()

    def extra(admitted: _Admitted) -> dict[str, Any]:
        """Adaptrix's own response field: the adapters used, those loaded for it, the router's reason."""
        out: dict[str, Any] = {"adapters": format_selection(dict(admitted.request.selection))}
        if admitted.cold:
            out["cold"] = list(admitted.cold)
        if admitted.routing is not None:
            out["routing"] = admitted.routing.reason
        return out

    def sse(data: dict[str, Any] | str) -> bytes:
        payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        return f"data: {payload}\n\n".encode()

    # routes -----------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model_name}

    def model_entries() -> list[dict[str, Any]]:
        resident = set(engine.cache.resident())
        created = int(started)
        entries = [
            {"id": "base", "object": "model", "created": created, "owned_by": "adaptrix", "base_model": engine.model_name},
            {"id": "auto", "object": "model", "created": created, "owned_by": "adaptrix", "router": resolve_router_name(engine.config.router, engine.pm)},
        ]
        listed = set()
        for info in engine.library.list():
            listed.add(info.name)
            entries.append({
                "id": info.name, "object": "model", "created": created, "owned_by": "adaptrix",
                "description": info.description, "capabilities": list(info.capabilities),
                "resident": info.name in resident,
            })
        for name in sorted(resident - listed):
            entries.append({"id": name, "object": "model", "created": created, "owned_by": "adaptrix", "resident": True})
        return entries

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": await run_in_threadpool(model_entries)}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        for entry in await run_in_threadpool(model_entries):
            if entry["id"] == model_id:
                return entry
        raise APIError(404, f"no model {model_id!r}; GET /v1/models lists them.", param="model", code="model_not_found")

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()} for m in body.messages]
        max_tokens = max_tokens_of(body.max_completion_tokens or body.max_tokens, settings.default_max_tokens)
        try:
            ids = await run_in_threadpool(engine.encode_chat, messages)
        except AdaptrixError as e:
            raise _from_adaptrix(e, "messages") from None
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        admitted = await admit(body, ids, last_user, max_tokens)
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        usage = {"prompt_tokens": len(ids)}
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[bytes]:
                def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
                    return {
                        "id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                        "adaptrix": extra(admitted),
                    }

                yield sse(chunk({"role": "assistant", "content": ""}, None))
                tokens = 0
                try:
                    async for piece in run(admitted):
                        tokens = piece.tokens
                        if piece.text:
                            yield sse(chunk({"content": piece.text}, None))
                        if piece.finish_reason is not None:
                            yield sse(chunk({}, piece.finish_reason))
                except APIError as e:
                    yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
                    return
                if include_usage:
                    yield sse({
                        "id": ident, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [], "usage": _usage(usage["prompt_tokens"], tokens),
                    })
                yield sse("[DONE]")

            return _event_stream(events(), admitted)
        text, reason, tokens = await _collect(run(admitted))
        return {
            "id": ident, "object": "chat.completion", "created": created, "model": body.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                         "logprobs": None}],
            "usage": _usage(usage["prompt_tokens"], tokens),
            "system_fingerprint": None,
            "adaptrix": extra(admitted),
        }

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest) -> Any:
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt must not be an empty list.", param="prompt")
        if body.stream and len(prompts) > 1:
            raise APIError(400, "streaming supports one prompt per request.", param="prompt")
        max_tokens = max_tokens_of(body.max_tokens, 16)
        prepared: list[tuple[list[int], _Admitted]] = []
        try:
            for prompt in prompts:
                ids = await run_in_threadpool(engine.encode, prompt)
                prepared.append((ids, await admit(body, ids, prompt, max_tokens)))
        except BaseException:
            for _, admitted in prepared:
                admitted.release()
            raise
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        if body.stream:
            ids, admitted = prepared[0]
            include_usage = bool(body.stream_options and body.stream_options.include_usage)

            async def events() -> AsyncIterator[bytes]:
                def chunk(text: str, finish: str | None) -> dict[str, Any]:
                    return {
                        "id": ident, "object": "text_completion", "created": created, "model": body.model,
                        "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
                        "adaptrix": extra(admitted),
                    }

                tokens = 0
                try:
                    async for piece in run(admitted):
                        tokens = piece.tokens
                        if piece.text or piece.finish_reason is not None:
                            yield sse(chunk(piece.text, piece.finish_reason))
                except APIError as e:
                    yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
                    return
                if include_usage:
                    yield sse({"id": ident, "object": "text_completion", "created": created, "model": body.model,
                               "choices": [], "usage": _usage(len(ids), tokens)})
                yield sse("[DONE]")

            return _event_stream(events(), admitted)
        results = await asyncio.gather(*(_collect(run(admitted)) for _, admitted in prepared))
        prompt_tokens = sum(len(ids) for ids, _ in prepared)
        return {
            "id": ident, "object": "text_completion", "created": created, "model": body.model,
            "choices": [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                        for i, (text, reason, _) in enumerate(results)],
            "usage": _usage(prompt_tokens, sum(tokens for _, _, tokens in results)),
            "adaptrix": extra(prepared[0][1]),
        }

    @app.get("/v1/adapters")
    async def list_adapters() -> dict[str, Any]:
        stats = engine.cache.stats()["adapters"]
        infos = await run_in_threadpool(engine.library.list)
        data = [
            {"name": i.name, "description": i.description, "capabilities": list(i.capabilities), "domain": i.domain,
             "shipped": i.shipped, "resident": i.name in stats, **({"cache": stats[i.name]} if i.name in stats else {})}
            for i in infos
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/adapters/{name}/load")
    async def load_adapter(name: str, body: LoadAdapterRequest | None = None) -> dict[str, Any]:
        pin = bool(body and body.pin)
        try:
            loaded_now = await run_in_threadpool(engine.cache.load, name, pin=pin)
        except AdaptrixError as e:
            raise _from_adaptrix(e, "name") from None
        report = engine.am.report(name)
        return {
            "name": name, "resident": True, "loaded_now": loaded_now, "pinned": engine.cache.is_pinned(name),
            "bytes": engine.am.resident_bytes(name), "report": report.to_dict(),
        }

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str) -> dict[str, Any]:
        try:
            await run_in_threadpool(engine.cache.unload, name)
        except AdaptrixError as e:
            raise _from_adaptrix(e, "name") from None
        return {"name": name, "resident": False}

    @app.post("/v1/stats/reset")
    async def reset_stats() -> dict[str, Any]:
        """Zero the loader's and the scheduler's counters (e.g. between benchmark phases)."""
        engine.cache.reset_stats()
        scheduler.reset_stats()
        counters.update(requests=0, errors=0)
        return {"reset": True}

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        status = await run_in_threadpool(engine.status)
        return {
            **status,
            "server": {
                "uptime_s": round(time.time() - started, 3), "requests": counters["requests"],
                "errors": counters["errors"], "scheduler": scheduler.stats(),
                "max_tokens_limit": settings.max_tokens_limit, "auth": settings.api_key is not None,
            },
        }

    return app


async def _lease(engine: AdaptrixEngine, request: GenerationRequest) -> list[str]:
    """
    Lease the request's adapters in a worker thread (a miss loads from disk).

    If the client goes away while a load is running, the load still finishes; its lease is then
    released instead of leaking, so the adapter stays evictable.
    """
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, engine.lease, [request])
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:

        def release(done: asyncio.Future[list[str]]) -> None:
            if not done.cancelled() and done.exception() is None:
                engine.cache.release(done.result())

        future.add_done_callback(release)
        raise


def _event_stream(events: AsyncIterator[bytes], admitted: _Admitted) -> StreamingResponse:
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


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


async def _collect(pieces: AsyncIterator[Piece]) -> tuple[str, str, int]:
    text: list[str] = []
    reason = "length"
    tokens = 0
    async for piece in pieces:
        text.append(piece.text)
        tokens = piece.tokens
        if piece.finish_reason is not None:
            reason = piece.finish_reason
    return "".join(text), reason, tokens


def serve(
    engine: AdaptrixEngine,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    settings: ServerSettings | None = None,
    log_level: str = "warning",
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Run the server until interrupted (blocking)."""
    import uvicorn

    app = create_app(engine, settings)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    server = uvicorn.Server(config)
    if on_ready is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets=sockets)
            if server.started:
                on_ready(f"http://{host}:{port}")

        server.startup = startup  # type: ignore[method-assign]
    server.run()
