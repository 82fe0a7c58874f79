"""
Chunked prefill: how long running streams stall when prompts arrive, and what bounding it costs.

A prefill stops every running row until it is done. ``--prefill-chunk-ms`` bounds that: a prefill predicted
to take longer runs in chunks of about that long, one between two decode steps. Each chunk pays a forward's
fixed cost again, so a smaller bound costs throughput. Two loads, each against ``adaptrix serve`` with
``--prefill-chunk-ms`` 0 (whole prefills), 250, 500 and 1000 (the default), a cold server per setting, in
the order given (``--settings``; the machine's own speed drifts, so run both orders):

1. **long prompts**: 16 streaming chat clients (48 greedy tokens per request, the held-out questions of
   ``bench_prefix.py``, spread over four adapters and ``base``) while 2 more clients send long documents
   (about 1,000 tokens of this repository's docs, each a different passage, so no prefix is shared) to
   ``/v1/completions`` for 8 tokens. Measured: the short streams' inter-token gaps (p50, p99, max), their
   tok/s, and the long requests' time to first token.
2. **chat mix**: ``bench_server.py``'s 32-client load (64 requests, 32 tokens), where every prompt is short:
   served tok/s, TTFT and ITL.

The default setting and the lane threshold were chosen on that load. ``--held-out`` decides them on
another: 8 other chat questions for the streams and passages of this package's own source code for the
documents; ``--neighbours N`` runs N busy one-thread matmul loops beside it (as ``bench_threads.py``).

    python benchmarks/bench_chunked.py [--quick] [--settings 0,1000,1000,0] [--held-out] [--neighbours 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_prefix import HELD_OUT  # noqa: E402
from bench_threads import COMPETITOR  # noqa: E402
from bench_server import PROMPTS, SERVED, stream_load  # noqa: E402
from common import print_table, write_results  # noqa: E402
from server_load import Server, make_adapters, server_env  # noqa: E402


SETTINGS = (0.0, 250.0, 500.0, 1000.0)
ROOT = Path(__file__).resolve().parent.parent
STREAMS_HELD_OUT = (
    "What is the difference between a lake and a pond?",
    "Give me three tips for a first marathon.",
    "How does a refrigerator keep food cold?",
    "Name two famous bridges and where they are.",
    "Why does bread go stale?",
    "Write a short thank-you note to a neighbour.",
    "What should I pack for a weekend of camping?",
    "Explain compound interest with a small example.",
)
"""Stream questions for ``--held-out``: never used to choose a setting."""


def documents(count: int, chars: int = 4000, *, held_out: bool = False) -> list[str]:
    """
    *count* different passages, about ``chars / 4`` tokens each, as summarisation prompts: of the docs, or
    with *held_out* of this package's source code.
    """
    files = sorted((ROOT / "adaptrix_core").rglob("*.py")) if held_out else sorted((ROOT / "docs").glob("*.md"))
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in files)
    step = max(1, (len(text) - chars) // max(1, count))
    return [f"{text[i * step : i * step + chars]}\n\nSummary of the text above in one sentence:" for i in range(count)]


async def long_prompt_load(url: str, streams: int, stream_requests: int, stream_tokens: int, long_clients: int,
                           long_requests: int, *, held_out: bool = False) -> dict[str, Any]:
    questions = STREAMS_HELD_OUT if held_out else HELD_OUT
    chats = [(SERVED[i % len(SERVED)], questions[i % len(questions)]) for i in range(streams * stream_requests)]
    random.Random(0).shuffle(chats)
    docs = [("base", doc) for doc in documents(long_clients * long_requests, held_out=held_out)]
    short, long = await asyncio.gather(
        stream_load(url, chats, streams, stream_tokens, gaps=True),
        stream_load(url, docs, long_clients, 8, completions=True),
    )
    gaps = short.pop("gap_list")
    return {"streams": short, "long": long, "itl_max_ms": max(gaps) if gaps else None}


def main(quick: bool = False, settings: tuple[float, ...] | None = None, *, held_out: bool = False,
         neighbours: int = 0) -> dict[str, Any]:
    import httpx

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    streams, stream_requests, stream_tokens, long_clients, long_requests = (8, 1, 24, 1, 2) if quick else (16, 3, 48, 2, 3)
    chat_clients, chat_per_client, chat_tokens = (16, 1, 16) if quick else (32, 2, 32)
    settings = settings or ((0.0, 1000.0) if quick else SETTINGS)
    if 0.0 not in settings:
        settings = (0.0, *settings)  # the ratios are against whole prefills
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="adaptrix-bench-chunked-"))
    env = server_env(tmp)
    rows = []
    competitors = [subprocess.Popen([sys.executable, "-c", COMPETITOR]) for _ in range(neighbours)]
    chat_prompts = STREAMS_HELD_OUT if held_out else PROMPTS
    try:
        make_adapters(tmp / "library", tmp / "peft", 4)
        for chunk_ms in settings:
            server = Server(env, ["--max-tokens-limit", "64", "--prefill-chunk-ms", str(chunk_ms)],
                            tmp / f"server-{chunk_ms:g}.log")
            try:
                server.wait()
                asyncio.run(stream_load(server.url, [("a00", "Hello")], 1, 2))  # load the model's kernels once
                load = os.getloadavg()[0]
                httpx.post(f"{server.url}/v1/stats/reset", timeout=60).raise_for_status()
                mixed = asyncio.run(long_prompt_load(server.url, streams, stream_requests, stream_tokens,
                                                     long_clients, long_requests, held_out=held_out))
                scheduler = httpx.get(f"{server.url}/v1/stats", timeout=60).json()["server"]["scheduler"]
                mixed["prefills"], mixed["prefill_chunks"] = scheduler["prefills"], scheduler["prefill_chunks"]
                jobs = [(SERVED[i % len(SERVED)], chat_prompts[i % len(chat_prompts)])
                        for i in range(chat_clients * chat_per_client)]
                chat = asyncio.run(stream_load(server.url, jobs, chat_clients, chat_tokens))
            finally:
                server.stop()
            rows.append({"prefill_chunk_ms": chunk_ms, "load_avg": load, "long_prompts": mixed, "chat": chat})
            s = mixed["streams"]
            print(f"  chunk {chunk_ms:g} ms: streams ITL p99 {s['itl_p99_ms']:.0f} ms (max {mixed['itl_max_ms']:.0f}), "
                  f"{s['tokens_per_s']:.1f} tok/s, long TTFT p50 {mixed['long']['ttft_p50_ms']:.0f} ms; chat mix "
                  f"{chat['tokens_per_s']:.1f} tok/s, ITL p99 {chat['itl_p99_ms']:.0f} ms", flush=True)
    finally:
        for competitor in competitors:
            competitor.kill()
            competitor.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    wholes = [r for r in rows if r["prefill_chunk_ms"] == 0.0]  # several when a setting runs twice (0,1000,1000,0)
    whole_streams = statistics.mean(r["long_prompts"]["streams"]["tokens_per_s"] for r in wholes)
    whole_chat = statistics.mean(r["chat"]["tokens_per_s"] for r in wholes)
    print_table(
        f"Chunked prefill{' (held out)' if held_out else ''}, {neighbours} busy neighbour(s): {streams} streams + "
        f"{long_clients} clients sending ~1,000-token documents; then the {chat_clients}-client chat mix "
        f"(/ whole: against the mean of the 0 rows)",
        ["--prefill-chunk-ms", "load avg", "streams ITL p50 / p99 / max (ms)", "streams tok/s", "/ whole",
         "long TTFT p50 (ms)", "chunks / prefills", "chat mix tok/s", "/ whole", "chat ITL p99 (ms)",
         "chat TTFT p50 (ms)"],
        [[r["prefill_chunk_ms"] or "0 (whole)", r["load_avg"],
          (f"{r['long_prompts']['streams']['itl_p50_ms']:.0f} / {r['long_prompts']['streams']['itl_p99_ms']:.0f} / "
           f"{r['long_prompts']['itl_max_ms']:.0f}"),
          r["long_prompts"]["streams"]["tokens_per_s"],
          r["long_prompts"]["streams"]["tokens_per_s"] / whole_streams,
          r["long_prompts"]["long"]["ttft_p50_ms"],
          f"{r['long_prompts']['prefill_chunks']} / {r['long_prompts']['prefills']}",
          r["chat"]["tokens_per_s"], r["chat"]["tokens_per_s"] / whole_chat,
          r["chat"]["itl_p99_ms"], r["chat"]["ttft_p50_ms"]] for r in rows],
    )
    result = {"quick": quick, "streams": streams, "stream_requests": stream_requests, "stream_tokens": stream_tokens,
              "long_clients": long_clients, "long_requests": long_requests, "chat_clients": chat_clients,
              "chat_requests_per_client": chat_per_client, "chat_tokens": chat_tokens,
              "held_out": held_out, "neighbours": neighbours, "settings": list(settings),
              "seconds": time.perf_counter() - started, "rows": rows}
    name = "chunked" + ("-heldout" if held_out else "") + (f"-busy{neighbours}" if neighbours else "")
    write_results(name + ("-quick" if quick else ""), result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="Fewer clients, requests and settings.")
    parser.add_argument("--settings", help="Comma-separated --prefill-chunk-ms values, in the order to run them "
                                           "(e.g. 1000,500,250,0 to run the machine's drift the other way).")
    parser.add_argument("--held-out", action="store_true", help="Other stream questions and source-code documents.")
    parser.add_argument("--neighbours", type=int, default=0, help="Busy one-thread matmul loops beside it.")
    args = parser.parse_args()
    main(quick=args.quick, settings=tuple(float(v) for v in args.settings.split(",")) if args.settings else None,
         held_out=args.held_out, neighbours=args.neighbours)
