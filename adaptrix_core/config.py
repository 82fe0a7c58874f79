"""
User configuration: where things live and which base model, device and dtype to use.

Precedence, lowest first: built-in defaults, ``config.toml`` in the config dir,
environment variables. ``ADAPTRIX_HOME`` relocates every directory under one
root (tests always set it to a temp dir).
"""

from __future__ import annotations

import os
import tomllib

from pathlib import Path
from typing import Any

import attrs
import platformdirs

from .exceptions import ConfigError


APP_NAME = "adaptrix"
EMBEDDED_MODEL = "smollm2-135m-instruct"
"""Reference of the embedded default base model (shipped on PyPI as GGUF)."""

_DEVICES = ("auto", "cpu", "cuda", "mps")
_DTYPES = ("auto", "float32", "float16", "bfloat16")


@attrs.frozen
class AdaptrixConfig:
    """
    Resolved settings. Build one with :func:`load_config`.

    Attributes:
        library_dir: The user's adapter library (one folder per adapter).
        cache_dir: Converted base models, embeddings and other rebuildable files.
        state_dir: CLI session state (active adapters).
        config_file: The TOML file read, whether or not it exists.
        base_model: Hub id, local path, or :data:`EMBEDDED_MODEL`.
        device: ``auto`` picks cuda > mps > cpu.
        dtype: ``auto`` picks bfloat16 on cuda, float32 elsewhere.
        cache_max_bytes: Byte budget of resident adapters (LRU beyond it).
        cache_max_adapters: Optional count limit of resident adapters (0 = none).
        router: Router for ``--route`` and ``model: "auto"``; ``auto`` picks ``semantic`` when its plugin
            is installed, else core's ``keyword``.
    """

    library_dir: Path
    cache_dir: Path
    state_dir: Path
    config_file: Path
    base_model: str = EMBEDDED_MODEL
    device: str = attrs.field(default="auto", validator=attrs.validators.in_(_DEVICES))
    dtype: str = attrs.field(default="auto", validator=attrs.validators.in_(_DTYPES))
    cache_max_bytes: int = attrs.field(default=512 * 2**20, validator=attrs.validators.ge(0))
    cache_max_adapters: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    router: str = "auto"

    def resolved_device(self) -> str:
        """The concrete torch device for ``device``."""
        if self.device != "auto":
            return self.device
        import torch

        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"

    def resolved_dtype(self) -> str:
        """The concrete dtype name for ``dtype`` on the resolved device."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.resolved_device() == "cuda" else "float32"


# field name -> (environment variable, converter)
_ENV: dict[str, tuple[str, Any]] = {
    "library_dir": ("ADAPTRIX_LIBRARY_DIR", Path),
    "cache_dir": ("ADAPTRIX_CACHE_DIR", Path),
    "state_dir": ("ADAPTRIX_STATE_DIR", Path),
    "base_model": ("ADAPTRIX_BASE_MODEL", str),
    "device": ("ADAPTRIX_DEVICE", str),
    "dtype": ("ADAPTRIX_DTYPE", str),
    "cache_max_bytes": ("ADAPTRIX_CACHE_MAX_BYTES", int),
    "cache_max_adapters": ("ADAPTRIX_CACHE_MAX_ADAPTERS", int),
    "router": ("ADAPTRIX_ROUTER", str),
}


def _default_dirs() -> dict[str, Path]:
    home = os.environ.get("ADAPTRIX_HOME")
    if home:
        root = Path(home).expanduser()
        return {
            "library_dir": root / "library",
            "cache_dir": root / "cache",
            "state_dir": root / "state",
            "config_file": root / "config.toml",
        }
    return {
        "library_dir": Path(platformdirs.user_data_dir(APP_NAME)) / "library",
        "cache_dir": Path(platformdirs.user_cache_dir(APP_NAME)),
        "state_dir": Path(platformdirs.user_state_dir(APP_NAME)),
        "config_file": Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml",
    }


def load_config(**overrides: Any) -> AdaptrixConfig:
    """
    Return the effective configuration; keyword *overrides* win over everything.

    Raises:
        ConfigError: The TOML file or an environment variable has a bad value.
    """
    values: dict[str, Any] = _default_dirs()
    config_file = Path(os.environ.get("ADAPTRIX_CONFIG", values["config_file"]))
    values["config_file"] = config_file
    fields = {f.name for f in attrs.fields(AdaptrixConfig)} - {"config_file"}
    if config_file.is_file():
        try:
            data = tomllib.loads(config_file.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{config_file}: not valid TOML ({e}).") from None
        for key, value in data.items():
            if key not in fields:
                raise ConfigError(f"{config_file}: unknown setting {key!r}. Known settings: {', '.join(sorted(fields))}.")
            values[key] = Path(value).expanduser() if key.endswith("_dir") else value
    for field, (var, convert) in _ENV.items():
        raw = os.environ.get(var)
        if raw:
            try:
                values[field] = convert(raw)
            except ValueError:
                raise ConfigError(f"environment variable {var}={raw!r} is not a valid {convert.__name__}.") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return AdaptrixConfig(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid configuration ({config_file} or ADAPTRIX_* variables): {e}") from None
