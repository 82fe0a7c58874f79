"""The dynamic loader's policy: LRU by bytes and count, leases, pinning, load-on-demand, stats."""

from __future__ import annotations

import threading

import pytest

from adaptrix_core.cache import AdapterCache, percentiles, process_memory
from adaptrix_core.exceptions import AdapterInUseError, AdapterNotFoundError


class FakeBackend:
    """Stands in for the runtime: records loads and unloads; every adapter is 100 bytes unless told."""

    def __init__(self, sizes=None, known=None):
        self.sizes = sizes or {}
        self.known = known
        self.resident = set()
        self.log = []

    def load(self, name):
        if self.known is not None and name not in self.known:
            raise AdapterNotFoundError(f"no adapter {name!r}")
        assert name not in self.resident, f"{name} loaded twice"
        self.resident.add(name)
        self.log.append(("load", name))
        return self.sizes.get(name, 100)

    def unload(self, name):
        self.resident.remove(name)
        self.log.append(("unload", name))


def make(backend=None, **kwargs):
    backend = backend or FakeBackend()
    return backend, AdapterCache(load=backend.load, unload=backend.unload, **kwargs)


def test_first_use_loads_then_hits():
    """A lease on a new adapter loads it (a miss); the next lease finds it resident (a hit)."""
    backend, cache = make()
    with cache.lease(["a"]):
        pass
    with cache.lease(["a"]):
        pass

    assert ([("load", "a")], 1, 1) == (backend.log, cache.misses, cache.hits)


def test_byte_budget_evicts_least_recently_used():
    """With room for two 100-byte adapters, using a third evicts the one used longest ago."""
    backend, cache = make(max_bytes=200)
    for name in ["a", "b", "a", "c"]:
        with cache.lease([name]):
            pass

    assert (["a", "c"], 1) == (cache.resident(), cache.evictions)


def test_count_budget_evicts_least_recently_used():
    """max_adapters bounds the count whatever the bytes."""
    backend, cache = make(max_adapters=2)
    for name in ["a", "b", "c"]:
        cache.acquire([name])
        cache.release([name])

    assert ["b", "c"] == cache.resident()


def test_leased_adapter_is_never_evicted():
    """An adapter a running request holds stays resident even when it is the least recently used."""
    backend, cache = make(max_bytes=100)
    cache.acquire(["a"])
    with cache.lease(["b"]):
        both = set(cache.resident())
    after_b = cache.resident()
    cache.release(["a"])

    assert ({"a", "b"}, ["a"], 1) == (both, after_b, cache.evictions)


def test_pinned_adapter_is_never_evicted():
    """Pinned adapters survive any pressure; unpinning lets them go."""
    backend, cache = make(max_adapters=1)
    cache.load("a", pin=True)
    with cache.lease(["b"]):
        pass
    pinned_stage = cache.resident()
    cache.unpin("a")
    with cache.lease(["c"]):
        pass

    assert (["a"], ["c"]) == (pinned_stage, cache.resident())


def test_size_hint_makes_room_before_loading():
    """With a size hint, the victim is freed before the new adapter is loaded (peak stays in budget)."""
    backend, cache = make(max_bytes=100, size_hint=lambda name: 100)
    with cache.lease(["a"]):
        pass
    with cache.lease(["b"]):
        pass

    assert [("load", "a"), ("unload", "a"), ("load", "b")] == backend.log


def test_failed_load_leaves_nothing_acquired():
    """If one adapter of a composition cannot load, the others are released and the error propagates."""
    backend, cache = make(FakeBackend(known={"a"}))
    with pytest.raises(AdapterNotFoundError):
        cache.acquire(["a", "missing"])

    assert (0, ["a"], 1) == (cache.in_use("a"), cache.resident(), cache.load_failures)


def test_unload_refuses_an_adapter_in_use():
    """Unloading an adapter a request holds raises AdapterInUseError and keeps it."""
    backend, cache = make()
    cache.acquire(["a"])
    with pytest.raises(AdapterInUseError, match="in use by 1"):
        cache.unload("a")

    assert ["a"] == cache.resident()


def test_unload_unknown_names_the_loaded_ones():
    """Unloading an adapter that is not resident says which ones are."""
    backend, cache = make()
    cache.load("a")
    with pytest.raises(AdapterNotFoundError, match="Loaded: a"):
        cache.unload("zzz")


def test_adopted_adapters_are_never_evicted():
    """An adapter that exists only in memory (adopted) cannot be reloaded, so it is never evicted."""
    backend, cache = make(max_adapters=1)
    cache.adopt("mem", 50)
    with cache.lease(["b"]):
        pass
    cache.unpin("mem")

    assert (["mem"], True) == (cache.resident(), cache.is_pinned("mem"))


def test_concurrent_leases_load_each_adapter_once():
    """Eight threads asking for the same adapters at once load each one exactly once."""
    backend, cache = make()
    barrier = threading.Barrier(8)

    def worker(i):
        barrier.wait()
        with cache.lease(["a", "b"]):
            pass

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert ([("load", "a"), ("load", "b")], 16) == (sorted(backend.log), cache.hits + cache.misses)


def test_concurrent_churn_keeps_accounting_consistent():
    """Threads cycling through more adapters than fit never lose one in use, and bytes add up after."""
    backend, cache = make(max_adapters=3)
    errors = []

    def worker(i):
        try:
            for j in range(30):
                names = [f"a{(i + j) % 7}", f"a{(i * 3 + j) % 7}"]
                with cache.lease(names):
                    assert all(n in backend.resident for n in names)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert ([], sorted(backend.resident), 100 * len(backend.resident)) == (
        errors, sorted(cache.resident()), cache.resident_bytes()
    )


def test_stats_report_counters_latency_and_bytes():
    """stats() has hits, misses, hit rate, evictions, latency percentiles and per-adapter bytes."""
    ticks = iter(range(1000))
    backend, cache = make(FakeBackend(sizes={"a": 10, "b": 20}), max_adapters=1, clock=lambda: next(ticks) / 1000)
    for name in ["a", "a", "b"]:
        with cache.lease([name]):
            pass
    stats = cache.stats()

    assert (1, 2, 1 / 3, 1, 2, {"b"}, 20) == (
        stats["hits"], stats["misses"], stats["hit_rate"], stats["evictions"], stats["load_ms"]["count"],
        set(stats["adapters"]), stats["adapters"]["b"]["bytes"],
    )
    assert 1 == stats["switch_ms"]["count"]


def test_percentiles_nearest_rank():
    """p50 and p99 of 1..100 are 50 and 99; an empty series has none."""
    assert ({"count": 100, "mean": 50.5, "p50": 50, "p99": 99}, None) == (
        percentiles(range(1, 101)), percentiles([])["p50"]
    )


def test_process_memory_reads_rss():
    """The process RSS is a positive number of bytes on this machine."""
    assert process_memory()["rss_bytes"] > 0


class FailingUnload(FakeBackend):
    """An unload that fails once for one adapter (a device error, say)."""

    def __init__(self, fail_on, **kwargs):
        super().__init__(**kwargs)
        self.fail_on = fail_on

    def unload(self, name):
        if name == self.fail_on:
            self.fail_on = None
            self.resident.remove(name)
            raise RuntimeError(f"cannot free {name}")
        super().unload(name)


def test_a_failed_eviction_settles_every_victim_and_drops_the_new_entry():
    """
    When unloading an eviction victim fails, the other victims are still freed, the error surfaces,
    and the adapter that needed the room is not left half-loaded: the next request loads it normally.
    """
    backend = FailingUnload("a")
    _, cache = make(backend, max_adapters=2)
    for name in ["a", "b"]:
        with cache.lease([name]):
            pass
    cache.max_adapters = 1  # now "c" needs both "a" and "b" gone

    with pytest.raises(RuntimeError, match="cannot free a"), cache.lease(["c"]):
        pass
    assert ([], 2) == (cache.resident(), cache.evictions)

    with cache.lease(["c"]):
        pass
    assert ["c"] == cache.resident()


def test_derived_plan_bytes_count_in_the_budget_and_go_before_any_adapter():
    """
    Cached plans count toward max_bytes: over budget, they are shed first; an adapter is evicted only if that
    is not enough.
    """
    backend = FakeBackend()
    plans = {"bytes": 150}

    def shed():
        plans["bytes"] = 0

    _, cache = make(backend, max_bytes=300, overhead=lambda: plans["bytes"], shed=shed)
    with cache.lease(["a"]):
        pass
    before = (cache.resident_bytes(), cache.stats()["plan_bytes"])
    with cache.lease(["b"]):  # 200 adapter bytes + 150 plan bytes > 300: shed the plans, keep both adapters
        pass

    assert ((250, 150), ["a", "b"], 0, 200) == (before, cache.resident(), cache.evictions, cache.resident_bytes())
