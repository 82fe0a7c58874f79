"""
Routing helpers shared by the CLI, the engine and the benchmarks.

``route()`` asks a registered router about one query over the library's
adapters; ``decide()`` turns a router's scored candidates into a ``Routing``
(threshold to the base model, resident preference on near ties, top-k weights,
the reason), the part every router shares; ``read_eval_set()`` and
``evaluate()`` measure a router on a labelled JSONL file (accuracy, confusion
matrix, latency percentiles), which backs ``adaptrix route-eval`` and
``benchmarks/bench_routing.py``. Importing this module never imports torch.
"""

from __future__ import annotations

import json
import math
import threading
import time

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .exceptions import RoutingError
from .types import AdapterInfo, RouteCandidate, Router, Routing


if TYPE_CHECKING:
    import pluggy

    from .library import Library


BASE_LABEL = "(base)"
"""How the base model (no adapter) appears in confusion matrices."""

_ROUTERS: dict[tuple[type, tuple[tuple[str, Any], ...]], Router] = {}
_ROUTERS_LOCK = threading.Lock()


PREFERRED_ROUTERS = ("semantic", "keyword")
"""What ``router = "auto"`` means: the first of these that is registered."""


def resolve_router_name(name: str | None = None, pm: pluggy.PluginManager | None = None) -> str:
    """*name*, or the configured router; ``auto`` becomes the best registered one (semantic, else keyword)."""
    from .registry import routers

    if name is None:
        from .config import load_config

        name = load_config().router
    if name != "auto":
        return name
    registered = routers(pm)
    return next((n for n in PREFERRED_ROUTERS if n in registered), "keyword")


def get_router(name: str | None = None, pm: pluggy.PluginManager | None = None, **options: Any) -> Router:
    """
    The router instance registered as *name* (default: ``load_config().router``), built once per process.

    Routers may hold a model (the semantic one does), so instances are shared
    per class and options instead of being rebuilt for every query.

    Raises:
        NotRegisteredError: No router of that name; the message lists the registered ones.
        RoutingError: The router rejected *options*.
    """
    from .registry import get_router_class

    name = resolve_router_name(name, pm)
    cls = get_router_class(name, pm)
    key = (cls, tuple(sorted(options.items())))
    with _ROUTERS_LOCK:
        router = _ROUTERS.get(key)
        if router is None:
            try:
                router = cls(**options)
            except TypeError as e:
                raise RoutingError(f"router {name!r} does not accept these options {sorted(options)}: {e}.") from None
            _ROUTERS[key] = router
    return router


def check_routing(routing: Any, router_name: str, adapters: Sequence[AdapterInfo]) -> Routing:
    """Return *routing* if it is a valid decision over *adapters*, else raise ``RoutingError``."""
    if not isinstance(routing, Routing):
        raise RoutingError(f"router {router_name!r} returned {type(routing).__name__}, not a Routing.")
    known = {a.name for a in adapters}
    unknown = set(routing.adapters) - known
    if unknown:
        raise RoutingError(
            f"router {router_name!r} chose unknown adapter(s) {sorted(unknown)}; known: {sorted(known)}."
        )
    bad = {k: w for k, w in routing.adapters.items() if not (isinstance(w, int | float) and math.isfinite(w) and w > 0)}
    if bad:
        raise RoutingError(f"router {router_name!r} gave invalid weights {bad}; weights must be positive numbers.")
    return routing


def route(
    query: str,
    router_name: str | None = None,
    library: Library | None = None,
    pm: pluggy.PluginManager | None = None,
    resident: Collection[str] = (),
    *,
    adapters: Sequence[AdapterInfo] | None = None,
) -> Routing:
    """
    Route *query* over the library's adapters (or the given *adapters*) with router *router_name*.

    *resident* names adapters already in memory; routers prefer them on near ties.
    """
    if adapters is None:
        if library is None:
            from .library import Library

            library = Library()
        adapters = library.list()
    router = get_router(router_name, pm)
    name = getattr(router, "name", router_name or "?")
    return check_routing(router.route(query, adapters, resident=resident), name, adapters)


def routing_to_dict(routing: Routing) -> dict[str, Any]:
    """
    *routing* as plain JSON-able data: what ``adaptrix route`` shows (and ``--json`` prints).

    ``{"router", "choice", "adapters": {name: weight}, "reason", "candidates": [{"adapter", "score",
    "weight", "reason"}]}``; a candidate's ``weight`` is its composition weight, 0.0 if not chosen.
    """
    chosen = dict(routing.adapters)
    return {
        "router": routing.router,
        "choice": routing.choice,
        "adapters": chosen,
        "reason": routing.reason,
        "candidates": [
            {"adapter": c.adapter, "score": c.score, "weight": chosen.get(c.adapter, 0.0), "reason": c.reason}
            for c in routing.candidates
        ],
    }


def route_report(
    query: str,
    router_name: str | None = None,
    library: Library | None = None,
    pm: pluggy.PluginManager | None = None,
    resident: Collection[str] = (),
) -> dict[str, Any]:
    """Route *query* and return every candidate's score and why as plain data (see :func:`routing_to_dict`)."""
    return routing_to_dict(route(query, router_name, library, pm, resident))


def proportional_weights(scores: Sequence[float]) -> list[float]:
    """Composition weights proportional to *scores* (``score / sum``); the keyword router's weighting."""
    total = sum(scores)
    return [s / total for s in scores]


def decide(
    candidates: Iterable[RouteCandidate],
    *,
    router: str,
    threshold: float,
    top_k: int = 1,
    resident: Collection[str] = (),
    tie_margin: float = 0.0,
    tie: Literal["absolute", "relative"] = "absolute",
    weights: Callable[[list[float]], Sequence[float]] = proportional_weights,
) -> Routing:
    """
    Turn scored *candidates* into a router's decision: what a router does once it has scores.

    1. Candidates are ordered best first (a stable sort by score, so the
       router's own order breaks ties). If none scores at least *threshold*,
       the base model answers: ``"base model: best X scored 0.12, below threshold 0.50"``.
    2. If the best candidate is not *resident* (not in memory), the first resident
       one within *tie_margin* of it takes its place, noted in the reason as
       ``"(resident, within 0.02 of X)"``. With ``tie="absolute"`` "within" means
       ``best - score <= tie_margin``; with ``tie="relative"`` it means
       ``score >= best * (1 - tie_margin)`` and the note shows a percentage.
    3. The first *top_k* candidates above the threshold are chosen and
       ``weights([their scores])`` (one weight per score, in order) gives their
       composition weights; the default is proportional to the scores.
    4. The reason is ``"name:weight + name:weight<note>; <first chosen's reason>"``.

    Every candidate is kept in ``Routing.candidates``, best first.

    Raises:
        ValueError: *top_k* is below 1 or *tie* is not ``"absolute"`` or ``"relative"``.
        RoutingError: *weights* returned a different number of weights than it was given scores.
    """
    if top_k < 1:
        raise ValueError(f"decide: top_k must be >= 1, got {top_k}")
    if tie not in ("absolute", "relative"):
        raise ValueError(f"decide: tie must be 'absolute' or 'relative', got {tie!r}")
    ranked = sorted(candidates, key=lambda c: -c.score)
    above = [c for c in ranked if c.score >= threshold]
    if not above:
        best = f"best {ranked[0].adapter} scored {ranked[0].score:.2f}" if ranked else "no adapters"
        return Routing({}, ranked, router, f"base model: {best}, below threshold {threshold:.2f}")
    resident = set(resident)
    top = above[0]
    note = ""
    if top.adapter not in resident:
        for c in above[1:]:
            if tie == "relative":
                near = c.score >= top.score * (1.0 - tie_margin)
            else:
                near = top.score - c.score <= tie_margin
            if c.adapter in resident and near:
                margin = f"{tie_margin:.0%}" if tie == "relative" else f"{tie_margin:.2f}"
                note = f" (resident, within {margin} of {top.adapter})"
                above.remove(c)
                above.insert(0, c)
                break
    chosen = above[:top_k]
    given = list(weights([c.score for c in chosen]))
    if len(given) != len(chosen):
        raise RoutingError(
            f"router {router!r}: its weights function returned {len(given)} weights for {len(chosen)} adapters."
        )
    selection = {c.adapter: w for c, w in zip(chosen, given, strict=True)}
    names = " + ".join(f"{c.adapter}:{selection[c.adapter]:.2f}" for c in chosen)
    return Routing(selection, ranked, router, f"{names}{note}; {chosen[0].reason}")


@attrs.frozen
class EvalItem:
    """One labelled query: the adapter that should answer it, or ``None`` for the base model."""

    query: str
    expected: str | None
    line: int = 0
    kind: str = ""
    """Optional category (``plain``, ``hard_negative``, ...): accuracy is also reported per kind."""


def read_eval_set(path: str | Path, adapters: Sequence[AdapterInfo] | None = None) -> list[EvalItem]:
    """
    Read a JSONL file of ``{"query": ..., "expected": "adapter-name" | null, "kind": "..."}`` lines (kind optional).

    When *adapters* is given, every expected name must be one of them.

    Raises:
        RoutingError: The file is missing, a line is not such an object, or names an unknown adapter.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RoutingError(f"{path}: cannot read the evaluation file ({e}). Fix: pass a UTF-8 JSONL file.") from None
    known = {a.name for a in adapters} if adapters is not None else None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise RoutingError(f"{where}: not valid JSON ({e}).") from None
        if not isinstance(row, dict) or not isinstance(row.get("query"), str) or not row["query"].strip():
            raise RoutingError(f'{where}: expected {{"query": "...", "expected": "adapter-name" or null}}.')
        expected = row.get("expected")
        if expected is not None and not isinstance(expected, str):
            raise RoutingError(f"{where}: 'expected' must be an adapter name or null, got {expected!r}.")
        if expected in ("", "base", BASE_LABEL):
            expected = None
        if known is not None and expected is not None and expected not in known:
            raise RoutingError(
                f"{where}: expected adapter {expected!r} is not available; "
                f"known: {', '.join(sorted(known)) or 'none'}. "
                "Fix: install it, or correct the label."
            )
        kind = row.get("kind", "")
        if not isinstance(kind, str):
            raise RoutingError(f"{where}: 'kind' must be a string, got {kind!r}.")
        items.append(EvalItem(row["query"], expected, number, kind))
    if not items:
        raise RoutingError(f"{path}: no queries found. Fix: one JSON object per line.")
    return items


def percentile(values: Sequence[float], p: float) -> float:
    """The *p*-th percentile (nearest rank) of *values*; 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@attrs.frozen
class EvalResult:
    """A router's score on a labelled set."""

    router: str
    total: int
    correct: int
    labels: tuple[str, ...]
    confusion: Mapping[str, Mapping[str, int]]
    """expected label -> predicted label -> count (``BASE_LABEL`` for the base model)."""
    latencies_ms: tuple[float, ...]
    mistakes: tuple[tuple[str, str, str], ...]
    """(query, expected, predicted) for every wrong decision."""
    cpu_ms: tuple[float, ...] = ()
    """CPU time of the routing thread per query: the latency an idle core would see, on a busy machine."""
    kinds: Mapping[str, tuple[int, int]] = attrs.field(factory=dict)
    """kind -> (correct, total), for the items that name a kind."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies_ms, 50)

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_ms, 99)

    @property
    def cpu_p50_ms(self) -> float:
        return percentile(self.cpu_ms, 50)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (without the raw latencies)."""
        return {
            "router": self.router,
            "total": self.total,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "cpu_p50_ms": self.cpu_p50_ms,
            "kinds": {k: {"correct": c, "total": t, "accuracy": c / t} for k, (c, t) in self.kinds.items()},
            "labels": list(self.labels),
            "confusion": {k: dict(v) for k, v in self.confusion.items()},
            "mistakes": [{"query": q, "expected": e, "predicted": p} for q, e, p in self.mistakes],
        }


def _label(name: str | None) -> str:
    return BASE_LABEL if name is None else name


def evaluate(
    router: Router,
    items: Sequence[EvalItem],
    adapters: Sequence[AdapterInfo],
    *,
    resident: Collection[str] = (),
    warmup: bool = True,
) -> EvalResult:
    """
    Route every item and compare with its label; time each ``route`` call.

    With *warmup*, one untimed call first lets a router load its model and embed
    the adapters, so the percentiles measure steady-state routing.
    """
    name = getattr(router, "name", type(router).__name__)
    if warmup and items:
        router.route(items[0].query, adapters, resident=resident)
    labels = [*sorted(a.name for a in adapters), BASE_LABEL]
    confusion: dict[str, dict[str, int]] = {}
    latencies, cpu, mistakes, correct = [], [], [], 0
    kinds: dict[str, tuple[int, int]] = {}
    for item in items:
        start, start_cpu = time.perf_counter(), time.thread_time()
        routing = router.route(item.query, adapters, resident=resident)
        latencies.append((time.perf_counter() - start) * 1000.0)
        cpu.append((time.thread_time() - start_cpu) * 1000.0)
        routing = check_routing(routing, name, adapters)
        expected, predicted = _label(item.expected), _label(routing.choice)
        row = confusion.setdefault(expected, {})
        row[predicted] = row.get(predicted, 0) + 1
        right = expected == predicted
        correct += right
        if not right:
            mistakes.append((item.query, expected, predicted))
        if item.kind:
            done, seen = kinds.get(item.kind, (0, 0))
            kinds[item.kind] = (done + right, seen + 1)
    for label in (*confusion, *(p for row in confusion.values() for p in row)):
        if label not in labels:
            labels.insert(-1, label)
    return EvalResult(
        name, len(items), correct, tuple(labels), confusion, tuple(latencies), tuple(mistakes), tuple(cpu), kinds
    )


__all__ = [
    "BASE_LABEL",
    "EvalItem",
    "EvalResult",
    "check_routing",
    "decide",
    "evaluate",
    "get_router",
    "percentile",
    "proportional_weights",
    "read_eval_set",
    "route",
    "route_report",
    "routing_to_dict",
]
