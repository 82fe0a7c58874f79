"""Operations: ``GET /health`` (liveness) and ``GET /v1/stats`` (the engine's status plus the server's counters)."""

from __future__ import annotations

import time

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ..deps import BackendDep, CountersDep, EngineDep, SettingsDep


router = APIRouter()


@router.get("/health")
async def health(engine: EngineDep) -> dict[str, Any]:
    return {"status": "ok", "model": engine.model_name}


@router.get("/v1/stats")
async def stats(
    request: Request, engine: EngineDep, settings: SettingsDep, backend: BackendDep, counters: CountersDep,
) -> dict[str, Any]:
    status = await run_in_threadpool(engine.status)
    return {
        **status,
        "server": {
            "uptime_s": round(time.time() - request.app.state.started, 3), "requests": counters["requests"],
            "errors": counters["errors"], "scheduler": backend.stats(),
            "max_tokens_limit": settings.max_tokens_limit, "auth": settings.api_key is not None,
        },
    }
