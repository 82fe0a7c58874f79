"""
``adaptrix serve`` end to end: the official ``openai`` client against a real server process on loopback.

One server process serves the whole module (tiny GPT-2 with a real tokenizer,
four library adapters, at most three resident). Expected texts come from an
in-process engine over the same saved model.
"""

from __future__ import annotations

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
PROMPT = "Hello there, how are you?"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="server", scope="module")
def _server(tiny_lm_dir, tiny_lm_library_dir, tmp_path_factory):
    """Start `adaptrix serve` (API key from the environment) and wait until /health answers."""
    import httpx

    home = tmp_path_factory.mktemp("server-home")
    port = _free_port()
    env = {
        **os.environ,
        "ADAPTRIX_HOME": str(home),
        "ADAPTRIX_BASE_MODEL": str(tiny_lm_dir),
        "ADAPTRIX_LIBRARY_DIR": str(tiny_lm_library_dir),
        "ADAPTRIX_SHIPPED_ADAPTERS": "",
        "ADAPTRIX_API_KEY": KEY,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    log = (home / "server.log").open("w")
    command = [
        str(Path(sys.executable).with_name("adaptrix")), "serve", "--port", str(port), "--max-tokens-limit", "64",
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
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(name="reference", scope="module")
def _reference(tiny_lm_dir, tiny_lm_library_dir):
    """An in-process engine over the same model and library, for expected texts."""
    import torch

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.library import Library

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    library = Library(tiny_lm_library_dir, shipped_dir=tiny_lm_library_dir.parent / "none")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    engine = AdaptrixEngine.from_model(model, AutoTokenizer.from_pretrained(tiny_lm_dir), library=library)
    yield engine
    engine.close()
    torch.set_num_threads(before)


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
    """POST /v1/adapters/NAME/load makes it resident (stats show its bytes); DELETE frees it; again is 404."""
    import httpx

    headers = {"Authorization": f"Bearer {KEY}"}
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


def test_lease_of_a_cancelled_request_is_released_when_its_load_finishes():
    """A client that leaves while its adapter loads does not leak the lease: it is released after the load."""
    import asyncio
    import threading

    from adaptrix_core.server.backend import lease_adapters as _lease

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
        task = asyncio.ensure_future(_lease(Engine, object()))
        await asyncio.get_running_loop().run_in_executor(None, loading.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        finish.set()
        for _ in range(100):
            if released:
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())

    assert [["alpha"]] == released
