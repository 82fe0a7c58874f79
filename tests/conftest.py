"""Shared fixtures: a fresh plugin manager per test and an isolated ADAPTRIX_HOME."""

from __future__ import annotations

import os

import pytest


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(name="pm")
def _pm():
    """A fresh PluginManager with core defaults and the installed first-party plugins."""
    from adaptrix_core.plugins import make_plugin_manager

    return make_plugin_manager()


@pytest.fixture(name="core_pm")
def _core_pm():
    """A fresh PluginManager with core defaults only: installed plugins never leak in."""
    from adaptrix_core.plugins import make_plugin_manager

    return make_plugin_manager(load_entry_points=False)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own library, cache and state dirs."""
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path / "adaptrix-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("ADAPTRIX_LOAD_PLUGINS", "ADAPTRIX_DISABLE_PLUGIN_AUTOLOAD", "ADAPTRIX_BLOCK_PLUGINS", "ADAPTRIX_CONFIG"):
        monkeypatch.delenv(var, raising=False)
