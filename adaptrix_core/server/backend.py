"""
Where admitted requests are decoded: the narrow interface between the routes and the engine's batching.

Routes reach generation only through ``app.state.backend`` (a :class:`Backend`),
so another backend (another process, another scheduler) can serve the same app.
The default, :class:`SchedulerBackend`, queues each row on the engine's
:class:`~adaptrix_core.scheduler.BatchScheduler`.
"""

from __future__ import annotations

import asyncio
import threading
import time

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from ..exceptions import AdaptrixError
from ..generation import GenerationRequest, Piece
from ..scheduler import BatchScheduler, Job
from .errors import APIError, from_adaptrix
from .settings import ServerSettings


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine
    from ..types import Routing


@attrs.define(eq=False)
class Admitted:
    """A request that passed the checks and holds leases on its adapters (released exactly once)."""

    request: GenerationRequest
    held: list[str]
    routing: Routing | None
    cold: tuple[str, ...]
    """Adapters that were not resident when it arrived."""
    release_lease: Callable[[list[str]], None]
    admitted_at: float = attrs.field(factory=time.perf_counter)
    """When admission began (``time.perf_counter``): time to first token counts from here, loads included."""
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
        """Give the leases back; any second call (stream end, background task, scheduler) does nothing."""
        with self._lock:
            if self.released:
                return
            self.released = True
        self.release_lease(self.held)


class ServedEngine(Protocol):
    """
    Everything the routes use of ``app.state.engine`` (an :class:`~adaptrix_core.engine.AdaptrixEngine`).

    Another deployment can stand in any object with these members; decoding itself goes through the
    :class:`Backend`, so ``decoder`` is needed only by :class:`SchedulerBackend`.
    """

    model_name: str
    config: Any  # .router: the configured router's name (GET /v1/models)
    pm: Any  # the plugin manager, to resolve that router's name
    cache: Any  # the adapter cache: resident(), stats(), load(), unload(), release(), ...
    am: Any  # the adapted model: report(name), resident_bytes(name)
    library: Any  # list(): the library's adapters

    def encode(self, text: str) -> list[int]: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def route(self, text: str) -> Routing: ...

    def lease(self, requests: list[GenerationRequest]) -> list[str]: ...

    def status(self) -> dict[str, Any]: ...


class Backend(Protocol):
    """What the routes need from whatever decodes their rows."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def stream_pieces(self, admitted: Admitted) -> AsyncIterator[Piece]:
        """Decode one admitted row, yielding its pieces; release its lease however the stream ends."""
        ...

    def stats(self) -> dict[str, Any]: ...

    def reset_stats(self) -> None: ...


class SchedulerBackend:
    """Rows go to one :class:`BatchScheduler` worker thread over the engine's decoder."""

    def __init__(self, engine: AdaptrixEngine, settings: ServerSettings) -> None:
        self.scheduler = BatchScheduler(
            engine.decoder, max_batch=settings.max_batch, window_s=settings.batch_window_ms / 1000,
            exact=settings.exact, prefix_cache_tokens=settings.prefix_cache_tokens,
            prefill_chunk_ms=settings.prefill_chunk_ms,
        )

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.stop()

    def stats(self) -> dict[str, Any]:
        return self.scheduler.stats()

    def reset_stats(self) -> None:
        self.scheduler.reset_stats()

    async def stream_pieces(self, admitted: Admitted) -> AsyncIterator[Piece]:
        """Submit one row to the scheduler and yield its pieces; release the lease when done or abandoned."""
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[Piece | BaseException] = asyncio.Queue()
        job = Job(
            admitted.request,
            on_piece=lambda p: loop.call_soon_threadsafe(pieces.put_nowait, p),
            on_error=lambda e: loop.call_soon_threadsafe(pieces.put_nowait, e),
            on_done=admitted.release_now,
        )
        admitted.job = job
        self.scheduler.submit(job)
        try:
            while True:
                item = await pieces.get()
                if isinstance(item, BaseException):
                    if isinstance(item, AdaptrixError):
                        raise from_adaptrix(item, None)
                    raise APIError(500, f"generation failed: {type(item).__name__}: {item}", type="server_error")
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True
            admitted.release()


async def lease_adapters(engine: AdaptrixEngine, request: GenerationRequest) -> list[str]:
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
