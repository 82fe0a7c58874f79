"""Plugin manager: defaults as plugins, entry-point discovery, load controls, loud failures."""

from __future__ import annotations

import importlib.metadata
import types

import pluggy
import pytest

from adaptrix_core import hookimpl
from adaptrix_core.exceptions import PluginError
from adaptrix_core.plugins import DEFAULT_PLUGINS, list_plugins, make_plugin_manager


def _fake_distribution(monkeypatch, name="toy", module=None, load_error=None):
    """Make importlib.metadata see one distribution advertising an `adaptrix` entry point."""
    ep_name = name
    plugin = module or types.ModuleType(f"adaptrix_plugin_{name}")

    class EntryPoint:
        group = "adaptrix"
        value = f"adaptrix_plugin_{ep_name}"

        def __init__(self):
            self.name = ep_name

        def load(self):
            if load_error is not None:
                raise load_error
            return plugin

    class Distribution:
        entry_points = (EntryPoint(),)
        metadata = {"name": f"adaptrix-plugin-{ep_name}"}
        version = "1.0"

        @property
        def name(self):
            return self.metadata["name"]

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: (Distribution(),))
    return plugin


def test_defaults_are_registered_as_plugins(core_pm):
    """
    Core's own defaults go through the same manager, under their module names.
    """
    assert set(DEFAULT_PLUGINS) <= {name for name, _ in core_pm.list_name_plugin()}


def test_entry_point_plugins_are_registered_under_their_name(monkeypatch):
    """
    A plugin advertised in the `adaptrix` group is registered as its entry-point name.
    """
    plugin = _fake_distribution(monkeypatch)

    pm = make_plugin_manager()

    assert plugin is pm.get_plugin("toy")
    assert [("adaptrix-plugin-toy", "1.0")] == [(i.name, i.version) for i in list_plugins(pm)]


def test_broken_plugin_import_is_not_hidden(monkeypatch):
    """
    An import error inside a plugin propagates, named after the plugin.
    """
    _fake_distribution(monkeypatch, load_error=ImportError("Don't hide me!"))

    with pytest.raises(PluginError, match=r"Plugin 'toy'.*Don't hide me!") as excinfo:
        make_plugin_manager()

    assert isinstance(excinfo.value.__cause__, ImportError)


def test_misspelt_hook_fails_loudly(monkeypatch):
    """
    A hookimpl whose name matches no spec fails at load time (check_pending), not silently.
    """
    module = types.ModuleType("adaptrix_plugin_typo")

    @hookimpl
    def detect_architectur(model):  # missing "e"
        return None

    module.detect_architectur = detect_architectur
    _fake_distribution(monkeypatch, name="typo", module=module)

    with pytest.raises(pluggy.PluginValidationError, match="detect_architectur"):
        make_plugin_manager()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ADAPTRIX_LOAD_PLUGINS": ""}, False),
        ({"ADAPTRIX_LOAD_PLUGINS": "toy"}, True),
        ({"ADAPTRIX_LOAD_PLUGINS": "other"}, False),
        ({"ADAPTRIX_DISABLE_PLUGIN_AUTOLOAD": "1"}, False),
        ({"ADAPTRIX_BLOCK_PLUGINS": "toy"}, False),
        ({}, True),
    ],
)
def test_environment_controls_autoload(monkeypatch, env, expected):
    """
    ADAPTRIX_LOAD_PLUGINS narrows, ADAPTRIX_DISABLE_PLUGIN_AUTOLOAD and ADAPTRIX_BLOCK_PLUGINS switch off.
    """
    _fake_distribution(monkeypatch)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    pm = make_plugin_manager()

    assert expected == (pm.get_plugin("toy") is not None)


def test_blocked_argument_keeps_plugin_out(monkeypatch):
    """
    make_plugin_manager(blocked=[...]) is the library form of ADAPTRIX_BLOCK_PLUGINS.
    """
    _fake_distribution(monkeypatch)

    pm = make_plugin_manager(blocked=["toy"])

    assert pm.get_plugin("toy") is None
    assert [] == list_plugins(pm)


def test_list_plugins_hides_builtins_unless_asked(core_pm):
    """
    `adaptrix plugins` shows installed plugins; `--all` adds the built-in defaults.
    """
    assert [] == list_plugins(core_pm)
    assert set(DEFAULT_PLUGINS) == {i.name for i in list_plugins(core_pm, include_builtins=True)}


def test_first_party_plugins_are_discovered(pm):
    """
    The four first-party distributions are found through their entry points.
    """
    names = {i.name for i in list_plugins(pm)}

    assert {
        "adaptrix-plugin-gpt2",
        "adaptrix-plugin-phi2",
        "adaptrix-plugin-llama",
        "adaptrix-plugin-semantic-router",
    } <= names


def test_tracing_shows_detection_hooks(monkeypatch, capsys):
    """
    ADAPTRIX_TRACE_PLUGINS=1 traces detection calls too (they go through the manager like every hook).
    """
    from adaptrix_core.detection import detect_adapter_all, detect_all
    from adaptrix_core.testing import tiny_gpt2

    monkeypatch.setenv("ADAPTRIX_TRACE_PLUGINS", "1")
    pm = make_plugin_manager(load_entry_points=False)
    capsys.readouterr()

    detect_all(tiny_gpt2(), pm=pm)
    detect_adapter_all({"target_modules": ["c_attn"]}, [], pm=pm)

    err = capsys.readouterr().err
    assert "detect_architecture" in err
    assert "detect_adapter_architecture" in err


def test_a_wrapper_can_rescore_detections_and_sees_plugin_names(core_pm):
    """
    A `wrapper=True` detection hook sees every answer with its plugin's name, and what it returns is what core ranks.
    """
    from adaptrix_core import Detection
    from adaptrix_core.detection import detect, detect_all
    from adaptrix_core.testing import tiny_gpt2

    class Claims:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("mine", 0.9, "claims everything")

    class Distrust:
        seen: list = []

        @hookimpl(wrapper=True)
        def detect_architecture(self, model):
            results = yield
            self.seen.extend((d.plugin, d.architecture) for d in results)
            return [d if d.plugin != "claims" else Detection(d.architecture, 0.1, d.reason, plugin=d.plugin)
                    for d in results]

    class Sure:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("sure", 0.5, "a second opinion")

    core_pm.register(Claims(), name="claims")
    core_pm.register(Sure(), name="sure")
    core_pm.register(Distrust(), name="distrust")

    best = detect(tiny_gpt2(), pm=core_pm)

    assert ("sure", "sure") == (best.architecture, best.plugin)
    assert {("claims", "mine"), ("sure", "sure")} <= set(Distrust.seen)
    assert [("sure", 0.5), ("mine", 0.1)] == [(d.architecture, d.confidence) for d in detect_all(tiny_gpt2(), pm=core_pm)
                                               if d.plugin in {"claims", "sure"}]


def test_tryfirst_map_modules_overrides_the_owner(pm):
    """
    map_modules is firstresult: a `tryfirst=True` implementation answers before the architecture's own plugin.
    """
    from adaptrix_core import ModuleMap
    from adaptrix_core.detection import module_map

    narrow = ModuleMap("gpt2", {"attn.qkv": "transformer.h.*.attn.c_attn"})

    class Narrow:
        @hookimpl(tryfirst=True)
        def map_modules(self, architecture):
            return narrow if architecture == "gpt2" else None

    pm.register(Narrow(), name="narrow")

    assert narrow == module_map("gpt2", pm=pm)


def test_a_raising_detection_hook_is_named_even_through_wrappers(core_pm):
    """
    An exception inside a plugin's detection hook becomes a PluginError naming that plugin.
    """
    from adaptrix_core.detection import detect_all
    from adaptrix_core.testing import tiny_gpt2

    class Boom:
        @hookimpl
        def detect_architecture(self, model):
            raise RuntimeError("kaboom")

    class PassThrough:
        @hookimpl(wrapper=True)
        def detect_architecture(self):
            return (yield)

    core_pm.register(Boom(), name="boom")
    core_pm.register(PassThrough(), name="pass-through")

    with pytest.raises(PluginError, match=r"'boom'.*RuntimeError: kaboom"):
        detect_all(tiny_gpt2(), pm=core_pm)
