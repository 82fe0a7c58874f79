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

from typer.core import TyperArgument, TyperGroup, TyperOption

from .exceptions import AdaptrixError
from .plugins import make_plugin_manager


# `adaptrix --help` lists everyday commands first; plugin commands follow in registration order.
COMMAND_ORDER = (
    "demo", "query", "chat", "serve", "ui",
    "load", "unload", "switch", "active", "status",
    "list-adapters", "convert", "inspect", "export", "push", "remove",
    "train", "eval", "merge", "route", "route-eval",
    "plugins", "detect", "targets", "config",
)


# How `--help` names each kind of value (typer's own labels read `<bool>`, `<list[str]>`, `{text}`).
_TYPE_LABELS = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "int range": "INTEGER",
                "float range": "NUMBER", "path": "PATH", "file": "FILE", "directory": "DIR"}


class _HelpArgument(TyperArgument):
    """An argument shown as ``TEXT`` in usage and help, with no type column (the name says it)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        return name if self.required else f"[{name}]"


class _HelpOption(TyperOption):
    """An option whose value reads ``INTEGER`` / ``TEXT``; a flag shows no value at all."""

    def display_type_rich(self, ctx: Any) -> str | None:
        if self.is_flag or self.count:
            return None
        label = self.display_type(ctx).strip("<>")
        inner = label[5:-1] if label.startswith("list[") else label
        return _TYPE_LABELS.get(inner, inner.upper())


def _tidy_help(params: list[Any]) -> None:
    """Give typer's parameters the conventional help labels (idempotent, in place)."""
    for param in params:
        if type(param) is TyperArgument:
            param.__class__ = _HelpArgument
            if param.metavar is None:
                param.metavar = param.name.upper() + ("..." if param.nargs != 1 else "")
        elif type(param) is TyperOption:
            param.__class__ = _HelpOption


def set_threads(threads: int | None) -> int:
    """
    Apply the one thread policy (:mod:`adaptrix_core.threads`) and return the count in force.

    ``None`` means the policy's default (``ADAPTRIX_THREADS``, ``OMP_NUM_THREADS``, else every usable core,
    up to 8, with OpenMP threads that sleep while they wait, which the ``adaptrix`` command arranges).
    ``0`` keeps torch's default (every core); any other number is used as given.
    """
    import torch

    from .threads import configure_threads

    if threads == 0:
        return torch.get_num_threads()
    return configure_threads(threads)


THREADS_HELP = (
    "CPU threads for torch (default: ADAPTRIX_THREADS, else every core up to 8, with waiting threads "
    "asleep after a brief spin so a busy machine does not stall them; 0: torch's default)."
)


class _AdaptrixGroup(TyperGroup):
    """Turns any AdaptrixError raised by a command into one red line and exit code 1."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _tidy_help(params)
        return params

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _tidy_help([*command.params, command.get_help_option(ctx)])
        return command

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
    from .threads import prefer_passive_wait

    prefer_passive_wait()  # before anything imports torch: see adaptrix_core.threads
    try:
        app = make_app()
    except AdaptrixError as e:  # a broken plugin fails while the app is built
        typer.secho(f"Error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(1)
    app()
