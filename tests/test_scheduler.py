"""The batching scheduler: every row is finished exactly once, and stopping never strands queued rows."""

from __future__ import annotations

import threading

from adaptrix_core.exceptions import GenerationError
from adaptrix_core.generation import GenerationRequest, Piece
from adaptrix_core.scheduler import BatchScheduler, Job


class FakeDecoder:
    """Emits one finishing piece per row; can hold the worker inside a batch until released."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def stream(self, requests, cancelled=None):
        self.entered.set()
        self.gate.wait(5)
        yield [Piece(index=i, text="x", finish_reason="stop", tokens=1) for i in range(len(requests))]


def _job(log, name):
    request = GenerationRequest([1, 2], {}, 4, 0.0, 1.0, None, ())
    return Job(
        request,
        on_piece=lambda p: log.append((name, "piece")),
        on_error=lambda e: log.append((name, type(e).__name__)),
        on_done=lambda: log.append((name, "done")),
    )


def test_rows_are_finished_once_after_their_batch():
    """
    on_done runs once per row, after the batch its row was in has ended (so leases outlive the forward passes).
    """
    log = []
    scheduler = BatchScheduler(FakeDecoder(), window_s=0.05)
    scheduler.start()
    jobs = [_job(log, n) for n in ("a", "b")]
    for job in jobs:
        scheduler.submit(job)
    scheduler.stop()

    assert [("a", "piece"), ("b", "piece"), ("a", "done"), ("b", "done")] == log
    assert all(job.finished for job in jobs)


def test_stop_runs_what_is_queued_and_fails_later_rows():
    """
    Rows queued before stop() still run; a row submitted to a stopped scheduler gets a GenerationError at once.
    """
    log = []
    decoder = FakeDecoder()
    decoder.gate.clear()
    scheduler = BatchScheduler(decoder, window_s=0.0, max_batch=1)
    scheduler.start()
    scheduler.submit(_job(log, "running"))
    decoder.entered.wait(5)
    scheduler.submit(_job(log, "queued"))
    threading.Timer(0.2, decoder.gate.set).start()
    scheduler.stop(timeout=5)
    scheduler.submit(_job(log, "late"))

    assert [("running", "piece"), ("running", "done"), ("queued", "piece"), ("queued", "done"),
            ("late", GenerationError.__name__), ("late", "done")] == log
