"""
Call an ASGI app in-process and get its response as a stream of messages.

Each engine replica hosts the unchanged single-process server app
(:func:`adaptrix_core.server.create_app`) and feeds it the requests the
ingress forwards, without a socket. So every replica answers exactly as
``adaptrix serve`` does: same validation, errors, streaming and leases; and
whatever the server learns (new routes, metrics, auth) works on replicas too.
"""

from __future__ import annotations

import asyncio
import contextlib

from collections.abc import AsyncIterator, Sequence
from typing import Any

import attrs


@attrs.frozen
class ResponseStart:
    """The status line and headers of a forwarded response (always the first item of the stream)."""

    status: int
    headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


async def call_asgi(
    app: Any,
    method: str,
    path: str,
    *,
    query: str = "",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
) -> AsyncIterator[ResponseStart | bytes]:
    """
    Run one HTTP request through *app*: yield a :class:`ResponseStart`, then the body chunks.

    Closing the iterator early (the client went away) tells the app the client
    disconnected and cancels it, so its cleanup (lease release) runs.
    """
    raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": method.upper(), "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query.encode("latin-1"), "root_path": "", "headers": raw_headers,
        "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80),
    }
    sent_body = False
    gone = asyncio.Event()
    messages: asyncio.Queue[dict[str, Any] | BaseException | None] = asyncio.Queue()

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        except BaseException as e:  # surfaced to the reader below
            await messages.put(e)
            return
        await messages.put(None)

    task = asyncio.create_task(run())
    try:
        while True:
            message = await messages.get()
            if message is None:
                return
            if isinstance(message, BaseException):
                raise message
            if message["type"] == "http.response.start":
                yield ResponseStart(
                    int(message["status"]),
                    tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])),
                )
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if chunk:
                    yield bytes(chunk)
                if not message.get("more_body", False):
                    return
    finally:
        gone.set()
        if not task.done():
            task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def collect(stream: AsyncIterator[ResponseStart | bytes]) -> tuple[ResponseStart, bytes]:
    """Read a whole response from :func:`call_asgi`."""
    start: ResponseStart | None = None
    chunks: list[bytes] = []
    async for item in stream:
        if isinstance(item, ResponseStart):
            start = item
        else:
            chunks.append(item)
    if start is None:
        msg = "the app ended without a response"
        raise RuntimeError(msg)
    return start, b"".join(chunks)


__all__ = ["ResponseStart", "call_asgi", "collect"]
