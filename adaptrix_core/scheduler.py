"""
The serving scheduler: concurrent requests share one decode loop, and join it at any step.

Requests arrive from many server tasks; one worker thread owns the model. By
default it schedules at the *iteration* level (continuous batching, as
text-generation-inference and vLLM do): between two decode steps it admits
waiting rows, prefills them together and merges their key/value cache into the
running batch (:mod:`adaptrix_core.kvbatch`), and rows leave the moment they
finish, releasing their adapters' leases. Every row keeps its own adapter
selection through the runtime's per-row plans.

Admission (who joins, and when):

- at most ``max_batch`` rows run at once, and the rows' prompt plus token limit
  (their worst-case key/value size) must fit ``max_batch_tokens``; a row that
  alone exceeds it still runs when the batch is empty, so nothing waits forever;
- first come, first served: a row that does not fit blocks those behind it;
- stopping the running batch for a prefill is worth it only for enough new rows:
  joiners are admitted when there are at least ``running / waiting_served_ratio``
  of them, or when the oldest has waited ``max_waiting_steps`` decode steps, so
  long decodes never starve new requests and a lone arrival is not delayed long.

Prompt prefixes (:mod:`adaptrix_core.prefixcache`): the keys and values of
recent prompts are kept, per adapter selection, and a new row whose prompt
starts like a kept one (a chat template's system header, an application's own
system prompt) prefills only the rest. ``prefix_cache_tokens=0`` turns it off.

Chunked prefill: while rows are decoding, a prefill predicted to take longer
than ``prefill_chunk_ms`` (by the cost learnt from this machine's own forwards,
see :class:`PrefillCost`) runs one chunk of about that long between two of their
steps, the rest after the next; so a long prompt arriving holds the running
streams up one chunk at a time, never for its whole prefill. Shorter prefills run
whole as they come, and rows keep being admitted while a long one is under way.
Each chunk pays a forward's fixed cost again.

Lanes: merging a row pads every row of the batch to the widest one's key/value
length, and a decode step copies and attends over all of it; so a row whose
prompt is far longer than the running rows' (a document among chat turns) would
make every step of theirs several times slower. When merging would add more
padded key/value slots than a forward's fixed cost is worth (``lane_slots``),
the new rows decode as a separate batch (a *lane*) with its own forward each
step, and lanes merge again once that is cheap (the long row left, or the
others caught up).

``exact=True`` keeps the old grouping: only prompts of the same length share a
batch, formed when the worker is idle, and nobody joins a running batch. Such
rows need no padding, so each sees exactly the positions, mask and tokens it
would see alone. Under continuous batching a row may sit next to left padding;
masked positions add exact zeros, so greedy tokens match a run alone up to the
float summation order inside batched matmuls (the tests compare token sequences).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time

from collections import deque
from collections.abc import Callable
from typing import Any

import attrs

from .generation import Batch, Decoder, Filling, GenerationRequest, Piece, Row
from .prefixcache import DEFAULT_PREFIX_CACHE_TOKENS, PrefixCache


log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64
"""Rows decoded together by default (see docs/server.md for the measurement behind it)."""

DEFAULT_MAX_BATCH_TOKENS = 32768
"""Default key/value budget: sum over running rows of prompt + max_new_tokens."""

DEFAULT_LANE_SLOTS = 4096
"""
Padded key/value slots (rows x columns) worth a forward of their own: on the embedded model a decode forward's
fixed part is about 57 ms and each padded slot costs about 23 us in every step (see docs/server.md).
"""

MAX_LANES = 4
"""Most batches decoded side by side; beyond it new rows merge into the lane they widen least."""

DEFAULT_PREFILL_CHUNK_MS = 1000.0
"""
Only prefills predicted to stall running streams for over a second are chunked by default: chat-sized
prompts run whole as before, a long document holds the streams up a second at a time (see docs/server.md).
"""


@attrs.define(eq=False)
class Job:
    """
    One request row waiting for (or in) a batch.

    ``on_piece`` and ``on_error`` are called from the worker thread; the
    server turns them into asyncio queue puts. Set ``cancelled`` (or call
    :meth:`cancel`) to drop the row at the next step (e.g. the client went
    away): a queued row is dropped without running, a running one leaves the
    batch; either way ``on_done`` then runs, so its lease is released.
    """

    request: GenerationRequest
    on_piece: Callable[[Piece], None]
    on_error: Callable[[BaseException], None]
    on_done: Callable[[], None] | None = None
    """Called once from the worker when the row can no longer take part in a forward pass."""
    cancelled: bool = False
    done: bool = False
    finished: bool = False
    submitted: float = attrs.field(factory=time.perf_counter)
    waited_steps: int = 0
    """Decode steps run while this row was waiting to be admitted."""

    def cancel(self) -> None:
        self.cancelled = True

    def finish(self) -> None:
        """The row is out of every forward pass: it is done, and ``on_done`` runs (once)."""
        self.done = True
        if not self.finished:
            self.finished = True
            if self.on_done is not None:
                self.on_done()


class BatchScheduler:
    """
    Runs submitted :class:`Job` rows on one worker thread, continuously batched.

    Args:
        decoder: The engine's decoder.
        max_batch: Most rows decoded together.
        window_s: How long a lone request waits for company when nothing is running.
        exact: Equal-length groups only, no joining (see the module docs).
        max_batch_tokens: Key/value budget (prompt + max_new_tokens summed over running rows).
        waiting_served_ratio: Joiners needed per running row to stop for a prefill (see the module docs).
        max_waiting_steps: Decode steps after which a waiting row is admitted anyway.
        prefix_cache_tokens: Prompt tokens whose keys and values are kept for reuse (0 = none; never with *exact*).
        prefill_chunk_ms: A prefill predicted to take longer runs in chunks of about this long between two steps
            of running rows (0 = prefills run whole).
        lane_slots: Padded key/value slots merging may add before new rows get a lane of their own.
    """

    def __init__(
        self,
        decoder: Decoder,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        window_s: float = 0.005,
        exact: bool = False,
        max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
        waiting_served_ratio: float = 4.0,
        max_waiting_steps: int = 4,
        prefix_cache_tokens: int = DEFAULT_PREFIX_CACHE_TOKENS,
        prefill_chunk_ms: float = DEFAULT_PREFILL_CHUNK_MS,
        lane_slots: int = DEFAULT_LANE_SLOTS,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_batch_tokens", max_batch_tokens)):
            if value < 1:
                msg = f"{name} must be >= 1, got {value}"
                raise ValueError(msg)
        if prefill_chunk_ms < 0:
            msg = f"prefill_chunk_ms must be >= 0 (0 = whole prefills), got {prefill_chunk_ms}"
            raise ValueError(msg)
        if waiting_served_ratio <= 0:
            msg = f"waiting_served_ratio must be > 0, got {waiting_served_ratio}"
            raise ValueError(msg)
        self.decoder = decoder
        self.max_batch = max_batch
        self.window_s = max(0.0, window_s)
        self.exact = exact
        self.max_batch_tokens = max_batch_tokens
        self.waiting_served_ratio = waiting_served_ratio
        self.max_waiting_steps = max(0, max_waiting_steps)
        self.prefill_chunk_ms = prefill_chunk_ms
        self._filling: list[Filling] = []
        """Prefills under way (chunked while rows are running), oldest first."""
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._running: list[Batch] = []
        """Lanes of rows decoding, each its own batch (see the module docs)."""
        self.lane_slots = lane_slots
        self._jobs: dict[int, Job] = {}
        self._next_id = 0
        self._stopping = False
        self._mergeable: bool | None = None
        """Whether the model's cache can be padded and merged; known after the first prefill."""
        self.prefix_cache = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 and not exact else None
        self.prefill_cost = PrefillCost()
        self.reset_stats()

    def start(self) -> None:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="adaptrix-scheduler", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then stop; rows submitted after that get an error instead of waiting forever."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            return  # still finishing a batch: keep the handle so start() never runs a second worker
        self._thread = None
        self._fail_queued()

    def _fail_queued(self) -> None:
        from .exceptions import GenerationError

        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and not job.done:
                job.done = True
                job.on_error(GenerationError("the server is shutting down; the request was not run."))
                job.finish()

    def submit(self, job: Job) -> None:
        """Queue one row (already checked and with its adapters leased); a stopped scheduler fails it at once."""
        self._queue.put(job)
        if self._thread is None:
            self._fail_queued()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "batches": self.steps + self.prefills,
                "steps": self.steps,
                "prefills": self.prefills,
                "prefill_chunks": self.chunks,
                "rows": self.rows,
                "mean_batch": self.row_steps / self.steps if self.steps else None,
                "largest_batch": self.largest_batch,
                "tokens": self.tokens,
                "busy_s": round(self.busy_s, 3),
                "queued": self._queue.qsize() + len(self._waiting),
                "running": sum(len(lane) for lane in list(self._running)),  # copies: the worker changes them
                "lanes": len(self._running),
                "filling": sum(len(f.rows) for f in list(self._filling)),
                "max_batch": self.max_batch,
                "max_batch_tokens": self.max_batch_tokens,
                "window_ms": self.window_s * 1000,
                "exact": self.exact,
                "prefill_chunk_ms": self.prefill_chunk_ms,
                "prefix_cache": self.prefix_cache.stats() if self.prefix_cache is not None else None,
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.steps = self.prefills = self.chunks = self.rows = self.row_steps = self.largest_batch = self.tokens = 0
            self.busy_s = 0.0
            if self.prefix_cache is not None:
                self.prefix_cache.reset_stats()

    # worker -----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            idle = not self._running and not self._waiting and not self._filling
            if self._stopping and idle:
                return
            self._take_queued(block=idle and not self._stopping)
            self._drop_cancelled_waiting()
            start = time.perf_counter()
            tokens = self._admit()
            if self._running:
                tokens += self._step()
            if tokens:
                with self._lock:
                    self.tokens += tokens
                    self.busy_s += time.perf_counter() - start

    def _take_queued(self, *, block: bool) -> None:
        """Move submitted jobs to the waiting list; when idle, block for one and give it a window for company."""
        deadline = None
        while True:
            try:
                if block and deadline is None:
                    job = self._queue.get()
                    deadline = time.perf_counter() + self.window_s
                elif deadline is not None and (remaining := deadline - time.perf_counter()) > 0:
                    job = self._queue.get(timeout=remaining)
                else:
                    job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is None:
                self._stopping = True
                return
            with self._lock:
                self._waiting.append(job)
            if len(self._waiting) >= self.max_batch and deadline is not None:
                deadline = 0.0  # a full batch needs no more company

    def _drop_cancelled_waiting(self) -> None:
        """A queued row whose client left never runs: finish it now, so its adapters' lease is released."""
        gone = [job for job in self._waiting if job.cancelled]
        if gone:
            with self._lock:
                self._waiting = [job for job in self._waiting if not job.cancelled]
            for job in gone:
                job.finish()

    # admission --------------------------------------------------------------

    def _choose(self) -> list[Job]:
        """The waiting rows to admit now (possibly none), oldest first."""
        running = self._running
        if not self._waiting:
            return []
        if running and (self.exact or not self._can_join(running[0])):
            return []
        if self.exact:
            length = len(self._waiting[0].request.input_ids)
            return [j for j in self._waiting if len(j.request.input_ids) == length][: self.max_batch]
        admitted = [row for lane in running for row in lane.rows] + [row for f in self._filling for row in f.rows]
        rows = len(admitted)
        budget = self.max_batch_tokens - sum(_kv_need(row.request) for row in admitted)
        chosen: list[Job] = []
        for job in self._waiting:
            need = _kv_need(job.request)
            if rows + len(chosen) >= self.max_batch or (need > budget and (rows or chosen)):
                break
            chosen.append(job)
            budget -= need
        if rows and chosen and len(chosen) * self.waiting_served_ratio < rows:
            if self._waiting[0].waited_steps < self.max_waiting_steps:
                return []
        return chosen

    def _can_join(self, running: Batch) -> bool:
        """Whether new rows may merge into *running* (a cache with sliding windows or the like cannot); asked once."""
        if self._mergeable is None:
            from .kvbatch import cache_can_merge

            self._mergeable = cache_can_merge(running.kv.cache)
        return self._mergeable

    def _admit(self) -> int:
        """Start prefills for the chosen rows (grouped by length, see prefill_groups), then advance them."""
        chosen = self._choose()
        if chosen:
            self._begin(chosen)
        return self._fill()

    def _begin(self, chosen: list[Job]) -> None:
        with self._lock:
            taken = set(map(id, chosen))
            self._waiting = [j for j in self._waiting if id(j) not in taken]
        rows = []
        for job in chosen:
            try:
                row = self.decoder.new_row(self._next_id, job.request)
            except Exception as e:  # a request the model cannot run: only its own client hears of it
                self._fail([job], e)
                continue
            self._jobs[self._next_id] = job
            self._next_id += 1
            rows.append(row)
        self._find_prefixes(rows)
        if self._mergeable:
            split = prefill_groups([row.prefill_tokens for row in rows], self.prefill_cost.overhead_tokens)
            groups = [[rows[i] for i in group] for group in split]
        else:
            groups = [rows]
        for group in filter(None, groups):
            try:
                self._filling.append(self._without_reuse_on_failure(group, self.decoder.begin_prefill))
            except Exception as e:  # report to these rows; the running batch carries on
                self._fail([self._jobs.pop(r.index) for r in group], e)

    def _fill(self) -> int:
        """
        Advance the prefills under way, merging each finished one into the running batch.

        With rows running (and a batch they can join), a prefill predicted to take longer than
        ``prefill_chunk_ms`` runs one chunk of about that long (at least one column) before their next step,
        at most one such chunk a step; shorter prefills run whole. With nothing running, every prefill runs
        to its end.
        """
        bound = self.prefill_chunk_ms / 1000
        chunked = bound > 0 and bool(self._running) and bool(self._mergeable)
        chunk_run = False
        tokens = 0
        for filling in list(self._filling):
            if all(self._jobs[row.index].cancelled for row in filling.rows):  # nobody waits for it any more
                self._filling.remove(filling)
                for row in filling.rows:
                    self._jobs.pop(row.index).finish()
                continue
            columns = None
            if chunked and self.prefill_cost.seconds(filling) > bound:
                if chunk_run:
                    continue  # one long prefill's chunk a step: the running rows step first
                columns = max(1, self.prefill_cost.columns_within(bound, filling))
                chunk_run = True
            past, width = filling.past, filling.left if columns is None else min(columns, filling.left)
            started = time.perf_counter()
            try:
                done = self._advance(filling, columns)
            except Exception as e:  # report to these rows; the running batch carries on
                self._filling.remove(filling)
                self._fail([self._jobs.pop(r.index) for r in filling.rows], e)
                continue
            self.prefill_cost.observe(len(filling.rows), past, width, time.perf_counter() - started)
            with self._lock:
                self.chunks += 1
            if done is None:
                continue
            self._filling.remove(filling)
            batch, pieces = done
            with self._lock:
                self.prefills += 1
                self.rows += len(batch.rows)
            self._remember_prompts(batch)
            tokens += self._deliver(pieces)
            self._retire(batch)
            if batch.rows:
                self._join(batch)
        return tokens

    def _join(self, batch: Batch) -> None:
        """Merge *batch* into the lane it pads least, or give it a lane of its own when merging costs more."""
        mergeable = self._can_join(batch)
        if not self._running or not mergeable:
            self._running.append(batch)
            return
        extra, lane = min(((_padding_added(lane, batch), lane) for lane in self._running), key=lambda pair: pair[0])
        if extra <= self.lane_slots or len(self._running) >= MAX_LANES:
            lane.merge(batch)
        else:
            self._running.append(batch)

    def _rejoin_lanes(self) -> None:
        """Merge lanes whose widths have come close (a long row left, or the others grew): one forward is cheaper."""
        i = 0
        while i < len(self._running):
            for j in range(i + 1, len(self._running)):
                if _padding_added(self._running[i], self._running[j]) <= self.lane_slots:
                    self._running[i].merge(self._running.pop(j))
                    break
            else:
                i += 1

    def _find_prefixes(self, rows: list[Row]) -> None:
        if self.prefix_cache is None or not self._mergeable:
            return
        try:
            self.decoder.find_prefixes(rows, self.prefix_cache)
        except Exception:  # a cache problem must never stop serving: prefill these rows in full
            log.exception("prompt prefix lookup failed; prefilling in full")
            for row in rows:
                row.reuse = None

    def _advance(self, filling: Filling, columns: int | None) -> tuple[Batch, list[Piece]] | None:
        """One chunk of *filling* (see :meth:`Decoder.fill`); should prefix reuse fail, the rows are prefilled whole."""
        return self._without_reuse_on_failure(filling.rows, lambda rows: self.decoder.fill(filling, columns),
                                              retry=self.decoder.prefill)

    def _without_reuse_on_failure(self, rows: list[Row], run: Callable[[list[Row]], Any],
                                  retry: Callable[[list[Row]], Any] | None = None) -> Any:
        """
        ``run(rows)``; should it fail for rows reusing cached prefixes, ``(retry or run)(rows)`` without them,
        and if that works, the cache was at fault on this model: prefix reuse is turned off.
        """
        if not any(row.reuse is not None for row in rows):
            return run(rows)
        try:
            return run(rows)
        except Exception:
            log.exception("prefill from cached prompt prefixes failed; trying a full prefill")
            for row in rows:
                row.reuse = None
            result = (retry or run)(rows)  # should this fail too, the rows were at fault, not the cache
            log.warning("a full prefill worked where reusing prompt prefixes failed: prefix reuse is now off")
            self.prefix_cache = None
            return result

    def _remember_prompts(self, batch: Batch) -> None:
        if self.prefix_cache is None or not self._can_join(batch):  # a cache we cannot merge, we cannot prefix
            return
        try:
            self.decoder.remember_prompts(batch, self.prefix_cache)
        except Exception:  # as in _find_prefixes: serving goes on without the cache
            log.exception("keeping prompt prefixes failed; prompt prefix reuse is now off")
            self.prefix_cache = None

    def _step(self) -> int:
        """One decode step of every lane; a lane whose forward fails fails its rows, the others go on."""
        tokens = 0
        stepped = 0
        for lane in list(self._running):
            try:
                pieces = self.decoder.step(lane)
            except Exception as e:  # report to every row of the lane; the worker keeps serving
                self._running.remove(lane)
                self._fail([self._jobs.pop(r.index) for r in lane.rows], e)
                continue
            stepped += len(lane)
            tokens += self._deliver(pieces)
            self._retire(lane)
            if not lane.rows:
                self._running.remove(lane)
        if len(self._running) > 1:
            self._rejoin_lanes()
        for job in self._waiting:
            job.waited_steps += 1
        with self._lock:
            self.steps += 1
            self.row_steps += stepped
            self.largest_batch = max(self.largest_batch, stepped)
        return tokens

    def _deliver(self, pieces: list[Piece]) -> int:
        for piece in pieces:
            job = self._jobs[piece.index]
            if job.cancelled:
                continue
            if piece.finish_reason is not None:
                job.done = True
            try:
                job.on_piece(piece)
            except Exception:  # its client cannot take pieces any more (e.g. a closed event loop): drop the row
                job.cancelled = True
        return len(pieces)

    def _retire(self, batch: Batch) -> None:
        """Rows that finished or were cancelled leave the batch; their jobs are finished (leases released)."""
        for row in batch.retire(lambda row: self._jobs[row.index].cancelled):
            self._jobs.pop(row.index).finish()

    def _fail(self, jobs: list[Job], error: BaseException) -> None:
        for job in jobs:
            if not job.done:
                job.done = True
                job.on_error(error)
            job.finish()


def _padding_added(a: Batch, b: Batch) -> int:
    """Key/value slots merging *a* and *b* would add as padding (the narrower one's rows padded to the wider)."""
    return abs(a.kv.width - b.kv.width) * (len(b) if a.kv.width > b.kv.width else len(a))


def _kv_need(request: GenerationRequest) -> int:
    return len(request.input_ids) + request.max_new_tokens


def prefill_groups(lengths: list[int], overhead_tokens: float) -> list[list[int]]:
    """
    Split rows with these prefill *lengths* into groups (indexes) of least total cost, one left-padded forward each.

    A forward costs about ``overhead_tokens`` (its fixed cost, in tokens' worth of work) plus rows x its
    longest length; sorted by length, the best split is contiguous, so a small dynamic program finds it.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    best = [0.0] * (len(order) + 1)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        width = lengths[order[end - 1]]
        best[end], cut[end] = min((best[start] + overhead_tokens + (end - start) * width, start) for start in range(end))
    groups = []
    end = len(order)
    while end:
        groups.append([order[i] for i in range(cut[end], end)])
        end = cut[end]
    return groups[::-1]


class PrefillCost:
    """
    What a prefill forward costs on this machine, learnt from the last ones.

    A forward of *rows* x *columns* prompt tokens after *past* columns already computed costs about
    ``fixed + rows * columns * (per_token + per_context * (past + columns / 2))``. ``fixed`` and ``per_token``
    are fit by least squares on the last forwards at short contexts (most prompts); ``per_context``, how much
    dearer a token gets the more it attends to, is learnt from forwards at long contexts (a long prompt's
    chunks), so a chunk deep into a document is not mistaken for a cheap one.

    The fixed part in tokens' worth decides how far prompts of different lengths are worth padding into one
    forward (on a CPU a few dozen tokens, on a GPU far more); the whole model sizes chunked prefills.
    """

    SHORT_CONTEXT = 256
    """Forwards whose mean context is at most this teach the fit; longer ones teach ``per_context``."""

    def __init__(self, overhead_tokens: float = 32.0, window: int = 64, seconds_per_token: float = 1e-3) -> None:
        self.default = overhead_tokens
        self.default_per_token = seconds_per_token
        self.per_context = seconds_per_token / 2048
        """Added cost per token per column of context (a prior until long forwards are seen)."""
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)

    def observe(self, rows: int, past: int, columns: int, seconds: float) -> None:
        """One forward's time: *rows* x *columns* new tokens after *past* columns of keys and values."""
        context = past + columns / 2
        if context <= self.SHORT_CONTEXT:
            self._samples.append((rows * columns, seconds))
            return
        fixed, per_token = self.parts()
        seen = ((seconds - fixed) / (rows * columns) - per_token) / context
        self.per_context = max(0.0, (self.per_context + seen) / 2)

    def fit(self) -> tuple[float, float] | None:
        """``(fixed seconds, seconds per token)`` by least squares on the short forwards; ``None`` until they tell."""
        n = len(self._samples)
        if n < 8:
            return None
        mean_t = sum(t for t, _ in self._samples) / n
        mean_s = sum(s for _, s in self._samples) / n
        var = sum((t - mean_t) ** 2 for t, _ in self._samples)
        if var <= 0:
            return None
        slope = sum((t - mean_t) * (s - mean_s) for t, s in self._samples) / var
        if slope <= 0:
            return None
        return max(0.0, mean_s - slope * mean_t), slope

    def parts(self) -> tuple[float, float]:
        """``(fixed seconds, seconds per token)``: the fit, or the defaults until there is one."""
        fit = self.fit()
        return fit if fit is not None else (self.default * self.default_per_token, self.default_per_token)

    @property
    def overhead_tokens(self) -> float:
        """The fixed cost over the cost per token, or the default until known."""
        fit = self.fit()
        return self.default if fit is None else min(1024.0, fit[0] / fit[1])

    def seconds(self, filling: Filling, columns: int | None = None) -> float:
        """Predicted time of *filling*'s next *columns* (all it has left when ``None``) in one forward."""
        fixed, per_token = self.parts()
        c = filling.left if columns is None else columns
        return fixed + len(filling.rows) * c * (per_token + self.per_context * (filling.past + c / 2))

    def columns_within(self, seconds: float, filling: Filling) -> int:
        """Most prompt columns of *filling* one forward should compute in *seconds* (0 if not even one)."""
        fixed, per_token = self.parts()
        rows = len(filling.rows)
        a = rows * self.per_context / 2  # cost = fixed + a c^2 + b c
        b = rows * (per_token + self.per_context * filling.past)
        spare = seconds - fixed
        if spare <= 0:
            return 0
        c = spare / b if a <= 0 else (-b + math.sqrt(b * b + 4 * a * spare)) / (2 * a)
        return min(filling.left, int(c + 1e-9))  # a hair over, so float error never drops a column that fits
