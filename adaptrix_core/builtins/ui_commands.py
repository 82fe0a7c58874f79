"""
``adaptrix ui``: start the server and open its web interface in the browser.

It runs ``adaptrix serve`` with the same options (everything after ``ui`` is
passed on), waits until ``/ui`` answers, prints its URL and opens it, unless
there is no graphical browser to open (a server over SSH): then the URL alone
is the way in.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import urllib.error
import urllib.request

from typing import Annotated

import typer

from ..hookspecs import hookimpl


READY_TIMEOUT_S = 600.0
"""How long to wait for the page to answer (the base model may load for minutes on a slow disk)."""

NO_BROWSER_HELP = "Only print the URL; do not open a browser."


def ui_url(host: str, port: int) -> str:
    """The page's address for a server bound to *host*: a wildcard bind is opened on loopback."""
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/ui"


def can_open_browser() -> bool:
    """
    Whether a graphical browser can plausibly be opened from here.

    On Linux without a display, :mod:`webbrowser` falls back to text browsers
    (lynx, w3m) that would take over the terminal the server logs to.
    """
    if os.environ.get("BROWSER"):
        return True
    if sys.platform.startswith(("darwin", "win")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def page_answers(url: str) -> bool:
    """True once GET *url* returns the web interface (the page is public even when an API key is set)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - a local http URL we built
            return response.status == 200 and b"Adaptrix" in response.read(4096)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def announce_when_ready(
    url: str, *, open_browser: bool, stop: threading.Event, timeout_s: float = READY_TIMEOUT_S, poll_s: float = 0.25
) -> bool:
    """Wait until the page answers, then print its URL and open it when asked and possible; False on timeout or stop."""
    import webbrowser

    deadline = time.monotonic() + timeout_s
    while not page_answers(url):
        if stop.wait(poll_s) or time.monotonic() > deadline:
            return False
    opened = False
    if open_browser and can_open_browser():
        try:
            opened = webbrowser.open(url, new=2)
        except webbrowser.Error:
            opened = False
    how = "opened in your browser" if opened else "open it in a browser"
    typer.secho(f"Adaptrix web interface: {url} ({how})", fg=typer.colors.GREEN, err=True, bold=True)
    return True


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command(
        "ui",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def ui_command(
        ctx: typer.Context,
        no_browser: Annotated[bool, typer.Option("--no-browser", help=NO_BROWSER_HELP)] = False,
    ) -> None:
        """
        Serve the API and open the web interface (library, playground, compare, compose, route, stats).

        Every `adaptrix serve` option works here, e.g. `adaptrix ui --port 8080 --api-key KEY --pin pirate`.
        """
        root = ctx.find_root()
        serve = root.command.get_command(root, "serve")  # type: ignore[attr-defined]
        if serve is None:  # pragma: no cover - core registers serve
            raise typer.BadParameter("the serve command is not registered.")
        serve_ctx = serve.make_context("adaptrix ui", list(ctx.args), parent=ctx)
        if serve_ctx.params["port"] == 0:
            raise typer.BadParameter("adaptrix ui needs a fixed port to open (e.g. --port 8000), not 0.")
        url = ui_url(serve_ctx.params["host"], serve_ctx.params["port"])
        stop = threading.Event()
        watcher = threading.Thread(
            target=announce_when_ready, args=(url,), kwargs={"open_browser": not no_browser, "stop": stop},
            name="adaptrix-ui-open", daemon=True,
        )
        watcher.start()
        try:
            with serve_ctx:
                serve.invoke(serve_ctx)
        finally:
            stop.set()
