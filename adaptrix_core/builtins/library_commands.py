"""Core CLI commands for the adapter library: ``convert``, ``list-adapters``, ``inspect``, ``remove``, ``export``."""

from __future__ import annotations

import contextlib
import json

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..hookspecs import hookimpl


if TYPE_CHECKING:
    from rich.console import Console


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@contextlib.contextmanager
def _progress(what: str) -> Iterator[Any]:
    """A rich progress display on stderr, one step per conversion stage; silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ..conversion import STAGES

    console = Console(stderr=True)
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=True, disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(what, total=len(STAGES))
        seen: set[str] = set()

        def step(stage: str, detail: str) -> None:
            if stage in STAGES and stage not in seen:
                seen.add(stage)
                bar.update(task, completed=len(seen) - 1)
            bar.update(task, description=f"{what}: {stage} {detail}")

        yield step
        bar.update(task, completed=len(STAGES))


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def render_report(console: Console, report: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> None:
    """Print a compatibility report (and library metadata, if any) as rich tables."""
    from rich.table import Table

    meta = meta or {}
    head = Table(box=None, show_header=False)
    head.add_column(style="bold")
    head.add_column()
    for key in ("name", "description", "domain"):
        if meta.get(key):
            head.add_row(key, str(meta[key]))
    if meta.get("capabilities"):
        head.add_row("capabilities", ", ".join(meta["capabilities"]))
    source = report.get("source") or {}
    head.add_row("source", str(meta.get("source") or source.get("ref") or "-"))
    head.add_row("architecture", str(report.get("architecture") or "unknown"))
    head.add_row("trained on", str(report.get("base_model") or "unknown"))
    if report.get("base_model_loaded"):
        head.add_row("checked on", str(report["base_model_loaded"]))
    scaling = report.get("scaling")
    head.add_row(
        "rank / alpha",
        f"r={report.get('rank')} alpha={report.get('alpha')}"
        + (f" scaling={scaling:.4g}" if isinstance(scaling, int | float) else "")
        + (" (rsLoRA)" if report.get("use_rslora") else ""),
    )
    head.add_row("params / bytes", f"{report.get('params', 0):,} / {_fmt_bytes(report.get('bytes'))}")
    if source:
        head.add_row("file", f"{source.get('weights_file')} ({source.get('format')}, {source.get('dtype')})")
    effect = report.get("effect")
    if effect:
        flag = " [red](no effect)[/red]" if effect.get("zero") else ""
        head.add_row("effect", f"{effect['relative_logit_change']:.4g} relative logit change{flag}")
    if meta.get("sha256"):
        head.add_row("sha256", str(meta["sha256"]))
    console.print(head)

    detections = report.get("detections") or []
    if detections:
        console.print("[bold]adapter detection[/bold] (every plugin's claim)")
        table = Table("plugin", "architecture", "confidence", "reason", box=None)
        for d in detections:
            table.add_row(str(d.get("plugin")), d["architecture"], f"{d['confidence']:.2f}", d.get("reason", ""))
        console.print(table)

    layers = report.get("layers")
    if layers:
        roles = list(dict.fromkeys(role for found in layers.values() for role in found))
        ranks = {m["module"]: m["r"] for m in report.get("modules", [])}
        console.print("[bold]matched modules[/bold] (rank per layer and role)")
        table = Table("layer", *roles, box=None)
        for layer, found in layers.items():
            table.add_row(layer, *(str(ranks.get(found[r], "?")) if r in found else "-" for r in roles))
        console.print(table)
    elif report.get("modules"):
        console.print("[bold]adapter modules[/bold] (not checked against a base model: pass --model)")
        table = Table("module", "r", "in", "out", box=None)
        for m in report["modules"]:
            table.add_row(m["module"], str(m["r"]), str(m.get("in", "")), str(m.get("out", "")))
        console.print(table)
    for src, dst in report.get("renamed") or []:
        console.print(f"renamed {src} -> {', '.join(dst)}")
    for key, reason in report.get("skipped") or []:
        console.print(f"skipped {key}: {reason}")
    for key in report.get("unmatched_keys") or []:
        console.print(f"unmatched key {key}")
    for feature in report.get("refused") or []:
        console.print(f"[red]refused[/red] {feature}")
    for warning in report.get("warnings") or []:
        console.print(f"[yellow]warning[/yellow] {warning}")


def _info_dict(info: Any) -> dict[str, Any]:
    return {
        "name": info.name,
        "description": info.description,
        "capabilities": list(info.capabilities),
        "domain": info.domain,
        "examples": list(info.examples),
        "base_model": info.base_model,
        "path": str(info.path),
        "shipped": info.shipped,
        "broken": None,
    }


def _broken_dict(entry: Any) -> dict[str, Any]:
    return {"name": entry.name, "path": str(entry.path), "shipped": entry.shipped, "broken": entry.reason}


def adapters_table(infos: list[Any], broken: list[Any], width: int = 80) -> Any:
    """
    The ``list-adapters`` table: full names and base model ids (never cut), origin labelled,
    description wrapped with the domain and capabilities under it. When the base model column
    would not leave the description room in *width* columns, the base model moves under the
    description (folded, still whole).
    """
    from rich.table import Table

    name_width = max([len(i.name) for i in [*infos, *broken]] + [4])
    base_width = max([len(i.base_model or "") for i in infos] + [10])
    own_column = name_width + len("library") + base_width + 20 + 6 <= width
    table = Table(box=None, pad_edge=False)
    table.add_column("name", no_wrap=True)  # rich shrinks the wrappable description first, never these
    table.add_column("origin", no_wrap=True)
    if own_column:
        table.add_column("base model", no_wrap=True)
    table.add_column("description", overflow="fold")  # a long id folds onto the next line, whole
    rows = [(i.name, i, None) for i in infos] + [(b.name, None, b) for b in broken]
    for _, info, entry in sorted(rows, key=lambda row: row[0]):
        if info is None:
            cells = [entry.name, "shipped" if entry.shipped else "library"] + ([""] if own_column else [])
            table.add_row(*cells, f"[red]broken:[/red] {escape(entry.reason)}")
            continue
        details = [
            "" if own_column or not info.base_model else f"base model: {info.base_model}",
            f"domain: {info.domain}" if info.domain else "",
            f"capabilities: {', '.join(info.capabilities)}" if info.capabilities else "",
        ]
        tags = "; ".join(part for part in details if part)
        text = escape(info.description) + (f"\n[dim]{escape(tags)}[/dim]" if tags else "")
        cells = [info.name, "shipped" if info.shipped else "library"] + ([info.base_model or ""] if own_column else [])
        table.add_row(*cells, text)
    return table


def escape(text: str) -> str:
    from rich.markup import escape as rich_escape

    return rich_escape(text)


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command()
    def convert(
        ctx: typer.Context,
        source: Annotated[
            str, typer.Argument(help="Adapter to convert: ./dir, /abs/dir, user/repo, hf://user/repo@revision.")
        ],
        name: Annotated[str, typer.Option("--name", "-n", help="Library name (letters, digits, '-', '_', '.').")],
        description: Annotated[str, typer.Option(help="One or two sentences of what the adapter does.")] = "",
        capability: Annotated[
            list[str] | None, typer.Option("--capability", "-c", help="A capability tag; repeat for several.")
        ] = None,
        domain: Annotated[str, typer.Option(help="One word or phrase, e.g. 'cooking'.")] = "",
        example: Annotated[
            list[str] | None, typer.Option("--example", "-e", help="An example prompt it is meant for; repeat.")
        ] = None,
        model: Annotated[
            str | None, typer.Option(help="Base model to prove the adapter on (hub id or path); default: the configured one.")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace a library adapter of the same name.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Check SOURCE against the base model and store it in the library under --name (atomically)."""
        from rich.console import Console

        from ..cli import get_pm
        from ..conversion import convert as run_convert

        with _progress(f"convert {source}") as step:
            result = run_convert(
                source, name, model_ref=model, pm=get_pm(ctx), description=description,
                capabilities=capability or (), domain=domain, examples=example or (), overwrite=force, progress=step,
            )
        if as_json:
            _print_json({"adapter": _info_dict(result.info), "report": result.report})
            return
        console = Console()
        report = result.report
        console.print(
            f"Installed [bold]{name}[/bold]: {report['architecture']}, {len(report['modules'])} modules in "
            f"{len(report['layers'])} layers, r={report['rank']}, {report['params']:,} params, "
            f"effect {report['effect']['relative_logit_change']:.3g} -> {result.info.path}"
        )
        for warning in report["warnings"]:
            console.print(f"[yellow]warning[/yellow] {warning}")

    @app.command("list-adapters")
    def list_adapters(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """List the adapters in your library and the shipped ones (broken entries with the reason)."""
        from rich.console import Console

        from ..library import Library

        library = Library()
        infos = library.list()
        broken = library.broken()
        if as_json:
            _print_json([_info_dict(i) for i in infos] + [_broken_dict(b) for b in broken])
            return
        if not infos and not broken:
            typer.echo(f"No adapters yet ({library.root}). Add one with `adaptrix convert SOURCE --name NAME`.")
            return
        console = Console()
        console.print(adapters_table(infos, broken, console.width))
        if broken:
            typer.echo(f"{len(broken)} broken entr{'y' if len(broken) == 1 else 'ies'}: `adaptrix remove NAME` deletes one.")

    @app.command()
    def inspect(
        ctx: typer.Context,
        adapter: Annotated[str, typer.Argument(help="A library adapter name, or an adapter path / hub repo id.")],
        model: Annotated[
            str | None,
            typer.Option(
                help="Also fit the adapter onto this base model (hub id or path; config only, no weights read): "
                "matched modules per layer and role, shape errors."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    ) -> None:
        """Show an adapter's compatibility report: modules per layer and role, rank, alpha, size, effect, warnings."""
        from rich.console import Console

        from ..cli import get_pm
        from ..library import Library

        library = Library()
        if any(b.name == adapter for b in library.broken()):
            library.get(adapter)  # raises: broken, with the reason and the fix
        if adapter in library and model is None:
            meta = library.metadata(adapter)
            report = meta.get("report") or {}
            if as_json:
                _print_json(meta)
                return
            render_report(Console(), report, meta)
            return
        from ..conversion import analyse
        from ..models import load_model_skeleton

        ref = str(library.path(adapter)) if adapter in library else adapter
        with _progress(f"inspect {adapter}") as step:
            base = load_model_skeleton(model) if model is not None else None  # shapes only: instant, even for 7B
            analysis = analyse(ref, model=base, pm=get_pm(ctx), progress=step)
        report = analysis.report()
        if as_json:
            _print_json({"report": report})
            return
        render_report(Console(), report)

    @app.command()
    def remove(
        name: Annotated[str, typer.Argument(help="The library adapter to delete.")],
    ) -> None:
        """Delete an adapter from your library (shipped adapters cannot be removed)."""
        from ..library import Library

        Library().remove(name)
        typer.echo(f"Removed {name}.")

    @app.command()
    def export(
        name: Annotated[str, typer.Argument(help="The library adapter to export (with --for vllm: the destination DIR).")],
        directory: Annotated[
            str | None, typer.Argument(help="Destination directory (created; must be new or empty).")
        ] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace a non-empty destination directory.")] = False,
        target: Annotated[
            str | None, typer.Option("--for", help="'vllm': write the library (or --adapter ones) for `vllm serve --enable-lora`.")
        ] = None,
        adapter: Annotated[
            list[str] | None, typer.Option("--adapter", "-a", help="With --for vllm: export only this adapter; repeatable.")
        ] = None,
        compose: Annotated[
            list[str] | None,
            typer.Option("--compose", help="With --for vllm: NAME=a:0.7+b:0.3, exported as one exact adapter; repeatable."),
        ] = None,
    ) -> None:
        """Write an adapter as a plain PEFT directory (adapter_config.json + weights) that PEFT loads; `--for vllm DIR` writes a set for vLLM."""
        from ..exceptions import AdaptrixError
        from ..library import Library

        if target is not None:
            if target != "vllm":
                raise AdaptrixError(f"--for {target!r}: the only export target is 'vllm'.")
            if directory is not None:
                raise AdaptrixError("with --for vllm give one directory: `adaptrix export --for vllm DIR [-a NAME]...`.")
            _export_vllm(name, adapter or [], compose or [], force)
            return
        if adapter or compose:
            raise AdaptrixError("--adapter and --compose go with --for vllm.")
        if directory is None:
            raise AdaptrixError("export needs NAME and DIRECTORY: `adaptrix export NAME DIR` (or `--for vllm DIR`).")
        dest = Library().export(name, directory, overwrite=force)
        typer.echo(f"Exported {name} to {dest}")


def _export_vllm(directory: str, adapters: list[str], compositions: list[str], force: bool) -> None:
    import shlex

    from ..export_vllm import export_for_vllm, parse_composition

    composed = dict(parse_composition(c) for c in compositions)
    result = export_for_vllm(directory, adapters, composed, overwrite=force)
    for a in result.adapters:
        what = " (composition, exact)" if a.composition else ""
        typer.echo(f"  {a.name}: rank {a.rank}{what} -> {a.path}")
    typer.echo(f"Exported {len(result.adapters)} adapter(s) to {result.root}. Serve them with vLLM (GPU):")
    typer.echo("  " + shlex.join(result.command()))
