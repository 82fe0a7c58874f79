"""
Routing accuracy and latency on the labelled set, keyword vs semantic router side by side.

The set is ``tests/data/routing_eval.jsonl`` (248 queries: the four demo adapters plus off-topic
queries that must go to the base model). Adapters are the demo adapters' metadata from the library
when all four are installed or shipped, else ``tests/data/demo_adapters.json`` (the same texts).

Per router: accuracy, wall-clock p50/p99 per ``route`` call, and the routing thread's CPU time p50
(on a shared, busy machine wall time includes waiting for a core; CPU time is what an idle core
would take). The semantic router is measured as shipped (int8, one thread) and in float32, and its
start-up is timed cold (load the model, embed the adapters) and warm (embeddings from the disk cache).

    python benchmarks/bench_routing.py            # every query routed 3 times
    python benchmarks/bench_routing.py --quick    # once

Targets (issue #6): semantic accuracy >= 95%, semantic p50 <= 10 ms per query on this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import print_table, write_results


EVAL_SET = ROOT / "tests" / "data" / "routing_eval.jsonl"
DEMO_FILE = ROOT / "tests" / "data" / "demo_adapters.json"
DEMO_NAMES = ("arithmetic", "french", "json", "pirate")


def demo_adapters() -> tuple[list[Any], str]:
    """The four demo adapters' metadata, from the library if it has them all, else from the test data."""
    from adaptrix_core.library import Library
    from adaptrix_core.types import AdapterInfo

    try:
        infos = [i for i in Library().list() if i.name in DEMO_NAMES]
    except Exception:  # no library yet: fall back to the test data
        infos = []
    if len(infos) == len(DEMO_NAMES) and all(i.description and i.examples for i in infos):
        return infos, "library"
    infos = [AdapterInfo(**a) for a in json.loads(DEMO_FILE.read_text(encoding="utf-8"))]
    return infos, str(DEMO_FILE.relative_to(ROOT))


def run_router(label: str, router: Any, items: list[Any], adapters: list[Any], repeats: int) -> dict[str, Any]:
    from adaptrix_core.routing import evaluate, percentile

    results = [evaluate(router, items, adapters) for _ in range(repeats)]
    wall = [t for r in results for t in r.latencies_ms]
    cpu = [t for r in results for t in r.cpu_ms]
    first = results[0]
    return {
        "router": label,
        "accuracy": first.accuracy,
        "correct": first.correct,
        "total": first.total,
        "p50_ms": percentile(wall, 50),
        "p99_ms": percentile(wall, 99),
        "cpu_p50_ms": percentile(cpu, 50),
        "cpu_p99_ms": percentile(cpu, 99),
        "confusion": {k: dict(v) for k, v in first.confusion.items()},
        "mistakes": [{"query": q, "expected": e, "predicted": p} for q, e, p in first.mistakes],
    }


def main(quick: bool = False) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adaptrix_core.builtins.routers import KeywordRouter
    from adaptrix_core.routing import read_eval_set

    from adaptrix_plugin_semantic_router import SemanticRouter

    repeats = 1 if quick else 3
    adapters, source = demo_adapters()
    items = read_eval_set(EVAL_SET, adapters)
    rows, startup = [], {}
    rows.append(run_router("keyword", KeywordRouter(), items, adapters, repeats))
    with tempfile.TemporaryDirectory(prefix="adaptrix-bench-routing-") as cache:
        for label, options in (("semantic (int8, shipped)", {}), ("semantic (float32)", {"quantize": False})):
            start = time.perf_counter()
            router = SemanticRouter(cache_dir=cache, **options)
            router.prepare(adapters)
            cold = time.perf_counter() - start
            start = time.perf_counter()
            SemanticRouter(cache_dir=cache, **options).prepare(adapters)  # shares the loaded model: cache read only
            warm = time.perf_counter() - start
            startup[label] = {"cold_s": cold, "warm_cache_s": warm}
            rows.append(run_router(label, router, items, adapters, repeats))
    load = os.getloadavg()
    print_table(
        f"routing on {len(items)} labelled queries ({source}); load average {load[0]:.1f} on {os.cpu_count()} CPUs",
        ["router", "accuracy", "correct", "p50 ms", "p99 ms", "CPU p50 ms", "CPU p99 ms"],
        [[r["router"], r["accuracy"], f"{r['correct']}/{r['total']}", r["p50_ms"], r["p99_ms"], r["cpu_p50_ms"],
          r["cpu_p99_ms"]] for r in rows],
    )
    print_table(
        "semantic router start-up (s)",
        ["router", "cold: load model + embed adapters", "warm: embeddings from disk cache"],
        [[k, v["cold_s"], v["warm_cache_s"]] for k, v in startup.items()],
    )
    shipped = rows[1]
    targets = {"semantic_accuracy": 0.95, "semantic_p50_ms": 10.0}
    result = {
        "eval_set": str(EVAL_SET.relative_to(ROOT)),
        "adapters_from": source,
        "repeats": repeats,
        "load_average": load,
        "rows": rows,
        "startup": startup,
        "targets": targets,
        "targets_met": {
            "semantic_accuracy": shipped["accuracy"] >= targets["semantic_accuracy"],
            "semantic_p50_ms (wall)": shipped["p50_ms"] <= targets["semantic_p50_ms"],
            "semantic_p50_ms (CPU time)": shipped["cpu_p50_ms"] <= targets["semantic_p50_ms"],
        },
    }
    write_results("routing", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Route every query once instead of three times.")
    main(quick=parser.parse_args().quick)
