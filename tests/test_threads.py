"""The one thread policy: explicit value, then ADAPTRIX_THREADS, then OMP_NUM_THREADS, then half the cores."""

from __future__ import annotations

import pytest

from adaptrix_core.exceptions import AdaptrixError
from adaptrix_core.threads import choose_threads, configure_threads, default_threads


@pytest.fixture(autouse=True)
def _no_thread_env(monkeypatch):
    monkeypatch.delenv("ADAPTRIX_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


def test_default_is_half_the_cores_between_1_and_8():
    """1 core -> 1, 2 -> 1, 4 -> 2, 64 -> 8."""
    assert [1, 1, 2, 8] == [default_threads(c) for c in (1, 2, 4, 64)]


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
