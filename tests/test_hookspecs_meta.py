"""Every hook has a test and a documented section whose heading is its exact signature (datasette)."""

from __future__ import annotations

import inspect
import re

from pathlib import Path

import pytest

from adaptrix_core import hookspecs


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
