"""Core CLI commands that make and measure adapters, and the main demo: ``train``, ``eval``, ``demo``."""

from __future__ import annotations

import json
import shutil
import tempfile

from pathlib import Path
from typing import Annotated, Any

import typer

from ..hookspecs import hookimpl
from .engine_commands import option_threads


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _read_metadata_file(path: Path | None) -> dict[str, Any]:
    from ..exceptions import TrainingError

    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainingError(f"{path}: metadata file not found.") from None
    except (OSError, ValueError) as e:
        raise TrainingError(f"{path}: not a readable JSON object ({e}).") from None
    if not isinstance(data, dict):
        raise TrainingError(f"{path}: must be a JSON object with description, capabilities, domain, examples.")
    for field in ("capabilities", "examples", "counter_examples"):
        if field in data and not (isinstance(data[field], list) and all(isinstance(v, str) for v in data[field])):
            raise TrainingError(f"{path}: field {field!r} must be a list of strings.")
    for field in ("description", "domain", "metric"):
        if field in data and not isinstance(data[field], str):
            raise TrainingError(f"{path}: field {field!r} must be a string.")
    return data


def _set_threads(threads: int | None) -> int:
    from ..cli import set_threads

    return set_threads(threads)


def _load_model(model: str | None) -> tuple[Any, Any, str]:
    """Load the base model with a spinner; return (model, tokenizer, the name adapters record as their base)."""
    from rich.console import Console

    from transformers.utils import logging as hf_logging

    from ..config import EMBEDDED_MODEL, load_config
    from ..embedded import HUB_ID
    from ..models import load_base_model

    hf_logging.disable_progress_bar()
    config = load_config()
    ref = model or config.base_model
    console = Console(stderr=True)
    with console.status(f"loading base model {ref}", spinner="dots"):
        loaded, tokenizer = load_base_model(ref, config=config)
    return loaded, tokenizer, HUB_ID if ref == EMBEDDED_MODEL else ref


@hookimpl
def register_commands(app: typer.Typer) -> None:
    @app.command()
    def train(
        ctx: typer.Context,
        dataset: Annotated[Path, typer.Argument(help="JSONL file: {\"prompt\", \"response\"} or {\"messages\": [...]} per line.")],
        name: Annotated[str, typer.Option("--name", "-n", help="Name of the new adapter.")],
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model: hub id, local path, or the configured default.")] = None,
        rank: Annotated[int, typer.Option("--rank", "-r", help="LoRA rank.")] = 8,
        alpha: Annotated[float, typer.Option("--alpha", help="lora_alpha (scaling = alpha / rank).")] = 16.0,
        targets: Annotated[str, typer.Option("--targets", "-t", help="Comma-separated roles: attn.q, attn.k, attn.v, attn.qkv, attn.o, mlp.gate, mlp.up, mlp.down. 'auto': attn.q,attn.v, or attn.qkv where q, k and v are fused (GPT-2, GPT-NeoX, BLOOM, Falcon).")] = "auto",
        layers: Annotated[str, typer.Option("--layers", help="'middle' (the middle third), 'all', '4-8' or '1,3,5'.")] = "middle",
        lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (warm-up, then cosine decay to 10%).")] = 1e-3,
        steps: Annotated[int, typer.Option("--steps", help="Optimizer steps (0: use --epochs).")] = 0,
        epochs: Annotated[float, typer.Option("--epochs", help="Passes over the data when --steps is 0.")] = 3.0,
        batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Examples per step.")] = 8,
        max_length: Annotated[int, typer.Option("--max-length", help="Tokens per example (prompt + response).")] = 256,
        warmup: Annotated[int, typer.Option("--warmup", help="Warm-up steps.")] = 10,
        seed: Annotated[int, typer.Option("--seed", help="Seeds the initialisation and the data order.")] = 0,
        metadata: Annotated[Path | None, typer.Option("--metadata", help="JSON file with description, capabilities, domain, examples, metric.")] = None,
        description: Annotated[str | None, typer.Option("--description", help="What the adapter does (routers read it).")] = None,
        capability: Annotated[list[str] | None, typer.Option("--capability", help="A capability tag (repeatable).")] = None,
        domain: Annotated[str | None, typer.Option("--domain", help="Its domain, e.g. 'translation'.")] = None,
        example: Annotated[list[str] | None, typer.Option("--example", help="An example prompt (repeatable).")] = None,
        metric: Annotated[str | None, typer.Option("--metric", help="Metric `adaptrix eval` uses: pirate, json, french, arithmetic.")] = None,
        output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the adapter folder (PEFT + adaptrix.json) here instead of the library.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Replace an existing adapter of that name (or a non-empty --output).")] = False,
        checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="Where Ctrl-C saves a resumable checkpoint (default: the cache).")] = None,
        resume: Annotated[Path | None, typer.Option("--resume", help="Continue from the checkpoint of an interrupted run (same options).")] = None,
        threads: Annotated[int | None, option_threads()] = None,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
    ) -> None:
        """Train a LoRA adapter on a JSONL dataset (loss on responses only) and save it into the library."""
        import attrs

        from rich.console import Console

        from ..cli import get_pm
        from ..config import load_config
        from ..evaluation import get_metric
        from ..exceptions import TrainingError
        from ..library import Library
        from ..runtime import attach, check_adapter_name
        from ..training import TrainingInterrupted, TrainOptions, read_dataset, step_warnings, train_adapter

        check_adapter_name(name)
        meta = _read_metadata_file(metadata)
        metric_name = metric or meta.get("metric")
        if metric_name:
            get_metric(metric_name)
        if output is not None:
            if output.exists() and (not output.is_dir() or any(output.iterdir())) and not force:
                raise TrainingError(f"{output}: exists and is not empty. Fix: choose another --output, or pass --force.")
        else:
            Library().check_installable(name, overwrite=force)
        try:
            options = TrainOptions(
                r=rank, alpha=alpha, roles=targets, layers=layers, lr=lr, steps=steps, epochs=epochs,
                batch_size=batch_size, max_length=max_length, warmup=warmup, seed=seed,
            )
        except ValueError as e:
            raise TrainingError(f"invalid training option: {e}") from None
        examples = read_dataset(dataset)
        used_threads = _set_threads(threads)  # recorded: a seed reproduces its run at the same thread count
        console = Console(stderr=True)
        for advice in step_warnings(len(examples), options):  # before the model loads: cheap to fix now
            console.print(f"[yellow]warning:[/yellow] {advice}")
        base, tokenizer, base_name = _load_model(model)
        am = attach(base, pm=get_pm(ctx))
        if not options.roles:
            options = attrs.evolve(options, roles=am.default_roles())
        checkpoint = checkpoint_dir or load_config().cache_dir / "checkpoints" / name
        console.print(
            f"training [bold]{name}[/bold] on {len(examples)} examples: r={rank} alpha={alpha:g} "
            f"targets={','.join(options.roles)} "
            f"layers={layers} steps={options.total_steps(len(examples))} batch={batch_size} seed={seed}"
        )
        try:
            result = train_adapter(
                am, tokenizer, examples, name, options, checkpoint_dir=checkpoint, resume=resume, progress=not no_progress
            )
        except TrainingInterrupted as e:
            console.print(f"[yellow]{e}[/yellow]")
            raise typer.Exit(code=130) from None
        fields = {
            "description": description if description is not None else meta.get("description", ""),
            "capabilities": capability or meta.get("capabilities", ()),
            "domain": domain if domain is not None else meta.get("domain", ""),
            "examples": example or meta.get("examples", ()),
            "counter_examples": meta.get("counter_examples", ()),
            "source": f"adaptrix train {dataset.name}",
            "base_model": base_name,
            "report": am.report(name).to_dict(),
            "extra": {"training": {**result.to_dict(), "dataset": str(dataset), "command": "adaptrix train",
                                   "threads": used_threads},
                      **({"metric": metric_name} if metric_name else {})},
        }
        where = _save_trained(am, name, base_name, fields, output, force)
        if checkpoint.exists():  # the run finished: its Ctrl-C checkpoint is stale
            shutil.rmtree(checkpoint, ignore_errors=True)
        console.print(
            f"trained {name}: {result.steps} steps in {result.seconds:.0f} s, loss {result.first_loss:.3f} (first step) -> "
            f"{result.final_loss:.3f} (mean of the last {max(1, len(result.losses) // 10)} steps); saved to {where}"
        )

    @app.command("eval")
    def eval_(
        ctx: typer.Context,
        adapter: Annotated[str, typer.Argument(help="Library adapter name, or a PEFT adapter folder.")],
        dataset: Annotated[Path, typer.Option("--dataset", "-d", help="Held-out JSONL (prompt + reference response).")],
        metric: Annotated[str | None, typer.Option("--metric", help="pirate, json, french or arithmetic (default: the adapter's own).")] = None,
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model: hub id, local path, or the configured default.")] = None,
        limit: Annotated[int, typer.Option("--limit", help="Use only the first N examples (0: all).")] = 0,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Token budget per answer (0: the metric's).")] = 0,
        batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Prompts per batch (each runs with and without).")] = 8,
        show: Annotated[int, typer.Option("--show", help="Print this many example answers side by side.")] = 3,
        rows_out: Annotated[Path | None, typer.Option("--rows-out", help="Write every prompt, answer and verdict to this JSONL file.")] = None,
        threads: Annotated[int | None, option_threads()] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    ) -> None:
        """Score an adapter's metric on held-out prompts, with and without the adapter (greedy, same prompts)."""
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Table

        from ..cli import get_pm
        from ..engine import AdaptrixEngine
        from ..evaluation import evaluate, get_metric
        from ..exceptions import TrainingError
        from ..library import METADATA_NAME, Library
        from ..training import read_dataset

        examples = read_dataset(dataset)
        if limit:
            examples = examples[:limit]
        path = Path(adapter)
        source = path if (path / "adapter_config.json").is_file() else None
        name = path.name if source is not None else adapter
        if source is not None:
            meta_file = path / METADATA_NAME
            meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
        else:
            meta = Library().metadata(adapter)
        metric_name = metric or (meta.get("extra") or {}).get("metric")
        if not metric_name:
            raise TrainingError(f"adapter {adapter!r} names no metric in its metadata. Fix: pass --metric NAME.")
        chosen = get_metric(metric_name)
        _set_threads(threads)
        base, tokenizer, _ = _load_model(model)
        console = Console(stderr=True)
        with AdaptrixEngine.from_model(base, tokenizer, pm=get_pm(ctx)) as engine:
            engine.load_adapter(name, source, activate=False)
            with Progress(TextColumn(f"evaluating {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                          console=console, transient=True, disable=not console.is_terminal) as bar:
                task = bar.add_task("eval", total=len(examples))
                report = evaluate(engine, name, examples, chosen, max_new_tokens=max_new_tokens or None,
                                  batch_size=batch_size, on_batch=lambda done, _: bar.update(task, completed=done))
        if rows_out is not None:
            rows_out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                        for r in report.to_dict(rows=True)["rows"]), encoding="utf-8")
        if as_json:
            _print_json(report.to_dict())
            return
        out = Console()
        for row in report.rows[:show]:
            out.print(f"[bold]prompt[/bold] {row.prompt}")
            out.print(f"  [green]with {name}[/green] ({'ok' if row.ok_with else 'miss'}): {row.with_adapter.strip()[:200]}")
            out.print(f"  [blue]base[/blue] ({'ok' if row.ok_without else 'miss'}): {row.without_adapter.strip()[:200]}")
        table = Table("adapter", "metric", "n", f"with {name}", "without (base)", "seconds", box=None)
        table.add_row(name, f"{chosen.name}: {chosen.description}", str(report.n), f"{report.with_score:.0%}",
                      f"{report.without_score:.0%}", f"{report.seconds:.0f}")
        out.print(table)

    @app.command()
    def demo(
        ctx: typer.Context,
        model: Annotated[str | None, typer.Option("--model", "-m", help="Base model (default: the embedded SmolLM2-135M-Instruct).")] = None,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Token budget per answer.")] = 56,
        threads: Annotated[int | None, option_threads()] = None,
    ) -> None:
        """Prepare the default model and show the shipped adapters at work: answers, hot-swap, composition, routing."""
        from ..cli import get_pm
        from ..demo import run_demo

        _set_threads(threads)
        run_demo(model=model, pm=get_pm(ctx), max_new_tokens=max_new_tokens)


def _save_trained(am: Any, name: str, base_name: str, fields: dict[str, Any], output: Path | None, force: bool) -> Path:
    """Install the trained adapter into the library, or write its folder to *output*; return where it went."""
    from ..library import Library

    with tempfile.TemporaryDirectory(prefix="adaptrix-train-") as tmp:
        peft_dir = am.save_adapter(name, Path(tmp) / "peft", base_model_name_or_path=base_name)
        if output is None:
            return Library().install(name, peft_dir, overwrite=force, **fields).path
        staging = Library(Path(tmp) / "lib", shipped_dir=Path(tmp) / "none")
        staged = staging.install(name, peft_dir, **fields).path
        return _move_into(staged, output)


def _move_into(staged: Path, output: Path) -> Path:
    """Put the staged adapter folder at *output* atomically (replacing what is there)."""
    from ..peft_format import replace_dir

    output = output.expanduser().resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        for item in staged.iterdir():
            shutil.copyfile(item, tmp / item.name)
        replace_dir(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
