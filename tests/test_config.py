"""Configuration: defaults under ADAPTRIX_HOME, TOML file, environment, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptrix_core.config import EMBEDDED_MODEL, load_config
from adaptrix_core.exceptions import ConfigError


def test_adaptrix_home_relocates_everything(tmp_path, monkeypatch):
    """
    ADAPTRIX_HOME puts library, cache, state and config file under one root.
    """
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path))

    config = load_config()

    assert [tmp_path / "library", tmp_path / "cache", tmp_path / "state", tmp_path / "config.toml"] == [
        config.library_dir,
        config.cache_dir,
        config.state_dir,
        config.config_file,
    ]
    assert (EMBEDDED_MODEL, "auto", "auto") == (config.base_model, config.device, config.dtype)


def test_toml_then_environment_then_overrides(tmp_path, monkeypatch):
    """
    The TOML file beats defaults, environment variables beat the file, keyword overrides beat both.
    """
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('base_model = "from-toml"\ndevice = "cpu"\nlibrary_dir = "~/lib"\n')
    monkeypatch.setenv("ADAPTRIX_DEVICE", "cuda")

    config = load_config(dtype="bfloat16")

    assert ("from-toml", "cuda", "bfloat16") == (config.base_model, config.device, config.dtype)
    assert Path("~/lib").expanduser() == config.library_dir


@pytest.mark.parametrize(
    ("toml", "env", "match"),
    [
        ("base_model = ", {}, "not valid TOML"),
        ('colour = "red"', {}, "unknown setting 'colour'"),
        ('device = "tpu"', {}, "device"),
        ("", {"ADAPTRIX_CACHE_MAX_BYTES": "lots"}, "ADAPTRIX_CACHE_MAX_BYTES"),
    ],
)
def test_bad_settings_name_the_source(tmp_path, monkeypatch, toml, env, match):
    """
    Each bad setting raises ConfigError naming the file or variable at fault.
    """
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(toml)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    with pytest.raises(ConfigError, match=match):
        load_config()


def test_auto_device_and_dtype_on_cpu(monkeypatch):
    """
    auto resolves to a concrete device, and float32 off CUDA.
    """
    config = load_config(device="cpu")

    assert ("cpu", "float32") == (config.resolved_device(), config.resolved_dtype())
