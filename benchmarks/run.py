"""
Run every benchmark (``bench_*.py``) in one go; each prints its table and writes benchmarks/results/<name>.json.

    .venv/bin/python benchmarks/run.py            # full runs
    .venv/bin/python benchmarks/run.py --quick    # a smaller matrix of each, for a first look
    .venv/bin/python benchmarks/run.py runtime    # only bench_runtime.py
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from pathlib import Path


HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Smaller matrices.")
    parser.add_argument("names", nargs="*", help="Benchmarks to run (default: all), e.g. runtime load server routing.")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE))
    available = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    unknown = set(args.names) - set(available)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; available: {', '.join(available)}")
    for name in args.names or available:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        importlib.import_module(f"bench_{name}").main(quick=args.quick)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
