"""
Scale-out on Ray Serve, end to end: a local Ray cluster, `adaptrix serve --replicas 2` on it, the HTTP API in front.

One cluster serves the whole module (tiny GPT-2 with a real tokenizer, four
library adapters; two CPUs, a small object store). Expected texts come from a
single-process server (the same app in this process, through FastAPI's test
client). The last two tests kill a replica, then stop the command.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from pathlib import Path

from concurrent.futures import ThreadPoolExecutor

import pytest


pytest.importorskip("ray.serve", reason="the ray extra is not installed (pip install 'adaptrix-core[ray]')")

pytestmark = pytest.mark.slow

KEY = "scale-out-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_KEY = "scale-out-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}  # resets and unloads change every replica: the admin key's job
PROMPTS = ["Hello there, how are you?", "Tell me a story about a cat.", "What is two plus two?", "Name a colour."]
MODELS = ["alpha", "beta", "gamma", "delta", "base"]
LONG = 200
"""Tokens of the streams a replica is killed under: long enough to be cut, whatever the machine's speed."""


class Deployment(str):
    """The base URL (a str, so tests use it directly), with the `adaptrix serve` process and its log."""

    def __new__(cls, url: str, proc: subprocess.Popen, log: Path) -> Deployment:
        self = super().__new__(cls, url)
        self.proc, self.log = proc, log
        return self


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(name="cluster", scope="module")
def _cluster(tiny_lm_dir, tiny_lm_library_dir, tmp_path_factory):
    """
    A local Ray instance (2 CPUs, 100 MB object store), and `adaptrix serve --replicas 2 --ray-address ADDR`
    run on it as a user would (a subprocess); yields the URL and the process.
    """
    import httpx
    import ray

    home = tmp_path_factory.mktemp("ray-home")
    saved = {k: os.environ.get(k) for k in ("ADAPTRIX_HOME", "OMP_NUM_THREADS", "HF_HUB_OFFLINE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(ADAPTRIX_HOME=str(home), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                      RAY_USAGE_STATS_ENABLED="0")  # replicas inherit the environment of the process that starts Ray
    from adaptrix_core.scaleout.local import start_local_cluster

    local = start_local_cluster(num_cpus=2, object_store_bytes=100 * 1024 * 1024)
    ray.init(address=local.address, namespace="adaptrix-tests", log_to_driver=False)
    port = _free_port()
    env = {**os.environ, "ADAPTRIX_LIBRARY_DIR": str(tiny_lm_library_dir), "ADAPTRIX_SHIPPED_ADAPTERS": "",
           "ADAPTRIX_API_KEY": KEY, "ADAPTRIX_ADMIN_KEY": ADMIN_KEY}
    command = [
        str(Path(sys.executable).with_name("adaptrix")), "serve", "--replicas", "2",
        "--ray-address", local.address, "--port", str(port), "--model", str(tiny_lm_dir),
        "--threads", "1", "--replica-cpus", "0.5", "--max-tokens-limit", str(LONG), "--batch-window-ms", "20",
    ]
    log_path = home / "serve.log"
    log = log_path.open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"adaptrix serve --replicas exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/health", headers=AUTH, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"adaptrix serve --replicas did not come up:\n{log_path.read_text()}")
            time.sleep(1)
        yield Deployment(url, proc, log_path)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        ray.shutdown()
        local.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(name="single", scope="module")
def _single(tiny_lm_dir, tiny_lm_library_dir):
    """The single-process server over the same model and library, in this process (FastAPI's test client)."""
    import torch

    from fastapi.testclient import TestClient

    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.library import Library
    from adaptrix_core.server import ServerSettings, create_app

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = AdaptrixEngine(str(tiny_lm_dir), library=Library(tiny_lm_library_dir, shipped_dir=""))
    with TestClient(create_app(engine, ServerSettings(max_tokens_limit=LONG))) as client:
        yield client
    engine.close()
    torch.set_num_threads(before)


def _chat_body(model: str, prompt: str, n: int = 10) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": n, "temperature": 0}


def _post(url: str, body: dict):
    import httpx

    return httpx.post(f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120)


def test_two_replicas_answer_like_one_server(cluster, single):
    """Sixteen concurrent greedy requests over four adapters and the base model get a single server's texts."""
    jobs = [(MODELS[i % len(MODELS)], PROMPTS[i % len(PROMPTS)]) for i in range(16)]
    expected = [single.post("/v1/chat/completions", json=_chat_body(m, p)).json()["choices"][0]["message"]["content"]
                for m, p in jobs]
    with ThreadPoolExecutor(len(jobs)) as pool:
        responses = list(pool.map(lambda job: _post(cluster, _chat_body(*job)), jobs))

    assert [200] * len(jobs) == [r.status_code for r in responses]
    assert expected == [r.json()["choices"][0]["message"]["content"] for r in responses]
    assert {"+".join(r.json()["adaptrix"]["adapters"]) or "base" for r in responses} == {
        "alpha", "beta", "gamma", "delta", "base"
    }


def test_requests_land_where_their_adapter_is_resident(cluster):
    """After a warm-up, at least 90% of adapter requests reach a replica that already holds the adapter."""
    import httpx

    for model in MODELS[:4]:
        for _ in range(2):
            assert _post(cluster, _chat_body(model, PROMPTS[0], n=2)).status_code == 200
    assert httpx.post(f"{cluster}/v1/stats/reset", headers=ADMIN, timeout=60).json()["reset"]
    jobs = [MODELS[i % 4] for i in range(32)]
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda m: _post(cluster, _chat_body(m, PROMPTS[1], n=4)), jobs))
    affinity = [r.headers["x-adaptrix-affinity"] for r in responses]
    hit_rate = affinity.count("hit") / len(affinity)
    totals = httpx.get(f"{cluster}/v1/stats", headers=AUTH, timeout=60).json()["totals"]

    assert hit_rate >= 0.9, affinity
    assert (affinity.count("hit"), affinity.count("miss")) == (totals["affinity_hits"], totals["affinity_misses"])
    assert 2 == totals["replicas"]


def test_models_and_stats_cover_every_replica(cluster):
    """/v1/models marks an adapter resident on whichever replica holds it; /v1/stats reports both replicas."""
    import httpx

    models = httpx.get(f"{cluster}/v1/models", headers=AUTH, timeout=60).json()["data"]
    stats = httpx.get(f"{cluster}/v1/stats", headers=AUTH, timeout=60).json()
    holders = {m["id"]: set(m["replicas"]) for m in models if "replicas" in m}
    per_replica = {r: set(s["resident"]) for r, s in stats["replicas"].items()}

    assert {"base", "auto", "alpha", "beta", "gamma", "delta"} == {m["id"] for m in models}
    assert 2 == len(per_replica)
    assert holders == {name: {r for r, res in per_replica.items() if name in res} for name in holders}
    assert all(holders[name] for name in ("alpha", "beta", "gamma", "delta"))


def test_auth_and_errors_are_the_single_servers(cluster):
    """A missing key is a 401 and an unknown adapter a 404 naming the known ones, in OpenAI's error shape."""
    import httpx

    no_key = httpx.post(f"{cluster}/v1/chat/completions", json=_chat_body("alpha", "hi"), timeout=60)
    unknown = _post(cluster, _chat_body("nope", "hi"))

    assert (401, "invalid_api_key") == (no_key.status_code, no_key.json()["error"]["code"])
    assert (404, "model_not_found") == (unknown.status_code, unknown.json()["error"]["code"])
    assert "alpha" in unknown.json()["error"]["message"]


def test_official_openai_client_works_unchanged(cluster, single):
    """The openai package: model list, a chat, a streamed chat and a completion, as against one server."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{cluster}/v1", api_key=KEY, max_retries=0, timeout=120)
    ids = {m.id for m in client.models.list()}
    chat = client.chat.completions.create(
        model="gamma", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=8, temperature=0
    )
    stream = client.chat.completions.create(
        model="gamma", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    completion = client.completions.create(model="alpha:0.5+beta:0.5", prompt=PROMPTS[3], max_tokens=6, temperature=0)
    expected = single.post("/v1/completions", json={
        "model": "alpha:0.5+beta:0.5", "prompt": PROMPTS[3], "max_tokens": 6, "temperature": 0,
    }).json()["choices"][0]["text"]

    assert {"alpha", "beta", "gamma", "delta", "base", "auto"} <= ids
    assert chat.choices[0].message.content == streamed
    assert expected == completion.choices[0].text


def _stream_chat(url: str, model: str, prompt: str, started) -> tuple[str | None, str, str | None]:
    """Stream a long chat; returns (replica, text, error code or None) and calls *started(replica)* at its first text."""
    import httpx

    text, error = [], None
    body = {**_chat_body(model, prompt, n=LONG), "stream": True, "ignore_eos": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=AUTH, timeout=120) as response:
        replica = response.headers.get("x-adaptrix-replica")
        if response.status_code != 200:
            return replica, "", json.loads(response.read())["error"]["code"]
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]["code"]
            elif event.get("choices"):
                text.append(event["choices"][0]["delta"].get("content") or "")
                if len(text) == 2:
                    started(replica)
    return replica, "".join(text), error


def test_a_killed_replica_fails_cleanly_and_the_deployment_recovers(cluster, single):
    """
    Killing a replica while it streams: its streams end with a clean replica_unavailable error event (the
    others complete with the single server's text); new requests succeed at once (retried on the other
    replica when they hit the dead one), and Serve brings the deployment back to two replicas.
    """
    import threading

    import httpx

    victims: list[str] = []
    first = threading.Event()

    def started(replica: str) -> None:
        if not first.is_set():
            victims.append(replica)
            first.set()

    jobs = [("alpha", p) for p in PROMPTS] + [("beta", p) for p in PROMPTS]
    with ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(_stream_chat, cluster, m, p, started) for m, p in jobs]
        assert first.wait(120)
        _kill_replica(victims[0])
        outcomes = [f.result() for f in futures]
    after = [_post(cluster, _chat_body(m, PROMPTS[1], n=4)) for m in MODELS]
    expected = {
        (m, p): single.post("/v1/chat/completions", json={**_chat_body(m, p, n=LONG), "ignore_eos": True})
        .json()["choices"][0]["message"]["content"]
        for m, p in jobs
    }
    deadline = time.monotonic() + 300  # a replacement imports torch and loads the model: slow on a busy machine
    replicas = 0
    while time.monotonic() < deadline:
        replicas = httpx.get(f"{cluster}/v1/stats", headers=AUTH, timeout=60).json()["totals"]["replicas"]
        if replicas == 2:
            break
        time.sleep(1)
    on_victim = [error for replica, _, error in outcomes if replica == victims[0]]

    for job, (replica, text, error) in zip(jobs, outcomes, strict=True):
        assert error == "replica_unavailable" or (error is None and text == expected[job]), (replica, error)
    assert "replica_unavailable" in on_victim
    assert [200] * len(MODELS) == [r.status_code for r in after]
    assert 2 == replicas


def test_sigterm_deletes_the_application(cluster):
    """SIGTERM (like Ctrl-C) makes `adaptrix serve --replicas` delete its application and exit 0."""
    from ray import serve

    cluster.proc.send_signal(signal.SIGTERM)
    code = cluster.proc.wait(180)

    assert 0 == code, cluster.log.read_text()
    assert "adaptrix" not in serve.status().applications


def _kill_replica(replica_id: str) -> None:
    """Kill one engine replica's actor, as a crash would (Serve names it ``SERVE_REPLICA::app#deployment#id``)."""
    import ray

    ray.kill(ray.get_actor(f"SERVE_REPLICA::adaptrix#AdaptrixEngine#{replica_id}", namespace="serve"), no_restart=True)
