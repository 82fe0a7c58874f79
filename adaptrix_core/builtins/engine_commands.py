"""
Core CLI commands for everyday use: the session (``load``, ``unload``, ``active``, ``switch``),
``status``, ``query`` and ``chat`` (``serve`` is in :mod:`.serve_commands`).

The session's active set lives in a state file (:mod:`adaptrix_core.state`), so
``adaptrix load pirate`` in one shell changes what ``adaptrix query`` uses in
the next; ``query`` and ``chat`` name the adapters they use (and how to clear
them) before every answer, so that state never surprises. Session commands and
``status`` only touch that file and the library (instant); ``query``, ``chat``
and ``serve`` load the base model, with a progress display on stderr.
"""

from __future__ import annotations

import contextlib
import json
import sys

from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..hookspecs import hookimpl
from ..threads import configure_threads


if TYPE_CHECKING:
    from ..engine import AdaptrixEngine
    from ..state import StateStore


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def warn(message: str) -> None:
    typer.secho(f"Warning: {message}", fg=typer.colors.YELLOW, err=True)


def _store() -> StateStore:
    from ..state import StateStore

    return StateStore(on_corrupt=warn)


def _describe(active: dict[str, float]) -> str:
    from ..selection import format_selection

    return "base model (no adapters)" if not active else format_selection(active)


def _check_in_library(name: str) -> None:
    from ..library import Library

    Library().get(name)  # AdapterNotFoundError lists the known names


@contextlib.contextmanager
def open_engine(ctx: typer.Context, model: str | None, *, threads: int | None = None, **options: Any) -> Iterator[AdaptrixEngine]:
    """Open the engine (torch threads set by the one policy) with a progress display on stderr (quiet when not a terminal)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..cli import get_pm

    configure_threads(threads)
    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task("importing torch and transformers", total=None)  # seconds of their own
        from transformers.utils import logging as hf_logging

        from ..engine import AdaptrixEngine

        hf_logging.disable_progress_bar()  # our own progress display replaces the per-file bars
        engine = AdaptrixEngine(
            model, pm=get_pm(ctx), progress=lambda step: bar.update(task, description=step), **options
        )
    with engine:
        yield engine


def _selection(adapter: list[str] | None, no_adapter: bool, route: bool) -> tuple[Any, bool]:
    """
    The ``adapters=`` value for --adapter / --no-adapter / --route, or the session's active set,
    and whether it came from the session (so the CLI can say where it came from).
    """
    from ..engine import AUTO
    from ..exceptions import SelectionError
    from ..selection import parse_selection

    if sum([bool(adapter), no_adapter, route]) > 1:
        raise SelectionError("use only one of --adapter, --no-adapter and --route.")
    if no_adapter:
        return None, False
    if route:
        return AUTO, False
    if adapter:
        weights: dict[str, float] = {}
        for value in adapter:
            for name, weight in parse_selection(value).items():
                if name in weights:
                    raise SelectionError(f"--adapter names {name!r} twice; give it once (NAME or NAME:WEIGHT).")
                weights[name] = weight
        return weights, False
    return dict(_store().read().active), True


def _announce(adapters: Any, from_session: bool) -> None:
    """One dim stderr line before an answer: which adapters answer, and how to clear a session's set."""
    from ..engine import AUTO

    if adapters == AUTO:
        return  # the router's choice is printed once it is made
    if not adapters:
        line = "[no adapters: the base model answers]"
    elif from_session:
        line = (f"[adapters: {_label(adapters)}, the session's active set; `adaptrix unload --all` clears it, "
                "--no-adapter skips it once]")
    else:
        line = f"[adapters: {_label(adapters)}]"
    typer.secho(line, err=True, dim=True)


def option_threads() -> Any:
    """The `--threads` option of every command that runs a model (one help text, one policy)."""
    from ..cli import THREADS_HELP

    return typer.Option("--threads", min=0, help=THREADS_HELP)


REPETITION_HELP = "Above 1 makes repeating tokens of the prompt or answer less likely (try 1.1-1.3 against loops); 1 = off."


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
        name: Annotated[str | None, typer.Argument(help="An active adapter.")] = None,
        all_: Annotated[bool, typer.Option("--all", help="Clear the whole active set (back to the base model).")] = False,
    ) -> None:
        """Remove an adapter (or, with --all, every adapter) from the session's active set."""
        from ..exceptions import AdapterNotFoundError, SelectionError

        if (name is None) == (not all_):
            raise SelectionError("give either one adapter NAME or --all.")

        def change(active: dict[str, float]) -> dict[str, float]:
            if all_:
                return {}
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
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model to report (default: the configured one).")] = None,
    ) -> None:
        """Show the base model and the active adapters; with --server, also memory and loader stats (hits, misses, latency, RSS)."""
        if server is None:
            from ..session_status import local_status, render_local_status

            local = local_status(model)
            if as_json:
                _print_json(local)
            else:
                render_local_status(local)
            return
        data = _fetch_stats(server, api_key)
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
        repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help=REPETITION_HELP)] = 1.0,
        threads: Annotated[int | None, option_threads()] = None,
    ) -> None:
        """Answer TEXT, streaming tokens to the terminal (the adapters used are named first, on stderr)."""
        from ..cli import set_threads
        from ..selection import format_selection

        adapters, from_session = _selection(adapter, no_adapter, route)
        set_threads(threads)
        with open_engine(ctx, model) as engine:
            stream = engine.query(
                text, adapters, max_new_tokens=max_new_tokens, stream=True, temperature=temperature, seed=seed,
                system=system, chat_template=False if raw else None, repetition_penalty=repetition_penalty,
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
            else:
                _announce(adapters, from_session)
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
        repetition_penalty: Annotated[float, typer.Option("--repetition-penalty", help=REPETITION_HELP)] = 1.0,
        threads: Annotated[int | None, option_threads()] = None,
    ) -> None:
        """
        Talk with the model interactively.

        Type `/adapter NAME` (or `a:0.7+b:0.3`, `base`, `auto`) to switch adapters mid-conversation,
        `/adapter base` to answer without adapters, `/reset` to forget the conversation, `/quit` to leave.
        """
        from ..cli import set_threads
        from ..exceptions import AdaptrixError
        from ..selection import format_selection

        adapters, from_session = _selection(adapter, no_adapter, route)
        set_threads(threads)
        with open_engine(ctx, model) as engine:
            messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
            source = " (the session's active set; `adaptrix unload --all` clears it)" if from_session and adapters else ""
            typer.secho(
                f"Chatting with {engine.model_name} using {_label(adapters)}{source}. "
                "/adapter NAME to switch, /adapter base for none, /quit to leave.",
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
                                         temperature=temperature, repetition_penalty=repetition_penalty)
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
    """GET SERVER/v1/stats with the standard library (the CLI needs no HTTP client package)."""
    import json
    import urllib.error
    import urllib.request

    from ..exceptions import AdaptrixError

    url = server.rstrip("/") + "/v1/stats"
    if not url.startswith(("http://", "https://")):
        raise AdaptrixError(f"--server {server!r} is not an http:// or https:// URL, e.g. http://127.0.0.1:8000.")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:  # noqa: S310
            body = response.read()
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = e.reason
        raise AdaptrixError(f"{url} answered {e.code}: {message}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise AdaptrixError(f"cannot reach {url} ({reason}). Fix: start it with `adaptrix serve`, or check --server.") from None
    try:
        data: dict[str, Any] = json.loads(body)
    except ValueError:
        raise AdaptrixError(f"{url} did not answer JSON; is it an `adaptrix serve` server?") from None
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


def _count(n: int, singular: str, plural: str | None = None) -> str:
    return f"{n} {singular if n == 1 else (plural or singular + 's')}"


def _fmt_ms(series: dict[str, Any]) -> str:
    if not series or not series.get("count"):
        return "-"
    if series["count"] == 1:
        return f"{series['p50']:.2f} ms (1 sample)"
    return f"p50 {series['p50']:.2f} ms, p99 {series['p99']:.2f} ms (n={series['count']})"


def _server_rows(head: Any, server: dict[str, Any]) -> None:
    """The headline figures of a running server (the same series as its /metrics)."""
    sched = server.get("scheduler", {})
    head.add_row("server", f"{server.get('requests')} requests, {server.get('generated_tokens', 0)} tokens generated, "
                           f"{server.get('errors')} errors, up {server.get('uptime_s', 0):.0f} s")
    head.add_row("time to first token", _fmt_ms(server.get("ttft_ms", {})))
    head.add_row("inter-token latency", _fmt_ms(server.get("itl_ms", {})))
    mean = sched.get("mean_batch")
    batching = f"{sched.get('batches')} batches, mean {mean:.2f} rows" if mean else "no batches yet"
    if sched.get("queued") is not None:
        batching += f", {sched['queued']} queued now"
    if sched.get("lanes", 0) > 1:
        batching += f", {sched['running']} running in {sched['lanes']} lanes"
    head.add_row("batching", batching)
    if sched.get("prefills"):
        chunks = sched.get("prefill_chunks", sched["prefills"])
        split = f", {chunks} forwards (long prompts chunked)" if chunks > sched["prefills"] else ""
        head.add_row("prefills", f"{sched['prefills']}{split}")
    prefix = sched.get("prefix_cache")
    if prefix:
        looked = prefix["hits"] + prefix["misses"]
        rate = f"{prefix['hits'] / looked:.0%} of {looked} prompts" if looked else "no prompts yet"
        head.add_row("prompt prefixes", f"{rate} reused cached tokens ({prefix['reused_tokens']} tokens), holding "
                                        f"{prefix['tokens']}/{prefix['max_tokens']} tokens, {_fmt_bytes(prefix['bytes'])}")


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
    limit = f"budget {_fmt_bytes(cache.get('max_bytes'))}" if cache.get("max_bytes") else "no byte budget"
    if cache.get("max_adapters"):
        limit += f", at most {_count(cache['max_adapters'], 'adapter')}"
    head.add_row("resident", f"{_count(cache.get('resident_count', 0), 'adapter')}, "
                             f"{_fmt_bytes(cache.get('resident_bytes'))} ({limit})")
    hit_rate = cache.get("hit_rate")
    lookups = cache.get("hits", 0) + cache.get("misses", 0)
    head.add_row(
        "requests' adapters",
        "none looked up yet (explicit loads are counted under load latency)" if not lookups else
        f"{_count(cache.get('hits', 0), 'hit')}, {_count(cache.get('misses', 0), 'miss', 'misses')}"
        + (f" ({hit_rate:.0%} hit rate)" if hit_rate is not None else "")
        + f", {_count(cache.get('evictions', 0), 'eviction')}",
    )
    head.add_row("load latency", _fmt_ms(cache.get("load_ms", {})))
    head.add_row("switch latency", _fmt_ms(cache.get("switch_ms", {})))
    head.add_row("process RSS", _fmt_bytes(memory.get("rss_bytes")))
    if memory.get("gpu_allocated_bytes") is not None:
        head.add_row("GPU memory", f"{_fmt_bytes(memory['gpu_allocated_bytes'])} allocated, "
                                   f"{_fmt_bytes(memory['gpu_reserved_bytes'])} reserved")
    server = data.get("server")
    if server:
        _server_rows(head, server)
    console.print(head)
    adapters = cache.get("adapters") or {}
    if adapters:
        table = Table("adapter", "bytes", "pinned", "in use", "hits", "idle", box=None)
        for name, a in adapters.items():
            table.add_row(name, _fmt_bytes(a["bytes"]), "yes" if a["pinned"] else "", str(a["in_use"] or ""),
                          str(a["hits"]), f"{a['idle_s']:.1f} s")
        console.print(table)


__all__ = ["register_commands"]
