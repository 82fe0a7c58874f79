"""
torch thread settings for decoding, on the machine as it is and with one extra busy neighbour.

A KV-cached decode step of the embedded SmolLM2-135M-Instruct at batch 1 and 32 (median of the steps), for:
one thread; every usable core; every core with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep instead of
spinning); and Adaptrix's default policy (:mod:`adaptrix_core.threads`) both as the ``adaptrix`` command
starts it (passive waits after a short GNU OpenMP spin, every core) and in a process whose OpenMP spins
(half the cores). Each setting
runs in a fresh process (OpenMP reads its environment once), first alone, then while one, then two,
competitor processes (one thread of matmuls each, like other jobs on the box) run. The load average is
recorded with every row: on a shared machine it is part of the result.

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
import json, statistics, sys, time
from adaptrix_core.threads import configure_threads, prefer_passive_wait
if sys.argv[3] == "cli":
    prefer_passive_wait()  # as the adaptrix command does first, before torch is imported
import torch
from adaptrix_core.models import load_base_model
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


def run_setting(threads: str, env_extra: dict[str, str], steps: int, mode: str) -> dict[str, Any]:
    """One setting in a fresh process; *mode* ``"cli"`` starts OpenMP as the adaptrix command does."""
    env = {**os.environ, **env_extra, "HF_HUB_OFFLINE": "1"}
    for name in ("OMP_NUM_THREADS", "ADAPTRIX_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        if name not in env_extra:
            env.pop(name, None)
    done = subprocess.run([sys.executable, "-c", STEP_SCRIPT, threads, str(steps), mode], env=env, capture_output=True,
                          text=True, timeout=1800, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool = False) -> dict[str, Any]:
    from adaptrix_core.threads import default_threads, usable_cores

    cores = usable_cores()
    steps = 6 if quick else 16
    settings = [
        ("1 thread", "1", {}, "plain"),
        (f"all cores ({cores})", str(cores), {}, "plain"),
        (f"all cores ({cores}), OMP_WAIT_POLICY=PASSIVE", str(cores), {"OMP_WAIT_POLICY": "PASSIVE"}, "plain"),
        (f"default, as the adaptrix command starts ({default_threads(passive=True)}, passive after a short spin)",
         "default", {}, "cli"),
        (f"default, OpenMP spinning ({default_threads(passive=False)})", "default", {}, "plain"),
    ]
    rows = []
    for neighbours in (0, 1, 2):
        competitors = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(neighbours)]
        try:
            time.sleep(1.0 if neighbours else 0.0)
            for label, threads, extra, mode in settings:
                load = os.getloadavg()[0]
                result = run_setting(threads, extra, steps, mode)
                rows.append({"setting": label, "neighbours": neighbours, "load_avg": load, **result})
                print(f"  {label:<52} neighbours={neighbours} load {load:.1f}: b1 {result['step_ms_b1']:.0f} ms, "
                      f"b32 {result['step_ms_b32']:.0f} ms, {result['threads']} thread(s)", flush=True)
        finally:
            for competitor in competitors:
                competitor.kill()
                competitor.wait()
    print_table(
        f"Decode step of SmolLM2-135M by thread setting ({cores} usable cores), median of {steps} steps",
        ["setting", "busy neighbours", "load avg", "step ms, batch 1", "step ms, batch 32"],
        [[r["setting"], r["neighbours"], r["load_avg"], r["step_ms_b1"], r["step_ms_b32"]] for r in rows],
    )
    result = {"cores": cores, "steps": steps, "rows": rows}
    write_results("threads", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer steps per setting.")
    main(quick=parser.parse_args().quick)
