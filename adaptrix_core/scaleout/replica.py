"""
One engine replica: an attached model with its adapter cache, serving the unchanged server app in-process.

The replica builds its engine from an :class:`~.spec.EngineSpec`, wraps it in
the single-process server app (``create_app``: scheduler, leases, errors) and
answers the requests the ingress forwards through :func:`.asgi.call_asgi`.

Adapters and Ray's multiplexing:

- A request's multiplexed id names its adapter set (:mod:`.model_ids`). Before
  the request runs, the replica passes the id to a ``@serve.multiplexed``
  loader, which makes the adapters resident and so tells Ray's router that this
  replica holds them; later requests for the same set come here.
- Base requests carry ``""``; the loader is never called with it.
- Ray keeps its own per-replica LRU of ids and may drop one while a request
  still uses its adapters. That list is only a routing hint: what stays in
  memory is decided by Adaptrix's cache (its leases and byte budget), and a
  request holds its lease from admission to the end, whatever Ray's LRU does.
- Local testing mode drops the id; the ingress also passes it as an argument,
  and a replica that gets neither simply loads on demand as a single server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ray import serve

from .asgi import ResponseStart, call_asgi, collect
from .model_ids import id_of, names_of


if TYPE_CHECKING:
    from ..server import ServerSettings
    from .spec import EngineSpec, ScaleOutOptions


logger = logging.getLogger("adaptrix.scaleout")

REPLICA_HEADER = "x-adaptrix-replica"
AFFINITY_HEADER = "x-adaptrix-affinity"
"""``hit``: every adapter of the request was resident when it arrived; ``miss``: one was loaded; ``none``: base."""


class AdapterSet:
    """What Ray's multiplexer caches per id: just the names (the weights live in Adaptrix's cache)."""

    def __init__(self, names: list[str]) -> None:
        self.names = names


class EngineReplica:
    """The engine deployment's class (decorated in :mod:`.deployments`)."""

    async def __init__(self, spec: EngineSpec, settings: ServerSettings, options: ScaleOutOptions) -> None:
        from ..server import create_app

        loop = asyncio.get_running_loop()
        self.engine = await loop.run_in_executor(None, spec.build)
        self.settings = settings
        self.app = create_app(self.engine, settings)
        self.options = options
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # local testing mode
            self.replica_id = f"local-{os.getpid()}"
        self.affinity = {"hits": 0, "misses": 0}
        self._lifespan = contextlib.AsyncExitStack()
        await self._lifespan.enter_async_context(self.app.router.lifespan_context(self.app))  # starts the scheduler

        async def load_set(model_id: str) -> AdapterSet:  # a plain function: Ray keeps its LRU on the callable
            return await self._load_adapters(model_id)

        self._load_set = serve.multiplexed(max_num_models_per_replica=options.max_sets_per_replica)(load_set)

    # requests ----------------------------------------------------------------

    async def forward(
        self, method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, model_id: str = ""
    ) -> AsyncIterator[ResponseStart | bytes]:
        """Serve one forwarded HTTP request; yields its :class:`ResponseStart`, then body chunks."""
        model_id = serve.get_multiplexed_model_id() or model_id
        affinity = await self._warm(model_id)
        extra = ((REPLICA_HEADER, self.replica_id), (AFFINITY_HEADER, affinity))
        async for item in call_asgi(self.app, method, path, query=query, headers=headers, body=body):
            yield ResponseStart(item.status, item.headers + extra) if isinstance(item, ResponseStart) else item

    async def route(self, text: str) -> str:
        """The router's choice for *text*, as a multiplexed id (``""``: the base model, or a routing failure)."""
        loop = asyncio.get_running_loop()
        try:
            routing = await loop.run_in_executor(None, self.engine.route, text)
        except Exception as e:  # the replica that serves the request reports it with the server's message
            logger.warning("routing failed on %s: %s", self.replica_id, e)
            return ""
        return id_of(routing.adapters)

    async def _warm(self, model_id: str) -> str:
        if not model_id:
            return "none"
        names = names_of(model_id)
        hit = all(name in self.engine.cache for name in names)
        self.affinity["hits" if hit else "misses"] += 1
        try:
            await self._load_set(model_id)
        except Exception as e:  # unknown adapter, bad file, no replica context: the app loads or answers the error
            logger.info("adapter set %r not loaded on %s: %s", model_id, self.replica_id, e)
        return "hit" if hit else "miss"

    async def _load_adapters(self, model_id: str) -> AdapterSet:
        """The ``@serve.multiplexed`` loader: make every adapter of the set resident (no lease: requests take theirs)."""
        loop = asyncio.get_running_loop()
        names = names_of(model_id)
        for name in names:
            await loop.run_in_executor(None, self.engine.cache.load, name)
        return AdapterSet(names)

    # answers to the ingress's broadcasts (every replica at once) ------------------

    async def _local(self, method: str, path: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, Any]:
        """Call this replica's own app (with the server's API key when no headers are given)."""
        if headers is None:
            headers = [("authorization", f"Bearer {self.settings.api_key}")] if self.settings.api_key else []
        start, body = await collect(call_asgi(self.app, method, path, headers=headers))
        try:
            return start.status, json.loads(body)
        except ValueError:
            return start.status, body.decode("utf-8", "replace")

    async def report(self) -> dict[str, Any]:
        """This replica's ``/v1/stats`` plus who it is and how often requests found their adapters here."""
        status, stats = await self._local("GET", "/v1/stats")
        stats = stats if status == 200 and isinstance(stats, dict) else {"error": stats}
        stats["replica"] = {
            "id": self.replica_id, "pid": os.getpid(), "node": _node_id(), "affinity": dict(self.affinity),
        }
        return stats

    async def resident(self) -> tuple[str, list[str], str]:
        """``(replica id, resident adapters, base model name)``: cheap, for ``/v1/models``."""
        return self.replica_id, self.engine.cache.resident(), self.engine.model_name

    async def call(self, method: str, path: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
        """Run one client request (stats reset, unload) on this replica's app, with the client's own credentials."""
        status, body = await self._local(method, path, headers)
        if status == 200 and method == "POST" and path == "/v1/stats/reset":
            self.affinity = {"hits": 0, "misses": 0}
        return {"replica": self.replica_id, "status": status, "body": body}

    # lifecycle ----------------------------------------------------------------

    async def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("the replica's engine is closed")

    async def __del__(self) -> None:
        """Clean shutdown (scale-down, ``serve.delete``): stop the scheduler (queued rows fail cleanly), free the model."""
        with contextlib.suppress(Exception):
            await self._lifespan.aclose()
        if self.engine is not None:
            self.engine.close()
            self.engine = None


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:
        return None


__all__ = ["AFFINITY_HEADER", "REPLICA_HEADER", "AdapterSet", "EngineReplica"]
