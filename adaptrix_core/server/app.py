"""The app factory: one FastAPI app over one engine, its state on ``app.state``, its routers included."""

from __future__ import annotations

import time

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from ..webui import make_ui_router
from .backend import Backend, SchedulerBackend
from .errors import install_error_handlers
from .metrics import ServerMetrics
from .middleware import GuardMiddleware
from .routes import admin, completions, models, ops
from .settings import ServerSettings


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.backend.start()
    try:
        yield
    finally:
        app.state.backend.stop()


def create_app(
    engine: AdaptrixEngine, settings: ServerSettings | None = None, *, backend: Backend | None = None,
) -> FastAPI:
    """
    The ASGI app serving *engine* (the backend's worker starts with the app's lifespan).

    Routes read ``app.state.engine``, ``app.state.settings``, ``app.state.backend``
    (default: the engine's batching scheduler; pass *backend* to decode elsewhere) and
    ``app.state.metrics``. More routers (a web UI...) are one ``include_router`` line below.
    """
    settings = settings or ServerSettings()
    app = FastAPI(title="Adaptrix", version="0.1.0", lifespan=_lifespan, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.settings = settings
    app.state.backend = backend if backend is not None else SchedulerBackend(engine, settings)
    app.state.started = time.time()
    app.state.metrics = ServerMetrics(engine.cache.stats, app.state.backend.stats)
    app.add_middleware(
        GuardMiddleware, api_key=settings.api_key, admin_key=settings.admin_key, max_body_bytes=settings.max_body_bytes,
    )
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(models.router)
    app.include_router(completions.router)
    app.include_router(admin.router)
    app.include_router(make_ui_router())
    return app
