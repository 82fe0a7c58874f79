"""
Plans under churn: what a new selection or a new row mix costs on its first forward, and the memory plans hold.

The switch itself (``set_active``) touches no tensor; the first forward under a new selection builds each
wrapper's plan. Measured on the embedded SmolLM2-135M-Instruct with the four shipped adapters, one thread,
a one-token forward at batch 1 (selections) or 8 (row mixes), fastest of several rounds:

- switch only; every wrapper's plan built (timed directly: forwards on a busy machine are too noisy to
  take differences); switch + first forward; a forward with the plans cached;
- for one adapter, a two-adapter composition, and a mixed batch whose row mix is new every time (as under
  continuous batching, where rows join and leave at every step), with the bank against stacks copied per mix
  (what a new row mix cost before);
- cached plan and bank bytes against the adapters' own bytes, as the cache's budget now counts them.

    python benchmarks/bench_plans.py
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results  # noqa: E402


ADAPTERS = ("pirate", "json", "french", "arithmetic")


def _best(fn: Any, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(quick: bool = False) -> dict[str, Any]:
    import torch

    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.selection import make_choice

    torch.set_num_threads(1)
    rounds = 5 if quick else 15
    engine = AdaptrixEngine()
    for name in ADAPTERS:
        engine.load_adapter(name, activate=False)
    am = engine.am
    wrappers = len(am._wrappers)
    one = torch.tensor([[1]])
    rows_results = []

    def forward(ids: torch.Tensor) -> None:
        with torch.inference_mode():
            am.model(input_ids=ids)

    wrapper_list = [w for w in am._wrappers.values() if w.loras]

    def build_all(choice: Any) -> None:
        with torch.inference_mode():
            for w in wrapper_list:
                w._plan(choice)

    for label, selection in (("one adapter", "pirate"), ("composition of two", {"pirate": 1.0, "json": 0.6})):
        switch = _best(lambda sel=selection: (am.set_active(None), am.set_active(sel)), 200) / 2
        choice = make_choice(selection)
        build = _best(lambda c=choice: (am.drop_plans(), build_all(c)), rounds)

        def first(sel: Any = selection) -> None:
            am.drop_plans()
            am.set_active(sel)
            forward(one)

        am.set_active(selection)
        forward(one)
        cached = _best(lambda: forward(one), rounds)
        cold = _best(first, rounds)
        rows_results.append([label, switch * 1e6, build * 1e3, cold * 1e3, cached * 1e3])
    am.set_active(None)

    rows_results += _row_mixes(am, wrapper_list, build_all, forward, rounds)
    adapter_bytes = sum(am.resident_bytes(n) for n in ADAPTERS)
    plan_bytes = am.plan_bytes()
    stats = engine.cache.stats()
    engine.close()
    print_table(
        f"Plans on SmolLM2-135M ({wrappers} wrappers), 1 thread, fastest of {rounds}",
        ["selection", "switch us", "plans built, all wrappers ms", "switch + first forward ms", "forward, plans cached ms"],
        rows_results,
    )
    print(f"cached plans + banks: {plan_bytes} bytes = {plan_bytes / adapter_bytes:.2f}x the adapters' "
          f"{adapter_bytes} bytes; the cache counts {stats['resident_bytes']} resident bytes")
    result = {
        "wrappers": wrappers, "rounds": rounds,
        "rows": [dict(zip(["selection", "switch_us", "plan_build_ms", "switch_first_forward_ms", "cached_forward_ms"], r))
                 for r in rows_results],
        "plan_bytes": plan_bytes, "adapter_bytes": adapter_bytes, "plan_over_adapter_bytes": plan_bytes / adapter_bytes,
        "cache_resident_bytes": stats["resident_bytes"],
    }
    write_results("plans", result)
    return result


def _row_mixes(am: Any, wrapper_list: list[Any], build_all: Any, forward: Any, rounds: int) -> list[list[Any]]:
    """A batch of 8 whose row mix is new every time: plans from the bank against stacks copied per mix."""
    import torch

    from adaptrix_core.lora_layer import _Bank
    from adaptrix_core.selection import make_row_choice

    eight = torch.tensor([[1]] * 8)
    rows: list[list[Any]] = []
    base_mix = [*ADAPTERS, None, None, *ADAPTERS[:2]]
    mixes = itertools.cycle(list(itertools.permutations(base_mix, 8))[:5000])
    build_all(make_row_choice(base_mix))  # the bank now holds the four adapters

    def new_mix_plans() -> None:
        build_all(make_row_choice(list(next(mixes))))

    def rebuilt_stacks() -> None:  # what a row mix cost before banks: fresh stacks copied per mix
        with torch.inference_mode():
            for w in wrapper_list:
                bank = _Bank.for_loras(w, dict(w.loras), None)
                for name, lora in w.loras.items():
                    bank.slot(name, lora)

    churn = _best(new_mix_plans, rounds)
    copies = _best(rebuilt_stacks, rounds)
    with am.using_rows(base_mix):
        forward(eight)
        cached = _best(lambda: forward(eight), rounds)

    def new_mix() -> None:
        with am.using_rows(list(next(mixes))):
            forward(eight)

    rows.append(["batch of 8, new row mix (bank)", None, churn * 1e3, _best(new_mix, rounds) * 1e3, cached * 1e3])
    rows.append(["batch of 8, stacks copied per mix", None, copies * 1e3, None, None])
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer rounds.")
    main(quick=parser.parse_args().quick)
