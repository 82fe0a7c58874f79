"""
The web interface's HTTP side without a browser: the page and its files, ``/ui/api/adapters``,
``POST /v1/route``, the API key around them, and ``adaptrix ui``.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import threading

from pathlib import Path
from types import SimpleNamespace

import pytest


KEY = "ui-test-key"


# helpers shared by the web interface's tests (test folders are not importable under --import-mode=importlib)
support = SimpleNamespace(**runpy.run_path(str(Path(__file__).with_name("test_ui_support.py"))))


@pytest.fixture(name="engine", scope="module")
def _engine(tiny_lm_dir, tiny_lm_library_dir):
    """The tiny GPT-2 and the alpha..delta library, routed by the keyword router."""
    engine = support.tiny_engine(tiny_lm_dir, tiny_lm_library_dir)
    yield engine
    engine.close()


def _client(engine, **settings):
    from fastapi.testclient import TestClient

    from adaptrix_core.server import ServerSettings, create_app

    return TestClient(create_app(engine, ServerSettings(**settings)))


@pytest.fixture(name="client", scope="module")
def _client_fixture(engine):
    with _client(engine) as client:
        yield client


@pytest.fixture(name="keyed", scope="module")
def _keyed(engine):
    with _client(engine, api_key=KEY) as client:
        yield client


def test_root_redirects_to_the_page(client):
    """GET / answers with a redirect to /ui."""
    response = client.get("/", follow_redirects=False)

    assert (307, "/ui") == (response.status_code, response.headers["location"])


def test_page_is_served_with_a_same_origin_policy(client):
    """/ui is the HTML page; its Content-Security-Policy allows nothing but this server."""
    response = client.get("/ui")
    policy = response.headers["content-security-policy"]

    assert (200, "text/html; charset=utf-8", True) == (
        response.status_code, response.headers["content-type"], "<title>Adaptrix</title>" in response.text
    )
    assert {"default-src 'self'", "connect-src 'self'", "script-src 'self'", "style-src 'self'"} <= {
        part.strip() for part in policy.split(";")
    }


def test_every_file_the_page_loads_is_served_locally(client):
    """Each script, stylesheet and image the page and its modules reference comes from /ui/static/ and is served."""
    import re

    page = client.get("/ui").text
    pending = re.findall(r'(?:src|href)="(/ui/static/[^"]+)"', page)
    seen: dict[str, int] = {}
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        response = client.get(path)
        seen[path] = response.status_code
        if path.endswith(".js"):
            pending += [f"/ui/static/js/{name}" for name in re.findall(r'from "\./([\w-]+\.js)"', response.text)]

    assert {"/ui/static/app.css", "/ui/static/js/main.js", "/ui/static/js/api.js", "/ui/static/icon.svg"} <= set(seen)
    assert {200} == set(seen.values())
    assert not re.search(r"https?://", page)


def test_static_files_have_their_media_types(client):
    """Modules are served as JavaScript (browsers refuse modules of another type), styles as CSS."""
    types = {p: client.get(p).headers["content-type"].split(";")[0] for p in ("/ui/static/js/main.js", "/ui/static/app.css")}

    assert {"/ui/static/js/main.js": "text/javascript", "/ui/static/app.css": "text/css"} == types


@pytest.mark.parametrize("path", ["/ui/static/../router.py", "/ui/static/%2e%2e/router.py", "/ui/static/nope.js"])
def test_files_outside_the_static_folder_are_not_served(client, path):
    """A path that escapes the static folder, or names no file, is a 404 in the API's error shape."""
    response = client.get(path)

    assert (404, "not_found") == (response.status_code, response.json()["error"]["code"])


def test_adapter_details_come_from_the_adapter_files(client, tiny_lm_library_dir):
    """/ui/api/adapters gives each adapter's rank, alpha, targets and file size as written on disk."""
    data = {a["name"]: a for a in client.get("/ui/api/adapters").json()["data"]}
    alpha = data["alpha"]
    config = json.loads((tiny_lm_library_dir / "alpha" / "adapter_config.json").read_text())
    size = (tiny_lm_library_dir / "alpha" / "adapter_model.safetensors").stat().st_size

    assert ["alpha", "beta", "delta", "gamma"] == sorted(data)
    assert (config["r"], config["lora_alpha"], sorted(config["target_modules"]), size, "testing", ["alpha"]) == (
        alpha["rank"], alpha["alpha"], alpha["targets"], alpha["file_bytes"], alpha["domain"], alpha["capabilities"]
    )


def test_route_returns_what_adaptrix_route_shows(client, engine):
    """POST /v1/route answers the engine's routing: candidates with scores and reasons, and the model auto uses."""
    query = "please use the gamma adapter"
    routing = engine.route(query)
    body = client.post("/v1/route", json={"query": query}).json()

    assert {
        "query": query,
        "object": "route",
        "router": "keyword",
        "model": "gamma",
        "choice": "gamma",
        "adapters": {"gamma": 1.0},
        "reason": routing.reason,
        "candidates": [{"adapter": c.adapter, "score": c.score, "reason": c.reason} for c in routing.candidates],
    } == body


def test_route_with_a_named_router(client):
    """``router`` picks a registered router by name; an unknown one is a 400 that lists the registered ones."""
    ok = client.post("/v1/route", json={"query": "gamma", "router": "keyword"})
    bad = client.post("/v1/route", json={"query": "gamma", "router": "nosuchrouter"})

    assert ("keyword", 400) == (ok.json()["router"], bad.status_code)
    assert "nosuchrouter" in bad.json()["error"]["message"]
    assert "keyword" in bad.json()["error"]["message"]


@pytest.mark.parametrize(("body", "param"), [({}, "query"), ({"query": ""}, "query"), ({"query": "x", "extra": 1}, "extra")])
def test_route_rejects_bad_bodies(client, body, param):
    """A missing or empty query, or an unknown field, is a 400 naming the field."""
    response = client.post("/v1/route", json=body)

    assert (400, param) == (response.status_code, response.json()["error"]["param"])


def test_api_key_guards_everything_but_the_page_shell(keyed):
    """With --api-key the page, its files and / load without the key; data and routing need it."""
    statuses = {
        "GET /": keyed.get("/", follow_redirects=False).status_code,
        "GET /ui": keyed.get("/ui").status_code,
        "HEAD /ui": keyed.head("/ui").status_code,
        "GET /ui/static/js/main.js": keyed.get("/ui/static/js/main.js").status_code,
        "GET /ui/api/adapters": keyed.get("/ui/api/adapters").status_code,
        "POST /v1/route": keyed.post("/v1/route", json={"query": "x"}).status_code,
        "POST /ui": keyed.post("/ui").status_code,
        "GET /v1/adapters": keyed.get("/v1/adapters").status_code,
    }
    with_key = keyed.post("/v1/route", json={"query": "x"}, headers={"Authorization": f"Bearer {KEY}"}).status_code

    assert {
        "GET /": 307, "GET /ui": 200, "HEAD /ui": 200, "GET /ui/static/js/main.js": 200,
        "GET /ui/api/adapters": 401, "POST /v1/route": 401, "POST /ui": 401, "GET /v1/adapters": 401,
    } == statuses
    assert 200 == with_key


# adaptrix ui --------------------------------------------------------------------------------------


def test_ui_url_opens_a_wildcard_bind_on_loopback():
    """A server bound to every interface is opened on loopback; IPv6 hosts get brackets."""
    from adaptrix_core.builtins.ui_commands import ui_url

    urls = [ui_url(h, 8000) for h in ("127.0.0.1", "0.0.0.0", "::", "example.lan")]

    assert ["http://127.0.0.1:8000/ui", "http://127.0.0.1:8000/ui", "http://[::1]:8000/ui", "http://example.lan:8000/ui"] == urls


@pytest.mark.parametrize(
    ("env", "platform", "expected"),
    [({}, "linux", False), ({"DISPLAY": ":0"}, "linux", True), ({"WAYLAND_DISPLAY": "w"}, "linux", True),
     ({"BROWSER": "firefox"}, "linux", True), ({}, "darwin", True), ({}, "win32", True)],
)
def test_a_browser_is_opened_only_where_one_can_show(monkeypatch, env, platform, expected):
    """Without a display on Linux no browser is opened (webbrowser would start a text browser in the terminal)."""
    from adaptrix_core.builtins import ui_commands

    for var in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(ui_commands.sys, "platform", platform)

    assert expected == ui_commands.can_open_browser()


def test_the_browser_opens_once_the_page_answers(engine, monkeypatch, capsys):
    """announce_when_ready waits for /ui, prints the URL, and opens it in the browser when one can show."""
    import webbrowser

    from adaptrix_core.builtins import ui_commands

    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url, new=0: opened.append(url) or True)
    monkeypatch.setattr(ui_commands, "can_open_browser", lambda: True)
    with support.thread_server(engine) as base:
        url = base + "/ui"
        ready = ui_commands.announce_when_ready(url, open_browser=True, stop=threading.Event(), timeout_s=60)

    assert (True, [url]) == (ready, opened)
    assert f"Adaptrix web interface: {url} (opened in your browser)" in capsys.readouterr().err


def test_waiting_stops_when_the_server_does(capsys):
    """When the server never comes up (it failed to start), the wait ends with the stop event and prints nothing."""
    from adaptrix_core.builtins.ui_commands import announce_when_ready

    stop = threading.Event()
    stop.set()

    assert False is announce_when_ready("http://127.0.0.1:9/ui", open_browser=False, stop=stop, timeout_s=60)
    assert "" == capsys.readouterr().err


def test_ui_command_serves_the_page_and_prints_its_url(tiny_lm_dir, tiny_lm_library_dir, tmp_path):
    """`adaptrix ui --no-browser --api-key K` passes serve's options on: the page is public, the API needs K."""
    import httpx

    port = support.free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = support.start_cli_server(
        ["ui", "--no-browser", "--port", str(port), "--max-tokens-limit", "32", "--api-key", KEY],
        tiny_lm_dir, tiny_lm_library_dir, tmp_path, wait_for=f"{base}/ui",
    )
    try:
        page = httpx.get(f"{base}/ui", timeout=10).status_code
        refused = httpx.get(f"{base}/v1/stats", timeout=10).status_code
        stats = httpx.get(f"{base}/v1/stats", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
    finally:
        support.stop_process(proc)

    assert (200, 401, 32, True) == (page, refused, stats["server"]["max_tokens_limit"], stats["server"]["auth"])
    assert f"Adaptrix web interface: {base}/ui (open it in a browser)" in log.read_text()


def test_ui_command_refuses_port_zero(tmp_path):
    """A random port cannot be opened in a browser, so `adaptrix ui --port 0` is refused before anything loads."""
    result = subprocess.run(
        [str(Path(sys.executable).with_name("adaptrix")), "ui", "--no-browser", "--port", "0"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "ADAPTRIX_HOME": str(tmp_path)},
    )

    assert 0 != result.returncode
    assert "needs a fixed port" in result.stderr
