"""
The guard in front of every route: API key, body size and body encoding, checked before any route runs.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses are untouched. The
body is read here, counted as its chunks arrive (a chunked body has no
Content-Length to check up front), and replayed to the app: a body over the
limit is a 413 whatever its framing, and bytes that are not UTF-8 are a 400
that says where, before any JSON parser sees them.
"""

from __future__ import annotations

import hmac

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from ..webui import is_public_path
from .errors import error_response


ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def given_key(headers: Mapping[str, str]) -> str:
    """The key a request sends: ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (lower-case header names)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key") or ""


def key_matches(given: str, key: str | None) -> bool:
    """Constant-time comparison; no key configured never matches."""
    return key is not None and hmac.compare_digest(given.encode(), key.encode())


class _BodyTooLarge(Exception):
    pass


class GuardMiddleware:
    """Checks the API key, the body size and the body's encoding of every HTTP request."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body_bytes: int, admin_key: str | None = None) -> None:
        self.app = app
        self.api_key = api_key
        self.admin_key = admin_key
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.api_key is not None and not is_public_path(scope.get("method", ""), scope.get("path", "")):
            given = given_key(headers)
            if not (key_matches(given, self.api_key) or key_matches(given, self.admin_key)):
                response = error_response(
                    401, "Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.", code="invalid_api_key"
                )
                await response(scope, receive, send)
                return
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        try:
            body = await self._read_body(receive)
        except _BodyTooLarge:
            await self._too_large(scope, receive, send)
            return
        if body is None:
            return  # the client left before sending its whole body: nobody to answer
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as e:
            response = error_response(
                400, f"request body is not valid UTF-8: byte 0x{body[e.start]:02x} at offset {e.start} ({e.reason}). "
                "Send JSON encoded as UTF-8.", param="body", code="invalid_encoding",
            )
            await response(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)

    async def _read_body(self, receive: Any) -> bytes | None:
        """The whole body (None if the client left first), refused as soon as the chunks received pass the limit."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message.get("type") != "http.request":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        response = error_response(
            413, f"request body is larger than this server's limit of {self.max_body_bytes} bytes "
            "(adaptrix serve --max-body-bytes).", param="body", code="request_too_large",
        )
        await response(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[Any]]:
    """A ``receive`` that hands the app the buffered body once, then waits on the client (for disconnects)."""
    sent = False

    async def replay() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
