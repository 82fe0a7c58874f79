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
