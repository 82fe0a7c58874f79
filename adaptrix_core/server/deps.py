"""FastAPI dependencies: what a route needs, read from ``app.state`` (set once by the app factory)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from .backend import Backend, ServedEngine
from .errors import APIError
from .metrics import ServerMetrics
from .middleware import given_key, key_matches
from .settings import ServerSettings


def get_engine(request: Request) -> ServedEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_backend(request: Request) -> Backend:
    return request.app.state.backend  # type: ignore[no-any-return]


def get_metrics(request: Request) -> ServerMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


EngineDep = Annotated[ServedEngine, Depends(get_engine)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
BackendDep = Annotated[Backend, Depends(get_backend)]
MetricsDep = Annotated[ServerMetrics, Depends(get_metrics)]


def require_admin(request: Request) -> None:
    """
    Endpoints that change the server for every client need the admin key (``--admin-key``).

    Without one they are off on a server that has an API key, and open on a server with no key at all
    (a local development server). As vLLM gates runtime adapter loading behind an explicit switch.
    """
    settings = get_settings(request)
    state = settings.admin_state()
    if state == "open":
        return
    if state == "off":
        raise APIError(
            403, f"{request.method} {request.url.path} is an admin endpoint, and admin endpoints are off on this "
            "server: it has an API key but no admin key. Restart it with --admin-key KEY (or ADAPTRIX_ADMIN_KEY) "
            "and send that key.", code="admin_disabled", type="permission_error",
        )
    headers = {k.lower(): v for k, v in request.headers.items()}
    if not key_matches(given_key(headers), settings.admin_key):
        raise APIError(
            403, f"{request.method} {request.url.path} needs the admin key ('Authorization: Bearer ADMIN_KEY'); "
            "the API key is not enough.", code="admin_key_required", type="permission_error",
        )
