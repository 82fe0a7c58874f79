"""Every hook has a test and a documented section whose heading is its exact signature (datasette)."""

from __future__ import annotations

import inspect
import re

from pathlib import Path

import pytest

from adaptrix_core import hookimpl, hookspecs


ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(
    name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "adaptrix_spec")
)


def _test_sources() -> str:
    files = [*ROOT.glob("tests/**/*.py"), *ROOT.glob("plugins/*/tests/**/*.py")]
    return "\n".join(f.read_text(encoding="utf-8") for f in files)


def test_there_are_hooks():
    """
    The spec module is found (guards the two parametrized tests against passing on nothing).
    """
    assert len(HOOKS) >= 7


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook):
    """
    A test named test_hook_<name>... exists for every hook.
    """
    assert re.search(rf"def test_hook_{hook}(\b|_)", _test_sources()), f"no test_hook_{hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook):
    """
    docs/plugins/hooks.md has a heading `name(arg1, arg2)` for every hook.
    """
    args = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    heading = f"## {hook}({args})"

    assert heading in (ROOT / "docs" / "plugins" / "hooks.md").read_text(encoding="utf-8")


class _SeeEverything:
    """A plugin with a new-style wrapper around every hook: records each call and passes results through."""

    def __init__(self):
        self.seen: list[str] = []

    def _see(self, hook):
        self.seen.append(hook)
        return (yield)

    @hookimpl(wrapper=True)
    def detect_architecture(self, model, config):
        return (yield from self._see("detect_architecture"))

    @hookimpl(wrapper=True)
    def detect_adapter_architecture(self, adapter_config, module_names):
        return (yield from self._see("detect_adapter_architecture"))

    @hookimpl(wrapper=True)
    def map_modules(self, architecture, model):
        return (yield from self._see("map_modules"))

    @hookimpl(wrapper=True)
    def register_injection_strategies(self):
        return (yield from self._see("register_injection_strategies"))

    @hookimpl(wrapper=True)
    def register_routers(self):
        return (yield from self._see("register_routers"))

    @hookimpl(wrapper=True)
    def register_adapter_sources(self):
        return (yield from self._see("register_adapter_sources"))

    @hookimpl(wrapper=True)
    def register_commands(self, app):
        return (yield from self._see("register_commands"))


def _trigger_every_hook(pm) -> dict[str, object]:
    """Use core the way the CLI does, once per hook; returns hook -> a result core got back."""
    from adaptrix_core.cli import make_app
    from adaptrix_core.detection import detect_adapter_all, detect_all, module_map
    from adaptrix_core.registry import adapter_sources, injection_strategies, routers
    from adaptrix_core.testing import tiny_gpt2

    model = tiny_gpt2()
    config = {"base_model_name_or_path": "gpt2", "target_modules": ["c_attn"]}
    return {
        "detect_architecture": detect_all(model, pm=pm),
        "detect_adapter_architecture": detect_adapter_all(config, ["transformer.h.0.attn.c_attn"], pm=pm),
        "map_modules": module_map("gpt2", model, pm=pm),
        "register_injection_strategies": injection_strategies(pm),
        "register_routers": routers(pm),
        "register_adapter_sources": adapter_sources(pm),
        "register_commands": make_app(pm),
    }


def test_a_hook_wrapper_sees_every_hook(pm):
    """
    Core calls every hook through the plugin manager: a `wrapper=True` implementation of each hook sees each
    call, and the answers that reach core are unchanged by a pass-through wrapper.
    """
    plain = _trigger_every_hook(pm)
    spy = _SeeEverything()
    pm.register(spy, name="spy")

    wrapped = _trigger_every_hook(pm)

    assert set(HOOKS) == set(wrapped), "a hook without a trigger here: add one to _trigger_every_hook"
    assert all(hasattr(_SeeEverything, hook) for hook in HOOKS), "a hook without a wrapper in _SeeEverything"
    assert sorted(HOOKS) == sorted(set(spy.seen))
    assert [(d.architecture, d.plugin) for d in plain["detect_architecture"]] == [
        (d.architecture, d.plugin) for d in wrapped["detect_architecture"]
    ]
    assert set(plain["register_routers"]) == set(wrapped["register_routers"])
