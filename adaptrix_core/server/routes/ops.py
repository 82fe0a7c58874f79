"""
Operations: ``GET /health`` (liveness), ``GET /v1/stats`` (the engine's status plus the server's figures)
and ``GET /metrics`` (Prometheus text format).
"""

from __future__ import annotations

import time

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ..deps import BackendDep, EngineDep, MetricsDep, SettingsDep
from ..metrics import CONTENT_TYPE


router = APIRouter()


@router.get("/health")
async def health(engine: EngineDep) -> dict[str, Any]:
    return {"status": "ok", "model": engine.model_name}


@router.get("/v1/stats")
async def stats(
    request: Request, engine: EngineDep, settings: SettingsDep, backend: BackendDep, metrics: MetricsDep,
) -> dict[str, Any]:
    status = await run_in_threadpool(engine.status)
    return {
        **status,
        "server": {
            "uptime_s": round(time.time() - request.app.state.started, 3), **metrics.summary(),
            "scheduler": backend.stats(), "max_tokens_limit": settings.max_tokens_limit,
            "auth": settings.api_key is not None, "admin": settings.admin_state(),
        },
    }


@router.get("/metrics")
async def metrics_text(metrics: MetricsDep) -> Response:
    """Every series in Prometheus' text exposition format (scraped with the API key when one is set)."""
    return Response(await run_in_threadpool(metrics.exposition), media_type=CONTENT_TYPE)
