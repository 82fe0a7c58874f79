"""Collect the ``register_*`` hooks into name -> object maps, remembering which plugin gave each object."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import attrs
import pluggy

from .exceptions import DuplicateNameError, NotRegisteredError, PluginError
from .plugins import attributed_hook, default_plugin_manager
from .types import AdapterSource, InjectionStrategy, Router


T = TypeVar("T")


@attrs.frozen
class Registered(Generic[T]):
    """An object some plugin registered, and which plugin that was."""

    obj: T
    plugin: str


def _collect(
    pm: pluggy.PluginManager, hook_name: str, kind: str, key: Callable[[Any], str]
) -> dict[str, Registered[Any]]:
    found: dict[str, Registered[Any]] = {}
    for objs in attributed_hook(pm, hook_name)():  # call order; wrappers and tracing apply
        plugin = getattr(objs, "plugin", "a hook wrapper")
        try:
            items = list(objs)
        except TypeError:
            raise PluginError(plugin, f"{hook_name}() must return a list, not {objs!r}") from None
        for obj in items:
            try:
                name = key(obj)
            except AttributeError:
                raise PluginError(plugin, f"{hook_name}() returned {obj!r}, which has no {kind} name") from None
            if name in found:
                raise DuplicateNameError(kind, name, found[name].plugin, plugin)
            found[name] = Registered(obj, plugin=plugin)
    return found


def _lookup(found: dict[str, Registered[T]], kind: str, name: str) -> T:
    try:
        return found[name].obj
    except KeyError:
        known = ", ".join(sorted(found)) or "none"
        raise NotRegisteredError(
            f"No {kind} named {name!r} is registered. Registered: {known}. "
            "Fix: check the spelling, or install the plugin that provides it."
        ) from None


def injection_strategies(pm: pluggy.PluginManager | None = None) -> dict[str, Registered[InjectionStrategy]]:
    """Every registered injection strategy by name."""
    return _collect(pm or default_plugin_manager(), "register_injection_strategies", "injection strategy", lambda s: s.name)


def routers(pm: pluggy.PluginManager | None = None) -> dict[str, Registered[type[Router]]]:
    """Every registered router class by name."""
    return _collect(pm or default_plugin_manager(), "register_routers", "router", lambda r: r.name)


def adapter_sources(pm: pluggy.PluginManager | None = None) -> dict[str, Registered[AdapterSource]]:
    """Every registered adapter source by scheme."""
    return _collect(pm or default_plugin_manager(), "register_adapter_sources", "adapter source", lambda s: s.scheme)


def get_injection_strategy(name: str, pm: pluggy.PluginManager | None = None) -> InjectionStrategy:
    """The injection strategy called *name*; ``NotRegisteredError`` lists the known ones."""
    return _lookup(injection_strategies(pm), "injection strategy", name)


def get_router_class(name: str, pm: pluggy.PluginManager | None = None) -> type[Router]:
    """The router class called *name*; ``NotRegisteredError`` lists the known ones."""
    return _lookup(routers(pm), "router", name)


def get_adapter_source(scheme: str, pm: pluggy.PluginManager | None = None) -> AdapterSource:
    """The adapter source for *scheme*; ``NotRegisteredError`` lists the known ones."""
    return _lookup(adapter_sources(pm), "adapter source", scheme)
