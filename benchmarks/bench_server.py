"""
``adaptrix serve`` under load, against what the hardware does: served tok/s vs bare static batches, in one run.

Measured side by side, on the embedded SmolLM2-135M-Instruct (real weights), greedy, every answer exactly
``max_tokens`` long (``ignore_eos``), chat prompts of varied length (12 of them, cycled):

1. **bare**: the model with no adapters, no HTTP, in static left-padded batches of *clients* rows
   (transformers ``generate``), best of 1 and 2 torch threads: the throughput the hardware gives;
2. **engine**: our own decode loop in process (no HTTP, no scheduler), each level's rows in one static batch
   with the served adapters, to tell the decode loop's cost from the serving path's;
3. **transformers CB**: transformers' own continuous batching (``generate_batch``, base model, same prompts);
4. **new**: ``adaptrix serve`` with default settings (continuous batching), streaming clients spread over
   4 adapters and ``base``; time to first token (TTFT) and inter-token latency (ITL) from the client side;
5. **old**: the same server with the previous scheduler's settings (``--exact --max-batch 8``);
6. **no prefix**: the new server with its prompt-prefix cache off (``--prefix-cache-tokens 0``): every prompt
   prefilled in full, as the bare model does (the chat template's system header is about half of each prompt);
7. **zipf-100**: the new server with 100 adapters in the library, Zipf(1.1) popularity, the cache holding 20
   (``--cache-max-adapters 20``), against the same server's one-adapter throughput; once with no prefix cache
   (adapter churn alone), once with the default one (a cached prefix serves only its own adapter). The
   phases run one, Zipf, Zipf, one (the second Zipf phase a fresh draw, finding the cache as the first left
   it), and the ratio is of the sums, so a machine whose speed drifts during the run does not tilt it.

Clients are closed-loop (each sends its next request when the last one ends); each level runs a fixed
number of requests, so every phase stops by itself.

    python benchmarks/bench_server.py --quick   # levels 1, 8, 32; 8 tokens; one request per client
    python benchmarks/bench_server.py           # levels 1, 8, 32, 64; 32 tokens; two requests per client
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results  # noqa: E402
from server_load import Server, make_adapters, percentile, server_env  # noqa: E402


PROMPTS = (
    "Hi!",
    "Describe the sea.",
    "What is a good breakfast?",
    "Tell me a long story about a brave little robot.",
    "How do I make a cup of tea? Give the steps.",
    "Translate into French: Where is the museum, please?",
    "Alice is 31 years old and lives in Lyon. Return her details as JSON.",
    "Tom has 45 apples and gets 4 more. How many apples does Tom have now?",
    "What are three good reasons to learn a second language? Explain each one briefly.",
    "Write a short letter to a friend who moved to another city last year and tell them about your week.",
    "Summarize the plot of a detective story in which the detective turns out to be the culprit, in two sentences.",
    "You are planning a weekend trip to the mountains with two friends. List what to pack, what to eat and what "
    "to do if it rains, in short bullet points.",
)
N_ADAPTERS = 100
CACHE_HOLDS = 20
ZIPF_S = 1.1
SERVED = ("a00", "a01", "a02", "a03", "base")
"""Selections the main load spreads over (four adapters and the base model)."""


# the bare model and transformers' continuous batching ----------------------------------------------------


def chat_messages(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    return [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": prompt}]


def chat_ids(tokenizer: Any, n: int, prompts: tuple[str, ...] = PROMPTS, system: str | None = None,
             template: bool = True) -> list[list[int]]:
    """The first *n* prompts (cycled), through the chat template unless not *template*, as the server tokenizes them."""
    out = []
    for i in range(n):
        text = prompts[i % len(prompts)]
        if template:
            text = tokenizer.apply_chat_template(chat_messages(text, system), add_generation_prompt=True, tokenize=False)
        out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return out


def bare_static(levels: list[int], tokens: int, threads: list[int],
                encode: Any = chat_ids) -> dict[int, dict[str, Any]]:
    """tok/s of static left-padded batches of each level's size (transformers generate), best over *threads*."""
    import torch

    from adaptrix_core.models import load_base_model

    model, tokenizer = load_base_model(None)
    tokenizer.padding_side = "left"
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: dict[int, dict[str, Any]] = {}
    before = torch.get_num_threads()
    try:
        for clients in levels:
            ids = encode(tokenizer, clients)
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt")
            timings = {}
            for n in threads:
                torch.set_num_threads(n)
                start = time.perf_counter()
                with torch.inference_mode():
                    model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                                   pad_token_id=pad)
                timings[n] = time.perf_counter() - start
            best = min(timings, key=timings.__getitem__)
            out[clients] = {"tokens_per_s": clients * tokens / timings[best], "threads": best,
                            "seconds_by_threads": timings}
            print(f"  bare x{clients}: {out[clients]['tokens_per_s']:.1f} tok/s ({best} thread(s))", flush=True)
    finally:
        torch.set_num_threads(before)
    return out


def engine_static(levels: list[int], tokens: int, library_dir: Path) -> dict[int, dict[str, Any]]:
    """Our decode loop in process, no HTTP and no scheduler: each level's rows in one batch, adapters as served."""
    import torch

    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.generation import GenerationRequest
    from adaptrix_core.library import Library
    from adaptrix_core.selection import normalize_selection

    torch.set_num_threads(1)
    out: dict[int, dict[str, Any]] = {}
    library = Library(library_dir, shipped_dir=library_dir.parent / "none")
    with AdaptrixEngine(library=library) as engine:
        for clients in levels:
            ids = chat_ids(engine.tokenizer, clients)
            requests = [GenerationRequest(row, normalize_selection(SERVED[i % len(SERVED)]), tokens, ignore_eos=True)
                        for i, row in enumerate(ids)]
            held = engine.lease(requests)
            try:
                start = time.perf_counter()
                for _ in engine.decoder.stream(requests):
                    pass
                seconds = time.perf_counter() - start
            finally:
                engine.cache.release(held)
            out[clients] = {"tokens_per_s": clients * tokens / seconds}
            print(f"  engine x{clients}: {out[clients]['tokens_per_s']:.1f} tok/s", flush=True)
    return out


def transformers_cb(levels: list[int], tokens: int, threads: int) -> dict[int, dict[str, Any]]:
    """transformers' ``generate_batch`` on the base model (same prompts), after one warm-up call."""
    import torch

    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from adaptrix_core.models import load_base_model

    torch.set_num_threads(threads)
    model, tokenizer = load_base_model(None)
    config = GenerationConfig(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, eos_token_id=-1,
                              pad_token_id=tokenizer.pad_token_id or 0)
    out: dict[int, dict[str, Any]] = {}
    for clients in levels:
        ids = chat_ids(tokenizer, clients)
        cb = ContinuousBatchingConfig(num_blocks=max(64, clients * 8), max_batch_tokens=2048)
        try:
            model.generate_batch(inputs=ids[:1], generation_config=config, continuous_batching_config=cb,
                                 warmup=False)
            start = time.perf_counter()
            results = model.generate_batch(inputs=ids, generation_config=config, continuous_batching_config=cb,
                                           warmup=False)
            seconds = time.perf_counter() - start
            produced = sum(len(r.generated_tokens) for r in results.values())
            out[clients] = {"tokens_per_s": produced / seconds, "tokens": produced}
        except Exception as e:  # noqa: BLE001 - reported in the table: it is what a user would see
            out[clients] = {"tokens_per_s": None, "error": f"{type(e).__name__}: {e}"[:300]}
        print(f"  transformers CB x{clients}: {out[clients].get('tokens_per_s')}", flush=True)
    return out


# served load --------------------------------------------------------------------------------------------


async def stream_load(url: str, jobs: list[tuple[str, str]], clients: int, max_tokens: int, *,
                      system: str | None = None, completions: bool = False, gaps: bool = False) -> dict[str, Any]:
    """
    *clients* closed-loop streaming workers; per request: TTFT, inter-token gaps, tokens.

    Chat requests (with *system* as the system message) or, with *completions*, raw prompts to /v1/completions.
    With *gaps*, every inter-token gap (ms) is returned too, as ``gap_list``.
    """
    import httpx

    queue = list(reversed(jobs))
    records: list[dict[str, Any]] = []

    async def one(client: httpx.AsyncClient, model: str, prompt: str) -> None:
        body = {"model": model, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
                **({"prompt": prompt} if completions else {"messages": chat_messages(prompt, system)})}
        path = "/v1/completions" if completions else "/v1/chat/completions"
        start = time.perf_counter()
        stamps: list[float] = []
        async with client.stream("POST", f"{url}{path}", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if any(c.get("text") or c.get("delta", {}).get("content") for c in chunk.get("choices", ())):
                    stamps.append(time.perf_counter())
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        records.append({"ttft": stamps[0] - start if stamps else None, "gaps": gaps, "chunks": len(stamps)})

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            model, prompt = queue.pop()
            await one(client, model, prompt)

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=1800, limits=httpx.Limits(max_connections=clients + 4)) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    wall = time.perf_counter() - start
    ttft = [r["ttft"] * 1000 for r in records if r["ttft"] is not None]
    gap_list = [g * 1000 for r in records for g in r["gaps"]]
    return {
        "requests": len(records), "wall_s": wall, "tokens_per_s": len(records) * max_tokens / wall,
        "ttft_p50_ms": percentile(ttft, 0.5), "ttft_p99_ms": percentile(ttft, 0.99),
        "itl_p50_ms": percentile(gap_list, 0.5), "itl_p99_ms": percentile(gap_list, 0.99),
        **({"gap_list": gap_list} if gaps else {}),
    }


def phase(server: Server, label: str, jobs: list[tuple[str, str]], clients: int, max_tokens: int) -> dict[str, Any]:
    import httpx

    httpx.post(f"{server.url}/v1/stats/reset", timeout=60).raise_for_status()
    row = {"server": label, "clients": clients, **asyncio.run(stream_load(server.url, jobs, clients, max_tokens))}
    stats = httpx.get(f"{server.url}/v1/stats", timeout=60).json()
    row["mean_batch"] = stats["server"]["scheduler"]["mean_batch"]
    row["hit_rate"] = stats["cache"]["hit_rate"]
    row["evictions"] = stats["cache"]["evictions"]
    prefix = stats["server"]["scheduler"].get("prefix_cache")
    looked = prefix["hits"] + prefix["misses"] if prefix else 0
    row["prefix_hit_rate"] = prefix["hits"] / looked if looked else None
    print(f"  {label:>9} x{clients:<2} {row['requests']} req {row['tokens_per_s']:.1f} tok/s, TTFT p50 "
          f"{row['ttft_p50_ms']:.0f} ms, ITL p50 {row['itl_p50_ms']:.0f} ms, mean batch {row['mean_batch']}", flush=True)
    return row


def served(tmp: Path, levels: list[int], tokens: int, per_client: int) -> list[dict[str, Any]]:
    """The new scheduler, the old one and the new one without its prefix cache at every level; then Zipf-100."""
    rng = random.Random(0)
    env = server_env(tmp)
    limits = ["--max-tokens-limit", str(max(64, tokens))]
    rows = []
    for label, extra in (("new", []), ("old", ["--exact", "--max-batch", "8"]), ("no prefix", ["--prefix-cache-tokens", "0"])):
        server = Server(env, [*limits, *extra], tmp / f"server-{label}.log")
        try:
            server.wait()
            threads = server.threads()
            print(f"  {label} server: {threads} CPU thread(s)", flush=True)
            asyncio.run(stream_load(server.url, [("a00", PROMPTS[0])], 1, 2))
            for clients in levels:
                n = clients * per_client
                jobs = [(SERVED[i % len(SERVED)], PROMPTS[i % len(PROMPTS)]) for i in range(n)]
                rows.append({**phase(server, label, jobs, clients, tokens), "server_threads": threads})
        finally:
            server.stop()
    clients = 32 if 32 in levels else max(levels)
    names = [f"a{i:02d}" for i in range(N_ADAPTERS)]
    weights = [1 / (k + 1) ** ZIPF_S for k in range(N_ADAPTERS)]
    n = clients * per_client
    one = [("a00", PROMPTS[i % len(PROMPTS)]) for i in range(n)]
    zipfs = [[(rng.choices(names, weights)[0], PROMPTS[i % len(PROMPTS)]) for i in range(n)] for _ in range(2)]
    # adapter churn alone (no prefix cache on either side: a cached prefix is per adapter, so it favours the
    # one-adapter load), then both with the default prefix cache
    for suffix, prefix_args in (("", ["--prefix-cache-tokens", "0"]), ("+prefix", [])):
        # a count, not bytes: a byte budget also pays for the mixed-batch banks (a copy of the adapters they
        # serve), so 20 adapters' bytes would hold about 10
        server = Server(env, [*limits, "--cache-max-adapters", str(CACHE_HOLDS), "--cache-max-bytes", "0", *prefix_args],
                        tmp / f"server-zipf{suffix}.log")
        try:
            server.wait()
            asyncio.run(stream_load(server.url, one[:1], 1, 2))
            for rep, (label, jobs) in enumerate((("one", one), ("zipf-100", zipfs[0]), ("zipf-100", zipfs[1]),
                                                  ("one", one))):
                rows.append({**phase(server, label + suffix, jobs, clients, tokens), "pass": rep + 1})
        finally:
            server.stop()
    return rows


def main(quick: bool = False) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levels = [1, 8, 32] if quick else [1, 8, 32, 64]
    tokens = 8 if quick else 32
    per_client = 1 if quick else 2
    threads = [1] if quick else [1, 2]
    load_before = os.getloadavg()
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="adaptrix-bench-server-"))
    try:
        print(f"load average {load_before}; making {N_ADAPTERS} adapters ...", flush=True)
        adapter_bytes = make_adapters(tmp / "library", tmp / "peft", N_ADAPTERS)
        print("bare model, static batches ...", flush=True)
        bare = bare_static(levels, tokens, threads)
        print("our decode loop in process, static batches ...", flush=True)
        engine = engine_static(levels, tokens, tmp / "library")
        print("transformers continuous batching (generate_batch) ...", flush=True)
        hf_cb = transformers_cb(levels, tokens, 1)
        print("adaptrix serve ...", flush=True)
        rows = served(tmp, levels, tokens, per_client)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_after = os.getloadavg()
    by = {(r["server"], r["clients"]): r for r in rows if "pass" not in r}
    table = []
    for clients in levels:
        new, old, hf = by[("new", clients)], by[("old", clients)], hf_cb[clients].get("tokens_per_s")
        plain = by[("no prefix", clients)]
        table.append([
            clients, bare[clients]["tokens_per_s"], engine[clients]["tokens_per_s"], new["tokens_per_s"], new["tokens_per_s"] / bare[clients]["tokens_per_s"],
            plain["tokens_per_s"] / bare[clients]["tokens_per_s"], new["prefix_hit_rate"], old["tokens_per_s"], hf, new["tokens_per_s"] / hf if hf else None, new["mean_batch"], old["mean_batch"],
            new["ttft_p50_ms"], new["ttft_p99_ms"], old["ttft_p50_ms"], old["ttft_p99_ms"],
            new["itl_p50_ms"], new["itl_p99_ms"], old["itl_p50_ms"], old["itl_p99_ms"],
        ])
    print_table(
        f"adaptrix serve vs the bare model, SmolLM2-135M, {tokens} tokens/answer, load avg {load_before[0]:.1f} -> "
        f"{load_after[0]:.1f}",
        ["clients", "bare tok/s", "engine tok/s", "new tok/s", "new/bare", "no-prefix/bare", "prefix hits", "old tok/s", "hf CB tok/s", "new/hf CB", "new batch",
         "old batch", "new TTFT p50", "new TTFT p99", "old TTFT p50", "old TTFT p99", "new ITL p50", "new ITL p99",
         "old ITL p50", "old ITL p99"],
        table,
    )
    def zipf_over_one(suffix: str) -> float:
        def total(label: str) -> float:
            return sum(r["tokens_per_s"] for r in rows if r["server"] == label + suffix)
        return total("zipf-100") / total("one")

    zipf_ratio, zipf_prefix_ratio = zipf_over_one(""), zipf_over_one("+prefix")
    zrow = [r for r in rows if "pass" in r]
    print_table(f"Zipf({ZIPF_S}) over {N_ADAPTERS} adapters, cache holds {CACHE_HOLDS}: zipf/one = {zipf_ratio:.2f}; "
                f"with prefix caches {zipf_prefix_ratio:.2f}",
                ["load", "pass", "clients", "tok/s", "TTFT p50", "ITL p50", "hit rate", "evictions", "mean batch",
                 "prefix hits"],
                [[r["server"], r["pass"], r["clients"], r["tokens_per_s"], r["ttft_p50_ms"], r["itl_p50_ms"],
                  r["hit_rate"], r["evictions"], r["mean_batch"], r["prefix_hit_rate"]] for r in zrow])
    result = {
        "model": "embedded SmolLM2-135M-Instruct (real weights)", "quick": quick, "levels": levels,
        "max_tokens": tokens, "requests_per_client": per_client,
        "adapters": {"count": N_ADAPTERS, "cache_holds": CACHE_HOLDS, "rank": 8, "targets": ["attn.q", "attn.v"], "bytes_each": adapter_bytes},
        "load_average_before": load_before, "load_average_after": load_after,
        "seconds": time.perf_counter() - started,
        "bare": {str(k): v for k, v in bare.items()}, "engine_static": {str(k): v for k, v in engine.items()},
        "transformers_cb": {str(k): v for k, v in hf_cb.items()},
        "served": rows, "zipf_over_one": zipf_ratio, "zipf_over_one_with_prefix_cache": zipf_prefix_ratio,
        "served_over_bare": {str(c): by[("new", c)]["tokens_per_s"] / bare[c]["tokens_per_s"] for c in levels},
        "served_without_prefix_cache_over_bare": {
            str(c): by[("no prefix", c)]["tokens_per_s"] / bare[c]["tokens_per_s"] for c in levels},
    }
    write_results("server-quick" if quick else "server", result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Levels 1/8/32, 8 tokens, one request per client.")
    main(quick=parser.parse_args().quick)
