"""
The ``adaptrix`` command line.

``make_app(pm)`` builds a fresh Typer app each time: core's own commands and
every plugin's come in through the ``register_commands`` hook, so tests build
an app from their own plugin manager and never reload modules.
"""

from __future__ import annotations

import sys

from typing import Any

import pluggy
import typer

from typer.core import TyperGroup

from .exceptions import AdaptrixError
from .plugins import make_plugin_manager


# `adaptrix --help` lists everyday commands first; plugin commands follow in registration order.
COMMAND_ORDER = (
    "demo", "query", "chat", "serve",
    "load", "unload", "switch", "active", "status",
    "list-adapters", "convert", "inspect", "export", "remove",
    "train", "eval", "merge", "route", "route-eval",
    "plugins", "detect", "targets", "config",
)


class _AdaptrixGroup(TyperGroup):
    """Turns any AdaptrixError raised by a command into one red line and exit code 1."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(rank)), names.index(n)))

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AdaptrixError as e:
            typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None


def make_app(pm: pluggy.PluginManager | None = None) -> typer.Typer:
    """Return the ``adaptrix`` app with every plugin's commands registered."""
    pm = pm or make_plugin_manager()
    app = typer.Typer(
        name="adaptrix",
        help="Run many LoRA adapters on one frozen language model.",
        cls=_AdaptrixGroup,
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.info.context_settings = {"obj": pm, "help_option_names": ["-h", "--help"]}
    pm.hook.register_commands(app=app)
    return app


def get_pm(ctx: typer.Context) -> pluggy.PluginManager:
    """The plugin manager the app was built with (commands take it from the Typer context)."""
    root = ctx.find_root()
    pm = root.obj
    if not isinstance(pm, pluggy.PluginManager):  # pragma: no cover - make_app always sets it
        msg = "adaptrix CLI context has no plugin manager"
        raise TypeError(msg)
    return pm


def main() -> None:
    """Console-script entry point."""
    try:
        app = make_app()
    except AdaptrixError as e:  # a broken plugin fails while the app is built
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    app()
