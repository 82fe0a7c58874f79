"""The one thread policy: explicit value, then ADAPTRIX_THREADS, then OMP_NUM_THREADS, then the default rule."""

from __future__ import annotations

import pytest

from adaptrix_core.exceptions import AdaptrixError
from adaptrix_core.threads import choose_threads, configure_threads, default_threads, prefer_passive_wait


@pytest.fixture(autouse=True)
def _no_thread_env(monkeypatch):
    monkeypatch.delenv("ADAPTRIX_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)


def test_default_is_half_the_cores_when_openmp_spins_and_all_when_it_sleeps():
    """Spinning waits: 1 core -> 1, 2 -> 1, 4 -> 2, 64 -> 8. Passive waits: 1 -> 1, 2 -> 2, 4 -> 4, 64 -> 8."""
    cores = (1, 2, 4, 64)

    assert ([1, 1, 2, 8], [1, 2, 4, 8]) == (
        [default_threads(c, passive=False) for c in cores], [default_threads(c, passive=True) for c in cores]
    )


@pytest.mark.parametrize(("policy", "passive"), [("PASSIVE", True), ("passive", True), ("ACTIVE", False), (None, False)])
def test_the_default_follows_the_wait_policy_in_the_environment(monkeypatch, policy, passive):
    """OMP_WAIT_POLICY=PASSIVE (any case) means every core on 2 cores; anything else, half."""
    if policy is not None:
        monkeypatch.setenv("OMP_WAIT_POLICY", policy)

    assert default_threads(2, passive=None) == (2 if passive else 1)


def test_prefer_passive_wait_keeps_a_users_choice_and_is_a_no_op_once_torch_is_loaded(monkeypatch):
    """
    With torch already imported (as in this test process) nothing is set; a user's policy or spin count is never
    replaced; otherwise waits become passive after a short GNU OpenMP spin.
    """
    import os
    import sys

    import torch  # noqa: F401 - OpenMP has read its environment now

    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.setenv(name, "unset")  # so teardown restores whatever the test process had
        monkeypatch.delenv(name)

    def env() -> tuple[str | None, str | None]:
        return os.environ.get("OMP_WAIT_POLICY"), os.environ.get("GOMP_SPINCOUNT")

    late = (prefer_passive_wait(), *env())
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    kept_policy = (prefer_passive_wait(), *env())
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    kept_spin = (prefer_passive_wait(), *env())
    monkeypatch.delenv("GOMP_SPINCOUNT")
    early = (prefer_passive_wait(), *env())

    assert late == (False, None, None)
    assert kept_policy == (False, "ACTIVE", None)
    assert kept_spin == (False, None, "0")
    assert early == (True, "PASSIVE", "2000")


def test_the_adaptrix_command_starts_openmp_passive_before_torch_loads():
    """A fresh `adaptrix` process runs with passive waits after a short spin, set before torch was imported."""
    import subprocess
    import sys

    code = (
        "import os, sys\n"
        "from adaptrix_core import cli\n"
        "cli.make_app = lambda: (_ for _ in ()).throw(SystemExit(0))\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
        "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'), 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)

    assert "PASSIVE 2000 False" == done.stdout.strip(), done.stderr


def test_precedence_explicit_then_adaptrix_env_then_omp_env(monkeypatch):
    """--threads beats ADAPTRIX_THREADS, which beats OMP_NUM_THREADS, which beats the default."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    from_omp = choose_threads()
    monkeypatch.setenv("ADAPTRIX_THREADS", "2")

    assert ((3, "OMP_NUM_THREADS"), (2, "ADAPTRIX_THREADS"), (5, "--threads")) == (
        from_omp, choose_threads(), choose_threads(5)
    )


@pytest.mark.parametrize("value", ["two", "0", "-1"])
def test_a_bad_env_value_names_the_variable(monkeypatch, value):
    """ADAPTRIX_THREADS that is not a positive whole number is an AdaptrixError naming it."""
    monkeypatch.setenv("ADAPTRIX_THREADS", value)
    with pytest.raises(AdaptrixError, match="ADAPTRIX_THREADS"):
        choose_threads()


def test_configure_applies_the_count_to_torch():
    """configure_threads sets torch's intra-op threads and returns the count."""
    import torch

    before = torch.get_num_threads()
    try:
        assert (1, 1) == (configure_threads(1), torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
