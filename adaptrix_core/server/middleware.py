"""
The guard in front of every route: API key and body size, checked before any route runs.

Pure ASGI (not ``BaseHTTPMiddleware``) so streaming responses are untouched
and chunked bodies are counted as they arrive.
"""

from __future__ import annotations

import hmac

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .errors import error_response


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

