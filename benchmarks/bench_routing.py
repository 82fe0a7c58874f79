"""
Routing accuracy, latency and cold start: keyword vs semantic router side by side, on two labelled sets.

Adapters are the shipped ones, read from their own ``adapters/*/adaptrix.json`` (never a copy).

- ``tests/data/routing_eval.jsonl``: the development set (its queries were looked at while choosing the
  semantic router's options and the adapters' examples and counter-examples).
- ``tests/data/routing_heldout.jsonl``: the held-out set, written before any tuning and never used to
  choose anything. This is the number a claim rests on.

Each query has a ``kind`` (plain, hard_negative, style, symbols, multilingual); accuracy is also given
per kind. Per router: accuracy, wall-clock p50/p99 per ``route`` call and the routing thread's CPU time
p50 (on a busy shared machine wall time includes waiting for a core). Cold start, in fresh processes:
the first ``route`` after ``import adaptrix_core`` in a process that already imported torch (cache
built by an earlier process, as after any first use), and ``adaptrix route "..."`` end to end.

    python benchmarks/bench_routing.py            # every query routed 3 times, 3 cold starts each
    python benchmarks/bench_routing.py --quick    # once, 1 cold start each

Targets (issue #11): held-out accuracy >= 90%, plain requests >= 97%, p50 <= 10 ms per route,
first route <= 2 s, ``adaptrix route`` <= 5 s wall.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from common import print_table, write_results


SETS = {"dev": ROOT / "tests" / "data" / "routing_eval.jsonl", "held-out": ROOT / "tests" / "data" / "routing_heldout.jsonl"}
FIRST_ROUTE = """
import time
import torch
start = time.perf_counter()
import adaptrix_core
from adaptrix_core.routing import route
imported, cpu = time.perf_counter(), time.process_time()
choice = route("Sprich wie ein Pirat: wie wird das Wetter morgen?", "semantic").choice
print(imported - start, time.perf_counter() - imported, time.process_time() - cpu, choice)
"""


def shipped_adapters() -> list[Any]:
    from adaptrix_core.library import Library

    return Library(ROOT / "no-user-library", shipped_dir=ROOT / "adapters").list()


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
        "kinds": {k: {"correct": c, "total": t, "accuracy": c / t} for k, (c, t) in first.kinds.items()},
        "p50_ms": percentile(wall, 50),
        "p99_ms": percentile(wall, 99),
        "cpu_p50_ms": percentile(cpu, 50),
        "cpu_p99_ms": percentile(cpu, 99),
        "confusion": {k: dict(v) for k, v in first.confusion.items()},
        "mistakes": [{"query": q, "expected": e, "predicted": p} for q, e, p in first.mistakes],
    }


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(wall s, child CPU s, stdout) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def cold_start(runs: int) -> dict[str, Any]:
    """First route in fresh processes (torch already imported) and ``adaptrix route`` end to end."""
    home = Path(tempfile.mkdtemp(prefix="adaptrix-bench-routing-home-"))
    env = {**os.environ, "ADAPTRIX_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    adaptrix = shutil.which("adaptrix") or str(Path(sys.executable).with_name("adaptrix"))
    try:
        first_ever = _timed([sys.executable, "-c", FIRST_ROUTE], env)  # builds the prepared encoder and the fit
        routes, clis = [], []
        for _ in range(runs):
            _, _, out = _timed([sys.executable, "-c", FIRST_ROUTE], env)
            imported, first, first_cpu, choice = out.split()
            routes.append({"import_s": float(imported), "first_route_s": float(first),
                           "first_route_cpu_s": float(first_cpu), "choice": choice})
            wall, cpu, out = _timed([adaptrix, "route", "Sprich wie ein Pirat: wie wird das Wetter morgen?"], env)
            clis.append({"wall_s": wall, "cpu_s": cpu, "chose_pirate": "chose pirate" in out})
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "first_ever_process": {"wall_s": first_ever[0], "first_route_s": float(first_ever[2].split()[1])},
        "first_route": routes,
        "cli_route": clis,
    }


def main(quick: bool = False) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adaptrix_core.builtins.routers import KeywordRouter
    from adaptrix_core.routing import read_eval_set

    from adaptrix_plugin_semantic_router import SemanticRouter

    repeats = 1 if quick else 3
    adapters = shipped_adapters()
    results: dict[str, Any] = {"sets": {}, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="adaptrix-bench-routing-") as cache:
        semantic = SemanticRouter(cache_dir=cache)
        start = time.perf_counter()
        semantic.prepare(adapters)
        results["fit_s"] = time.perf_counter() - start  # first ever: prepare the encoder, embed, fit, calibrate
        for name, path in SETS.items():
            items = read_eval_set(path, adapters)
            rows = [run_router("keyword", KeywordRouter(), items, adapters, repeats),
                    run_router("semantic", semantic, items, adapters, repeats)]
            results["sets"][name] = {"file": str(path.relative_to(ROOT)), "rows": rows}
    results["cold_start"] = cold_start(1 if quick else 3)
    results["load_average"] = os.getloadavg()
    report(results)
    write_results("routing", results)
    return results


def report(results: dict[str, Any]) -> None:
    """Print the tables and fill in ``results["targets_met"]``."""
    kinds = ("plain", "hard_negative", "style", "symbols", "multilingual")
    rows = []
    for name, data in results["sets"].items():
        for r in data["rows"]:
            per_kind = [f"{r['kinds'][k]['accuracy']:.1%}" if k in r["kinds"] else "-" for k in kinds]
            rows.append([name, r["router"], f"{r['accuracy']:.1%} ({r['correct']}/{r['total']})", *per_kind,
                         r["p50_ms"], r["p99_ms"], r["cpu_p50_ms"]])
    load = results["load_average"]
    print_table(
        f"routing over the shipped adapters; load average {load[0]:.1f} on {os.cpu_count()} CPUs",
        ["set", "router", "accuracy", *kinds, "p50 ms", "p99 ms", "CPU p50 ms"],
        rows,
    )
    cold = results["cold_start"]
    print_table(
        "cold start (fresh processes, disk cache from an earlier process)",
        ["run", "import adaptrix_core s", "first route s", "its CPU s", "adaptrix route wall s", "its CPU s"],
        [[i + 1, r["import_s"], r["first_route_s"], r["first_route_cpu_s"], c["wall_s"], c["cpu_s"]]
         for i, (r, c) in enumerate(zip(cold["first_route"], cold["cli_route"], strict=True))],
    )
    held = next(r for r in results["sets"]["held-out"]["rows"] if r["router"] == "semantic")
    plain = [r["kinds"]["plain"] for d in results["sets"].values() for r in d["rows"] if r["router"] == "semantic"]
    plain_acc = sum(p["correct"] for p in plain) / sum(p["total"] for p in plain)
    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    first = median([r["first_route_s"] for r in cold["first_route"]])
    first_cpu = median([r["first_route_cpu_s"] for r in cold["first_route"]])
    cli = median([c["wall_s"] for c in cold["cli_route"]])
    cli_cpu = median([c["cpu_s"] for c in cold["cli_route"]])
    results["measured"] = {
        "heldout_accuracy": held["accuracy"],
        "plain_accuracy": plain_acc,
        "p50_ms (wall)": held["p50_ms"],
        "p50_ms (CPU time)": held["cpu_p50_ms"],
        "first_route_s (wall, median)": first,
        "first_route_s (CPU time, median)": first_cpu,
        "cli_route_s (wall, median)": cli,
        "cli_route_s (CPU time, median)": cli_cpu,
    }
    limits = {"heldout_accuracy": 0.90, "plain_accuracy": 0.97, "p50_ms": 10.0, "first_route_s": 2.0, "cli_route_s": 5.0}
    results["targets_met"] = {
        k: (v >= limits[k.split(" ")[0]] if "accuracy" in k else v <= limits[k.split(" ")[0]])
        for k, v in results["measured"].items()
    }
    results["targets"] = limits
    print_table("targets", ["measured", "value", "target", "met"],
                [[k, v, limits[k.split(" ")[0]], results["targets_met"][k]] for k, v in results["measured"].items()])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Route every query once and start cold once.")
    main(quick=parser.parse_args().quick)
