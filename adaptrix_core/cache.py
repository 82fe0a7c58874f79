"""
The dynamic loader: which adapters stay resident, and loading the rest on demand.

An LRU over resident adapters, bounded by bytes and optionally by count. A
request takes a *lease* on the adapters it uses for as long as it runs; a
leased adapter is never evicted (the budget may be exceeded for a moment
instead, and eviction catches up when the lease ends). Pinned adapters are
never evicted either.

The cache owns policy only. *How* an adapter is loaded or freed is two
callables the engine passes in, so this module never imports torch and its
tests use fakes.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from .exceptions import AdapterInUseError, AdapterNotFoundError


_SAMPLES = 4096
"""Latency samples kept per series (the newest ones) for the percentiles."""


@attrs.define
class _Entry:
    """One adapter the cache knows about."""

    name: str
    state: str = "loading"
    """``loading`` -> ``resident`` -> ``evicting``; the entry is removed once freed."""
    bytes: int = 0
    pinned: bool = False
    refs: int = 0
    hits: int = 0
    last_used: float = 0.0
    reloadable: bool = True
    """False for adapters that exist only in memory (adopted): never evicted."""


def percentiles(samples: Iterable[float]) -> dict[str, float | int | None]:
    """Count, mean, p50 and p99 (nearest rank) of *samples*, in the samples' unit."""
    values = sorted(samples)
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p99": None}

    def rank(q: float) -> float:
        return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]

    return {"count": len(values), "mean": sum(values) / len(values), "p50": rank(0.50), "p99": rank(0.99)}


def process_memory() -> dict[str, int | None]:
    """
    Resident set size of this process, and GPU memory when torch already uses CUDA.

    Reads ``/proc/self/statm`` (Linux); elsewhere falls back to the peak RSS
    from ``resource``. Never imports torch itself (a CLI that has not loaded a
    model should not pay for it).
    """
    rss: int | None = None
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        try:
            import resource

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rss = peak if sys.platform == "darwin" else peak * 1024
        except (ImportError, OSError):  # pragma: no cover - Windows
            rss = None
    out: dict[str, int | None] = {"rss_bytes": rss, "gpu_allocated_bytes": None, "gpu_reserved_bytes": None}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["gpu_allocated_bytes"] = int(torch.cuda.memory_allocated())
        out["gpu_reserved_bytes"] = int(torch.cuda.memory_reserved())
    return out


class AdapterCache:
    """
    LRU of resident adapters with leases, pinning and load-on-demand.

    Args:
        load: Makes adapter *name* resident and returns its resident bytes.
            Raises (e.g. ``AdapterNotFoundError``) when it cannot.
        unload: Frees adapter *name*.
        max_bytes: Byte budget of resident adapters; 0 means no limit.
        max_adapters: Count limit of resident adapters; 0 means no limit.
        size_hint: Expected bytes of *name* before it is loaded (e.g. its
            weights file), so room is made *before* a load, not after; may
            return ``None``.
        overhead: Bytes of memory derived from the resident adapters (the
            runtime's cached plans and banks); counted in the byte budget.
        shed: Frees that derived memory (it is rebuilt on demand); called
            before any adapter is evicted to get under the byte budget.
        clock: Seconds, monotonic (tests pass a fake).

    Thread safety: every public method may be called from any thread. Loads
    and unloads run one at a time (they edit the model's modules); bookkeeping
    never waits for a load to finish except for the adapter being loaded.
    """

    def __init__(
        self,
        *,
        load: Callable[[str], int],
        unload: Callable[[str], None],
        max_bytes: int = 0,
        max_adapters: int = 0,
        size_hint: Callable[[str], int | None] | None = None,
        overhead: Callable[[], int] | None = None,
        shed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if max_bytes < 0 or max_adapters < 0:
            msg = f"cache limits must be >= 0 (0 = no limit), got max_bytes={max_bytes}, max_adapters={max_adapters}"
            raise ValueError(msg)
        self._load = load
        self._unload = unload
        self._size_hint = size_hint
        self._overhead = overhead
        self._shed = shed
        self._clock = clock
        self.max_bytes = max_bytes
        self.max_adapters = max_adapters
        self._entries: OrderedDict[str, _Entry] = OrderedDict()  # LRU order: oldest first
        self._cond = threading.Condition()
        self._io = threading.Lock()  # serializes load/unload callbacks
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.loads = 0
        self.load_failures = 0
        self._load_s: deque[float] = deque(maxlen=_SAMPLES)
        self._switch_s: deque[float] = deque(maxlen=_SAMPLES)

    def __repr__(self) -> str:
        return (
            f"<AdapterCache resident={len(self.resident())} bytes={self.resident_bytes()} "
            f"max_bytes={self.max_bytes} max_adapters={self.max_adapters}>"
        )

    # queries ------------------------------------------------------------------

    def resident(self) -> list[str]:
        """Resident adapter names, least recently used first."""
        with self._cond:
            return [e.name for e in self._entries.values() if e.state == "resident"]

    def __contains__(self, name: object) -> bool:
        with self._cond:
            entry = self._entries.get(name) if isinstance(name, str) else None
            return entry is not None and entry.state == "resident"

    def resident_bytes(self) -> int:
        """Bytes of the resident adapters plus the memory derived from them (cached plans): what the budget counts."""
        with self._cond:
            return sum(e.bytes for e in self._entries.values() if e.state != "evicting") + self._plan_bytes()

    def _plan_bytes(self) -> int:
        return int(self._overhead()) if self._overhead is not None else 0

    def in_use(self, name: str) -> int:
        """How many running requests hold *name* (0 when not resident)."""
        with self._cond:
            entry = self._entries.get(name)
            return entry.refs if entry is not None else 0

    # leases -----------------------------------------------------------------

    @contextlib.contextmanager
    def lease(self, names: Iterable[str]) -> Iterator[list[str]]:
        """Hold *names* resident for the duration of the block (loading missing ones first)."""
        held = self.acquire(names)
        try:
            yield held
        finally:
            self.release(held)

    def acquire(self, names: Iterable[str]) -> list[str]:
        """
        Make every adapter in *names* resident and take a reference on each.

        A request that finds all of them resident is a hit (its latency is a
        *switch* sample); each one loaded on demand is a miss (a *load*
        sample). On failure nothing stays acquired.

        Raises:
            Whatever ``load`` raises for a name it cannot load.
        """
        wanted = list(dict.fromkeys(names))
        start = self._clock()
        held: list[str] = []
        missed = False
        try:
            for name in wanted:
                missed |= self._acquire_one(name)
                held.append(name)
        except BaseException:
            self.release(held)
            raise
        if wanted and not missed:
            self._switch_s.append(self._clock() - start)
        return held

    def release(self, names: Iterable[str]) -> None:
        """Drop one reference on each of *names*; evict if over budget now that they may be free."""
        with self._cond:
            for name in names:
                entry = self._entries.get(name)
                if entry is not None and entry.refs > 0:
                    entry.refs -= 1
            victims = self._pick_victims()
        self._free(victims)

    def _settled(self, name: str) -> _Entry | None:
        """Under the lock: *name*'s resident entry, or ``None``; waits while it is loading or being evicted."""
        while True:
            entry = self._entries.get(name)
            if entry is None or entry.state == "resident":
                return entry
            self._cond.wait()

    def _acquire_one(self, name: str) -> bool:
        """Take a reference on *name*; return True if it had to be loaded (a miss)."""
        with self._cond:
            entry = self._settled(name)
            if entry is not None:
                entry.refs += 1
                entry.hits += 1
                entry.last_used = self._clock()
                self._entries.move_to_end(name)
                self.hits += 1
                return False
            self.misses += 1
            entry = _Entry(name, refs=1, bytes=self._hint(name))
            self._entries[name] = entry
            victims = self._pick_victims()
        self._make_room_then_load(entry, victims)
        return True

    # explicit control ---------------------------------------------------------

    def load(self, name: str, *, pin: bool = False) -> bool:
        """
        Make *name* resident without a request (e.g. ``adaptrix serve --preload``); optionally pin it.

        Returns True if it was loaded now, False if it was already resident.
        """
        with self._cond:
            entry = self._settled(name)
            if entry is not None:
                entry.pinned |= pin
                entry.last_used = self._clock()
                self._entries.move_to_end(name)
                return False
            entry = _Entry(name, bytes=self._hint(name), pinned=pin, refs=1)
            self._entries[name] = entry
            victims = self._pick_victims()
        self._make_room_then_load(entry, victims)
        self.release([name])
        return True

    def adopt(self, name: str, nbytes: int, *, pinned: bool = True, reloadable: bool = False) -> None:
        """Account for an adapter made resident outside the cache (in memory only: never evicted)."""
        with self._cond:
            self._entries[name] = _Entry(
                name, state="resident", bytes=nbytes, pinned=pinned or not reloadable, reloadable=reloadable,
                last_used=self._clock(),
            )
            victims = self._pick_victims()
        self._free(victims)

    def pin(self, name: str) -> None:
        """Never evict *name* (it must be resident)."""
        with self._cond:
            self._resident_entry(name).pinned = True

    def unpin(self, name: str) -> None:
        """Let *name* be evicted again (adapters that exist only in memory stay pinned)."""
        with self._cond:
            entry = self._resident_entry(name)
            entry.pinned = not entry.reloadable
            victims = self._pick_victims()
        self._free(victims)

    def is_pinned(self, name: str) -> bool:
        with self._cond:
            entry = self._entries.get(name)
            return entry is not None and entry.pinned

    def unload(self, name: str) -> None:
        """
        Free *name* now.

        Raises:
            AdapterNotFoundError: It is not resident.
            AdapterInUseError: A running request holds it.
        """
        with self._cond:
            entry = self._resident_entry(name)
            if entry.refs:
                raise AdapterInUseError(
                    f"adapter {name!r} is in use by {entry.refs} running request(s); unload it when they finish."
                )
            entry.state = "evicting"
        self._free([entry], evicted=False)

    def clear(self, *, keep_adopted: bool = False) -> None:
        """Free every adapter no request holds (pinned ones included; adopted ones unless *keep_adopted*)."""
        with self._cond:
            victims = [
                e for e in self._entries.values()
                if e.state == "resident" and not e.refs and not (keep_adopted and not e.reloadable)
            ]
            for e in victims:
                e.state = "evicting"
        self._free(victims, evicted=False)

    def _resident_entry(self, name: str) -> _Entry:
        entry = self._entries.get(name)
        if entry is None or entry.state != "resident":
            known = ", ".join(e.name for e in self._entries.values() if e.state == "resident") or "none"
            raise AdapterNotFoundError(f"adapter {name!r} is not loaded. Loaded: {known}.")
        return entry

    # mechanics ----------------------------------------------------------------

    def _hint(self, name: str) -> int:
        if self._size_hint is None:
            return 0
        try:
            return max(0, int(self._size_hint(name) or 0))
        except Exception:  # a hint is only a hint; the load reports the real error
            return 0

    def _do_load(self, entry: _Entry) -> None:
        start = self._clock()
        try:
            with self._io:
                nbytes = int(self._load(entry.name))
        except BaseException:
            with self._cond:
                self.load_failures += 1
                if self._entries.get(entry.name) is entry:
                    del self._entries[entry.name]
                self._cond.notify_all()
            raise
        elapsed = self._clock() - start
        with self._cond:
            self.loads += 1
            self._load_s.append(elapsed)
            entry.bytes = nbytes
            entry.state = "resident"
            entry.last_used = self._clock()
            self._entries.move_to_end(entry.name)
            self._cond.notify_all()
            victims = self._pick_victims()
        self._free(victims)

    def _over(self, nbytes: int, count: int) -> bool:
        return (self.max_bytes > 0 and nbytes > self.max_bytes) or (self.max_adapters > 0 and count > self.max_adapters)

    def _pick_victims(self) -> list[_Entry]:
        """Under the lock: mark least recently used free adapters for eviction until within budget."""
        live = [e for e in self._entries.values() if e.state != "evicting"]
        nbytes = sum(e.bytes for e in live) + self._plan_bytes()
        count = len(live)
        if self.max_bytes > 0 and nbytes > self.max_bytes and self._shed is not None and self._plan_bytes():
            self._shed()  # derived memory goes before any adapter does
            nbytes = sum(e.bytes for e in live) + self._plan_bytes()
        victims = []
        for entry in live:  # oldest first
            if not self._over(nbytes, count):
                break
            if entry.state == "resident" and not entry.refs and not entry.pinned:
                entry.state = "evicting"
                victims.append(entry)
                nbytes -= entry.bytes
                count -= 1
        return victims

    def _free(self, victims: list[_Entry], *, evicted: bool = True) -> None:
        """
        Outside the lock: unload each victim, then forget it and wake anyone waiting for it.

        Every victim is settled even when one unload fails; the first failure is raised afterwards.
        """
        failure: BaseException | None = None
        for entry in victims:
            try:
                with self._io:
                    self._unload(entry.name)
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the other victims
                failure = failure or e
            finally:
                with self._cond:
                    if self._entries.get(entry.name) is entry:
                        del self._entries[entry.name]
                    if evicted:
                        self.evictions += 1
                    self._cond.notify_all()
        if failure is not None:
            raise failure

    def _make_room_then_load(self, entry: _Entry, victims: list[_Entry]) -> None:
        """Evict *victims*, then load *entry*; if eviction fails, *entry* is dropped so no waiter hangs."""
        try:
            self._free(victims)
        except BaseException:
            with self._cond:
                if self._entries.get(entry.name) is entry:
                    del self._entries[entry.name]
                self._cond.notify_all()
            raise
        self._do_load(entry)

    # stats ------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters, latency percentiles (ms), resident bytes per adapter, and process memory."""
        now = self._clock()
        plan_bytes = self._plan_bytes()
        with self._cond:
            lookups = self.hits + self.misses
            adapters = {
                e.name: {
                    "bytes": e.bytes,
                    "pinned": e.pinned,
                    "in_use": e.refs,
                    "hits": e.hits,
                    "idle_s": round(now - e.last_used, 3),
                }
                for e in reversed(self._entries.values())
                if e.state == "resident"
            }
            load_ms = percentiles(s * 1000 for s in self._load_s)
            switch_ms = percentiles(s * 1000 for s in self._switch_s)
            out = {
                "max_bytes": self.max_bytes,
                "max_adapters": self.max_adapters,
                "resident_count": len(adapters),
                "resident_bytes": sum(a["bytes"] for a in adapters.values()) + plan_bytes,
                "adapter_bytes": sum(a["bytes"] for a in adapters.values()),
                "plan_bytes": plan_bytes,
                "hits": self.hits,
                "misses": self.misses,
                "hit_rate": self.hits / lookups if lookups else None,
                "evictions": self.evictions,
                "loads": self.loads,
                "load_failures": self.load_failures,
                "load_ms": load_ms,
                "switch_ms": switch_ms,
                "adapters": adapters,
            }
        out["memory"] = process_memory()
        return out

    def record_switch(self, seconds: float) -> None:
        """Add a switch-latency sample measured outside a lease (e.g. the engine's ``switch_adapter``)."""
        with self._cond:
            self._switch_s.append(seconds)

    def reset_stats(self) -> None:
        """Zero the counters and latency samples (benchmarks call this between phases)."""
        with self._cond:
            self.hits = self.misses = self.evictions = self.loads = self.load_failures = 0
            self._load_s.clear()
            self._switch_s.clear()
            for e in self._entries.values():
                e.hits = 0
