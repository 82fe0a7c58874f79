"""
adaptrix-core's pytest plugin and test helpers, used the way a plugin author uses them: in a separate pytest run.

Each test starts pytest in a subprocess (the plugin must be in place before test modules import
huggingface_hub), with the environment of a shell that set none of Adaptrix's or the hub's variables.
"""

from __future__ import annotations

import os
import subprocess
import sys

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "plugins" / "example" / "adaptrix-plugin-opt"


def _pytest(args: list[str], cwd: Path, home: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPTRIX_", "HF_HUB_", "PYTEST_"))}
    env["ADAPTRIX_HOME"] = str(home)  # the author's real home: tests must never write here
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "adaptrix_core.pytest_plugin", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False, timeout=600)


def test_the_tutorial_plugin_passes_its_own_tests(tmp_path):
    """
    The tutorial's example plugin (docs/plugins/example/adaptrix-plugin-opt) passes its tests with the helpers
    and fixtures of adaptrix_core.testing and the pytest plugin, and never touches the real ADAPTRIX_HOME.
    """
    home = tmp_path / "real-home"

    proc = _pytest(["tests"], EXAMPLE, home, pythonpath=EXAMPLE)

    assert 0 == proc.returncode, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "5 passed" in proc.stdout
    assert not home.exists()


def test_isolation_can_be_switched_off(tmp_path):
    """
    `adaptrix_isolate = false` in the ini leaves ADAPTRIX_HOME and HF_HUB_OFFLINE as the shell set them.
    """
    (tmp_path / "pytest.ini").write_text("[pytest]\nadaptrix_isolate = false\n")
    (tmp_path / "test_env.py").write_text(
        "import os\n\n"
        "def test_env():\n"
        f"    assert {str(tmp_path / 'real-home')!r} == os.environ['ADAPTRIX_HOME']\n"
        "    assert 'HF_HUB_OFFLINE' not in os.environ\n"
    )

    proc = _pytest([], tmp_path, tmp_path / "real-home")

    assert 0 == proc.returncode, proc.stdout[-3000:] + proc.stderr[-2000:]


def test_plugin_manager_fixtures(tmp_path):
    """
    The manager fixtures are fresh managers: core's defaults always, installed plugins only in adaptrix_pm.
    """
    (tmp_path / "test_pm.py").write_text(
        "def _names(pm):\n"
        "    return {name for name, _ in pm.list_name_plugin()}\n\n"
        "def test_pm(adaptrix_pm, adaptrix_core_pm):\n"
        "    assert 'adaptrix_core.builtins.generic' in _names(adaptrix_pm) & _names(adaptrix_core_pm)\n"
        "    assert ('gpt2' in _names(adaptrix_pm), 'gpt2' in _names(adaptrix_core_pm)) == (True, False)\n"
        "    assert adaptrix_pm is not adaptrix_core_pm\n"
    )

    proc = _pytest([], tmp_path, tmp_path / "real-home")

    assert 0 == proc.returncode, proc.stdout[-3000:] + proc.stderr[-2000:]
