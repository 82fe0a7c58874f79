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

Modules, lowest first (each imports only those above it): ``settings``,
``schemas``, ``errors``, ``middleware``, ``backend`` (the narrow interface to
decoding), ``deps``, ``generate``, ``routes/*`` (one APIRouter per concern),
``app`` (the factory), ``run`` (uvicorn).
"""

from __future__ import annotations

from .app import create_app
from .run import serve
from .settings import API_KEY_ENV, DEFAULT_PORT, ServerSettings


__all__ = ["API_KEY_ENV", "DEFAULT_PORT", "ServerSettings", "create_app", "serve"]
