"""Registration hooks are collected per plugin; duplicates and unknown names fail clearly."""

from __future__ import annotations

import pytest

from adaptrix_core import hookimpl
from adaptrix_core.exceptions import DuplicateNameError, NotRegisteredError
from adaptrix_core.registry import adapter_sources, get_router_class, injection_strategies, routers


class _Router:
    name = "dup"

    def route(self, query, adapters, *, resident=()):
        raise NotImplementedError


def test_duplicate_router_names_name_both_plugins(core_pm):
    """
    Two plugins registering the same router name fail, naming both plugins.
    """

    class One:
        @hookimpl
        def register_routers(self):
            return [_Router]

    class Two:
        @hookimpl
        def register_routers(self):
            return [_Router]

    core_pm.register(One(), name="one")
    core_pm.register(Two(), name="two")

    with pytest.raises(DuplicateNameError, match="router 'dup'") as excinfo:
        routers(core_pm)

    assert "'one'" in str(excinfo.value)
    assert "'two'" in str(excinfo.value)


def test_unknown_name_lists_registered_ones(core_pm):
    """
    Looking up an unregistered router names what is registered.
    """
    with pytest.raises(NotRegisteredError, match=r"'nope'.*Registered: .*keyword"):
        get_router_class("nope", core_pm)


def test_registered_objects_remember_their_plugin(core_pm):
    """
    Each registered object knows which plugin provided it.
    """
    assert "adaptrix_core.builtins.routers" == routers(core_pm)["keyword"].plugin
    assert "adaptrix_core.builtins.injection" == injection_strategies(core_pm)["lora"].plugin
    assert {"file", "hf"} <= set(adapter_sources(core_pm))
