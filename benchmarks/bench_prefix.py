"""
What the prompt-prefix cache does on prompts nobody tuned it on, idle and beside a busy neighbour.

``bench_server.py``'s prompts are the ones the prefix cache and the prefill grouping were profiled on. This
benchmark decides the claim on a held-out set instead: 12 other user prompts, written for it and never used
for tuning, in three shapes at 32 streaming clients (two requests each, spread over four adapters and
``base``, 32 greedy tokens each):

1. **template**: the chat template's own system header, as most chat clients send;
2. **app system prompt**: the same questions under a 70-token system prompt of an application;
3. **nothing shared**: raw prompts to ``/v1/completions`` that share no start (the hard case: the cache can
   only cost here).

For each shape: the bare model in static batches of 32 (transformers ``generate``, best of 1 and 2 threads),
and ``adaptrix serve`` with the cache on (default) and off (``--prefix-cache-tokens 0``), first on the
machine as it is, then with one busy neighbour (a one-thread matmul loop, as in ``bench_threads.py``). Each
server starts cold for each shape; its first round of requests finds nothing cached.

    python benchmarks/bench_prefix.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_server import SERVED, bare_static, chat_ids, stream_load  # noqa: E402
from bench_threads import COMPETITOR  # noqa: E402
from common import print_table, write_results  # noqa: E402
from server_load import Server, make_adapters, server_env  # noqa: E402


HELD_OUT = (
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "Give me a name for a grey cat.",
    "How do plants make food from sunlight?",
    "Write two lines of a poem about the winter sea.",
    "What should I check before buying a used bicycle?",
    "Convert 3 hours and 20 minutes into minutes.",
    "Why do we have leap years?",
    "Suggest a quick dinner with rice, eggs and spinach.",
    "Explain what a spreadsheet formula is to a child.",
    "List four things to do on a rainy Sunday in a small town.",
    "My laptop is slow after an update. What can I try first?",
    "Describe the difference between weather and climate in a few sentences.",
)
APP_SYSTEM = (
    "You are the support assistant of Northwind Outdoor Gear, a shop for hiking and camping equipment. Answer "
    "politely and briefly, recommend products only when the customer asks, never invent prices or stock "
    "levels, and when you do not know, say so and offer to pass the question to a person."
)
RAW = (
    "The old lighthouse keeper climbed the stairs one last time and",
    "def fibonacci(n):\n    ",
    "Ingredients: flour, butter, sugar. Step one:",
    "In 1848, revolutions spread across Europe because",
    "Dear hiring manager, I am writing to apply for",
    "The three laws of motion state that",
    "SELECT name, price FROM products WHERE",
    "Once upon a time in a village by the river,",
    "Monday morning standup notes: blocked on",
    "A haiku about autumn leaves:",
    "To reset the router, first unplug it, then",
    "Chapter 7. The storm had not yet reached the harbour when",
)
SHAPES = {
    "template": {"prompts": HELD_OUT, "system": None, "completions": False},
    "app system prompt": {"prompts": HELD_OUT, "system": APP_SYSTEM, "completions": False},
    "nothing shared": {"prompts": RAW, "system": None, "completions": True},
}


def encoder(shape: dict[str, Any]) -> Any:
    def encode(tokenizer: Any, n: int) -> list[list[int]]:
        return chat_ids(tokenizer, n, shape["prompts"], shape["system"], template=not shape["completions"])
    return encode


def served(url: str, shape: dict[str, Any], clients: int, per_client: int, tokens: int) -> dict[str, Any]:
    import httpx

    n = clients * per_client
    jobs = [(SERVED[i % len(SERVED)], shape["prompts"][i % len(shape["prompts"])]) for i in range(n)]
    random.Random(0).shuffle(jobs)
    httpx.post(f"{url}/v1/stats/reset", timeout=60).raise_for_status()
    row = asyncio.run(stream_load(url, jobs, clients, tokens, system=shape["system"], completions=shape["completions"]))
    prefix = httpx.get(f"{url}/v1/stats", timeout=60).json()["server"]["scheduler"].get("prefix_cache")
    looked = prefix["hits"] + prefix["misses"] if prefix else 0
    row["prefix_hit_rate"] = prefix["hits"] / looked if looked else None
    row["reused_tokens"] = prefix["reused_tokens"] if prefix else 0
    return row


def main(quick: bool = False) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    clients, per_client, tokens = (32, 1, 8) if quick else (32, 2, 32)
    threads = [1] if quick else [1, 2]
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="adaptrix-bench-prefix-"))
    env = server_env(tmp)
    rows = []
    try:
        make_adapters(tmp / "library", tmp / "peft", 4)
        for neighbours in (0, 1):
            competitors = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(neighbours)]
            try:
                time.sleep(1.0 if neighbours else 0.0)
                for name, shape in SHAPES.items():
                    load = os.getloadavg()[0]
                    bare = bare_static([clients], tokens, threads, encode=encoder(shape))[clients]["tokens_per_s"]
                    row = {"shape": name, "neighbours": neighbours, "load_avg": load, "bare_tokens_per_s": bare}
                    for label, args in (("on", []), ("off", ["--prefix-cache-tokens", "0"])):
                        server = Server(env, ["--max-tokens-limit", "64", *args], tmp / f"server-{label}.log")
                        try:
                            server.wait()
                            asyncio.run(stream_load(server.url, [("base", "Hello")], 1, 2, completions=True))
                            result = served(server.url, shape, clients, per_client, tokens)
                        finally:
                            server.stop()
                        row[label] = result
                        print(f"  {name:<18} neighbours={neighbours} cache {label:<3}: {result['tokens_per_s']:.1f} tok/s "
                              f"(bare {bare:.1f}), TTFT p50 {result['ttft_p50_ms']:.0f} ms, prefix hits "
                              f"{result['prefix_hit_rate']}", flush=True)
                    rows.append(row)
            finally:
                for competitor in competitors:
                    competitor.kill()
                    competitor.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(
        f"Prompt-prefix cache on held-out prompts, {clients} clients x {per_client}, {tokens} tokens",
        ["prompts", "busy neighbours", "load avg", "bare tok/s", "cache on tok/s", "cache off tok/s", "on / bare",
         "off / bare", "on / off", "prefix hits", "TTFT p50 on / off (ms)"],
        [[r["shape"], r["neighbours"], r["load_avg"], r["bare_tokens_per_s"], r["on"]["tokens_per_s"],
          r["off"]["tokens_per_s"], r["on"]["tokens_per_s"] / r["bare_tokens_per_s"],
          r["off"]["tokens_per_s"] / r["bare_tokens_per_s"], r["on"]["tokens_per_s"] / r["off"]["tokens_per_s"],
          r["on"]["prefix_hit_rate"], f"{r['on']['ttft_p50_ms']:.0f} / {r['off']['ttft_p50_ms']:.0f}"] for r in rows],
    )
    result = {"clients": clients, "requests_per_client": per_client, "max_tokens": tokens, "quick": quick,
              "seconds": time.perf_counter() - started, "rows": rows}
    write_results("prefix-quick" if quick else "prefix", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 tokens, one request per client, 1 bare thread.")
    main(quick=parser.parse_args().quick)
