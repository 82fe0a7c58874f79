"""Core CLI commands for routing and composition: ``route``, ``route-eval`` and ``merge``."""

from __future__ import annotations

import json

from pathlib import Path
from typing import Annotated, Any

import typer

from ..hookspecs import hookimpl


ROUTER_HELP = "Router to use (default: the configured one, see `adaptrix config`); e.g. keyword, semantic."
EVAL_FILE_HELP = 'JSONL file: one {"query": ..., "expected": "adapter-name" or null} per line.'
WEIGHTS_HELP = "Comma-separated weights, one per adapter (default 1.0 each), e.g. 0.7,0.3."
METHOD_HELP = "cat (exact), linear, svd, ties, dare_linear or dare_ties; see docs/merging.md."
RANK_HELP = "Output rank for svd (default: the largest input rank)."
DENSITY_HELP = "Fraction of entries kept by ties/dare_* (0 < d <= 1; required for them)."
FORCE_HELP = "Replace an existing library adapter of that name."


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command("route")
    def route_command(
        ctx: typer.Context,
        query: Annotated[str, typer.Argument(help="The prompt to route.")],
        router: Annotated[str | None, typer.Option("--router", "-r", help=ROUTER_HELP)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Show which adapter(s) the router picks for QUERY, with every candidate's score and why."""
        from rich.console import Console
        from rich.table import Table

        from ..cli import get_pm
        from ..routing import route_report

        report = route_report(query, router, pm=get_pm(ctx))
        if as_json:
            _print_json(report)
            return
        table = Table("weight", "adapter", "score", "why", box=None)
        for c in report["candidates"]:
            table.add_row(f"{c['weight']:.2f}" if c["weight"] else "-", c["adapter"], f"{c['score']:.3f}", c["reason"])
        console = Console()
        console.print(table, highlight=False)
        chosen = report["adapters"]
        choice = " + ".join(f"{n}:{w:.2f}" for n, w in chosen.items()) if chosen else "base model (no adapter)"
        console.print(f"[bold]{report['router']}[/bold] router chose [bold]{choice}[/bold]")
        console.print(f"why: {report['reason']}", highlight=False)
        console.print("weight: the chosen adapters' composition weights (- = not chosen)", style="dim", highlight=False)

    @app.command("route-eval")
    def route_eval_command(
        ctx: typer.Context,
        file: Annotated[Path, typer.Argument(help=EVAL_FILE_HELP)],
        router: Annotated[str | None, typer.Option("--router", "-r", help=ROUTER_HELP)] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
        mistakes: Annotated[bool, typer.Option("--mistakes", help="Also list every wrongly routed query.")] = False,
    ) -> None:
        """Measure a router on a labelled set: accuracy, confusion matrix, p50/p99 latency per query."""
        from rich.console import Console
        from rich.table import Table

        from ..cli import get_pm
        from ..library import Library
        from ..routing import evaluate, get_router, read_eval_set

        adapters = Library().list()
        items = read_eval_set(file, adapters)
        result = evaluate(get_router(router, get_pm(ctx)), items, adapters)
        if as_json:
            _print_json(result.to_dict())
            return
        console = Console()
        console.print(
            f"router [bold]{result.router}[/bold]: accuracy [bold]{result.accuracy:.1%}[/bold] "
            f"({result.correct}/{result.total}), p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms per query "
            f"(CPU time p50 {result.cpu_p50_ms:.2f} ms)"
        )
        if result.kinds:
            console.print(
                "by kind: " + ", ".join(f"{k} {c / t:.1%} ({c}/{t})" for k, (c, t) in result.kinds.items()),
                highlight=False,
            )
        matrix = Table("expected \\ routed to", *result.labels, box=None, title="confusion matrix")
        for expected in result.labels:
            row = result.confusion.get(expected)
            if row is None:
                continue
            matrix.add_row(expected, *(str(row.get(p, 0)) if row.get(p) else "." for p in result.labels))
        console.print(matrix)
        if mistakes and result.mistakes:
            table = Table("query", "expected", "routed to", box=None, title="mistakes")
            for query, expected, predicted in result.mistakes:
                table.add_row(query, expected, predicted)
            console.print(table)

    @app.command("merge")
    def merge_command(
        adapters: Annotated[list[str], typer.Argument(help="Library adapters to merge, in order.")],
        name: Annotated[str, typer.Option("--name", "-n", help="Library name of the merged adapter.")],
        weights: Annotated[str | None, typer.Option("--weights", "-w", help=WEIGHTS_HELP)] = None,
        method: Annotated[str, typer.Option("--method", "-m", help=METHOD_HELP)] = "cat",
        rank: Annotated[int | None, typer.Option("--rank", help=RANK_HELP)] = None,
        density: Annotated[float | None, typer.Option("--density", help=DENSITY_HELP)] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the random drop in dare_linear/dare_ties.")] = 0,
        force: Annotated[bool, typer.Option("--force", help=FORCE_HELP)] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a summary.")] = False,
    ) -> None:
        """Merge library adapters into a new one (PEFT format), recording lineage and the approximation error."""
        from rich.console import Console

        from ..merging import MergeError, merge_into_library

        parsed_weights = None
        if weights is not None:
            try:
                parsed_weights = [float(w) for w in weights.replace(" ", "").split(",") if w]
            except ValueError:
                raise MergeError(f"--weights {weights!r}: expected comma-separated numbers, e.g. 0.7,0.3.") from None
        info, merged = merge_into_library(
            adapters, parsed_weights, method, name, rank=rank, density=density, seed=seed, overwrite=force
        )
        summary = {
            "name": info.name,
            "path": str(info.path),
            "method": merged.method,
            "weights": list(merged.weights),
            "rank": merged.rank,
            "modules": len(merged.modules),
            **merged.error_summary(),
        }
        if as_json:
            _print_json(summary)
            return
        console = Console()
        inputs = " + ".join(f"{w:g} x {a}" for a, w in zip(adapters, merged.weights, strict=True))
        console.print(
            f"merged [bold]{inputs}[/bold] with [bold]{merged.method}[/bold] "
            f"into [bold]{info.name}[/bold] ({info.path})"
        )
        console.print(f"rank {merged.rank}, {len(merged.modules)} modules")
        verdict = "exact" if merged.exact else "approximate"
        console.print(
            f"delta vs the exact weighted sum: {verdict}; relative Frobenius error max {merged.max_error:.2e}, "
            f"mean {merged.mean_error:.2e} per module"
        )
