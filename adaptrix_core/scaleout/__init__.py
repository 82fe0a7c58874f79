"""
Scale-out: the same OpenAI-compatible API served by N engine replicas on Ray Serve.

Install the extra (``pip install 'adaptrix-core[ray]'``) and run
``adaptrix serve --replicas N [--ray-address auto]``; docs/scale-out.md has the
full story. Importing this package does not import Ray: the modules that need
it (:mod:`.deployments`, :mod:`.ingress`, :mod:`.replica`) are loaded on use,
and :func:`require_ray` turns a missing install into a clear error.
"""

from __future__ import annotations

import importlib.util

from ..exceptions import AdaptrixError
from .model_ids import id_of, model_id_for, names_of
from .spec import EngineSpec, ScaleOutOptions


RAY_EXTRA_HINT = "pip install 'adaptrix-core[ray]'"


class RayNotInstalledError(AdaptrixError):
    """Scale-out was asked for but Ray Serve is not installed."""


def require_ray() -> None:
    """Raise :class:`RayNotInstalledError` naming the fix unless ``ray[serve]`` is importable."""
    if importlib.util.find_spec("ray") is None or importlib.util.find_spec("ray.serve") is None:
        raise RayNotInstalledError(
            f"--replicas needs Ray Serve, which is not installed. Fix: {RAY_EXTRA_HINT} (or serve without --replicas)."
        )


__all__ = ["EngineSpec", "RayNotInstalledError", "ScaleOutOptions", "id_of", "model_id_for", "names_of", "require_ray"]
