"""
Which architecture is this model (or adapter), and where do its adaptable layers live?

Plugins answer through ``detect_architecture`` / ``detect_adapter_architecture``
(scored, every plugin asked) and ``map_modules`` (one owner), each called
through the plugin manager (so wrappers, ordering and tracing apply). This
module ranks the answers and explains failures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from .exceptions import AmbiguousArchitectureError, PluginError, UnknownArchitectureError
from .plugins import attributed_hook, default_plugin_manager
from .types import Detection, ModuleMap


if TYPE_CHECKING:
    from torch import nn


_GENERIC = "adaptrix_core.builtins.generic"

_HOW_TO_ADD = (
    "Fix: install a plugin for it (`pip install adaptrix-plugin-NAME`), "
    "write one (see CONTRIBUTING.md), or pass targets=[...] explicitly."
)


def installed_patterns(pm: pluggy.PluginManager | None = None) -> list[str]:
    """Names of the plugins that can detect architectures (for error messages)."""
    pm = pm or default_plugin_manager()
    hooks = pm.hook.detect_architecture.get_hookimpls()
    return sorted(impl.plugin_name for impl in hooks if not (impl.wrapper or impl.hookwrapper))


def _ranked(pm: pluggy.PluginManager, name: str, **kwargs: Any) -> list[Detection]:
    """Call hook *name* through the manager (wrappers and tracing apply); every answer, best first."""
    results = attributed_hook(pm, name)(**kwargs)
    for result in results:  # a hook wrapper may have replaced them
        if not isinstance(result, Detection):
            raise PluginError("a hook wrapper", f"{name}() results must be Detections, not {result!r}")
    # at equal confidence a plugin's answer ranks above core's generic guess, which never makes a tie
    return sorted(results, key=lambda d: (-d.confidence, d.plugin == _GENERIC, d.architecture))


def detect_all(model: nn.Module, pm: pluggy.PluginManager | None = None) -> list[Detection]:
    """Every plugin's claim on *model*, best first (what ``adaptrix detect`` prints)."""
    pm = pm or default_plugin_manager()
    return _ranked(pm, "detect_architecture", model=model, config=getattr(model, "config", None))


def _best(detections: list[Detection], what: str, pm: pluggy.PluginManager) -> Detection:
    if not detections:
        installed = ", ".join(installed_patterns(pm)) or "none"
        raise UnknownArchitectureError(f"No installed pattern recognises {what}. Installed patterns: {installed}. {_HOW_TO_ADD}")
    best = detections[0]
    rivals = [
        d for d in detections[1:]
        if d.confidence == best.confidence and d.architecture != best.architecture and d.plugin != _GENERIC
    ]
    if rivals:
        claims = "; ".join(f"{d.plugin} says {d.architecture} ({d.reason})" for d in [best, *rivals])
        raise AmbiguousArchitectureError(
            f"{what} is claimed with equal confidence {best.confidence} by several plugins: {claims}. "
            "Fix: block one with ADAPTRIX_BLOCK_PLUGINS=NAME, or pass architecture=... explicitly."
        )
    return best


def describe_model(model: nn.Module) -> str:
    """``PhiForCausalLM (model_type='phi')``: how errors name a model."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__} (model_type={model_type!r})"


def detect(model: nn.Module, pm: pluggy.PluginManager | None = None) -> Detection:
    """
    Return the winning detection for *model*.

    Raises:
        UnknownArchitectureError: No plugin claims the model.
        AmbiguousArchitectureError: Different architectures tie for the top confidence.
    """
    pm = pm or default_plugin_manager()
    return _best(detect_all(model, pm), describe_model(model), pm)


def detect_adapter_all(
    adapter_config: Mapping[str, Any], module_names: Sequence[str], pm: pluggy.PluginManager | None = None
) -> list[Detection]:
    """Every plugin's claim on an adapter, best first."""
    pm = pm or default_plugin_manager()
    return _ranked(pm, "detect_adapter_architecture", adapter_config=adapter_config, module_names=list(module_names))


def detect_adapter(
    adapter_config: Mapping[str, Any], module_names: Sequence[str], pm: pluggy.PluginManager | None = None
) -> Detection:
    """The winning detection for an adapter; same errors as :func:`detect`."""
    pm = pm or default_plugin_manager()
    base = adapter_config.get("base_model_name_or_path")
    return _best(detect_adapter_all(adapter_config, module_names, pm), f"the adapter (base model {base!r})", pm)


def module_map(architecture: str, model: nn.Module | None = None, pm: pluggy.PluginManager | None = None) -> ModuleMap:
    """The ModuleMap the owning plugin gives for *architecture*."""
    pm = pm or default_plugin_manager()
    result = attributed_hook(pm, "map_modules")(architecture=architecture, model=model)
    if result is None:
        raise UnknownArchitectureError(
            f"No installed plugin maps the modules of architecture {architecture!r}. "
            f"Installed patterns: {', '.join(installed_patterns(pm)) or 'none'}. {_HOW_TO_ADD}"
        )
    if not isinstance(result, ModuleMap):
        raise PluginError(architecture, f"map_modules() must return a ModuleMap, not {result!r}")
    return result


def resolve_targets(model: nn.Module, mmap: ModuleMap, roles: Sequence[str] | None = None) -> dict[str, str]:
    """
    Return module name -> role for every module of *model* that *mmap* targets.

    *roles* narrows the roles (default: all of the map's roles).
    """
    wanted = set(roles) if roles is not None else set(mmap.targets)
    unknown = wanted - set(mmap.targets)
    if unknown:
        raise UnknownArchitectureError(
            f"Architecture {mmap.architecture!r} has no role(s) {sorted(unknown)}; it maps {sorted(mmap.targets)}."
        )
    found = {}
    for name, _ in model.named_modules():
        role = mmap.role_of(name)
        if role is not None and role in wanted:
            found[name] = role
    return found


def adapter_leaf_names(adapter_config: Mapping[str, Any], module_names: Sequence[str]) -> set[str]:
    """
    The last component of every module an adapter targets (``c_attn``, ``q_proj``).

    Uses the real module names when there are weights, else ``target_modules``
    from the config (a list, or a regex from which plain words are pulled).
    A helper for ``detect_adapter_architecture`` implementations.
    """
    if module_names:
        return {name.rsplit(".", 1)[-1] for name in module_names}
    targets = adapter_config.get("target_modules") or ()
    if isinstance(targets, str):
        import re

        return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", targets))
    return {str(t).rsplit(".", 1)[-1] for t in targets}


def base_model_mentions(adapter_config: Mapping[str, Any], *words: str) -> str | None:
    """Return the first of *words* found (case-insensitive) in ``base_model_name_or_path``, else ``None``."""
    base = str(adapter_config.get("base_model_name_or_path") or "").lower()
    return next((w for w in words if w.lower() in base), None)
