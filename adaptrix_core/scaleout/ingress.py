"""
The ingress: the OpenAI-compatible HTTP API of a replicated deployment, in front of the engine replicas.

It serves the same paths as ``adaptrix serve`` (``serve.ingress`` over a
FastAPI app) and forwards each request to an engine replica, which answers it
with the unchanged server app. What the ingress adds:

- affinity: generation requests carry their adapter set as the multiplexed id
  (``"auto"`` is decided by a replica's router first), so Ray picks a replica
  that already holds those adapters;
- retries: a request whose replica died before it answered is sent to another
  (generation has no side effects); after the first byte a death ends the
  response with an error event (streams) or a cut body;
- aggregation: ``/v1/models``, ``/v1/adapters`` and ``/v1/stats`` combine every
  replica (``DeploymentHandle.broadcast`` asks them all at once); a stats reset
  and an adapter unload reach every replica.

Authentication and body checks stay in the replicas' own server app: the
ingress forwards the client's headers, so the answers (401, 413, 400...) are
exactly a single server's.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures after
# serve.ingress has rewritten the methods, where string annotations no longer resolve.

import json
import logging

from collections.abc import AsyncIterator
from typing import Any

import ray

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve

from ..server import ServerSettings
from ..server.errors import error_response
from .asgi import ResponseStart
from .model_ids import model_id_for, routing_text
from .replica import REPLICA_HEADER
from .spec import ScaleOutOptions


logger = logging.getLogger("adaptrix.scaleout")

GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")
BROADCAST_TIMEOUT_S = 30.0
"""How long a fan-out to every replica waits; replicas that do not answer in time are left out."""
_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "date", "server"}

api = FastAPI(title="Adaptrix (scale-out)", docs_url=None, redoc_url=None, openapi_url=None)


class ReplicaUnavailable(Exception):
    """Every try reached a replica that died (or none was up) before answering."""


# Helpers come before the class: serve.ingress pickles the app (and what its routes use) when it decorates.

async def _relay(rest: Any, start: ResponseStart) -> AsyncIterator[bytes]:
    """The body chunks; a replica that dies mid-stream ends an event stream with an error event."""
    finished = False
    try:
        async for chunk in rest:
            yield chunk
        finished = True
    except (ray.exceptions.RayError, serve.exceptions.RayServeException) as e:
        replica = start.header(REPLICA_HEADER)
        logger.warning("replica %s died mid-response: %s", replica, type(e).__name__)
        if (start.header("content-type") or "").startswith("text/event-stream"):
            error = {"message": f"the engine replica serving this stream failed ({type(e).__name__}); retry.",
                     "type": "server_error", "param": None, "code": "replica_unavailable"}
            yield f"data: {json.dumps({'error': error})}\n\n".encode()
    finally:
        cancel = getattr(rest, "cancel", None)
        if not finished and cancel is not None:
            cancel()  # the client went away or we are done: stop the replica's generation


def _too_large(limit: int) -> Response:
    return error_response(413, f"request body is larger than this server's limit of {limit} bytes.",
                          code="request_too_large")


def _first_error(results: list[dict[str, Any]]) -> Response | None:
    for res in results:
        if res["status"] != 200:
            return JSONResponse(res["body"], status_code=res["status"])
    return None


def _totals(replicas: dict[str, Any]) -> dict[str, Any]:
    """Counters summed over replicas; the affinity hit rate over every request that named adapters."""
    total = {"replicas": len(replicas), "requests": 0, "errors": 0, "cache_hits": 0, "cache_misses": 0,
             "evictions": 0, "affinity_hits": 0, "affinity_misses": 0, "resident_adapters": 0}
    for stats in replicas.values():
        server = stats.get("server") or {}
        cache = stats.get("cache") or {}
        affinity = (stats.get("replica") or {}).get("affinity") or {}
        total["requests"] += server.get("requests", 0)
        total["errors"] += server.get("errors", 0)
        total["cache_hits"] += cache.get("hits", 0)
        total["cache_misses"] += cache.get("misses", 0)
        total["evictions"] += cache.get("evictions", 0)
        total["resident_adapters"] += len(stats.get("resident") or [])
        total["affinity_hits"] += affinity.get("hits", 0)
        total["affinity_misses"] += affinity.get("misses", 0)
    named = total["affinity_hits"] + total["affinity_misses"]
    total["affinity_hit_rate"] = total["affinity_hits"] / named if named else None
    return total


def _describe(options: ScaleOutOptions) -> dict[str, Any]:
    return {"autoscaling": options.autoscaling, **options.deployment_options()}


@serve.ingress(api)
class Ingress:
    """The ingress deployment's class (decorated with ``serve.deployment`` in :mod:`.deployments`)."""

    def __init__(self, engine: Any, settings: ServerSettings, options: ScaleOutOptions) -> None:
        self.engine = engine
        self.settings = settings
        self.options = options
        self._base_name: str | None = None

    # forwarding ----------------------------------------------------------------

    async def _body(self, request: Request) -> bytes | Response:
        length = request.headers.get("content-length")
        limit = self.settings.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return _too_large(limit)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return _too_large(limit)
        return body

    async def _model_id(self, path: str, body: bytes) -> str:
        """The request's multiplexed id (``""`` when it has none or is not JSON: the replica answers that)."""
        try:
            data = json.loads(body)
        except ValueError:
            return ""
        if not isinstance(data, dict) or not isinstance(data.get("model"), str):
            return ""
        model_id = model_id_for(data["model"], base_model_name=await self._base_model_name())
        if model_id is None:  # "auto": ask a replica's router which adapters answer
            model_id = await self.engine.route.remote(routing_text(path, data))
        return model_id

    async def _base_model_name(self) -> str | None:
        if self._base_name is None:
            _, _, self._base_name = await self.engine.resident.remote()
        return self._base_name

    async def forward(self, request: Request, model_id: str = "") -> Response:
        """Send *request* to a replica (preferring holders of *model_id*) and stream its answer back."""
        body = await self._body(request)
        if isinstance(body, Response):
            return body
        path = request.url.path
        if request.method == "POST" and path in GENERATION_PATHS:
            model_id = await self._model_id(path, body)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        try:
            start, rest = await self._dispatch(model_id, request.method, path, request.url.query, headers, body)
        except ReplicaUnavailable as e:
            return error_response(503, str(e), type="server_error", code="replica_unavailable")
        return StreamingResponse(
            _relay(rest, start), status_code=start.status,
            headers={k: v for k, v in start.headers if k.lower() not in _HOP_HEADERS},
        )

    async def _dispatch(
        self, model_id: str, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[ResponseStart, Any]:
        handle = self.engine.options(stream=True, multiplexed_model_id=model_id) if model_id else self.engine.options(stream=True)
        last: BaseException | None = None
        for _ in range(self.options.retries + 1):
            stream = handle.forward.remote(method, path, query, headers, body, model_id)
            try:
                start = await stream.__anext__()
            except StopAsyncIteration:
                last = RuntimeError("the replica ended the response before its status line")
                continue
            except ray.exceptions.RayTaskError:
                raise  # a bug in the replica, not a dead one: the 500 handler answers it
            except (ray.exceptions.RayError, serve.exceptions.RayServeException) as e:
                last = e
                logger.warning("replica failed before answering %s %s (%s); retrying", method, path, type(e).__name__)
                continue
            return start, stream
        raise ReplicaUnavailable(
            f"no engine replica could answer (tried {self.options.retries + 1} time(s); last: {type(last).__name__}: "
            f"{last}). The deployment restarts failed replicas; retry shortly."
        )

    # aggregated routes -----------------------------------------------------------

    async def _json_from_replica(self, request: Request) -> tuple[ResponseStart, Any] | Response:
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        try:
            start, rest = await self._dispatch("", request.method, request.url.path, request.url.query, headers, b"")
        except ReplicaUnavailable as e:
            return error_response(503, str(e), type="server_error", code="replica_unavailable")
        chunks = [chunk async for chunk in rest]
        raw = b"".join(chunks)
        if start.status != 200:
            return Response(raw, status_code=start.status, media_type=start.header("content-type"))
        return start, json.loads(raw)

    async def _residency(self) -> dict[str, list[str]]:
        """Replica id -> its resident adapters, asked of every replica now."""
        answers = await self.engine.broadcast("resident").results_async(timeout_s=BROADCAST_TIMEOUT_S, return_exceptions=True)
        return {replica: resident for replica, resident, _ in sorted(a for a in answers if not isinstance(a, BaseException))}

    async def _holders(self) -> dict[str, list[str]]:
        """Adapter name -> the replicas where it is resident."""
        holders: dict[str, list[str]] = {}
        for replica, resident in (await self._residency()).items():
            for name in resident:
                holders.setdefault(name, []).append(replica)
        return holders

    async def _mark_residency(self, entries: list[dict[str, Any]], key: str) -> None:
        """Set each entry's ``resident`` (on any replica) and ``replicas`` (which ones), its name being ``entry[key]``."""
        holders = await self._holders()
        for entry in entries:
            entry["resident"] = entry[key] in holders
            entry["replicas"] = holders.get(entry[key], [])

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> Any:
        got = await self._json_from_replica(request)
        if isinstance(got, Response):
            return got
        _, data = got
        await self._mark_residency([entry for entry in data.get("data", []) if "resident" in entry], "id")
        return data

    @api.get("/v1/models/{model_id}")
    async def get_model(self, model_id: str, request: Request) -> Any:
        got = await self._json_from_replica(request)
        if isinstance(got, Response):
            return got
        _, entry = got
        if "resident" in entry:
            await self._mark_residency([entry], "id")
        return entry

    @api.get("/v1/adapters")
    async def list_adapters(self, request: Request) -> Any:
        got = await self._json_from_replica(request)
        if isinstance(got, Response):
            return got
        _, data = got
        await self._mark_residency(data.get("data", []), "name")
        for entry in data.get("data", []):
            entry.pop("cache", None)  # one replica's view; per-replica caches are in /v1/stats
        return data

    async def _broadcast(self, request: Request) -> list[dict[str, Any]] | Response:
        """Run the client's *request* on every replica's app; one ``{"replica", "status", "body"}`` per replica."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS]
        answers = await self.engine.broadcast("call", request.method, request.url.path, headers).results_async(
            timeout_s=BROADCAST_TIMEOUT_S, return_exceptions=True
        )
        results = sorted((a for a in answers if not isinstance(a, BaseException)), key=lambda a: a["replica"])
        if not results:
            return error_response(503, "no engine replica answered; retry shortly.", type="server_error",
                                  code="replica_unavailable")
        return results

    @api.get("/v1/stats")
    async def stats(self, request: Request) -> Any:
        results = await self._broadcast(request)
        if isinstance(results, Response):
            return results
        denied = _first_error(results)
        if denied is not None:
            return denied
        reports = await self.engine.broadcast("report").results_async(
            timeout_s=BROADCAST_TIMEOUT_S, return_exceptions=True
        )
        replicas = {r["replica"]["id"]: r for r in reports if isinstance(r, dict)}
        return {"replicas": dict(sorted(replicas.items())), "totals": _totals(replicas),
                "scale_out": _describe(self.options)}

    @api.post("/v1/stats/reset")
    async def reset_stats(self, request: Request) -> Any:
        results = await self._broadcast(request)
        if isinstance(results, Response):
            return results
        return _first_error(results) or {"reset": True, "replicas": [r["replica"] for r in results]}

    @api.delete("/v1/adapters/{name}")
    async def unload_adapter(self, name: str, request: Request) -> Any:
        results = await self._broadcast(request)
        if isinstance(results, Response):
            return results
        unloaded = [r["replica"] for r in results if r["status"] == 200]
        if unloaded:
            return {"name": name, "resident": False, "replicas": unloaded}
        for status in (401, 409, 404):  # the most telling refusal wins
            for res in results:
                if res["status"] == status:
                    return JSONResponse(res["body"], status_code=status)
        return _first_error(results)

    @api.get("/health")
    async def health(self, request: Request) -> Any:
        got = await self._json_from_replica(request)
        if isinstance(got, Response):
            return got
        _, data = got
        data["replicas"] = len(await self._residency())
        return data

    @api.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def catch_all(self, path: str, request: Request) -> Response:
        """Generation (with affinity), adapter loads (on the replica that holds the id) and any other route."""
        model_id = ""
        if request.method == "POST" and request.url.path.startswith("/v1/adapters/") and request.url.path.endswith("/load"):
            model_id = request.url.path.removeprefix("/v1/adapters/").removesuffix("/load")
        return await self.forward(request, model_id)


__all__ = ["GENERATION_PATHS", "Ingress", "ReplicaUnavailable", "api"]
