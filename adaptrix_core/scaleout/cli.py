"""``adaptrix serve --replicas N``: turn the command's options into a replicated deployment and run it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import typer

from . import EngineSpec, ScaleOutOptions, require_ray


if TYPE_CHECKING:
    from ..server import ServerSettings


def serve_replicated(
    settings: ServerSettings,
    *,
    model: str | None,
    host: str,
    port: int,
    ray_address: str | None,
    replicas: int | None,
    min_replicas: int | None,
    max_replicas: int | None,
    target_ongoing_requests: float | None,
    max_ongoing_requests: int,
    replica_cpus: float,
    threads: int | None,
    cache_max_bytes: int | None,
    cache_max_adapters: int | None,
    preload: Sequence[str],
    pin: Sequence[str],
    warn: Callable[[str], None],
) -> None:
    """
    Deploy the engine replicas and the ingress, print where they serve, block until Ctrl-C, then clean up.

    The library and base model are resolved here, on the driver, so every replica (on any machine)
    reads the same ones: the library path must be a directory every node sees (a shared mount).
    """
    from ..config import load_config
    from ..library import Library, default_shipped_dir

    require_ray()
    options = ScaleOutOptions(
        replicas=replicas or min_replicas or 1, min_replicas=min_replicas, max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests, max_ongoing_requests=max_ongoing_requests,
        replica_cpus=replica_cpus,
    )
    library = Library()
    shipped = default_shipped_dir()
    spec = EngineSpec(
        model=model or load_config().base_model, library_dir=str(library.root.resolve()),
        shipped_dir=str(shipped.resolve()) if shipped is not None else "", cache_max_bytes=cache_max_bytes,
        cache_max_adapters=cache_max_adapters, preload=tuple(preload), pin=tuple(pin), threads=threads,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
        warn(f"serving on {host} without an API key: anyone who can reach this port can use it.")
    from .deployments import run_replicated

    def ready(url: str) -> None:
        auth = "API key required" if settings.api_key else "no API key"
        scale = (f"{options.replicas} replicas (autoscaling {options.deployment_options()['autoscaling_config']['min_replicas']}"
                 f"-{options.deployment_options()['autoscaling_config']['max_replicas']})" if options.autoscaling
                 else f"{options.replicas} replica(s)")
        typer.echo(f"Adaptrix serving {spec.model} on {url}/v1 with {scale} ({auth}); Ctrl-C to stop.", err=True)

    typer.echo(f"starting {options.replicas} engine replica(s) on Ray ({ray_address or 'a local instance'})...", err=True)
    run_replicated(spec, settings, options, host=host, port=port, address=ray_address, on_ready=ready)


__all__ = ["serve_replicated"]
