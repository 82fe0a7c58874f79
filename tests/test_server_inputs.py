"""
Bad inputs to the server, in process: each gets a clean OpenAI-shaped 4xx naming the field, and the server
stays healthy. Also the admin key, the ``auto`` reply, ``repetition_penalty`` and ``GET /metrics``.

One tiny in-process engine serves the module; each test builds its own app (its own settings and counters)
and talks to it through Starlette's test client.
"""

from __future__ import annotations

import importlib

import pytest


def _require(module: str):
    """Import a test dependency, or fail saying how to get it (never an obscure error at setup)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"the server tests need {module!r}: install the test extra, `pip install -e '.[test]'`.")


CHAT = {"model": "alpha", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 4, "temperature": 0}


@pytest.fixture(name="engine", scope="module")
def _engine(open_tiny_engine):
    with open_tiny_engine() as engine:
        yield engine


@pytest.fixture(name="make_client")
def _make_client(engine):
    """``make_client(**settings, backend=None)``: a started app over the module's engine, with fresh loader stats."""
    testclient = _require("starlette.testclient")

    from adaptrix_core.server import ServerSettings, create_app

    started = []

    def make(backend=None, **settings):
        engine.cache.reset_stats()
        client = testclient.TestClient(
            create_app(engine, ServerSettings(**settings), backend=backend), raise_server_exceptions=False
        )
        client.__enter__()
        started.append(client)
        return client

    yield make
    for client in started:
        client.__exit__(None, None, None)


def _raw(client, path, content, **headers):
    return client.post(path, content=content, headers={"content-type": "application/json", **headers})


def _error(response):
    error = response.json()["error"]
    return response.status_code, error["param"], error["code"]


def test_a_lone_surrogate_is_a_400_naming_the_field(make_client):
    """JSON ``"\\ud800 hi"`` in a message is a 400 on messages.0.content (not a 500), and the server still answers."""
    client = make_client()
    body = '{"model": "alpha", "messages": [{"role": "user", "content": "\\ud800 hi"}], "max_tokens": 2}'
    response = _raw(client, "/v1/chat/completions", body)
    prompt = _raw(client, "/v1/completions", '{"model": "base", "prompt": ["ok", "x\\udc00"], "max_tokens": 2}')

    assert (400, "messages.0.content", "invalid_request") == _error(response)
    assert "messages.0.content: Value error, contains a lone UTF-16 surrogate (U+D800) at character 0" in (
        response.json()["error"]["message"]
    )
    assert (400, "prompt.1", "invalid_request") == _error(prompt)
    assert "valid list" not in response.json()["error"]["message"] + prompt.json()["error"]["message"]
    assert (200, 200) == (client.get("/health").status_code, client.post("/v1/chat/completions", json=CHAT).status_code)


def test_a_chunked_body_over_the_limit_is_a_413(make_client):
    """A body sent without Content-Length (chunked) that passes --max-body-bytes is the documented 413."""
    client = make_client(max_body_bytes=1000)

    def chunks():
        yield b'{"model": "base", "prompt": "'
        for _ in range(10):
            yield b"x" * 200
        yield b'"}'

    response = client.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})

    assert (413, "body", "request_too_large") == _error(response)
    assert 200 == client.get("/health").status_code


def test_malformed_json_and_bad_utf8_get_a_param_and_a_code(make_client):
    """Malformed JSON names ``body`` (not a byte offset) with code invalid_json; bytes that are not UTF-8 get invalid_encoding."""
    client = make_client()
    malformed = _raw(client, "/v1/chat/completions", '{"model": "alpha", "messages": [')
    not_utf8 = _raw(client, "/v1/chat/completions", b'{"model": "alpha\xff", "messages": []}')

    assert (400, "body", "invalid_json") == _error(malformed)
    assert "not valid JSON" in malformed.json()["error"]["message"]
    assert (400, "body", "invalid_encoding") == _error(not_utf8)
    assert "byte 0xff at offset 16" in not_utf8.json()["error"]["message"]


def test_a_zero_weight_is_refused(make_client, engine):
    """``alpha:0`` would silently answer with the base model: it is a 400 on ``model``, and no lease is left behind."""
    client = make_client()
    alone = client.post("/v1/chat/completions", json={**CHAT, "model": "alpha:0"})
    mixed = client.post("/v1/completions", json={"model": "beta:1+alpha:0.0", "prompt": "x", "max_tokens": 2})

    assert [(400, "model", "zero_weight")] * 2 == [_error(alone), _error(mixed)]
    assert "'alpha' weight 0" in alone.json()["error"]["message"]
    assert (0, 0) == (engine.cache.in_use("alpha"), engine.cache.in_use("beta"))


def test_the_response_lists_the_adapters_applied(make_client):
    """``adaptrix.adapters`` is a list of names (like ``cold``), with the weights beside it."""
    client = make_client()
    response = client.post("/v1/completions", json={"model": "beta:0.7+gamma:0.3", "prompt": "x", "max_tokens": 2})
    extra = response.json()["adaptrix"]

    assert (["beta", "gamma"], {"beta": 0.7, "gamma": 0.3}) == (extra["adapters"], extra["weights"])


def test_auto_replies_with_the_adapter_chosen(make_client, engine):
    """``model: "auto"`` answers with the router's choice in ``model`` (``base`` when it chose none), and its reason."""
    client = make_client()
    prompt = "Tell me about alpha things"
    routing = engine.route(prompt)
    chosen = "+".join(sorted(routing.adapters)) if len(routing.adapters) == 1 else None
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "auto", "messages": [
        {"role": "user", "content": prompt}]}).json()

    from adaptrix_core.selection import format_selection

    assert (format_selection(dict(routing.adapters)) or "base", routing.reason) == (
        response["model"], response["adaptrix"]["routing"]
    )
    assert chosen is None or chosen == response["model"]


class _Recording:
    """A backend that records the requests it is given and answers one fixed piece."""

    def __init__(self):
        self.requests = []

    def start(self):
        pass

    def stop(self):
        pass

    def stats(self):
        return {}

    def reset_stats(self):
        pass

    async def stream_pieces(self, admitted):
        from adaptrix_core.generation import Piece

        self.requests.append(admitted.request)
        try:
            yield Piece(0, "ok", "stop", 1)
        finally:
            admitted.release()


def test_repetition_penalty_reaches_the_generation_request(make_client):
    """``repetition_penalty`` (vLLM's field) is passed to the row as given; 1.0 when absent; 0 is a 400."""
    backend = _Recording()
    client = make_client(backend=backend)
    client.post("/v1/chat/completions", json={**CHAT, "repetition_penalty": 1.3})
    client.post("/v1/completions", json={"model": "base", "prompt": "x"})
    zero = client.post("/v1/chat/completions", json={**CHAT, "repetition_penalty": 0})

    assert [1.3, 1.0] == [r.repetition_penalty for r in backend.requests]
    assert (400, "repetition_penalty", "invalid_request") == _error(zero)


def test_admin_endpoints_are_off_with_only_an_api_key(make_client):
    """With --api-key and no --admin-key, load, unload and reset are 403 admin_disabled; reading stays allowed."""
    client = make_client(api_key="user")
    auth = {"Authorization": "Bearer user"}
    refused = [
        client.post("/v1/adapters/beta/load", headers=auth), client.delete("/v1/adapters/beta", headers=auth),
        client.post("/v1/stats/reset", headers=auth),
    ]

    assert [(403, "admin_disabled")] * 3 == [(r.status_code, r.json()["error"]["code"]) for r in refused]
    assert (200, 200) == (client.get("/v1/adapters", headers=auth).status_code,
                          client.get("/v1/stats", headers=auth).status_code)


def test_the_admin_key_is_needed_and_enough(make_client):
    """With --admin-key, the API key gets 403 on admin routes; the admin key loads, pins, unloads and reads."""
    client = make_client(api_key="user", admin_key="root")
    user, admin = {"Authorization": "Bearer user"}, {"x-api-key": "root"}
    as_user = client.post("/v1/adapters/beta/load", headers=user)
    loaded = client.post("/v1/adapters/beta/load", json={"pin": True}, headers=admin)
    unloaded = client.delete("/v1/adapters/beta", headers=admin)

    assert (403, "admin_key_required") == (as_user.status_code, as_user.json()["error"]["code"])
    assert (200, True, 200) == (loaded.status_code, loaded.json()["pinned"], unloaded.status_code)
    assert 200 == client.post("/v1/chat/completions", json=CHAT, headers=admin).status_code


def test_a_server_with_no_key_leaves_admin_open(make_client):
    """A local server with no key at all keeps the admin endpoints open (the development default)."""
    client = make_client()

    assert {"reset": True} == client.post("/v1/stats/reset").json()


def _samples(text):
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_count_requests_tokens_latencies_and_the_cache(make_client):
    """
    /metrics (Prometheus text) counts requests and tokens by adapter, one time-to-first-token sample per
    request, one inter-token sample per later token, and the loader's misses and loads.
    """
    client = make_client()
    assert 200 == client.post("/v1/adapters/alpha/load").status_code  # resident whatever ran before: a hit
    client.delete("/v1/adapters/delta")  # not resident: the one miss and load
    client.post("/v1/stats/reset")
    first = client.post("/v1/chat/completions", json={**CHAT, "model": "delta", "max_tokens": 5, "ignore_eos": True})
    second = client.post("/v1/completions", json={"model": "delta+alpha", "prompt": "x", "max_tokens": 3,
                                                  "ignore_eos": True})
    response = client.get("/metrics")
    samples = _samples(response.text)

    assert (200, 200) == (first.status_code, second.status_code)
    assert response.headers["content-type"].startswith("text/plain")
    assert {
        "delta requests": 2.0, "alpha requests": 1.0, "delta tokens": 8.0, "alpha tokens": 3.0,
        "ttft count": 2.0, "itl count": 6.0, "misses": 1.0, "loads": 1.0, "load count": 1.0,
    } == {
        "delta requests": samples[("adaptrix_requests_total", (("adapter", "delta"),))],
        "alpha requests": samples[("adaptrix_requests_total", (("adapter", "alpha"),))],
        "delta tokens": samples[("adaptrix_generation_tokens_total", (("adapter", "delta"),))],
        "alpha tokens": samples[("adaptrix_generation_tokens_total", (("adapter", "alpha"),))],
        "ttft count": samples[("adaptrix_time_to_first_token_seconds_count", ())],
        "itl count": samples[("adaptrix_inter_token_latency_seconds_count", ())],
        "misses": samples[("adaptrix_adapter_cache_misses_total", ())],
        "loads": samples[("adaptrix_adapter_cache_loads_total", ())],
        "load count": samples[("adaptrix_adapter_load_seconds_count", ())],
    }
    assert {("adaptrix_batches_total", ()), ("adaptrix_batch_rows_total", ()), ("adaptrix_queue_depth", ()),
            ("adaptrix_adapter_cache_hits_total", ()), ("adaptrix_adapter_cache_evictions_total", ()),
            ("adaptrix_running_lanes", ())} <= set(samples)
    # whole prefills (the default): one forward each, as many as /v1/stats counts
    scheduler = client.get("/v1/stats").json()["server"]["scheduler"]
    assert 0 < samples[("adaptrix_prefills_total", ())] == samples[("adaptrix_prefill_chunks_total", ())]
    assert scheduler["prefills"] == samples[("adaptrix_prefills_total", ())]


def test_prompts_sharing_a_system_prompt_reuse_its_keys_and_values(make_client):
    """
    Two chats with the same long system prompt: the second starts from the first's cached keys and values
    (counted in /metrics and /v1/stats) and answers exactly what a server without the cache answers.
    """
    system = {"role": "system", "content": "You are a careful assistant. Answer briefly, in plain words, and never "
                                           "make anything up, whatever the user asks."}
    chats = [{**CHAT, "max_tokens": 6, "ignore_eos": True,
              "messages": [system, {"role": "user", "content": question}]} for question in ("Hi there", "Tell me more")]
    answers = {}
    for tokens in (2048, 0):
        client = make_client(prefix_cache_tokens=tokens)
        answers[tokens] = [client.post("/v1/chat/completions", json=chat).json()["choices"][0]["message"]["content"]
                           for chat in chats]
        samples = _samples(client.get("/metrics").text)
        scheduler = client.get("/v1/stats").json()["server"]["scheduler"]
        if tokens:
            assert 1 == samples[("adaptrix_prefix_cache_hits_total", ())] == scheduler["prefix_cache"]["hits"]
            assert samples[("adaptrix_prefix_cache_reused_tokens_total", ())] >= 16
            assert 0 < samples[("adaptrix_prefix_cache_bytes", ())]
        else:
            assert scheduler["prefix_cache"] is None
            assert ("adaptrix_prefix_cache_hits_total", ()) not in samples

    assert answers[2048] == answers[0]


def test_stats_show_the_headline_figures(make_client):
    """/v1/stats carries requests, generated tokens and time-to-first-token / inter-token percentiles."""
    client = make_client()
    client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 3, "ignore_eos": True})
    server = client.get("/v1/stats").json()["server"]

    assert (1, 3, 1, 2, "open") == (
        server["requests"], server["generated_tokens"], server["ttft_ms"]["count"], server["itl_ms"]["count"],
        server["admin"],
    )
