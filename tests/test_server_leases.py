"""
Leases held by server requests: released exactly once however a request ends (finished, failed, client gone).

A leaked lease keeps an adapter resident forever (``in_use`` > 0, unload refused); a doubled release takes
another request's reference away and lets its adapter be evicted under it.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import threading
import time

import pytest


def _require(module: str):
    """Import a test dependency, or fail saying how to get it (never an obscure error at setup)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"the server tests need {module!r}: install the test extra, `pip install -e '.[test]'`.")


@pytest.fixture(name="engine", scope="module")
def _engine(open_tiny_engine):
    with open_tiny_engine() as engine:
        yield engine


@pytest.fixture(name="releases")
def _releases(engine, monkeypatch):
    """Every call of the engine's ``cache.release`` (the names given), still releasing for real."""
    calls = []
    real = engine.cache.release

    def counting(names):
        calls.append(sorted(names))
        real(names)

    monkeypatch.setattr(engine.cache, "release", counting)
    return calls


def _wait_until(condition, what, limit=60.0):
    """Poll *condition*; fail naming *what* if it never holds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {limit:.0f} s")
        time.sleep(0.01)


def test_admitted_releases_its_lease_once():
    """However many paths end a request (stream end, background task, scheduler), the lease is released once."""
    from adaptrix_core.generation import GenerationRequest
    from adaptrix_core.server.backend import Admitted

    released = []
    admitted = Admitted(GenerationRequest([1]), ["alpha"], None, (), released.append)
    admitted.release_now()
    admitted.release()
    admitted.release_now()

    assert [["alpha"]] == released


def test_a_row_still_in_the_batch_keeps_its_lease_until_it_leaves():
    """
    A client that goes away while its row may be in a forward pass cancels the row; the lease is released
    only when the scheduler finishes the job (its adapter must not be evicted mid-forward).
    """
    from adaptrix_core.generation import GenerationRequest
    from adaptrix_core.scheduler import Job
    from adaptrix_core.server.backend import Admitted

    released = []
    admitted = Admitted(GenerationRequest([1]), ["alpha"], None, (), released.append)
    job = Job(admitted.request, on_piece=lambda p: None, on_error=lambda e: None, on_done=admitted.release_now)
    admitted.job = job

    admitted.release()  # the client left: the row is only cancelled
    before_the_row_left = list(released)
    job.finish()  # the scheduler drops the row from the batch

    assert ([], True, [["alpha"]]) == (before_the_row_left, job.cancelled, released)


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_releases_each_lease_exactly_once(engine, releases, stream):
    """A finished request, plain or streamed, gives its adapters back once: one release call, in_use back to 0."""
    testclient = _require("starlette.testclient")

    from adaptrix_core.server import create_app

    body = {"model": "alpha+beta", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "temperature": 0, "stream": stream}
    with testclient.TestClient(create_app(engine)) as client:
        response = client.post("/v1/chat/completions", json=body)
        _wait_until(lambda: engine.cache.in_use("alpha") == 0, "the release of alpha")

    assert (200, [["alpha", "beta"]], 0, 0) == (
        response.status_code, releases, engine.cache.in_use("alpha"), engine.cache.in_use("beta")
    )


def _asgi_stream_then_disconnect(app, body, *, after_events, also=lambda: True):
    """
    Drive *app* as an ASGI server would for one streamed POST, and report the client gone once
    *after_events* SSE events were sent and *also* holds. Returns the events received.
    """
    events, enough = [], None

    async def scenario():
        nonlocal enough
        enough = asyncio.Event()
        sent_body = False

        async def receive():
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}
            await enough.wait()
            while not also():
                await asyncio.sleep(0.01)
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start" and after_events == 0:
                enough.set()
                await asyncio.sleep(0)  # let the disconnect arrive before the first body chunk
            if message["type"] == "http.response.body" and message.get("body"):
                events.append(message["body"])
                if len(events) >= after_events:
                    enough.set()

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": "POST", "scheme": "http", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "root_path": "", "headers": [(b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}
        await app(scope, receive, send)

    _run_in_own_loop(scenario)
    return events


def test_a_client_that_leaves_mid_stream_releases_its_lease(engine, releases):
    """
    A streaming client that goes away after the first token: its row is dropped, the lease is released once,
    and the adapter can be unloaded.
    """
    from adaptrix_core.server import create_app

    app = create_app(engine)
    app.state.backend.start()
    try:
        body = {"model": "gamma", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1000,
                "ignore_eos": True, "stream": True, "temperature": 0}
        events = _asgi_stream_then_disconnect(app, body, after_events=2)
        _wait_until(lambda: engine.cache.in_use("gamma") == 0, "the release of gamma")
    finally:
        app.state.backend.stop()
    engine.cache.unload("gamma")

    assert (True, [["gamma"]], False) == (len(events) >= 2, releases, b"[DONE]" in b"".join(events))


def test_the_lease_of_a_request_cancelled_while_its_adapter_loads_is_released():
    """A client that leaves while its adapter loads does not leak the lease: it is released after the load."""
    from adaptrix_core.server.backend import lease_adapters

    released, loading, finish = [], threading.Event(), threading.Event()

    class Engine:
        class cache:  # noqa: N801 - stands in for the engine's AdapterCache
            release = staticmethod(released.append)

        @staticmethod
        def lease(requests):
            loading.set()
            finish.wait(10)
            return ["alpha"]

    async def scenario():
        task = asyncio.ensure_future(lease_adapters(Engine, object()))
        await asyncio.get_running_loop().run_in_executor(None, loading.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        finish.set()
        for _ in range(100):
            if released:
                break
            await asyncio.sleep(0.01)

    _run_in_own_loop(scenario)

    assert [["alpha"]] == released


def test_a_client_that_leaves_before_the_first_chunk_releases_its_lease(engine, releases):
    """
    A streaming client that goes away right after the response headers, before any event: the body
    generator may never start, yet the lease is released once and the adapter can be unloaded.
    """
    from adaptrix_core.server import create_app

    app = create_app(engine)
    app.state.backend.start()
    try:
        body = {"model": "gamma", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 200,
                "ignore_eos": True, "stream": True, "temperature": 0}
        _asgi_stream_then_disconnect(app, body, after_events=0)
        _wait_until(lambda: engine.cache.in_use("gamma") == 0, "the release of gamma", limit=10)
    finally:
        app.state.backend.stop()

    assert [["gamma"]] == releases


def test_a_client_that_leaves_while_queued_releases_its_lease(engine, releases):
    """
    The worker is busy with another row; a streaming client queued behind it goes away before its first
    token. Once the worker is free again, the queued row's lease is released and its adapter can be unloaded.
    """
    from adaptrix_core.generation import GenerationRequest
    from adaptrix_core.scheduler import Job
    from adaptrix_core.server import create_app

    app = create_app(engine)
    app.state.backend.start()
    busy, hold = threading.Event(), threading.Event()

    def blocking(piece):
        busy.set()
        hold.wait(60)

    ids = engine.encode("Hello")
    app.state.backend.scheduler.submit(
        Job(GenerationRequest(ids, {}, 2, ignore_eos=True), on_piece=blocking, on_error=lambda e: None)
    )
    try:
        busy.wait(60)
        body = {"model": "delta", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True}
        queued = lambda: app.state.backend.stats()["queued"] >= 1  # noqa: E731
        events = _asgi_stream_then_disconnect(app, body, after_events=1, also=queued)
        hold.set()
        _wait_until(lambda: engine.cache.in_use("delta") == 0, "the release of delta", limit=10)
    finally:
        hold.set()
        app.state.backend.stop()

    assert (1, [["delta"]]) == (len(events), releases)


def _run_in_own_loop(scenario) -> None:
    """
    Run an async scenario on a fresh event loop in its own thread.

    Other test modules (Playwright's sync API) can leave an event loop running on
    the main thread, where ``asyncio.run`` refuses to start a second one.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, scenario()).result()

