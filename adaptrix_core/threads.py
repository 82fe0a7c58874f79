"""
How many CPU threads torch uses for a model: one policy for every command that runs one.

torch's default (one intra-op thread per core, spinning while it waits for
work) is fastest on an idle machine and collapses on a busy one: with one
other job on a 2-core machine a KV-cached decode step of the embedded model
went from 69 ms (1 thread) to 1.4 s (2 threads), because a spinning thread
that loses its core stalls every parallel region. Threads that sleep while
they wait (``OMP_WAIT_POLICY=PASSIVE``) do not stall that way, so where
OpenMP was started passive every usable core is used; otherwise half of
them, so a neighbour costs a little speed instead of 20x. A thread that
sleeps at once pays a wake-up (about 80 us here) on every parallel region,
which is most of the cost of a small matmul (a mixed-adapter batch's
gathers, a batch-1 step), so GNU OpenMP (torch's on Linux) is also told to
spin briefly first (``GOMP_SPINCOUNT``): long enough to bridge the gap
between two ops of one forward pass, short enough to yield a core soon to
a neighbour. The ``adaptrix`` command sets both (:func:`prefer_passive_wait`,
before torch is imported). docs/server.md has the measurements
(``benchmarks/bench_threads.py``).

Precedence: an explicit ``--threads``, then ``ADAPTRIX_THREADS``, then
``OMP_NUM_THREADS`` (which torch already honours), then the default rule.
"""

from __future__ import annotations

import os
import sys


THREADS_ENV = "ADAPTRIX_THREADS"
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"
SPIN_COUNT_ENV = "GOMP_SPINCOUNT"
SHORT_SPIN = "2000"
"""Busy-wait iterations before a GNU OpenMP thread sleeps (tens of microseconds; its default is 300000)."""


def prefer_passive_wait() -> bool:
    """
    Make OpenMP threads sleep rather than spin while they wait (GNU OpenMP after a short spin), unless the
    user chose a wait policy or a spin count.

    OpenMP reads the variables once, when torch loads it, so this only works before ``import torch``;
    returns whether the process's policy is passive from the start.
    """
    if "torch" not in sys.modules:
        if WAIT_POLICY_ENV not in os.environ and SPIN_COUNT_ENV not in os.environ:
            os.environ[WAIT_POLICY_ENV] = "PASSIVE"
            os.environ[SPIN_COUNT_ENV] = SHORT_SPIN  # GNU OpenMP: overrides PASSIVE's zero spin
        return passive_wait()
    return False


def passive_wait() -> bool:
    """Whether the environment asks OpenMP for sleeping (passive) waits."""
    return os.environ.get(WAIT_POLICY_ENV, "").strip().upper() == "PASSIVE"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(cores: int | None = None, passive: bool | None = None) -> int:
    """
    Every usable core when waits are passive, else half of them; at least 1 and at most 8 (beyond 8 a
    decode step gains little on CPU).
    """
    cores = usable_cores() if cores is None else cores
    passive = passive_wait() if passive is None else passive
    return max(1, min(8, cores if passive else cores // 2))


def choose_threads(requested: int | None = None) -> tuple[int, str]:
    """The thread count to use and where it came from (``"--threads"``, an env variable, or ``"default"``)."""
    from .exceptions import AdaptrixError

    if requested is not None:
        if requested < 1:
            raise AdaptrixError(f"--threads must be >= 1, got {requested}.")
        return requested, "--threads"
    for env in (THREADS_ENV, "OMP_NUM_THREADS"):
        raw = os.environ.get(env, "").strip()
        if raw:
            try:
                value = int(raw)
            except ValueError:
                raise AdaptrixError(f"{env}={raw!r} is not a whole number of threads.") from None
            if value < 1:
                raise AdaptrixError(f"{env} must be >= 1, got {value}.")
            return value, env
    return default_threads(), "default"


def configure_threads(requested: int | None = None) -> int:
    """Apply the policy to torch (intra-op threads) and return the count in force."""
    import torch

    threads, _ = choose_threads(requested)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
