"""
torch thread settings for decoding, on the machine as it is and with one extra busy neighbour.

A KV-cached decode step of the embedded SmolLM2-135M-Instruct at batch 1 and 32 (median of the steps), for:
one thread; every usable core; every core with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of
spinning); and Adaptrix's default policy (:mod:`adaptrix_core.threads`). Each setting runs in a fresh
process (OpenMP reads its environment once), first alone, then while a competitor process (one thread of
matmuls, like another job on the box) runs. The load average is recorded with every row: on a shared
machine it is part of the result.

    python benchmarks/bench_threads.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results  # noqa: E402


STEP_SCRIPT = r"""
import json, statistics, sys, time, torch
from adaptrix_core.models import load_base_model
from adaptrix_core.threads import configure_threads
threads = int(sys.argv[1]) if sys.argv[1] != "default" else None
used = configure_threads(threads)
model, tok = load_base_model(None)
out = {"threads": used}
for batch in (1, 32):
    ids = torch.randint(100, 1000, (batch, 24))
    with torch.inference_mode():
        res = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, last, times = res.cache, ids[:, -1:], []
        for _ in range(int(sys.argv[2])):
            t = time.perf_counter()
            res = model(input_ids=last, cache=cache, use_cache=True)
            times.append(time.perf_counter() - t)
            cache = res.cache
    out[f"step_ms_b{batch}"] = 1000 * statistics.median(times)
print(json.dumps(out))
"""

COMPETITOR = r"""
import torch
torch.set_num_threads(1)
a = torch.randn(512, 512)
while True:
    a = (a @ a).clamp_(-1, 1)
"""


def run_setting(threads: str, env_extra: dict[str, str], steps: int) -> dict[str, Any]:
    env = {**os.environ, **env_extra, "HF_HUB_OFFLINE": "1"}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", STEP_SCRIPT, threads, str(steps)], env=env, capture_output=True,
                          text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> dict[str, Any]:
    from adaptrix_core.threads import default_threads, usable_cores

    cores = usable_cores()
    steps = 6 if quick else 16
    settings = [
        ("1 thread", "1", {}),
        (f"all cores ({cores})", str(cores), {}),
        (f"all cores ({cores}), OMP_WAIT_POLICY=PASSIVE", str(cores), {"OMP_WAIT_POLICY": "PASSIVE"}),
        (f"default policy ({default_threads()})", "default", {}),
    ]
    rows = []
    for neighbour in (False, True):
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if neighbour else None
        try:
            time.sleep(1.0 if neighbour else 0.0)
            for label, threads, extra in settings:
                load = os.getloadavg()[0]
                result = run_setting(threads, extra, steps)
                rows.append({"setting": label, "neighbour": neighbour, "load_avg": load, **result})
                print(f"  {label:<45} neighbour={neighbour!s:<5} load {load:.1f}: b1 {result['step_ms_b1']:.0f} ms, "
                      f"b32 {result['step_ms_b32']:.0f} ms", flush=True)
        finally:
            if competitor is not None:
                competitor.kill()
                competitor.wait()
    print_table(
        f"Decode step of SmolLM2-135M by thread setting ({cores} usable cores), median of {steps} steps",
        ["setting", "+1 busy neighbour", "load avg", "step ms, batch 1", "step ms, batch 32"],
        [[r["setting"], r["neighbour"], r["load_avg"], r["step_ms_b1"], r["step_ms_b32"]] for r in rows],
    )
    result = {"cores": cores, "steps": steps, "rows": rows}
    write_results("threads", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer steps per setting.")
    main(quick=parser.parse_args().quick)
