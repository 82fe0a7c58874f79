"""
Helpers for the web interface's tests (no tests here): servers on loopback over the tiny GPT-2.

Loaded by path from ``test_ui_api.py`` and ``test_ui_browser.py`` (test folders are
not importable under ``--import-mode=importlib``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


START_TIMEOUT_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_engine(tiny_lm_dir: Path, library_dir: Path) -> Any:
    """An engine over the saved tiny GPT-2 and a library of its adapters, routed by the keyword router."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptrix_core.config import load_config
    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.library import Library

    library = Library(library_dir, shipped_dir=library_dir.parent / "no-shipped-adapters")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    return AdaptrixEngine.from_model(
        model, AutoTokenizer.from_pretrained(tiny_lm_dir), library=library, config=load_config(router="keyword"),
        name="tiny-gpt2-test",
    )


@contextlib.contextmanager
def thread_server(engine: Any, **settings: Any) -> Iterator[str]:
    """Serve *engine* with uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    from adaptrix_core.server import ServerSettings, create_app

    app = create_app(engine, ServerSettings(**settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="ui-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def start_cli_server(
    args: list[str], tiny_lm_dir: Path, library_dir: Path, home: Path, *, wait_for: str
) -> tuple[subprocess.Popen[bytes], Path]:
    """Run ``adaptrix ARGS`` over the tiny model and library until its output contains *wait_for*."""
    env = {
        **os.environ,
        "ADAPTRIX_HOME": str(home),
        "ADAPTRIX_BASE_MODEL": str(tiny_lm_dir),
        "ADAPTRIX_LIBRARY_DIR": str(library_dir),
        "ADAPTRIX_SHIPPED_ADAPTERS": "",
        "ADAPTRIX_ROUTER": "keyword",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ADAPTRIX_API_KEY", None)
    log = home / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("adaptrix")), *args], env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while wait_for not in log.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"adaptrix {' '.join(args)} exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            stop_process(proc)
            pytest.fail(f"adaptrix {' '.join(args)} did not start:\n{log.read_text()}")
        time.sleep(0.2)
    return proc, log


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


# the browser ---------------------------------------------------------------------------------------

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
PANELS = ("library", "playground", "compare", "compose", "route", "stats")


def skip_or_fail(reason: str) -> None:
    """Skip saying why; under CI=true a missing browser is a failure instead."""
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires the browser tests to run.")
    pytest.skip(reason)


def require_playwright() -> None:
    """Call at module level: skips (or fails in CI) the module when Playwright is not installed."""
    try:
        import playwright.sync_api  # noqa: F401
        import pytest_playwright  # noqa: F401
    except ImportError as e:
        if IN_CI:
            raise
        pytest.skip(f"Playwright is not installed ({e}); `pip install -e '.[test]'` installs it.", allow_module_level=True)


def chromium_launch_args() -> dict[str, Any]:
    """pytest-playwright's launch options: the system chromium, headless, with nothing phoning home."""
    import shutil

    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        skip_or_fail("no chromium on PATH: `bash scripts/setup` as root installs it (apt-get install chromium)")
    return {"executable_path": path, "args": CHROMIUM_ARGS}


def screenshot_dir(tmp_path_factory: Any, env: str = "ADAPTRIX_UI_SCREENSHOTS") -> Path:
    """$ADAPTRIX_UI_SCREENSHOTS when set (to keep them), else a temporary folder."""
    folder = os.environ.get(env)
    path = Path(folder) if folder else tmp_path_factory.mktemp("ui-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


class Watch:
    """Console errors, page errors and requests to anywhere but the server, seen while a test ran."""

    def __init__(self, page: Any, origin: str, allowed_statuses: tuple[int, ...] = ()) -> None:
        self.origin = origin
        self.problems: list[str] = []
        self.requests: list[Any] = []
        allowed = tuple(f"status of {s}" for s in allowed_statuses)

        def console(message: Any) -> None:
            if message.type == "error" and not any(a in message.text for a in allowed):
                self.problems.append(f"console error: {message.text}")

        def request(req: Any) -> None:
            self.requests.append(req)
            if not (req.url == origin or req.url.startswith(origin + "/")):
                self.problems.append(f"request off the server: {req.url}")

        page.on("console", console)
        page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        page.on("request", request)


def open_ui(page: Any, server: str, panel: str = "library", *, allowed_statuses: tuple[int, ...] = ()) -> Watch:
    """Open the page on *panel* and wait until it is connected; returns what it will be watched for."""
    watch = Watch(page, server, allowed_statuses)
    page.goto(f"{server}/ui#{panel}")
    page.wait_for_selector("#conn.ok")
    return watch


def visit(page: Any, panel: str) -> None:
    page.click(f'.tabs a[data-panel="{panel}"]')
    page.wait_for_selector(f"#panel-{panel}:not([hidden])")


def set_sampling(page: Any, prefix: str, *, temperature: str = "0", max_tokens: str = "8") -> None:
    page.fill(f"#{prefix}-temperature", temperature)
    page.fill(f"#{prefix}-max-tokens", max_tokens)


def screenshot(page: Any, path: Path) -> Path:
    """A full-page PNG from the top (a sticky header would otherwise sit mid-page)."""
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=True)
    return path


def png_size(path: Path) -> tuple[int, int]:
    import struct

    data = path.read_bytes()[:24]
    assert b"\x89PNG\r\n\x1a\n" == data[:8], f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])
