"""
Adaptrix's pytest plugin: what a plugin's test suite needs, loaded automatically (entry point ``pytest11``).

- Every test runs with its own empty ``ADAPTRIX_HOME`` (library, cache, state), the Hugging Face Hub
  offline (``HF_HUB_OFFLINE=1``, set before any test imports ``huggingface_hub``), and none of the
  ``ADAPTRIX_*`` plugin-loading variables of the shell that started pytest.
- Fixtures: ``adaptrix_home``, ``adaptrix_pm`` (core + installed plugins) and ``adaptrix_core_pm`` (core only).

Turn the isolation off with ``adaptrix_isolate = false`` in the pytest ini, or the whole plugin with
``-p no:adaptrix_core.pytest_plugin``. Nothing here imports torch: the helpers in
:mod:`adaptrix_core.testing` import it when called.
"""

from __future__ import annotations

import os

from pathlib import Path
from typing import TYPE_CHECKING

import pytest


if TYPE_CHECKING:
    import pluggy


_CLEARED = ("ADAPTRIX_LOAD_PLUGINS", "ADAPTRIX_DISABLE_PLUGIN_AUTOLOAD", "ADAPTRIX_BLOCK_PLUGINS", "ADAPTRIX_CONFIG")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "adaptrix_isolate",
        "Give each test its own ADAPTRIX_HOME and an offline Hugging Face Hub (adaptrix-core's pytest plugin).",
        type="bool",
        default=True,
    )


def pytest_configure(config: pytest.Config) -> None:
    if config.getini("adaptrix_isolate"):
        # huggingface_hub reads this once, at import: it must be set before any test module imports it
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _adaptrix_isolation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if not request.config.getini("adaptrix_isolate"):
        return
    request.getfixturevalue("adaptrix_home")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in _CLEARED:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def adaptrix_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own ``ADAPTRIX_HOME`` (library, cache and state), set in the environment; Adaptrix creates it."""
    home = tmp_path / "adaptrix-home"
    monkeypatch.setenv("ADAPTRIX_HOME", str(home))
    return home


@pytest.fixture
def adaptrix_pm() -> pluggy.PluginManager:
    """A fresh plugin manager with core's defaults and every installed plugin (what ``adaptrix`` itself uses)."""
    from .plugins import make_plugin_manager

    return make_plugin_manager()


@pytest.fixture
def adaptrix_core_pm() -> pluggy.PluginManager:
    """A fresh plugin manager with core's defaults only: register your plugin on it to pin the plugin set."""
    from .plugins import make_plugin_manager

    return make_plugin_manager(load_entry_points=False)
