"""
Build the PluginManager; discover, block and list plugins; call hooks with each answer's plugin attached.

Every hook is called through ``pm.hook.NAME(...)``, so hook wrappers, ``tryfirst`` / ``trylast`` and
``ADAPTRIX_TRACE_PLUGINS`` apply to all of them. Core still needs to know *which* plugin gave each answer
(detection scores, duplicate names, errors): :func:`attributed_hook` wraps every implementation's function
once so that an exception it raises becomes a :class:`PluginError` naming it, and its result is labelled
with its name (a :class:`~adaptrix_core.types.Detection`'s ``plugin`` field, or :class:`FromPlugin` for the
lists that ``register_*`` hooks return). Hook wrappers see those labelled results.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys

from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .exceptions import PluginError


ENTRY_POINT_GROUP = "adaptrix"

# Core defaults are plugins too (pytest's default_plugins, llm's default_plugins).
# Registered FIRST: pluggy calls in LIFO order, so installed plugins are asked
# before these, and the fallbacks among them are also `trylast=True`.
DEFAULT_PLUGINS = (
    "adaptrix_core.builtins.sources",
    "adaptrix_core.builtins.injection",
    "adaptrix_core.builtins.routers",
    "adaptrix_core.builtins.inspect_commands",
    "adaptrix_core.builtins.library_commands",
    "adaptrix_core.builtins.engine_commands",
    "adaptrix_core.builtins.serve_commands",
    "adaptrix_core.builtins.train_commands",
    "adaptrix_core.builtins.routing_commands",
    "adaptrix_core.builtins.ui_commands",
    "adaptrix_core.builtins.hub_commands",
    "adaptrix_core.builtins.generic",
)


def make_plugin_manager(
    *, load_entry_points: bool = True, blocked: Iterable[str] = ()
) -> pluggy.PluginManager:
    """
    Return a PluginManager with core defaults and, optionally, installed plugins.

    Args:
        load_entry_points:
            Load plugins advertised in the ``adaptrix`` entry-point group.
            ``ADAPTRIX_DISABLE_PLUGIN_AUTOLOAD=1`` turns this off, and
            ``ADAPTRIX_LOAD_PLUGINS=phi2,llama`` loads only those entry points
            (``''`` loads none).

        blocked:
            Entry-point names never to load (like pytest's ``-p no:NAME``);
            ``ADAPTRIX_BLOCK_PLUGINS=a,b`` adds to them.
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    for name in [*blocked, *_env_list("ADAPTRIX_BLOCK_PLUGINS")]:
        pm.set_blocked(name)
    for modname in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(modname), name=modname)

    only = os.environ.get("ADAPTRIX_LOAD_PLUGINS")
    if os.environ.get("ADAPTRIX_DISABLE_PLUGIN_AUTOLOAD"):
        load_entry_points = False
    if load_entry_points:
        names = None if only is None else _env_list("ADAPTRIX_LOAD_PLUGINS")
        _load_entry_points(pm, names)

    pm.check_pending()  # a misspelt hook name fails here instead of never running
    if os.environ.get("ADAPTRIX_TRACE_PLUGINS"):
        pm.trace.root.setwriter(sys.stderr.write)
        pm.enable_tracing()
    return pm


def _env_list(var: str) -> list[str]:
    return [n.strip() for n in os.environ.get(var, "").split(",") if n.strip()]


def _load_entry_points(pm: pluggy.PluginManager, names: list[str] | None) -> None:
    """Load entry points one name at a time, so an import error names its plugin."""
    available = {
        ep.name: ep.value
        for dist in importlib.metadata.distributions()
        for ep in dist.entry_points
        if ep.group == ENTRY_POINT_GROUP
    }
    for name in names if names is not None else sorted(available):
        if name not in available:
            print(f"adaptrix: plugin {name!r} is not installed", file=sys.stderr)
            continue
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)
        except Exception as e:
            raise PluginError(
                name,
                f"failed to import {available[name]!r}: {type(e).__name__}: {e}. "
                f"Fix: reinstall the plugin, or skip it with ADAPTRIX_BLOCK_PLUGINS={name}.",
            ) from e


class FromPlugin(list):  # type: ignore[type-arg]
    """The objects one implementation of a ``register_*`` hook returned, with the plugin's name."""

    plugin: str

    def __init__(self, items: Iterable[Any], plugin: str) -> None:
        super().__init__(items)
        self.plugin = plugin


def _label_detection(plugin: str, hook: str, result: Any) -> Any:
    from .types import Detection

    if result is None:
        return None
    if not isinstance(result, Detection):
        raise PluginError(plugin, f"{hook}() must return a Detection or None, not {result!r}")
    return attrs.evolve(result, plugin=plugin) if result.plugin is None else result


def _label_registrations(plugin: str, hook: str, result: Any) -> Any:
    return FromPlugin(result or (), plugin)


def _label_nothing(plugin: str, hook: str, result: Any) -> Any:
    return result


_LABELS: dict[str, Callable[[str, str, Any], Any]] = {
    "detect_architecture": _label_detection,
    "detect_adapter_architecture": _label_detection,
    "register_injection_strategies": _label_registrations,
    "register_routers": _label_registrations,
    "register_adapter_sources": _label_registrations,
}


def _attributed(function: Callable[..., Any], plugin: str, hook: str) -> Callable[..., Any]:
    label = _LABELS.get(hook, _label_nothing)

    def call(*args: Any) -> Any:
        try:
            return label(plugin, hook, function(*args))
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(plugin, f"{hook}() raised {type(e).__name__}: {e}") from e

    call.__wrapped__ = function  # type: ignore[attr-defined]
    call._adaptrix_plugin = plugin  # type: ignore[attr-defined]
    return call


def attributed_hook(pm: pluggy.PluginManager, name: str) -> Any:
    """
    ``pm.hook.<name>``, after making sure each implementation's answers and errors name its plugin.

    Idempotent and cheap (a loop over the implementations), so it also covers plugins registered after the
    manager was built. Wrappers (``wrapper=True`` / ``hookwrapper=True``) are left as they are.
    """
    hook = getattr(pm.hook, name)
    for impl in hook.get_hookimpls():
        if impl.wrapper or impl.hookwrapper or getattr(impl.function, "_adaptrix_plugin", None) == impl.plugin_name:
            continue
        impl.function = _attributed(impl.function, impl.plugin_name, name)  # type: ignore[misc]
    return hook


@attrs.frozen
class PluginInfo:
    """One row of ``adaptrix plugins``."""

    name: str
    version: str | None
    hooks: tuple[str, ...]
    builtin: bool


def list_plugins(pm: pluggy.PluginManager, *, include_builtins: bool = False) -> list[PluginInfo]:
    """Back ``adaptrix plugins``: distribution name, version, implemented hooks."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # blocked
            continue
        builtin = name in DEFAULT_PLUGINS
        if builtin and not include_builtins:
            continue
        dist = dists.get(id(plugin))
        infos.append(
            PluginInfo(
                name=dist.project_name if dist else name,
                version=dist.version if dist else None,
                hooks=tuple(sorted(h.name for h in pm.get_hookcallers(plugin) or ())),
                builtin=builtin,
            )
        )
    return infos


_default_pm: pluggy.PluginManager | None = None


def default_plugin_manager() -> pluggy.PluginManager:
    """The lazily built, cached manager that library calls use when given no ``pm=``."""
    global _default_pm  # noqa: PLW0603
    if _default_pm is None:
        _default_pm = make_plugin_manager()
    return _default_pm
