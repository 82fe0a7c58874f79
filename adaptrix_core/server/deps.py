"""FastAPI dependencies: what a route needs, read from ``app.state`` (set once by the app factory)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request

from .backend import Backend
from .settings import ServerSettings


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine


def get_engine(request: Request) -> AdaptrixEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


def get_settings(request: Request) -> ServerSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_backend(request: Request) -> Backend:
    return request.app.state.backend  # type: ignore[no-any-return]


def get_counters(request: Request) -> dict[str, Any]:
    return request.app.state.counters  # type: ignore[no-any-return]


EngineDep = Annotated["AdaptrixEngine", Depends(get_engine)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
BackendDep = Annotated[Backend, Depends(get_backend)]
CountersDep = Annotated[dict[str, Any], Depends(get_counters)]
