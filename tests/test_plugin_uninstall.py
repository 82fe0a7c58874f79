"""
Uninstalling a plugin distribution removes its architecture, with no code change.

The test builds a copy of this environment's site-packages without the files
that ``pip uninstall adaptrix-plugin-phi2`` would delete (the distribution's
RECORD), then runs the real CLI in a fresh interpreter against it. The shared
environment is never modified.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import sysconfig

from pathlib import Path

import pytest

from adaptrix_core.testing import tiny_phi


def _site_without(dist_name: str, dest: Path) -> Path:
    dist = importlib.metadata.distribution(dist_name)
    site = Path(sysconfig.get_paths()["purelib"])
    removed = {Path(str(f)).parts[0] for f in dist.files or ()}  # what pip's RECORD-driven uninstall deletes
    assert removed, f"{dist_name} lists no files"
    dest.mkdir()
    for entry in site.iterdir():
        if entry.name in removed:
            continue
        (dest / entry.name).symlink_to(entry)
    return dest


def _detect(site: Path, model_dir: Path, home: Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import site, sys; site.addsitedir(sys.argv[1]); "
        "sys.argv = ['adaptrix', 'detect', sys.argv[2]]; "
        "from adaptrix_core.cli import main; main()"
    )
    env = {**os.environ, "ADAPTRIX_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1", **extra_env}
    return subprocess.run(
        [sys.executable, "-S", "-c", code, str(site), str(model_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


@pytest.fixture(name="phi_dir")
def _phi_dir(tmp_path):
    tiny_phi().save_pretrained(tmp_path / "phi")
    return tmp_path / "phi"


def test_installed_plugin_detects_phi(tmp_path, phi_dir):
    """
    With every distribution present, the isolated interpreter detects phi2 (guards the next test).
    """
    site = _site_without("adaptrix-plugin-gpt2", tmp_path / "site")

    proc = _detect(site, phi_dir, tmp_path / "home")

    assert 0 == proc.returncode, proc.stderr
    assert "phi2" in proc.stdout


def test_uninstalled_plugin_leaves_only_the_generic_guess(tmp_path, phi_dir):
    """
    Without adaptrix-plugin-phi2's files, `adaptrix detect` on a Phi model falls back to core's generic guess.
    """
    site = _site_without("adaptrix-plugin-phi2", tmp_path / "site")

    proc = _detect(site, phi_dir, tmp_path / "home")

    assert 0 == proc.returncode, proc.stderr
    assert "PhiForCausalLM is generic" in proc.stdout
    assert "phi2" not in proc.stdout


def test_uninstalled_plugin_removes_its_architecture(tmp_path, phi_dir):
    """
    Without adaptrix-plugin-phi2's files and with the generic guess blocked, detecting Phi is the
    unknown-architecture error, listing the patterns still installed (whatever other plugins are present).
    """
    from adaptrix_core.detection import installed_patterns
    from adaptrix_core.plugins import make_plugin_manager

    generic = "adaptrix_core.builtins.generic"
    remaining = sorted(set(installed_patterns(make_plugin_manager())) - {"phi2", generic})
    site = _site_without("adaptrix-plugin-phi2", tmp_path / "site")

    proc = _detect(site, phi_dir, tmp_path / "home", ADAPTRIX_BLOCK_PLUGINS=generic)

    assert 1 == proc.returncode
    assert "No installed pattern recognises PhiForCausalLM" in proc.stderr
    assert f"Installed patterns: {', '.join(remaining)}." in proc.stderr
