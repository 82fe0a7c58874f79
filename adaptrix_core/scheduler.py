"""
A small batching scheduler: concurrent requests share one decode loop.

Requests arrive from many server tasks; one worker thread collects what is
queued (waiting a few milliseconds for company when alone), groups rows, and
runs each group as one batch through :class:`adaptrix_core.generation.Decoder`
with one adapter selection per row. Pieces go back to each request through its
callbacks as soon as a step produces them.

Grouping: by default only requests with the *same prompt length* share a
batch. Such rows need no padding, so each row sees exactly the positions,
mask and tokens it would see alone, and greedy output matches a run on its own
(only the float summation order inside batched matmuls differs, at the last
bit). ``mixed_lengths=True`` also left-pads different lengths into one batch:
more throughput when prompts vary, with the same caveat plus a padded
attention path.
"""

from __future__ import annotations

import queue
import threading
import time

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import attrs

from .generation import Decoder, GenerationRequest, Piece


@attrs.define(eq=False)
class Job:
    """
    One request row waiting for (or in) a batch.

    ``on_piece`` and ``on_error`` are called from the worker thread; the
    server turns them into asyncio queue puts. Set ``cancelled`` to drop the
    row at the next step (e.g. the client went away).
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

    def finish(self) -> None:
        if not self.finished:
            self.finished = True
            if self.on_done is not None:
                self.on_done()


class BatchScheduler:
    """
    Runs submitted :class:`Job` rows in batches on one worker thread.

    Args:
        decoder: The engine's decoder.
        max_batch: Most rows per batch.
        window_s: How long a lone request waits for others to join it.
        mixed_lengths: Left-pad different prompt lengths into one batch (see the module docs).
    """

    def __init__(
        self, decoder: Decoder, *, max_batch: int = 8, window_s: float = 0.005, mixed_lengths: bool = False
    ) -> None:
        if max_batch < 1:
            msg = f"max_batch must be >= 1, got {max_batch}"
            raise ValueError(msg)
        self.decoder = decoder
        self.max_batch = max_batch
        self.window_s = max(0.0, window_s)
        self.mixed_lengths = mixed_lengths
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.batches = 0
        self.rows = 0
        self.largest_batch = 0
        self.tokens = 0
        self.busy_s = 0.0

    def start(self) -> None:
        if self._thread is None:
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
                "batches": self.batches,
                "rows": self.rows,
                "mean_batch": self.rows / self.batches if self.batches else None,
                "largest_batch": self.largest_batch,
                "tokens": self.tokens,
                "busy_s": round(self.busy_s, 3),
                "queued": self._queue.qsize(),
                "max_batch": self.max_batch,
                "window_ms": self.window_s * 1000,
                "mixed_lengths": self.mixed_lengths,
            }

    def reset_stats(self) -> None:
        with self._lock:
            self.batches = self.rows = self.largest_batch = self.tokens = 0
            self.busy_s = 0.0

    # worker -----------------------------------------------------------------

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """The first job plus whatever arrives within the window (or is already queued)."""
        jobs = [first]
        deadline = time.perf_counter() + self.window_s
        stop = False
        while len(jobs) < self.max_batch * 4:
            remaining = deadline - time.perf_counter()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _groups(self, jobs: list[Job]) -> list[list[Job]]:
        """Split into batches: by prompt length unless mixed, at most ``max_batch`` rows, oldest first."""
        by_key: dict[int, list[Job]] = defaultdict(list)
        for job in jobs:
            if job.cancelled:
                job.done = True
                continue
            by_key[0 if self.mixed_lengths else len(job.request.input_ids)].append(job)
        groups = []
        for same in by_key.values():
            groups.extend(same[i : i + self.max_batch] for i in range(0, len(same), self.max_batch))
        groups.sort(key=lambda g: g[0].submitted)
        return groups

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._collect(first)
            for group in self._groups(jobs):
                self._decode(group)
            if stop:
                return

    def _decode(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        tokens = 0
        try:
            stream = self.decoder.stream([j.request for j in jobs], cancelled=lambda i: jobs[i].cancelled)
            for pieces in stream:
                for piece in pieces:
                    job = jobs[piece.index]
                    tokens += 1
                    if piece.finish_reason is not None:
                        job.done = True
                    job.on_piece(piece)
        except BaseException as e:  # report to every unfinished row; the worker keeps serving
            for job in jobs:
                if not job.done:
                    job.done = True
                    job.on_error(e)
        finally:
            for job in jobs:  # out of the batch: its adapters may now be released
                job.finish()
            with self._lock:
                self.batches += 1
                self.rows += len(jobs)
                self.largest_batch = max(self.largest_batch, len(jobs))
                self.tokens += tokens
                self.busy_s += time.perf_counter() - start
