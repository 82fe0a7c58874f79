"""
The Ray Serve application: an ingress in front of the engine replicas, and how to run it.

``build_app`` returns a Serve application; ``run_replicated`` is what
``adaptrix serve --replicas N`` calls: connect to (or start) Ray, deploy,
serve HTTP until interrupted, then delete the application cleanly.
"""

from __future__ import annotations

import signal
import threading

from collections.abc import Callable
from typing import Any

import ray

from ray import serve

from ..server import ServerSettings
from .ingress import Ingress
from .replica import EngineReplica
from .spec import EngineSpec, ScaleOutOptions


INGRESS_MAX_ONGOING = 4096
"""The ingress only relays bytes; queueing happens at the engine replicas' routers."""

_QUIET = {"enable_access_log": False}
"""Serve's per-call access log (one line per request and per broadcast); errors are still logged."""

EngineDeployment = serve.deployment(name="AdaptrixEngine", health_check_period_s=5, logging_config=_QUIET)(EngineReplica)
IngressDeployment = serve.deployment(
    name="AdaptrixIngress", num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=INGRESS_MAX_ONGOING,
    logging_config=_QUIET,
)(Ingress)


def build_app(spec: EngineSpec, settings: ServerSettings, options: ScaleOutOptions) -> Any:
    """The Serve application: ``serve.run(build_app(...))`` deploys it."""
    engine = EngineDeployment.options(**options.deployment_options()).bind(spec, settings, options)
    return IngressDeployment.bind(engine, settings, options)


def deploy(
    spec: EngineSpec,
    settings: ServerSettings,
    options: ScaleOutOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
) -> str:
    """Deploy on the connected Ray cluster (``ray.init`` first) and return the base URL once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(spec, settings, options), name=options.app_name, route_prefix="/", blocking=False)
    return f"http://{host}:{port}"


def run_replicated(
    spec: EngineSpec,
    settings: ServerSettings,
    options: ScaleOutOptions,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """
    Serve until Ctrl-C or SIGTERM, then delete the application (and stop Ray if this call started it).

    *address*: ``None`` starts a Ray instance on this machine (stopped at the end); ``"auto"``,
    ``"host:6379"`` or ``"ray://host:10001"`` joins an existing cluster (left running).
    """
    local = None
    if address is None:
        from .local import start_local_cluster

        local = start_local_cluster()
        address = local.address
    ray.init(address=address, namespace="adaptrix", configure_logging=False, log_to_driver=False)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        url = deploy(spec, settings, options, host=host, port=port)
        if on_ready is not None:
            on_ready(url)
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            shutdown(options.app_name, stop_serve=local is not None)
        finally:
            ray.shutdown()
            if local is not None:
                local.shutdown()


def shutdown(app_name: str = "adaptrix", *, stop_serve: bool = True) -> None:
    """Delete the application (replicas close their engines) and, if asked, Serve itself."""
    try:
        serve.delete(app_name)
    finally:
        if stop_serve:
            serve.shutdown()


__all__ = ["EngineDeployment", "IngressDeployment", "build_app", "deploy", "run_replicated", "shutdown"]
