"""
Endpoints that change the server for every client: load, unload and pin adapters, reset the counters.

Every route here needs the admin key (see :func:`..deps.require_admin`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from ...exceptions import AdaptrixError
from ..deps import BackendDep, EngineDep, MetricsDep, require_admin
from ..errors import from_adaptrix
from ..schemas import LoadAdapterRequest


router = APIRouter(dependencies=[Depends(require_admin)])


@router.post("/v1/adapters/{name}/load")
async def load_adapter(name: str, engine: EngineDep, body: LoadAdapterRequest | None = None) -> dict[str, Any]:
    pin = bool(body and body.pin)
    try:
        loaded_now = await run_in_threadpool(engine.cache.load, name, pin=pin)
    except AdaptrixError as e:
        raise from_adaptrix(e, "name") from None
    report = engine.am.report(name)
    return {
        "name": name, "resident": True, "loaded_now": loaded_now, "pinned": engine.cache.is_pinned(name),
        "bytes": engine.am.resident_bytes(name), "report": report.to_dict(),
    }


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, engine: EngineDep) -> dict[str, Any]:
    try:
        await run_in_threadpool(engine.cache.unload, name)
    except AdaptrixError as e:
        raise from_adaptrix(e, "name") from None
    return {"name": name, "resident": False}


@router.post("/v1/stats/reset")
async def reset_stats(engine: EngineDep, backend: BackendDep, metrics: MetricsDep) -> dict[str, Any]:
    """Zero the loader's, the scheduler's and the server's counters (e.g. between benchmark phases)."""
    engine.cache.reset_stats()
    backend.reset_stats()
    metrics.reset()
    return {"reset": True}
