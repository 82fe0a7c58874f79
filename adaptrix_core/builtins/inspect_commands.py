"""Core CLI commands about plugins and architectures: ``plugins``, ``detect``, ``targets``."""

from __future__ import annotations

import json

from typing import Annotated, Any

import typer

from ..hookspecs import hookimpl


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command()
    def plugins(
        ctx: typer.Context,
        all_: Annotated[bool, typer.Option("--all", help="Include Adaptrix's built-in default plugins.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """List installed plugins: distribution, version and the hooks each implements."""
        from rich.console import Console
        from rich.table import Table

        from ..cli import get_pm
        from ..plugins import list_plugins

        infos = list_plugins(get_pm(ctx), include_builtins=all_)
        if as_json:
            _print_json([{"name": i.name, "version": i.version, "hooks": list(i.hooks), "builtin": i.builtin} for i in infos])
            return
        table = Table("plugin", "version", "hooks", box=None)
        for info in infos:
            table.add_row(info.name, info.version or "(built-in)", ", ".join(info.hooks))
        Console().print(table)

    @app.command("config")
    def show_config(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Show the effective settings and where each directory is (TOML file, ADAPTRIX_* variables, defaults)."""
        import attrs

        from ..config import load_config

        config = load_config()
        values = {k: str(v) for k, v in attrs.asdict(config).items()}
        values["resolved_device"] = config.resolved_device()
        values["resolved_dtype"] = config.resolved_dtype()
        if as_json:
            _print_json(values)
            return
        for key, value in values.items():
            typer.echo(f"{key:20} {value}")

    @app.command()
    def detect(
        ctx: typer.Context,
        model: Annotated[str | None, typer.Argument(help="Hub id, local path, or empty for the configured default.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Show every plugin's claim on MODEL, with confidence and reason, and the winner."""
        from rich.console import Console
        from rich.table import Table

        from ..cli import get_pm
        from ..detection import detect as pick
        from ..detection import detect_all
        from ..models import load_model_skeleton

        pm = get_pm(ctx)
        skeleton = load_model_skeleton(model)
        detections = detect_all(skeleton, pm=pm)
        best = pick(skeleton, pm=pm)  # raises the one-line errors for unknown / ambiguous
        if as_json:
            _print_json(
                {
                    "model": type(skeleton).__name__,
                    "architecture": best.architecture,
                    "detections": [
                        {"plugin": d.plugin, "architecture": d.architecture, "confidence": d.confidence, "reason": d.reason}
                        for d in detections
                    ],
                }
            )
            return
        table = Table("", "plugin", "architecture", "confidence", "reason", box=None)
        for d in detections:
            table.add_row("*" if d == best else "", d.plugin or "", d.architecture, f"{d.confidence:.2f}", d.reason)
        console = Console()
        console.print(table)
        console.print(f"{type(skeleton).__name__} is [bold]{best.architecture}[/bold]")

    @app.command()
    def targets(
        ctx: typer.Context,
        model: Annotated[str | None, typer.Argument(help="Hub id, local path, or empty for the configured default.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Show MODEL's module map (role -> glob) and the modules it matches in each layer."""
        from rich.console import Console
        from rich.table import Table

        from ..cli import get_pm
        from ..detection import detect as pick
        from ..detection import module_map, resolve_targets
        from ..models import load_model_skeleton

        pm = get_pm(ctx)
        skeleton = load_model_skeleton(model)
        mmap = module_map(pick(skeleton, pm=pm).architecture, skeleton, pm=pm)
        resolved = resolve_targets(skeleton, mmap)
        by_layer: dict[int, dict[str, str]] = {}
        for name, role in resolved.items():
            by_layer.setdefault(mmap.layer_of(name) or 0, {})[role] = name
        if as_json:
            _print_json(
                {
                    "architecture": mmap.architecture,
                    "targets": dict(mmap.targets),
                    "layers": {str(k): v for k, v in sorted(by_layer.items())},
                }
            )
            return
        console = Console()
        console.print(f"architecture [bold]{mmap.architecture}[/bold]")
        roles = [r for r in mmap.targets if any(r in layer for layer in by_layer.values())]
        glob_table = Table("role", "module glob", box=None)
        for role, glob in mmap.targets.items():
            glob_table.add_row(role, glob)
        console.print(glob_table)
        layer_table = Table("layer", *roles, box=None)
        for layer, found in sorted(by_layer.items()):
            layer_table.add_row(str(layer), *("yes" if r in found else "-" for r in roles))
        console.print(layer_table)
        console.print(f"{len(resolved)} modules in {len(by_layer)} layers")
