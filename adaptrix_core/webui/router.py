"""
The web interface's HTTP side: the page, its static files, adapter details and ``POST /v1/route``.

Everything the page needs comes from this server (no CDN, no remote fonts), and
a Content-Security-Policy on the page makes the browser refuse anything else.
The page shell holds no data, so it is served without the API key
(:func:`is_public_path`); every call the page makes afterwards carries the key.
"""

from __future__ import annotations

import json

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..selection import format_selection


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine
    from ..types import AdapterInfo, Routing


STATIC_DIR = Path(__file__).with_name("static")
UI_PATH = "/ui"
STATIC_PREFIX = "/ui/static/"

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this server's own files and endpoints: the page works offline and cannot leak requests elsewhere."""

_SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

_MEDIA_TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


def is_public_path(method: str, path: str) -> bool:
    """
    True for the page shell and its static files (GET/HEAD only), which an API key must not guard.

    The page has to load before it can ask for the key; it contains no data.
    """
    if method not in ("GET", "HEAD"):
        return False
    return path in ("/", UI_PATH, UI_PATH + "/") or path.startswith(STATIC_PREFIX)


class RouteRequest(BaseModel):
    """Body of ``POST /v1/route``."""

    model_config = ConfigDict(extra="forbid")

    query: str = Field(min_length=1, max_length=20_000, description="The prompt to route.")
    router: str | None = Field(None, min_length=1, max_length=200, description="A registered router; default: auto's.")


def routing_to_dict(routing: Routing) -> dict[str, Any]:
    """What ``adaptrix route --json`` prints, plus ``model``: the selection string ``auto`` resolves to."""
    adapters = dict(routing.adapters)
    return {
        "object": "route",
        "router": routing.router,
        "model": format_selection(adapters),
        "choice": routing.choice,
        "adapters": adapters,
        "reason": routing.reason,
        "candidates": [{"adapter": c.adapter, "score": c.score, "reason": c.reason} for c in routing.candidates],
    }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def adapter_details(info: AdapterInfo) -> dict[str, Any]:
    """
    What the Library panel shows about one adapter without loading it: rank, targets, size, source.

    Read from the adapter's ``adaptrix.json`` report when the converter wrote one, else from
    ``adapter_config.json``; a missing or unreadable field is ``None``, never an error.
    """
    from ..library import CONFIG_NAME, METADATA_NAME, weights_file

    directory = info.path
    meta = _read_json(directory / METADATA_NAME) if directory else {}
    config = _read_json(directory / CONFIG_NAME) if directory else {}
    report = meta.get("report") if isinstance(meta.get("report"), dict) else {}
    modules = [m for m in report.get("modules") or [] if isinstance(m, dict)]
    roles = sorted({str(m["role"]) for m in modules if m.get("role")})
    layers = sorted({int(m["layer"]) for m in modules if isinstance(m.get("layer"), int)})
    targets = config.get("target_modules")
    if not roles and targets:
        roles = sorted([targets] if isinstance(targets, str) else [str(t) for t in targets])
    weights = weights_file(directory) if directory else None
    try:
        file_bytes = weights.stat().st_size if weights is not None else None
    except OSError:  # removed since the listing: the panel shows "–"
        file_bytes = None
    return {
        "name": info.name,
        "description": info.description,
        "domain": info.domain,
        "capabilities": list(info.capabilities),
        "examples": list(info.examples),
        "base_model": info.base_model,
        "shipped": info.shipped,
        "source": meta.get("source") or None,
        "created": meta.get("created") or None,
        "rank": report.get("rank", config.get("r")),
        "alpha": report.get("alpha", config.get("lora_alpha")),
        "params": report.get("params"),
        "targets": roles,
        "layers": [layers[0], layers[-1]] if layers else None,
        "file_bytes": file_bytes,
    }


def _engine(request: Request) -> AdaptrixEngine:
    return request.app.state.engine


def _route(engine: AdaptrixEngine, query: str, router: str | None) -> Routing:
    """The configured router exactly as ``model: "auto"`` uses it, or a named one over the same library."""
    if router is None:
        return engine.route(query)
    from ..routing import route

    return route(query, router, adapters=engine.library.list(), pm=engine.pm, resident=engine.cache.resident())


def make_ui_router() -> APIRouter:
    """The routes of the web interface; include it in the server's app (which must set ``app.state.engine``)."""
    router = APIRouter()

    @router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse(UI_PATH, status_code=307)

    @router.api_route(UI_PATH, methods=["GET", "HEAD"], include_in_schema=False)
    @router.api_route(UI_PATH + "/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_SECURITY_HEADERS)

    @router.api_route(STATIC_PREFIX + "{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def static(name: str) -> Response:
        root = STATIC_DIR.resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or not path.is_file() or path.suffix not in _MEDIA_TYPES:
            raise HTTPException(404, f"no file {name!r} in the web interface")
        return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_SECURITY_HEADERS)

    @router.get(UI_PATH + "/api/adapters")
    async def adapters(request: Request) -> dict[str, Any]:
        """Every library adapter's static details (rank, targets, file size, source) for the Library panel."""
        engine = _engine(request)

        def details() -> list[dict[str, Any]]:
            return [adapter_details(info) for info in engine.library.list()]

        return {"object": "list", "data": await run_in_threadpool(details)}

    @router.post("/v1/route")
    async def route(request: Request, body: RouteRequest) -> dict[str, Any]:
        """Every candidate the router considered, with its score and why, and the model ``auto`` would use."""
        routing = await run_in_threadpool(_route, _engine(request), body.query, body.router)
        return {"query": body.query, **routing_to_dict(routing)}

    return router
