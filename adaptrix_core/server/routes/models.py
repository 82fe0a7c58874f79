"""``GET /v1/models`` (base, auto and every library adapter) and ``GET /v1/adapters`` (with cache entries)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ...routing import resolve_router_name
from ..deps import EngineDep
from ..errors import APIError


router = APIRouter()


def model_entries(engine: Any, created: int) -> list[dict[str, Any]]:
    """``base``, ``auto``, then the library's adapters, then adapters resident but not in the library."""
    resident = set(engine.cache.resident())
    base = {"object": "model", "created": created, "owned_by": "adaptrix"}
    entries = [
        {"id": "base", **base, "base_model": engine.model_name},
        {"id": "auto", **base, "router": resolve_router_name(engine.config.router, engine.pm)},
    ]
    listed = set()
    for info in engine.library.list():
        listed.add(info.name)
        entries.append({
            "id": info.name, **base, "description": info.description, "capabilities": list(info.capabilities),
            "resident": info.name in resident,
        })
    for name in sorted(resident - listed):
        entries.append({"id": name, **base, "resident": True})
    return entries


@router.get("/v1/models")
async def list_models(request: Request, engine: EngineDep) -> dict[str, Any]:
    created = int(request.app.state.started)
    return {"object": "list", "data": await run_in_threadpool(model_entries, engine, created)}


@router.get("/v1/models/{model_id}")
async def get_model(model_id: str, request: Request, engine: EngineDep) -> dict[str, Any]:
    for entry in await run_in_threadpool(model_entries, engine, int(request.app.state.started)):
        if entry["id"] == model_id:
            return entry
    raise APIError(404, f"no model {model_id!r}; GET /v1/models lists them.", param="model", code="model_not_found")


@router.get("/v1/adapters")
async def list_adapters(engine: EngineDep) -> dict[str, Any]:
    stats = engine.cache.stats()["adapters"]
    infos = await run_in_threadpool(engine.library.list)
    data = [
        {"name": i.name, "description": i.description, "capabilities": list(i.capabilities), "domain": i.domain,
         "shipped": i.shipped, "resident": i.name in stats, **({"cache": stats[i.name]} if i.name in stats else {})}
        for i in infos
    ]
    return {"object": "list", "data": data}
