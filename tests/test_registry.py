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


def test_hook_register_routers_adds_a_router(core_pm):
    """
    A Router class returned by register_routers is found by its name.
    """

    class Mine:
        @hookimpl
        def register_routers(self):
            return [_Router]

    core_pm.register(Mine(), name="mine")

    assert _Router is get_router_class("dup", core_pm)
    assert "mine" == routers(core_pm)["dup"].plugin


def test_hook_register_injection_strategies_adds_a_strategy(core_pm):
    """
    A strategy instance returned by register_injection_strategies is registered by its name.
    """

    class Strategy:
        name = "mine"

        def inject(self, model, module_names):
            return {}

        def eject(self, model, wrappers):
            pass

    strategy = Strategy()

    class Mine:
        @hookimpl
        def register_injection_strategies(self):
            return [strategy]

    core_pm.register(Mine())

    assert strategy is injection_strategies(core_pm)["mine"].obj


def test_hook_register_adapter_sources_adds_a_source(core_pm, tmp_path):
    """
    A source returned by register_adapter_sources is registered by its scheme.
    """

    class Source:
        scheme = "s3"

        def claims(self, ref):
            return ref.startswith("bucket/")

        def fetch(self, ref):
            return tmp_path

    source = Source()

    class Mine:
        @hookimpl
        def register_adapter_sources(self):
            return [source]

    core_pm.register(Mine())

    assert source is adapter_sources(core_pm)["s3"].obj


def test_registration_hook_returning_nameless_objects_is_a_plugin_error(core_pm):
    """
    An object without the name attribute is reported against the plugin that returned it.
    """
    from adaptrix_core.exceptions import PluginError

    class Bad:
        @hookimpl
        def register_routers(self):
            return [object()]

    core_pm.register(Bad(), name="bad")

    with pytest.raises(PluginError, match="'bad'.*no router name"):
        routers(core_pm)
