"""
Scale-out on Ray Serve: 1 vs 2 engine replicas, the latency of the Ray hop, and adapter affinity under Zipf traffic.

Three servers of the same model and library, one after the other, in one run:

- **direct**: ``adaptrix serve`` as one process (uvicorn, no Ray);
- **ray x1**: ``--replicas 1`` (the ingress and one engine replica on a local Ray instance);
- **ray x2**: ``--replicas 2``.

Loads, each bounded in count:

- **hop**: one client, sequential requests on a resident adapter, alternating between the direct
  server and ``ray x1`` (both up at once, so both see the same background load): per-request
  p50/p99. The Ray hop's cost is ``ray x1`` minus ``direct`` (same engine, more process hops);
- **zipf**: 8 concurrent clients, each request on one of 20 adapters with Zipf(1.1)
  popularity; every replica's cache holds 8 adapters, so one server cannot keep them all
  but two replicas together can keep most, if requests go where their adapter is. Reported:
  requests/s, tokens/s, p50/p99, how often the request's adapter was already resident where it
  arrived (for replicas: the affinity hit rate), also leaving out each adapter's first request
  (which cannot find it anywhere), and the busiest replica's share of requests.

Model: a random GPT-2 (4 layers, 256 wide, the real 50257-token vocabulary; 3.2M parameters
in its layers, 16M with the tied embeddings), so a decode step costs a few ms: enough that two
replicas have real work to share, small enough that replicas start in seconds. Adapters: 20
random r=4 LoRAs on attention and MLP. Greedy, 16 tokens (``ignore_eos``), one thread per replica.

    python benchmarks/bench_scaleout.py           # 60 hop pairs; two rounds of 96 zipf requests per server
    python benchmarks/bench_scaleout.py --quick   # 20 pairs; one round of 40

On 2 cores, two replicas are two processes on two cores with one thread each; the direct server
and one replica leave a core to the ingress, the proxy and the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import print_table, write_results  # noqa: E402


N_ADAPTERS = 20
CACHE_HOLDS = 8
ZIPF_S = 1.1
TOKENS = 16
CONCURRENCY = 8
PROMPT = "Tell me a long story about a brave little robot."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_assets(root: Path) -> tuple[Path, Path]:
    """A saved random GPT-2 with the real tokenizer, and a library of 20 adapters for it."""
    import torch

    import helpers_models as h

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_positions=256, n_embd=256, n_layer=4, n_head=4)).eval()
    model.config._name_or_path = "bench-gpt2"
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    h.gpt2_tokenizer().save_pretrained(model_dir)
    names = [f"a{i:02d}" for i in range(N_ADAPTERS)]
    h.make_library(root / "library", model, names, shipped_dir=root / "none")
    return model_dir, root / "library"


def zipf_sequence(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    weights = [1 / (k + 1) ** ZIPF_S for k in range(N_ADAPTERS)]
    return [f"a{rng.choices(range(N_ADAPTERS), weights)[0]:02d}" for _ in range(n)]


async def _one(client: Any, url: str, model: str) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0, "ignore_eos": True}
    start = time.perf_counter()
    response = await client.post(f"{url}/v1/completions", json=body)
    elapsed = time.perf_counter() - start
    response.raise_for_status()
    return {
        "latency_s": elapsed, "tokens": response.json()["usage"]["completion_tokens"],
        "replica": response.headers.get("x-adaptrix-replica"), "affinity": response.headers.get("x-adaptrix-affinity"),
        "cold": bool(response.json().get("adaptrix", {}).get("cold")), "model": model,
    }


async def run_load(url: str, models: list[str], concurrency: int) -> dict[str, Any]:
    """Send one request per entry of *models* with *concurrency* clients; latency percentiles and rates."""
    import httpx

    queue: asyncio.Queue[str] = asyncio.Queue()
    for m in models:
        queue.put_nowait(m)
    results: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=300) as client:

        async def worker() -> None:
            while not queue.empty():
                results.append(await _one(client, url, queue.get_nowait()))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarize(results, wall)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(results: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    latencies = [r["latency_s"] * 1000 for r in results]
    out: dict[str, Any] = {
        "requests": len(results), "wall_s": wall, "req_per_s": len(results) / wall,
        "tokens_per_s": sum(r["tokens"] for r in results) / wall,
        "p50_ms": _pct(latencies, 0.5), "p99_ms": _pct(latencies, 0.99),
    }
    # resident on arrival: a replica's affinity header, or (direct server) no adapter loaded for the request
    for r in results:
        r["resident"] = r["affinity"] == "hit" if r["affinity"] in ("hit", "miss") else not r["cold"]
    out["resident_on_arrival"] = sum(r["resident"] for r in results) / len(results)
    seen: set[str] = set()
    later = []
    for r in results:  # the first request for an adapter cannot find it anywhere
        if r["model"] in seen:
            later.append(r)
        seen.add(r["model"])
    out["resident_on_arrival_after_first"] = sum(r["resident"] for r in later) / len(later) if later else None
    per_replica: dict[str, int] = {}
    for r in results:
        per_replica[str(r["replica"])] = per_replica.get(str(r["replica"]), 0) + 1
    out["busiest_replica_share"] = max(per_replica.values()) / len(results)
    out["replicas_used"] = len(per_replica)
    return out


def wait_ready(url: str, deadline_s: float = 600) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not come up")


async def interleaved_hop(direct: str, ray_url: str, n: int) -> dict[str, Any]:
    """Sequential requests alternating between the two servers, so both see the same background load."""
    import httpx

    got: dict[str, list[dict[str, Any]]] = {"direct": [], "ray": []}
    async with httpx.AsyncClient(timeout=300) as client:
        for _ in range(n):
            got["direct"].append(await _one(client, direct, "a00"))
            got["ray"].append(await _one(client, ray_url, "a00"))
    return {name: summarize(results, sum(r["latency_s"] for r in results)) for name, results in got.items()}


def start_direct(model_dir: Path, library: Path, home: Path) -> tuple[subprocess.Popen, str]:
    """`adaptrix serve` as one process, the same model, library and cache size as each replica."""
    port = _free_port()
    env = {**os.environ, "ADAPTRIX_HOME": str(home), "ADAPTRIX_LIBRARY_DIR": str(library),
           "ADAPTRIX_SHIPPED_ADAPTERS": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["serve", "--port", str(port), "--model", str(model_dir), "--threads", "1",
            "--cache-max-adapters", str(CACHE_HOLDS), "--max-tokens-limit", "64"]
    code = "from adaptrix_core.cli import main; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url)
    return proc, url


def run_all(model_dir: Path, library: Path, home: Path, hop_n: int, zipf_n: int, rounds: int) -> dict[str, Any]:
    """
    The direct server stays up throughout. Each round: a fresh 1-replica deployment (the hop, interleaved
    with the direct server, in round 1 only), the Zipf load on it and on the direct server; then a fresh
    2-replica deployment and the Zipf load on it. Rounds repeat so that background load hits both counts.
    """
    import ray

    from adaptrix_core.scaleout import EngineSpec, ScaleOutOptions
    from adaptrix_core.scaleout.deployments import deploy, shutdown
    from adaptrix_core.scaleout.local import start_local_cluster
    from adaptrix_core.server import ServerSettings

    proc, direct = start_direct(model_dir, library, home)
    local = start_local_cluster(num_cpus=2, object_store_bytes=100 * 1024 * 1024)
    ray.init(address=local.address, log_to_driver=False, namespace="adaptrix-bench")
    spec = EngineSpec(model=str(model_dir), library_dir=str(library), shipped_dir="", threads=1,
                      cache_max_adapters=CACHE_HOLDS)
    out: dict[str, Any] = {"rounds": []}
    try:
        asyncio.run(run_load(direct, ["a00"] * 4, 1))
        for r in range(rounds):
            row: dict[str, Any] = {"load_average": os.getloadavg()}
            for replicas in (1, 2):
                start = time.perf_counter()
                url = deploy(spec, ServerSettings(max_tokens_limit=64),
                             ScaleOutOptions(replicas=replicas, replica_cpus=0.5), port=_free_port())
                wait_ready(url)
                row[f"deploy_x{replicas}_s"] = time.perf_counter() - start
                asyncio.run(run_load(url, ["a00"] * 4, 1))  # warm: a00 resident, code paths hot
                if replicas == 1 and r == 0:
                    out["hop"] = asyncio.run(interleaved_hop(direct, url, hop_n))
                if replicas == 1:
                    row["direct"] = asyncio.run(run_load(direct, zipf_sequence(zipf_n, r), CONCURRENCY))
                row[f"ray x{replicas}"] = asyncio.run(run_load(url, zipf_sequence(zipf_n, r), CONCURRENCY))
                shutdown()
            out["rounds"].append(row)
    finally:
        ray.shutdown()
        local.shutdown()
        proc.terminate()
        proc.wait(30)
    return out


def main(quick: bool = False, argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true", help="20 hop and 40 zipf requests, one round")
    args = parser.parse_args(argv if argv is not None else [])
    hop_n, zipf_n, rounds = (20, 40, 1) if quick or args.quick else (60, 96, 2)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    with tempfile.TemporaryDirectory(prefix="bench-scaleout-") as tmp:
        root = Path(tmp)
        os.environ["ADAPTRIX_HOME"] = str(root / "home")
        model_dir, library = make_assets(root)
        result = run_all(model_dir, library, root / "home", hop_n, zipf_n, rounds)
    hop = result["hop"]
    print_table(f"one client, alternating requests, {TOKENS} tokens on a resident adapter",
                ["server", "requests", "p50 ms", "p99 ms"],
                [(name, h["requests"], h["p50_ms"], h["p99_ms"]) for name, h in hop.items()])
    rows = []
    for i, row in enumerate(result["rounds"], 1):
        for name in ("direct", "ray x1", "ray x2"):
            z = row[name]
            rows.append((i, name, z["requests"], z["req_per_s"], z["tokens_per_s"], z["p50_ms"], z["p99_ms"],
                         z["resident_on_arrival"], z["resident_on_arrival_after_first"], z["busiest_replica_share"]))
    print_table(
        f"{CONCURRENCY} clients, Zipf({ZIPF_S}) over {N_ADAPTERS} adapters, each server/replica caches {CACHE_HOLDS}",
        ["round", "server", "requests", "req/s", "tok/s", "p50 ms", "p99 ms", "resident on arrival", "after 1st",
         "busiest share"],
        rows,
    )
    hop_cost = {"p50_ms": hop["ray"]["p50_ms"] - hop["direct"]["p50_ms"],
                "p99_ms": hop["ray"]["p99_ms"] - hop["direct"]["p99_ms"]}
    ratios = [row["ray x2"]["req_per_s"] / row["ray x1"]["req_per_s"] for row in result["rounds"]]
    speedup = sum(ratios) / len(ratios)
    print(f"Ray hop adds p50 {hop_cost['p50_ms']:.1f} ms, p99 {hop_cost['p99_ms']:.1f} ms per request; "
          f"2 replicas / 1 replica throughput: {', '.join(f'{x:.2f}x' for x in ratios)} (mean {speedup:.2f}x)")
    write_results("scaleout", {
        "config": {"adapters": N_ADAPTERS, "cache_holds": CACHE_HOLDS, "zipf_s": ZIPF_S, "tokens": TOKENS,
                   "concurrency": CONCURRENCY, "hop_requests": hop_n, "zipf_requests": zipf_n, "rounds": rounds,
                   "quick": args.quick},
        **result, "ray_hop_ms": hop_cost, "speedup_2_over_1": ratios, "speedup_mean": speedup,
    })


if __name__ == "__main__":
    main(argv=sys.argv[1:])
