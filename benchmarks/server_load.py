"""Shared by the serving benchmarks: random adapters for the embedded model, a server subprocess, percentiles."""

from __future__ import annotations

import math
import os
import re
import socket
import subprocess
import sys
import time

from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def make_adapters(library_dir: Path, peft_dir: Path, count: int) -> int:
    """Install *count* random r=8 q,v adapters (``a00``...) for the embedded model; return one's resident bytes."""
    import torch

    from adaptrix_core import attach
    from adaptrix_core.library import Library
    from adaptrix_core.models import load_base_model
    from adaptrix_core.runtime import LoraSpec

    model, _ = load_base_model(None)
    am = attach(model)
    library = Library(library_dir, shipped_dir=library_dir.parent / "none")
    nbytes = 0
    for i in range(count):
        name = f"a{i:02d}"
        am.add_adapter(name, LoraSpec(r=8, alpha=16, roles=("attn.q", "attn.v")), seed=i)
        generator = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for tensor in am.adapter_parameters(name):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
        nbytes = am.resident_bytes(name)
        library.install(name, am.save_adapter(name, peft_dir / name), description=f"benchmark adapter {i}")
        am.unload_adapter(name)
    am.detach()
    return nbytes


def server_env(tmp: Path) -> dict[str, str]:
    """The environment of a benchmark server: its library and state under *tmp*, no shipped adapters, no
    API key, offline, and no OMP_NUM_THREADS (the server's own thread policy decides)."""
    env = {**os.environ, "ADAPTRIX_LIBRARY_DIR": str(tmp / "library"), "ADAPTRIX_STATE_DIR": str(tmp / "state"),
           "ADAPTRIX_SHIPPED_ADAPTERS": "", "HF_HUB_OFFLINE": "1"}
    env.pop("ADAPTRIX_API_KEY", None)
    env.pop("OMP_NUM_THREADS", None)
    return env


class Server:
    """An ``adaptrix serve`` subprocess on a free loopback port."""

    def __init__(self, env: dict[str, str], args: list[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = log.open("w")
        command = [str(Path(sys.executable).with_name("adaptrix")), "serve", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(command, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self.log = log

    def wait(self, timeout: float = 600) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"adaptrix serve exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"adaptrix serve did not start in {timeout} s:\n{self.log.read_text()}")

    def threads(self) -> int | None:
        """The CPU thread count the server reported when it started (its thread policy's choice)."""
        found = re.search(r"(\d+) CPU threads?\b", self.log.read_text())
        return int(found.group(1)) if found else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()
