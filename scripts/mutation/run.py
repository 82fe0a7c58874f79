"""
Plant known bugs (mutants) one at a time and report which ones the tests miss.

Each mutant in ``mutants.toml`` replaces one exact snippet of one source file
and names the tests that should notice. The runner copies the repository to a
temporary directory, applies one mutant there (your checkout is never
touched), runs those tests with the copy first on ``PYTHONPATH`` and counts
the mutant *killed* when they fail. A mutant whose snippet no longer occurs
exactly once is reported as *stale*: update it when the code moves.

Usage (from the repository root)::

    .venv/bin/python scripts/mutation/run.py                  # every mutant
    .venv/bin/python scripts/mutation/run.py --only runtime   # ids starting with "runtime"
    .venv/bin/python scripts/mutation/run.py --list

Prints a table and writes ``benchmarks/results/mutation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib

from datetime import datetime, timezone
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
COPIED = ("adaptrix_core", "plugins", "tests", "adapters", "pyproject.toml", "docs", "README.md")


def load_mutants(path: Path) -> list[dict]:
    """The mutant list; every entry has id, module, file, find, replace and tests."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    mutants = data.get("mutant", [])
    ids = [m["id"] for m in mutants]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SystemExit(f"{path}: duplicate mutant id(s) {duplicates}")
    for m in mutants:
        missing = {"id", "module", "file", "find", "replace", "tests"} - set(m)
        if missing:
            raise SystemExit(f"{path}: mutant {m.get('id')!r} lacks {sorted(missing)}")
    return mutants


def copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache", "results")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore, symlinks=True)
        elif src.exists():
            shutil.copy2(src, dest / name)


def environment(copy: Path) -> dict[str, str]:
    paths = [str(copy)] + [str(p) for p in sorted((copy / "plugins").glob("*/")) if p.is_dir()]
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join(paths), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def run_one(mutant: dict, copy: Path, timeout: float) -> dict:
    target = copy / mutant["file"]
    original = target.read_text(encoding="utf-8")
    count = original.count(mutant["find"])
    result = {"id": mutant["id"], "module": mutant["module"], "file": mutant["file"],
              "why": mutant.get("why", ""), "tests": mutant["tests"]}
    if count != 1:
        return {**result, "outcome": "stale", "detail": f"snippet found {count} times"}
    target.write_text(original.replace(mutant["find"], mutant["replace"]), encoding="utf-8")
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *mutant["tests"]],
            cwd=copy, env=environment(copy), capture_output=True, text=True, timeout=timeout,
        )
        outcome = "survived" if proc.returncode == 0 else "killed"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))][:3]
        tail = proc.stdout.strip().splitlines()[-1:] or [""]
        detail = "; ".join(lines) or tail[0]
    except subprocess.TimeoutExpired:
        outcome, detail = "killed", f"timed out after {timeout:.0f} s (counted as killed: the tests hung)"
    finally:
        target.write_text(original, encoding="utf-8")
    return {**result, "outcome": outcome, "detail": detail, "seconds": round(time.perf_counter() - started, 1)}


def summarise(results: list[dict]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r in results:
        row = out.setdefault(r["module"], {"killed": 0, "survived": 0, "stale": 0})
        row[r["outcome"]] += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mutants", type=Path, default=Path(__file__).with_name("mutants.toml"))
    parser.add_argument("--only", default="", help="run the mutants whose id starts with this prefix")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant before it counts as hung")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "mutation.json")
    args = parser.parse_args(argv)

    mutants = [m for m in load_mutants(args.mutants) if m["id"].startswith(args.only)]
    if args.list:
        for m in mutants:
            print(f"{m['id']:<40} {m['file']}  {m.get('why', '')}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="adaptrix-mutants-") as tmp:
        copy = Path(tmp)
        copy_tree(copy)
        for i, mutant in enumerate(mutants, 1):
            r = run_one(mutant, copy, args.timeout)
            results.append(r)
            print(f"[{i}/{len(mutants)}] {r['outcome']:<8} {r['id']}  {r.get('detail', '')[:100]}", flush=True)

    summary = summarise(results)
    print(f"\n{'module':<14} {'killed':>6} {'survived':>8} {'stale':>5} {'kill rate':>9}")
    for module, row in sorted(summary.items()):
        live = row["killed"] + row["survived"]
        rate = f"{row['killed'] / live:.0%}" if live else "-"
        print(f"{module:<14} {row['killed']:>6} {row['survived']:>8} {row['stale']:>5} {rate:>9}")
    killed = sum(r["outcome"] == "killed" for r in results)
    live = sum(r["outcome"] != "stale" for r in results)
    print(f"{'all':<14} {killed:>6} {live - killed:>8} {len(results) - live:>5} "
          f"{(killed / live if live else 0):>9.0%}")
    survivors = [r["id"] for r in results if r["outcome"] == "survived"]
    if survivors:
        print("survived: " + ", ".join(survivors))

    args.output.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "summary": summary,
        "results": results,
    }
    tmp_out = args.output.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    tmp_out.replace(args.output)
    print(f"wrote {args.output}")
    return 1 if any(r["outcome"] == "stale" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
