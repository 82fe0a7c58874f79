"""
``adaptrix serve`` end to end: the official ``openai`` client against a real server process on loopback.

One server process serves the whole module (tiny GPT-2 with a real tokenizer,
four library adapters, at most three resident). Expected texts come from an
in-process engine over the same saved model.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import socket
import subprocess
import sys
import time

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest


KEY = "test-key-123"
ADMIN = "admin-key-456"
PROMPT = "Hello there, how are you?"


def _require(module: str):
    """Import a test dependency, or fail saying how to get it (never an obscure error at setup)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"the server tests need {module!r}: install the test extra, `pip install -e '.[test]'`.")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="server", scope="module")
def _server(tiny_lm_dir, tiny_lm_library_dir, tmp_path_factory):
    """Start `adaptrix serve` (API and admin keys from the environment) and wait until /health answers."""
    httpx = _require("httpx")
    executable = Path(sys.executable).with_name("adaptrix")
    if not executable.exists():
        pytest.fail(f"no `adaptrix` command next to {sys.executable}: install the package, `pip install -e '.[test]'`.")
    home = tmp_path_factory.mktemp("server-home")
    port = _free_port()
    env = {
        **os.environ,
        "ADAPTRIX_HOME": str(home),
        "ADAPTRIX_BASE_MODEL": str(tiny_lm_dir),
        "ADAPTRIX_LIBRARY_DIR": str(tiny_lm_library_dir),
        "ADAPTRIX_SHIPPED_ADAPTERS": "",
        "ADAPTRIX_API_KEY": KEY,
        "ADAPTRIX_ADMIN_KEY": ADMIN,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = (home / "server.log").open("w")
    command = [
        str(executable), "serve", "--port", str(port), "--max-tokens-limit", "64",
        "--cache-max-adapters", "3", "--batch-window-ms", "50", "--max-body-bytes", "100000",
    ]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"adaptrix serve exited with {proc.returncode}:\n{(home / 'server.log').read_text()}")
            try:
                if httpx.get(f"{url}/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"adaptrix serve did not start:\n{(home / 'server.log').read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(name="client", scope="module")
def _client(server):
    OpenAI = _require("openai").OpenAI  # noqa: N806

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(name="reference", scope="module")
def _reference(open_tiny_engine):
    """An in-process engine over the same model and library, for expected texts."""
    with open_tiny_engine() as engine:
        yield engine


def chat(client, model, content=PROMPT, n=8):
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], max_tokens=n, temperature=0
    )
    return response.choices[0].message.content


def test_models_lists_base_auto_and_adapters(client):
    """GET /v1/models lists the base model, the router and every library adapter."""
    ids = {m.id for m in client.models.list()}

    assert {"base", "auto", "alpha", "beta", "gamma", "delta"} == ids


def test_chat_completion_with_an_adapter(client, reference):
    """A chat completion with model=alpha answers what the engine answers with alpha, with usage and reason."""
    response = client.chat.completions.create(
        model="alpha", messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0
    )
    expected = reference.chat([{"role": "user", "content": PROMPT}], "alpha", max_new_tokens=8)

    assert (expected, "length", 8, "assistant") == (
        response.choices[0].message.content, response.choices[0].finish_reason, response.usage.completion_tokens,
        response.choices[0].message.role,
    )


def test_completion_with_a_composition(client, reference):
    """/v1/completions with model='beta:0.7+gamma:0.3' sends the raw prompt through that weighted sum."""
    response = client.completions.create(model="beta:0.7+gamma:0.3", prompt=PROMPT, max_tokens=8, temperature=0)
    expected = reference.query(PROMPT, {"beta": 0.7, "gamma": 0.3}, max_new_tokens=8, chat_template=False)

    assert expected == response.choices[0].text


def test_streaming_chat_joins_to_the_same_text(client):
    """Streaming chat (SSE) delivers several deltas that join to the non-streamed answer."""
    stream = client.chat.completions.create(
        model="delta", messages=[{"role": "user", "content": PROMPT}], max_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    deltas, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            deltas.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)

    assert (chat(client, "delta"), True, "length", 8) == (
        "".join(deltas), len([d for d in deltas if d]) > 1, reasons[-1], usage
    )


def test_streaming_completion(client, reference):
    """A streamed completion joins to the engine's raw-prompt answer."""
    stream = client.completions.create(model="base", prompt=PROMPT, max_tokens=8, temperature=0, stream=True)
    text = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

    assert reference.query(PROMPT, None, max_new_tokens=8, chat_template=False) == text


def test_each_request_uses_its_own_adapter(client, reference):
    """Requests naming base, alpha and gamma get those adapters' answers."""
    messages = [{"role": "user", "content": PROMPT}]
    expected = [reference.chat(messages, sel, max_new_tokens=8) for sel in (None, "alpha", "gamma")]

    assert expected == [chat(client, model) for model in ("base", "alpha", "gamma")]


def test_unknown_adapter_is_a_404_naming_the_known_ones(client):
    """An unknown adapter is openai.NotFoundError with code model_not_found, also when streaming."""
    import openai

    with pytest.raises(openai.NotFoundError) as plain:
        chat(client, "nope")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="alpha+nope", messages=[{"role": "user", "content": "hi"}], stream=True
        )

    assert ("model_not_found", True) == (plain.value.code, "Known: alpha, beta, delta, gamma" in plain.value.message)


def test_bad_requests_get_openai_shaped_400s(client, server):
    """max_tokens over the limit and malformed bodies are 400s with an OpenAI error object."""
    import httpx
    import openai

    with pytest.raises(openai.BadRequestError) as too_many:
        chat(client, "alpha", n=1000)
    missing = httpx.post(f"{server}/v1/chat/completions", json={"model": "alpha"}, headers={"Authorization": f"Bearer {KEY}"})
    bad_selection = httpx.post(
        f"{server}/v1/completions", json={"model": "alpha:heavy", "prompt": "x"}, headers={"Authorization": f"Bearer {KEY}"}
    )

    assert ("max_tokens", 400, "messages", 400) == (
        too_many.value.param, missing.status_code, missing.json()["error"]["param"], bad_selection.status_code
    )


def test_api_key_and_body_size_are_enforced(server):
    """A missing or wrong key is 401 on every route; a body over --max-body-bytes is 413."""
    import httpx
    import openai

    from openai import OpenAI

    wrong = OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    big = httpx.post(
        f"{server}/v1/completions", json={"model": "base", "prompt": "x" * 200_000},
        headers={"Authorization": f"Bearer {KEY}"},
    )

    assert (401, 401, 413) == (
        httpx.get(f"{server}/health").status_code, httpx.get(f"{server}/v1/stats").status_code, big.status_code
    )


def test_load_unload_and_stats_endpoints(server):
    """With the admin key, POST /v1/adapters/NAME/load makes it resident (stats show its bytes); DELETE frees it; again is 404."""
    import httpx

    headers = {"Authorization": f"Bearer {ADMIN}"}
    loaded = httpx.post(f"{server}/v1/adapters/beta/load", json={"pin": True}, headers=headers).json()
    stats = httpx.get(f"{server}/v1/stats", headers=headers).json()
    unloaded = httpx.delete(f"{server}/v1/adapters/beta", headers=headers)
    again = httpx.delete(f"{server}/v1/adapters/beta", headers=headers)

    assert (True, loaded["bytes"], 200, 404) == (
        loaded["pinned"], stats["cache"]["adapters"]["beta"]["bytes"], unloaded.status_code, again.status_code
    )


def test_concurrent_requests_with_random_adapters_equal_sequential_runs(client, server):
    """
    Sixteen concurrent greedy requests with random adapters (more than the cache holds) get exactly the
    texts the same requests get one at a time, and the server batched some of them together.
    """
    import httpx

    rng = random.Random(0)
    models = ["base", "alpha", "beta", "gamma", "delta", "alpha:0.5+delta:0.5"]
    prompts = [PROMPT, "Tell me a story about a cat.", "What is two plus two?"]
    jobs = [(rng.choice(models), rng.choice(prompts)) for _ in range(16)]
    sequential = [chat(client, model, prompt, n=10) for model, prompt in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        concurrent = list(pool.map(lambda job: chat(client, job[0], job[1], n=10), jobs))
    scheduler = httpx.get(f"{server}/v1/stats", headers={"Authorization": f"Bearer {KEY}"}).json()["server"]["scheduler"]

    assert sequential == concurrent
    assert scheduler["largest_batch"] > 1


def test_admin_endpoints_refuse_the_api_key(server):
    """The API key alone cannot load, unload or reset: 403 admin_key_required."""
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
    refused = [httpx.post(f"{server}/v1/adapters/beta/load", headers=headers),
               httpx.delete(f"{server}/v1/adapters/beta", headers=headers),
               httpx.post(f"{server}/v1/stats/reset", headers=headers)]

    assert [(403, "admin_key_required")] * 3 == [(r.status_code, r.json()["error"]["code"]) for r in refused]


def _post_raw(server, path, chunks, *, chunked):
    """POST *chunks* with the standard library, chunked (no Content-Length) or not; returns (status, JSON body)."""
    import http.client
    import urllib.parse

    url = urllib.parse.urlsplit(server)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    try:
        if chunked:
            connection.request("POST", path, body=iter(chunks), headers=headers, encode_chunked=True)
        else:
            connection.request("POST", path, body=b"".join(chunks), headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_bad_bodies_over_real_http_get_clean_4xx(server):
    """
    Over uvicorn: a chunked body over --max-body-bytes is 413 request_too_large, a lone surrogate is a 400
    on the field, bad UTF-8 and malformed JSON are 400s with a code; the server stays healthy after them.
    """
    import httpx

    big = [b'{"model": "base", "prompt": "'] + [b"x" * 10_000] * 12 + [b'"}']
    surrogate = [b'{"model": "alpha", "messages": [{"role": "user", "content": "\\ud800 hi"}]}']
    answers = [
        _post_raw(server, "/v1/completions", big, chunked=True),
        _post_raw(server, "/v1/chat/completions", surrogate, chunked=False),
        _post_raw(server, "/v1/chat/completions", [b'{"model": "alpha\xff"}'], chunked=True),
        _post_raw(server, "/v1/chat/completions", [b'{"model": '], chunked=False),
    ]

    assert [(413, "body", "request_too_large"), (400, "messages.0.content", "invalid_request"),
            (400, "body", "invalid_encoding"), (400, "body", "invalid_json")] == [
        (status, body["error"]["param"], body["error"]["code"]) for status, body in answers
    ]
    assert 200 == httpx.get(f"{server}/health", headers={"Authorization": f"Bearer {KEY}"}).status_code


def test_metrics_are_prometheus_text(client, server):
    """GET /metrics (with the API key) is Prometheus text that counts this request under its adapter."""
    import httpx

    from prometheus_client.parser import text_string_to_metric_families

    def requests_of(adapter):
        text = httpx.get(f"{server}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                   if s.name == "adaptrix_requests_total" and s.labels == {"adapter": adapter})

    before = requests_of("gamma")
    chat(client, "gamma", n=2)

    assert 1.0 == requests_of("gamma") - before
    assert 401 == httpx.get(f"{server}/metrics").status_code


def test_status_of_a_server_needs_no_http_package(server, client):
    """`adaptrix status --server URL` reads the server with the standard library: it works with httpx unimportable."""
    chat(client, "alpha", n=2)
    code = (
        "import sys; sys.modules['httpx'] = None; "
        "sys.argv = ['adaptrix', 'status', '--server', sys.argv[1]] + sys.argv[2:]; "
        "from adaptrix_core.cli import main; main()"
    )
    env = {**os.environ, "ADAPTRIX_API_KEY": KEY, "COLUMNS": "200"}
    as_json = subprocess.run([sys.executable, "-c", code, server, "--json"], env=env, capture_output=True, text=True)
    table = subprocess.run([sys.executable, "-c", code, server], env=env, capture_output=True, text=True)
    wrong = subprocess.run([sys.executable, "-c", code, server], env={**env, "ADAPTRIX_API_KEY": "nope"},
                           capture_output=True, text=True)
    figures = json.loads(as_json.stdout)["server"]

    assert (0, 0, True, True) == (as_json.returncode, table.returncode, figures["requests"] >= 1,
                                  figures["ttft_ms"]["count"] >= 1), as_json.stderr + table.stderr
    labels = ("time to first token", "inter-token latency", "batching", "prefills", "prompt prefixes")
    assert list(labels) == [label for label in labels if label in table.stdout]
    assert (1, True, False) == (wrong.returncode, "answered 401" in wrong.stderr, "Traceback" in wrong.stderr)
