"""
Adaptrix: many LoRA adapters on one frozen language model.

Light names are imported eagerly; the ones that need torch (``attach``,
``AdaptrixEngine``, ...) are imported on first use so that ``adaptrix plugins``
and plugin modules stay fast to import.
"""

from __future__ import annotations

import importlib

from typing import Any

from .exceptions import AdaptrixError
from .hookspecs import hookimpl
from .types import (
    ROLES,
    AdapterInfo,
    AdapterSource,
    Detection,
    InjectionStrategy,
    ModuleMap,
    ModuleRename,
    RouteCandidate,
    Router,
    Routing,
)


__version__ = "0.1.0"

_LAZY = {
    "detect": "adaptrix_core.detection",
    "detect_all": "adaptrix_core.detection",
    "module_map": "adaptrix_core.detection",
    "make_plugin_manager": "adaptrix_core.plugins",
    "load_config": "adaptrix_core.config",
    "attach": "adaptrix_core.runtime",
    "AdaptedModel": "adaptrix_core.runtime",
    "LoraSpec": "adaptrix_core.runtime",
    "Library": "adaptrix_core.library",
    "AdaptrixEngine": "adaptrix_core.engine",
}

__all__ = [
    "ROLES",
    "AdaptrixError",
    "AdapterInfo",
    "AdapterSource",
    "Detection",
    "InjectionStrategy",
    "ModuleMap",
    "ModuleRename",
    "RouteCandidate",
    "Router",
    "Routing",
    "__version__",
    "hookimpl",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adaptrix_core' has no attribute {name!r}")
