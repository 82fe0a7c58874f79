"""
What the server measures: ``GET /metrics`` (Prometheus text format) and the figures of ``GET /v1/stats``.

Each app has its own registry (several apps in one process never share series).
Requests and tokens are counted here as they happen; time to first token and
inter-token latency are histograms observed as pieces arrive. The adapter
cache's and the scheduler's own counters are read at scrape time by a
collector, so they are never double-bookkept; after ``POST /v1/stats/reset``
they restart from zero, which Prometheus reads as a counter reset.
"""

from __future__ import annotations

import time

from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from ..cache import percentiles
from ..generation import Piece


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BASE_LABEL = "base"
"""The ``adapter`` label of requests that use no adapter."""

_TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
_ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
_SAMPLES = 2048
"""Latency samples kept for the p50/p99 figures of ``/v1/stats`` (the histograms keep everything)."""


def adapter_labels(selection: Mapping[str, float]) -> list[str]:
    """The ``adapter`` label values of a request: each adapter it applies (a composition counts under each), or base."""
    return sorted(selection) or [BASE_LABEL]


class _EngineCollector(Collector):
    """Reads the adapter cache's and the backend's counters when Prometheus scrapes."""

    def __init__(self, cache_stats: Callable[[], dict[str, Any]], backend_stats: Callable[[], dict[str, Any]]) -> None:
        self.cache_stats = cache_stats
        self.backend_stats = backend_stats

    def collect(self) -> Iterator[Metric]:
        cache = self.cache_stats()
        for key, doc in (("hits", "Adapter lookups that found it resident."),
                         ("misses", "Adapter lookups that had to load it."),
                         ("evictions", "Adapters evicted to stay within the cache's budget."),
                         ("loads", "Adapter loads completed."),
                         ("load_failures", "Adapter loads that failed.")):
            yield CounterMetricFamily(f"adaptrix_adapter_cache_{key}", doc, value=cache.get(key) or 0)
        yield GaugeMetricFamily("adaptrix_adapters_resident", "Adapters resident now.", value=cache.get("resident_count") or 0)
        yield GaugeMetricFamily("adaptrix_adapters_resident_bytes", "Bytes of resident adapters.",
                                value=cache.get("resident_bytes") or 0)
        for key, name, doc in (("load_ms", "adaptrix_adapter_load_seconds", "Time to load an adapter on a miss."),
                               ("switch_ms", "adaptrix_adapter_switch_seconds", "Time to lease resident adapters.")):
            series = cache.get(key) or {}
            count = series.get("count") or 0
            total = (series.get("mean") or 0.0) * count / 1000
            yield SummaryMetricFamily(name, doc, count_value=count, sum_value=total)
        yield from self._backend()

    def _backend(self) -> Iterator[Metric]:
        sched = self.backend_stats()
        counters = (("batches", "adaptrix_batches", "Batches (decode groups) run; rows / batches is the mean batch size."),
                    ("rows", "adaptrix_batch_rows", "Request rows that took part in a batch."),
                    ("tokens", "adaptrix_batch_tokens", "Tokens the scheduler generated."),
                    ("prefills", "adaptrix_prefills", "Prefills finished (one forward each, or several chunks)."),
                    ("prefill_chunks", "adaptrix_prefill_chunks", "Prefill forwards run (more than prefills when chunked)."))
        for key, name, doc in counters:
            if isinstance(sched.get(key), int | float):
                yield CounterMetricFamily(name, doc, value=sched[key])
        gauges = (("queued", "adaptrix_queue_depth", "Requests waiting for a batch."),
                  ("running", "adaptrix_running_requests", "Requests in the running batch."),
                  ("lanes", "adaptrix_running_lanes", "Running batches decoded side by side (a much longer prompt gets its own)."),
                  ("mean_batch", "adaptrix_batch_size_mean", "Mean rows per batch since the last reset."),
                  ("largest_batch", "adaptrix_batch_size_max", "Largest batch since the last reset."),
                  ("max_batch", "adaptrix_batch_size_limit", "Most rows one batch may hold (--max-batch)."))
        for key, name, doc in gauges:
            if isinstance(sched.get(key), int | float):
                yield GaugeMetricFamily(name, doc, value=sched[key])
        prefix = sched.get("prefix_cache")
        if isinstance(prefix, dict):
            yield CounterMetricFamily("adaptrix_prefix_cache_hits", "Prompts that started from cached keys and values.",
                                      value=prefix["hits"])
            yield CounterMetricFamily("adaptrix_prefix_cache_misses", "Prompts with no cached start to reuse.",
                                      value=prefix["misses"])
            yield CounterMetricFamily("adaptrix_prefix_cache_reused_tokens", "Prompt tokens not recomputed thanks to the cache.",
                                      value=prefix["reused_tokens"])
            yield GaugeMetricFamily("adaptrix_prefix_cache_tokens", "Prompt tokens held (--prefix-cache-tokens bounds it).",
                                    value=prefix["tokens"])
            yield GaugeMetricFamily("adaptrix_prefix_cache_bytes", "Bytes of the keys and values held.", value=prefix["bytes"])


class ServerMetrics:
    """Counters, latency histograms and recent latency samples of one app."""

    def __init__(self, cache_stats: Callable[[], dict[str, Any]], backend_stats: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(cache_stats, backend_stats))
        r = self.registry
        self.requests_total = Counter("adaptrix_requests", "Generation requests by adapter.", ["adapter"], registry=r)
        self.prompt_tokens_total = Counter("adaptrix_prompt_tokens", "Prompt tokens by adapter.", ["adapter"], registry=r)
        self.generation_tokens_total = Counter(
            "adaptrix_generation_tokens", "Generated tokens by adapter.", ["adapter"], registry=r,
        )
        self.errors_total = Counter("adaptrix_http_errors", "Error responses by HTTP status.", ["status"], registry=r)
        self.ttft = Histogram("adaptrix_time_to_first_token_seconds", "From admission to the first generated token.",
                              buckets=_TTFT_BUCKETS, registry=r)
        self.itl = Histogram("adaptrix_inter_token_latency_seconds", "Between consecutive generated tokens of a request.",
                             buckets=_ITL_BUCKETS, registry=r)
        self.requests = 0
        self.errors = 0
        self.tokens = 0
        self._ttft_s: deque[float] = deque(maxlen=_SAMPLES)
        self._itl_s: deque[float] = deque(maxlen=_SAMPLES)

    def error(self, status: int) -> None:
        self.errors += 1
        self.errors_total.labels(str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def summary(self) -> dict[str, Any]:
        """The headline figures ``/v1/stats`` reports (latencies in ms over the last samples)."""
        return {
            "requests": self.requests, "errors": self.errors, "generated_tokens": self.tokens,
            "ttft_ms": percentiles(s * 1000 for s in self._ttft_s),
            "itl_ms": percentiles(s * 1000 for s in self._itl_s),
        }

    def reset(self) -> None:
        """Zero what ``/v1/stats`` shows (the Prometheus series keep counting, as counters must)."""
        self.requests = self.errors = self.tokens = 0
        self._ttft_s.clear()
        self._itl_s.clear()

    async def observe(
        self, stream: AsyncIterator[Piece], selection: Mapping[str, float], prompt_tokens: int, admitted_at: float,
    ) -> AsyncIterator[Piece]:
        """Pass *stream* through, counting the request, its tokens and its token latencies."""
        labels = adapter_labels(selection)
        self.requests += 1
        for label in labels:
            self.requests_total.labels(label).inc()
            self.prompt_tokens_total.labels(label).inc(prompt_tokens)
        tokens, last = 0, admitted_at
        try:
            async for piece in stream:
                now = time.perf_counter()
                new = piece.tokens - tokens
                if new > 0:
                    self._latency(now, last, new, first=tokens == 0)
                    tokens, last = piece.tokens, now
                yield piece
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            self.tokens += tokens
            for label in labels:
                self.generation_tokens_total.labels(label).inc(tokens)

    def _latency(self, now: float, last: float, new: int, *, first: bool) -> None:
        """A piece that brought *new* tokens: the first one's delay is time to first token, later gaps are shared."""
        if first:
            self.ttft.observe(now - last)
            self._ttft_s.append(now - last)
            return
        gap = (now - last) / new
        for _ in range(new):
            self.itl.observe(gap)
            self._itl_s.append(gap)
