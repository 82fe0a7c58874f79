"""
``adaptrix serve``: the OpenAI-compatible HTTP server, on one process or on Ray Serve replicas.

Its own module because its options (limits, keys, batching, threads, replicas,
autoscaling) are a surface of their own; the engine is opened exactly as the
everyday commands open it (:func:`.engine_commands.open_engine`).
"""

from __future__ import annotations

from typing import Annotated

import typer

from ..hookspecs import hookimpl
from ..prefixcache import DEFAULT_PREFIX_CACHE_TOKENS
from ..scheduler import DEFAULT_MAX_BATCH, DEFAULT_PREFILL_CHUNK_MS
from .engine_commands import open_engine, warn


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command()
    def serve(
        ctx: typer.Context,
        host: Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")] = 8000,
        api_key: Annotated[
            str | None,
            typer.Option("--api-key", envvar="ADAPTRIX_API_KEY", help="Require 'Authorization: Bearer KEY' on every request."),
        ] = None,
        admin_key: Annotated[
            str | None,
            typer.Option(
                "--admin-key", envvar="ADAPTRIX_ADMIN_KEY",
                help="Key of the admin endpoints (load, unload, pin, reset stats); without it they are off when --api-key is set.",
            ),
        ] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (hub id or path).")] = None,
        max_tokens_limit: Annotated[int, typer.Option("--max-tokens-limit", min=1, help="Largest max_tokens a request may ask for.")] = 1024,
        max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1, help="Largest request body (413 beyond).")] = 1 << 20,
        cache_max_bytes: Annotated[
            int | None, typer.Option("--cache-max-bytes", min=0, help="Byte budget of resident adapters (0 = no limit; default: config).")
        ] = None,
        cache_max_adapters: Annotated[
            int | None, typer.Option("--cache-max-adapters", min=0, help="Most resident adapters (0 = no limit; default: config).")
        ] = None,
        preload: Annotated[list[str] | None, typer.Option("--preload", help="Load this adapter at start; repeatable.")] = None,
        pin: Annotated[list[str] | None, typer.Option("--pin", help="Load and never evict this adapter; repeatable.")] = None,
        max_batch: Annotated[
            int, typer.Option("--max-batch", min=1, help="Most requests decoded together (rows join and leave at every step).")
        ] = DEFAULT_MAX_BATCH,
        batch_window_ms: Annotated[
            float, typer.Option("--batch-window-ms", min=0.0, help="How long a lone request waits for others to batch with.")
        ] = 5.0,
        exact: Annotated[
            bool, typer.Option("--exact", help="Batch only equal-length prompts, no joining: output identical to a lone run.")
        ] = False,
        prefix_cache_tokens: Annotated[
            int, typer.Option("--prefix-cache-tokens", min=0, help="Prompt tokens whose keys and values are kept, so prompts that start the same (a system prompt) skip them (0 = off).")
        ] = DEFAULT_PREFIX_CACHE_TOKENS,
        prefill_chunk_ms: Annotated[
            float, typer.Option("--prefill-chunk-ms", min=0.0, help="A prefill predicted to hold running streams up for longer runs in chunks of about this long, between their steps (0 = whole prefills).")
        ] = DEFAULT_PREFILL_CHUNK_MS,
        threads: Annotated[
            int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: every core up to 8, waiting threads asleep after a brief spin; see docs/server.md).")
        ] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
        replicas: Annotated[
            int | None, typer.Option("--replicas", min=1, help="Serve with N engine replicas on Ray Serve (needs the ray extra, see docs/scale-out.md).")
        ] = None,
        ray_address: Annotated[
            str | None, typer.Option("--ray-address", help="Join this Ray cluster ('auto', 'HOST:6379'); default: start one here.")
        ] = None,
        min_replicas: Annotated[int | None, typer.Option("--min-replicas", min=0, help="Autoscaling: fewest replicas.")] = None,
        max_replicas: Annotated[int | None, typer.Option("--max-replicas", min=1, help="Autoscaling: most replicas.")] = None,
        target_ongoing_requests: Annotated[
            float | None, typer.Option("--target-ongoing-requests", min=0.1, help="Autoscaling: in-flight requests per replica to aim for.")
        ] = None,
        max_ongoing_requests: Annotated[
            int, typer.Option("--max-ongoing-requests", min=1, help="With replicas: most requests one replica takes at once.")
        ] = 32,
        replica_cpus: Annotated[float, typer.Option("--replica-cpus", min=0.0, help="With replicas: Ray CPUs reserved per replica.")] = 1.0,
    ) -> None:
        """Serve an OpenAI-compatible API: the request's `model` picks the adapter (`a`, `a:0.7+b:0.3`, `base`, `auto`)."""
        from ..server import ServerSettings
        from ..server import serve as run_server

        settings = ServerSettings(
            api_key=api_key or None, admin_key=admin_key or None, max_tokens_limit=max_tokens_limit,
            max_body_bytes=max_body_bytes, max_batch=max_batch, batch_window_ms=batch_window_ms, exact=exact,
            prefix_cache_tokens=prefix_cache_tokens, prefill_chunk_ms=prefill_chunk_ms,
        )
        if replicas is not None or ray_address is not None or min_replicas is not None or max_replicas is not None:
            from ..scaleout.cli import serve_replicated

            serve_replicated(
                settings, model=model, host=host, port=port, ray_address=ray_address, replicas=replicas,
                min_replicas=min_replicas, max_replicas=max_replicas, target_ongoing_requests=target_ongoing_requests,
                max_ongoing_requests=max_ongoing_requests, replica_cpus=replica_cpus, threads=threads,
                cache_max_bytes=cache_max_bytes, cache_max_adapters=cache_max_adapters, preload=preload or [],
                pin=pin or [], warn=warn,
            )
            return
        with open_engine(
            ctx, model, threads=threads, cache_max_bytes=cache_max_bytes, cache_max_adapters=cache_max_adapters
        ) as engine:
            for name in pin or []:
                engine.load_adapter(name, activate=False, pin=True)
            for name in preload or []:
                engine.load_adapter(name, activate=False)
            if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
                warn(f"serving on {host} without an API key: anyone who can reach this port can use it.")

            def ready(url: str) -> None:
                auth = "API key required" if settings.api_key else "no API key"
                auth += {"key": ", admin key set", "off": ", admin endpoints off (no --admin-key)",
                         "open": ""}[settings.admin_state()]
                import torch

                n = torch.get_num_threads()
                typer.echo(f"Adaptrix serving {engine.model_name} on {url}/v1 ({auth}; {n} CPU thread"
                           f"{'s' if n > 1 else ''}); Ctrl-C to stop.", err=True)

            run_server(engine, host=host, port=port, settings=settings, log_level=log_level, on_ready=ready)
