"""
Core CLI commands for everyday use: the session (``load``, ``unload``, ``active``, ``switch``),
``status``, ``query``, ``chat`` and ``serve``.

The session's active set lives in a state file (:mod:`adaptrix_core.state`), so
``adaptrix load pirate`` in one shell changes what ``adaptrix query`` uses in
the next. Session commands only touch that file and the library (instant);
``query``, ``chat``, ``status`` and ``serve`` load the base model, with a rich
progress display on stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..hookspecs import hookimpl
from ..scheduler import DEFAULT_MAX_BATCH
from ..threads import configure_threads


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine
    from ..state import StateStore


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _warn(message: str) -> None:
    typer.secho(f"Warning: {message}", fg=typer.colors.YELLOW, err=True)


def _store() -> StateStore:
    from ..state import StateStore

    return StateStore(on_corrupt=_warn)


def _describe(active: dict[str, float]) -> str:
    from ..selection import format_selection

    return "base model (no adapters)" if not active else format_selection(active)


def _check_in_library(name: str) -> None:
    from ..library import Library

    Library().get(name)  # AdapterNotFoundError lists the known names


@contextlib.contextmanager
def _engine(ctx: typer.Context, model: str | None, *, threads: int | None = None, **options: Any) -> Iterator[AdaptrixEngine]:
    """Open the engine (torch threads set by the one policy) with a progress display on stderr (quiet when not a terminal)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from transformers.utils import logging as hf_logging

    from ..cli import get_pm
    from ..engine import AdaptrixEngine

    hf_logging.disable_progress_bar()  # our own progress display replaces the per-file bars
    configure_threads(threads)
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("starting", total=None)
        engine = AdaptrixEngine(
            model, pm=get_pm(ctx), progress=lambda step: bar.update(task, description=step), **options
        )
    with engine:
        yield engine


def _selection(adapter: list[str] | None, no_adapter: bool, route: bool) -> Any:
    """The ``adapters=`` value for --adapter / --no-adapter / --route, or the session's active set."""
    from ..engine import AUTO
    from ..exceptions import SelectionError
    from ..selection import parse_selection

    if sum([bool(adapter), no_adapter, route]) > 1:
        raise SelectionError("use only one of --adapter, --no-adapter and --route.")
    if no_adapter:
        return None
    if route:
        return AUTO
    if adapter:
        weights: dict[str, float] = {}
        for value in adapter:
            for name, weight in parse_selection(value).items():
                if name in weights:
                    raise SelectionError(f"--adapter names {name!r} twice; give it once (NAME or NAME:WEIGHT).")
                weights[name] = weight
        return weights
    return dict(_store().read().active)


def _stream_to_terminal(stream: Any) -> None:
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command()
    def load(
        name: Annotated[str, typer.Argument(help="Adapter name in the library (see `adaptrix list-adapters`).")],
        weight: Annotated[float, typer.Option("--weight", "-w", help="Its weight when several are active.")] = 1.0,
    ) -> None:
        """Add an adapter to the session's active set (used by `query` and `chat` until unloaded)."""
        from ..runtime import check_adapter_name

        check_adapter_name(name)
        _check_in_library(name)
        state = _store().update(lambda active: {**active, name: weight})
        typer.echo(f"Active: {_describe(dict(state.active))}")

    @app.command()
    def unload(
        name: Annotated[str, typer.Argument(help="An active adapter.")],
    ) -> None:
        """Remove an adapter from the session's active set."""
        from ..exceptions import AdapterNotFoundError

        def change(active: dict[str, float]) -> dict[str, float]:
            if name not in active:
                raise AdapterNotFoundError(f"adapter {name!r} is not active (active: {_describe(active)}).")
            return {k: v for k, v in active.items() if k != name}

        state = _store().update(change)
        typer.echo(f"Active: {_describe(dict(state.active))}")

    @app.command()
    def switch(
        old: Annotated[str, typer.Argument(help="An active adapter.")],
        new: Annotated[str, typer.Argument(help="The library adapter to use in its place (same weight).")],
    ) -> None:
        """Replace one active adapter with another, keeping its weight."""
        from ..exceptions import AdapterNotFoundError
        from ..runtime import check_adapter_name

        check_adapter_name(new)
        _check_in_library(new)

        def change(active: dict[str, float]) -> dict[str, float]:
            if old not in active:
                raise AdapterNotFoundError(f"adapter {old!r} is not active (active: {_describe(active)}).")
            return {(new if k == old else k): v for k, v in active.items()}

        state = _store().update(change)
        typer.echo(f"Active: {_describe(dict(state.active))}")

    @app.command()
    def active(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    ) -> None:
        """Show the session's active adapters and their weights."""
        state = _store().read()
        if as_json:
            _print_json({"active": dict(state.active), "updated": state.updated, "state_file": str(_store().path)})
            return
        typer.echo(_describe(dict(state.active)))

    @app.command()
    def status(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
        server: Annotated[
            str | None, typer.Option("--server", help="Read a running `adaptrix serve` instead, e.g. http://127.0.0.1:8000.")
        ] = None,
        api_key: Annotated[
            str | None, typer.Option("--api-key", envvar="ADAPTRIX_API_KEY", help="API key of that server.")
        ] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (hub id or path).")] = None,
    ) -> None:
        """Show the base model, active adapters, resident memory and loader stats (hits, misses, latency, RSS)."""
        if server is not None:
            data = _fetch_stats(server, api_key)
        else:
            selection = dict(_store().read().active)
            with _engine(ctx, model) as engine:
                engine.set_active(selection)
                data = engine.status()
        if as_json:
            _print_json(data)
            return
        _render_status(data)

    @app.command()
    def query(
        ctx: typer.Context,
        text: Annotated[str, typer.Argument(help="The prompt.")],
        adapter: Annotated[
            list[str] | None,
            typer.Option("--adapter", "-a", help="NAME or NAME:WEIGHT; repeat to compose (default: the session's active set)."),
        ] = None,
        no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Answer with the base model only.")] = False,
        route: Annotated[bool, typer.Option("--route", help="Let the configured router pick the adapter(s).")] = False,
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (hub id or path).")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Most tokens to generate.")] = 128,
        temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="0 = greedy.")] = 0.0,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed for sampling.")] = None,
        system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
        raw: Annotated[bool, typer.Option("--raw", help="Send TEXT as is, without the chat template.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object at the end instead of streaming.")] = False,
    ) -> None:
        """Answer TEXT, streaming tokens to the terminal."""
        from ..selection import format_selection

        adapters = _selection(adapter, no_adapter, route)
        with _engine(ctx, model) as engine:
            stream = engine.query(
                text, adapters, max_new_tokens=max_new_tokens, stream=True, temperature=temperature, seed=seed,
                system=system, chat_template=False if raw else None,
            )
            chosen, routing = _chosen(engine, adapters, stream)
            if as_json:
                answer = stream.text()
                _print_json({
                    "text": answer, "adapters": chosen, "finish_reason": stream.finish_reason,
                    "completion_tokens": stream.completion_tokens, "routing": routing,
                })
                return
            if routing is not None:
                typer.secho(f"[route] {format_selection(chosen)}: {routing}", err=True, dim=True)
            _stream_to_terminal(stream)

    @app.command()
    def chat(
        ctx: typer.Context,
        adapter: Annotated[
            list[str] | None,
            typer.Option("--adapter", "-a", help="NAME or NAME:WEIGHT; repeat to compose (default: the session's active set)."),
        ] = None,
        no_adapter: Annotated[bool, typer.Option("--no-adapter", help="Start with the base model only.")] = False,
        route: Annotated[bool, typer.Option("--route", help="Let the router pick the adapter(s) for every message.")] = False,
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (hub id or path).")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, help="Most tokens per answer.")] = 256,
        temperature: Annotated[float, typer.Option("--temperature", "-t", min=0.0, help="0 = greedy.")] = 0.0,
        system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
    ) -> None:
        """
        Talk with the model interactively.

        Type `/adapter NAME` (or `a:0.7+b:0.3`, `base`, `auto`) to switch adapters mid-conversation,
        `/reset` to forget the conversation, `/quit` to leave.
        """
        from ..exceptions import AdaptrixError
        from ..selection import format_selection

        adapters = _selection(adapter, no_adapter, route)
        with _engine(ctx, model) as engine:
            messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
            typer.secho(
                f"Chatting with {engine.model_name} using {_label(adapters)}. /adapter NAME to switch, /quit to leave.",
                err=True, dim=True,
            )
            while True:
                try:
                    line = input("> ")
                except (EOFError, KeyboardInterrupt):
                    typer.echo("", err=True)
                    return
                line = line.strip()
                if not line:
                    continue
                if line in ("/quit", "/exit", "/q"):
                    return
                if line == "/reset":
                    messages = messages[:1] if system else []
                    typer.secho("(conversation cleared)", err=True, dim=True)
                    continue
                if line.startswith("/adapter"):
                    value = line.removeprefix("/adapter").strip()
                    try:
                        adapters = _parse_chat_adapter(engine, value)
                    except AdaptrixError as e:
                        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
                        continue
                    typer.secho(f"(now using {_label(adapters)})", err=True, dim=True)
                    continue
                if line.startswith("/"):
                    typer.secho("commands: /adapter NAME|a:0.7+b:0.3|base|auto, /reset, /quit", err=True, dim=True)
                    continue
                messages.append({"role": "user", "content": line})
                try:
                    stream = engine.chat(messages, adapters, max_new_tokens=max_new_tokens, stream=True,
                                         temperature=temperature)
                    chosen, routing = _chosen(engine, adapters, stream)
                    if routing is not None:
                        typer.secho(f"[route] {format_selection(chosen)}: {routing}", err=True, dim=True)
                    answer = []
                    for piece in stream:
                        answer.append(piece)
                        sys.stdout.write(piece)
                        sys.stdout.flush()
                    sys.stdout.write("\n")
                except AdaptrixError as e:
                    messages.pop()
                    typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
                    continue
                messages.append({"role": "assistant", "content": "".join(answer)})

    @app.command()
    def serve(
        ctx: typer.Context,
        host: Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes it to the network.")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="TCP port.")] = 8000,
        api_key: Annotated[
            str | None,
            typer.Option("--api-key", envvar="ADAPTRIX_API_KEY", help="Require 'Authorization: Bearer KEY' on every request."),
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
        threads: Annotated[
            int | None, typer.Option("--threads", min=1, help="torch CPU threads (default: half the cores; see docs/server.md).")
        ] = None,
        log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "warning",
    ) -> None:
        """Serve an OpenAI-compatible API: the request's `model` picks the adapter (`a`, `a:0.7+b:0.3`, `base`, `auto`)."""
        from ..server import ServerSettings
        from ..server import serve as run_server

        settings = ServerSettings(
            api_key=api_key or None, max_tokens_limit=max_tokens_limit, max_body_bytes=max_body_bytes,
            max_batch=max_batch, batch_window_ms=batch_window_ms, exact=exact,
        )
        with _engine(
            ctx, model, threads=threads, cache_max_bytes=cache_max_bytes, cache_max_adapters=cache_max_adapters
        ) as engine:
            for name in pin or []:
                engine.load_adapter(name, activate=False, pin=True)
            for name in preload or []:
                engine.load_adapter(name, activate=False)
            if host not in ("127.0.0.1", "localhost", "::1") and not settings.api_key:
                _warn(f"serving on {host} without an API key: anyone who can reach this port can use it.")

            def ready(url: str) -> None:
                auth = "API key required" if settings.api_key else "no API key"
                typer.echo(f"Adaptrix serving {engine.model_name} on {url}/v1 ({auth}); Ctrl-C to stop.", err=True)

            run_server(engine, host=host, port=port, settings=settings, log_level=log_level, on_ready=ready)


def _label(adapters: Any) -> str:
    from ..engine import AUTO
    from ..selection import format_selection, normalize_selection

    if adapters == AUTO:
        return "the router (auto)"
    weights = normalize_selection(adapters)
    return "the base model" if not weights else format_selection(weights)


def _parse_chat_adapter(engine: AdaptrixEngine, value: str) -> Any:
    """``/adapter`` in chat: a selection string, ``auto``, or ``base``; adapters are loaded now to fail early."""
    from ..engine import AUTO
    from ..exceptions import SelectionError
    from ..selection import parse_selection

    if not value:
        raise SelectionError("/adapter needs a value: NAME, a:0.7+b:0.3, base or auto.")
    if value.lower() == AUTO:
        return AUTO
    weights = parse_selection(value)
    for name in weights:
        engine.load_adapter(name, activate=False)
    return weights


def _chosen(engine: AdaptrixEngine, adapters: Any, stream: Any) -> tuple[dict[str, float], str | None]:
    """The adapters that answered, and the router's reason when it chose them."""
    from ..selection import normalize_selection

    routing = getattr(stream, "routing", None)
    if routing is not None:
        return dict(routing.adapters), routing.reason
    return normalize_selection(adapters), None


def _fetch_stats(server: str, api_key: str | None) -> dict[str, Any]:
    import httpx

    from ..exceptions import AdaptrixError

    url = server.rstrip("/") + "/v1/stats"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as e:
        raise AdaptrixError(f"cannot reach {url} ({e}). Fix: start it with `adaptrix serve`, or check --server.") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:200]
        raise AdaptrixError(f"{url} answered {response.status_code}: {message}")
    data: dict[str, Any] = response.json()
    return data


def _fmt_bytes(n: Any) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def _fmt_ms(series: dict[str, Any]) -> str:
    if not series or not series.get("count"):
        return "-"
    return f"p50 {series['p50']:.2f} ms, p99 {series['p99']:.2f} ms (n={series['count']})"


def _render_status(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..selection import format_selection

    console = Console()
    cache = data.get("cache", {})
    memory = cache.get("memory", {})
    head = Table(box=None, show_header=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("base model", f"{data.get('base_model')} ({data.get('architecture')}, {data.get('model_class')})")
    head.add_row("device", f"{data.get('device')}, {data.get('dtype')}, {data.get('parameters'):,} parameters")
    head.add_row("active", format_selection(data.get("active") or {}))
    limit = f"{_fmt_bytes(cache.get('max_bytes'))}" if cache.get("max_bytes") else "no byte limit"
    if cache.get("max_adapters"):
        limit += f", at most {cache['max_adapters']} adapters"
    head.add_row("resident", f"{cache.get('resident_count', 0)} adapters, {_fmt_bytes(cache.get('resident_bytes'))} ({limit})")
    hit_rate = cache.get("hit_rate")
    head.add_row(
        "loader",
        f"{cache.get('hits', 0)} hits, {cache.get('misses', 0)} misses"
        + (f" ({hit_rate:.0%} hit rate)" if hit_rate is not None else "")
        + f", {cache.get('evictions', 0)} evictions",
    )
    head.add_row("load latency", _fmt_ms(cache.get("load_ms", {})))
    head.add_row("switch latency", _fmt_ms(cache.get("switch_ms", {})))
    head.add_row("process RSS", _fmt_bytes(memory.get("rss_bytes")))
    if memory.get("gpu_allocated_bytes") is not None:
        head.add_row("GPU memory", f"{_fmt_bytes(memory['gpu_allocated_bytes'])} allocated, "
                                   f"{_fmt_bytes(memory['gpu_reserved_bytes'])} reserved")
    server = data.get("server")
    if server:
        sched = server.get("scheduler", {})
        head.add_row("server", f"{server.get('requests')} requests, {server.get('errors')} errors, "
                               f"up {server.get('uptime_s'):.0f} s")
        mean = sched.get("mean_batch")
        head.add_row("batching", f"{sched.get('batches')} batches, mean {mean:.2f} rows" if mean else "no batches yet")
    console.print(head)
    adapters = cache.get("adapters") or {}
    if adapters:
        table = Table("adapter", "bytes", "pinned", "in use", "hits", "idle", box=None)
        for name, a in adapters.items():
            table.add_row(name, _fmt_bytes(a["bytes"]), "yes" if a["pinned"] else "", str(a["in_use"] or ""),
                          str(a["hits"]), f"{a['idle_s']:.1f} s")
        console.print(table)


__all__ = ["register_commands"]
