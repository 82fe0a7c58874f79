"""
``adaptrix serve`` under load: throughput and p50/p99 latency with 1, 4 and 16 concurrent clients.

Two loads, side by side in one run, against one real server process on 127.0.0.1:

- **zipf-20**: each request picks one of 20 adapters with Zipf(1.1) popularity,
  and the loader's byte budget holds 5 of them, so the tail misses and evicts;
- **one adapter**: the same requests all on the most popular adapter (always a hit).

Model: the embedded default SmolLM2-135M-Instruct (real weights and tokenizer,
converted once into the cache). Adapters: 20 random LoRA adapters, r=8 on q,v,
with non-zero B (made with the runtime and installed in a temporary library).
The load generator (httpx, asyncio) is bounded: a fixed number of requests per
level and a wall-clock cap, so it always stops by itself. Greedy decoding,
16 tokens per answer (8 with --quick; ``ignore_eos`` makes them all equal), one
prompt (so the scheduler may batch any requests); the full run adds prompts of
varied lengths, with and without ``--mixed-lengths``.

The cost of a miss is reported twice: the loader's own load time (p50), and the
latency of requests that found their adapter cold minus those that found it warm.

    python benchmarks/bench_server.py            # 8/16/48 requests per level, plus the varied-length run
    python benchmarks/bench_server.py --quick    # 3/8/16 requests per level, 8 tokens each

On the busy shared 2-core development box the quick run took about 2 minutes and the full run 12.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results  # noqa: E402


N_ADAPTERS = 20
CACHE_HOLDS = 5
ZIPF_S = 1.1
MAX_TOKENS = {True: 8, False: 16}
"""Tokens per answer (quick, full); ``ignore_eos`` makes every answer exactly this long."""
LEVELS = (1, 4, 16)
PROMPT = "Tell me a long story about a brave little robot."
VARIED_PROMPTS = [
    "Hi!",
    "Tell me a long story about a brave little robot.",
    "What are three good reasons to learn a second language? Explain each one briefly.",
    "Describe the sea.",
    "Write a short letter to a friend who moved to another city last year.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def make_adapters(library_dir: Path, peft_dir: Path) -> int:
    """Install 20 random r=8 q,v adapters for the embedded model; return one adapter's resident bytes."""
    import torch

    from adaptrix_core import attach
    from adaptrix_core.library import Library
    from adaptrix_core.models import load_base_model
    from adaptrix_core.runtime import LoraSpec

    model, _ = load_base_model(None)
    am = attach(model)
    library = Library(library_dir, shipped_dir=library_dir.parent / "none")
    nbytes = 0
    for i in range(N_ADAPTERS):
        name = f"a{i:02d}"
        am.add_adapter(name, LoraSpec(r=8, alpha=16, roles=("attn.q", "attn.v")), seed=i)
        generator = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for tensor in am.adapter_parameters(name):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
        nbytes = am.resident_bytes(name)
        library.install(name, am.save_adapter(name, peft_dir / name), description=f"benchmark adapter {i}")
        am.unload_adapter(name)
    am.detach()
    del model, am
    return nbytes


class Server:
    """An ``adaptrix serve`` subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        command = [str(Path(sys.executable).with_name("adaptrix")), "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.log = log

    def wait(self, timeout: float = 300) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"adaptrix serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"adaptrix serve did not start in {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


async def run_load(
    url: str, jobs: list[tuple[str, str]], clients: int, cap_s: float, max_tokens: int = 16
) -> dict[str, Any]:
    """*clients* workers take jobs (model, prompt) in order until none are left or *cap_s* passes."""
    import httpx

    results: list[dict[str, Any]] = []
    queue = list(reversed(jobs))
    deadline = time.perf_counter() + cap_s

    async def worker(client: httpx.AsyncClient) -> None:
        while queue and time.perf_counter() < deadline:
            model, prompt = queue.pop()
            body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            start = time.perf_counter()
            response = await client.post(f"{url}/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - start
            response.raise_for_status()
            data = response.json()
            results.append({
                "latency_s": elapsed, "tokens": data["usage"]["completion_tokens"],
                "cold": bool(data.get("adaptrix", {}).get("cold")),
            })

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - start
    latencies = [r["latency_s"] * 1000 for r in results]
    cold = [r["latency_s"] * 1000 for r in results if r["cold"]]
    warm = [r["latency_s"] * 1000 for r in results if not r["cold"]]
    tokens = sum(r["tokens"] for r in results)
    return {
        "requests": len(results),
        "wall_s": wall,
        "requests_per_s": len(results) / wall,
        "tokens_per_s": tokens / wall,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "cold_requests": len(cold),
        "cold_p50_ms": _percentile(cold, 0.50),
        "warm_p50_ms": _percentile(warm, 0.50),
    }


def _phase(
    server: Server, name: str, jobs: list[tuple[str, str]], clients: int, cap_s: float, max_tokens: int
) -> dict[str, Any]:
    import httpx

    httpx.post(f"{server.url}/v1/stats/reset", timeout=30).raise_for_status()
    load = asyncio.run(run_load(server.url, jobs, clients, cap_s, max_tokens))
    stats = httpx.get(f"{server.url}/v1/stats", timeout=30).json()
    cache = stats["cache"]
    sched = stats["server"]["scheduler"]
    miss_cost = (
        load["cold_p50_ms"] - load["warm_p50_ms"]
        if load["cold_p50_ms"] is not None and load["warm_p50_ms"] is not None else None
    )
    row = {
        "load": name, "clients": clients, **load,
        "hit_rate": cache["hit_rate"], "misses": cache["misses"], "evictions": cache["evictions"],
        "load_p50_ms": cache["load_ms"]["p50"], "load_p99_ms": cache["load_ms"]["p99"],
        "miss_cost_ms": miss_cost, "mean_batch": sched["mean_batch"], "resident_bytes": cache["resident_bytes"],
        "rss_bytes": cache["memory"]["rss_bytes"],
    }
    print(
        f"  {name:>10} x{clients:<2} {row['requests']} req in {row['wall_s']:.1f} s, {row['tokens_per_s']:.1f} tok/s, "
        f"p50 {row['p50_ms']:.0f} ms, hit rate {row['hit_rate'] if row['hit_rate'] is None else round(row['hit_rate'], 2)}",
        flush=True,
    )
    return row


def main(quick: bool = False, threads: int = 1) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rng = random.Random(0)
    names = [f"a{i:02d}" for i in range(N_ADAPTERS)]
    weights = [1 / (k + 1) ** ZIPF_S for k in range(N_ADAPTERS)]
    per_level = {1: 3, 4: 8, 16: 16} if quick else {1: 8, 4: 16, 16: 48}
    max_tokens = MAX_TOKENS[quick]
    cap_s = 90.0 if quick else 180.0
    tmp = Path(tempfile.mkdtemp(prefix="adaptrix-bench-server-"))
    servers: list[Server] = []
    try:
        print("making 20 adapters for the embedded SmolLM2-135M-Instruct ...", flush=True)
        adapter_bytes = make_adapters(tmp / "library", tmp / "peft")
        budget = CACHE_HOLDS * adapter_bytes + adapter_bytes // 2
        env = {
            **os.environ, "ADAPTRIX_LIBRARY_DIR": str(tmp / "library"), "ADAPTRIX_STATE_DIR": str(tmp / "state"),
            "ADAPTRIX_SHIPPED_ADAPTERS": "", "HF_HUB_OFFLINE": "1",
        }
        env.pop("ADAPTRIX_API_KEY", None)
        common = ["--cache-max-bytes", str(budget), "--threads", str(threads), "--max-batch", "16",
                  "--max-tokens-limit", "64"]
        server = Server(env, common, tmp / "server.log")
        servers.append(server)
        server.wait()
        warm = [(names[0], PROMPT)] * 2
        asyncio.run(run_load(server.url, warm, 1, 60))
        rows = []
        for clients in LEVELS:
            n = per_level[clients]
            one = [(names[0], PROMPT)] * n
            zipf = [(rng.choices(names, weights)[0], PROMPT) for _ in range(n)]
            rows.append(_phase(server, "one", one, clients, cap_s, max_tokens))
            rows.append(_phase(server, "zipf-20", zipf, clients, cap_s, max_tokens))
        varied_rows = []
        if not quick:
            n = per_level[16]
            varied = [(rng.choices(names, weights)[0], rng.choice(VARIED_PROMPTS)) for _ in range(n)]
            varied_rows.append(_phase(server, "varied", varied, 16, cap_s, max_tokens))
            mixed = Server(env, [*common, "--mixed-lengths"], tmp / "server-mixed.log")
            servers.append(mixed)
            mixed.wait()
            asyncio.run(run_load(mixed.url, warm, 1, 60))
            varied_rows.append({**_phase(mixed, "varied", varied, 16, cap_s, max_tokens), "load": "varied+mixed"})
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    by = {(r["load"], r["clients"]): r for r in rows}
    ratios = {
        clients: {
            "tokens_per_s_zipf_over_one": by[("zipf-20", clients)]["tokens_per_s"] / by[("one", clients)]["tokens_per_s"],
            "p50_zipf_over_one": by[("zipf-20", clients)]["p50_ms"] / by[("one", clients)]["p50_ms"],
        }
        for clients in LEVELS
    }
    columns = ["load", "clients", "requests", "req/s", "tok/s", "p50 ms", "p99 ms", "hit rate", "misses", "evictions",
               "load p50 ms", "miss cost ms", "mean batch", "zipf/one tok/s"]
    table = []
    for r in rows + varied_rows:
        ratio = ratios[r["clients"]]["tokens_per_s_zipf_over_one"] if r["load"] == "zipf-20" else None
        table.append([r["load"], r["clients"], r["requests"], r["requests_per_s"], r["tokens_per_s"], r["p50_ms"],
                      r["p99_ms"], r["hit_rate"], r["misses"], r["evictions"], r["load_p50_ms"], r["miss_cost_ms"],
                      r["mean_batch"], ratio])
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print_table(
        f"adaptrix serve, SmolLM2-135M-Instruct (embedded), greedy {max_tokens} tokens, {threads} torch thread(s), "
        f"cache holds {CACHE_HOLDS} of {N_ADAPTERS} adapters ({budget} bytes), load avg {load_avg}",
        columns, table,
    )
    result = {
        "model": "embedded SmolLM2-135M-Instruct (real weights)",
        "adapters": {"count": N_ADAPTERS, "rank": 8, "targets": ["attn.q", "attn.v"], "bytes_each": adapter_bytes},
        "cache_max_bytes": budget,
        "cache_holds": CACHE_HOLDS,
        "zipf_s": ZIPF_S,
        "max_tokens": max_tokens,
        "threads": threads,
        "quick": quick,
        "load_average_at_end": load_avg,
        "rows": rows,
        "varied_prompt_rows": varied_rows,
        "ratios": {str(k): v for k, v in ratios.items()},
    }
    write_results("server", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer requests per level, no varied-length run.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the server (1 suits a busy 2-core box).")
    args = parser.parse_args()
    main(quick=args.quick, threads=args.threads)
