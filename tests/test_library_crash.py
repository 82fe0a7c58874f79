"""
`adaptrix convert --force` and `adaptrix remove` killed by SIGKILL at injected points (ADAPTRIX_FAULT): the next
library open finds the old adapter or the new one, complete and verified, never none, never a broken entry,
and no debris.

The points run in forked children of this process (the real CLI code, a real SIGKILL, no second torch import);
the case the replace used to lose runs as a separate `adaptrix` process. The benchmark
(benchmarks/bench_bad_adapters.py) runs every point as separate processes, repeatedly, plus random-moment kills.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from adaptrix_core.crashcheck import kill_once
from adaptrix_core.peft_format import write_adapter
from adaptrix_core.testing import tiny_llama


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    """A saved tiny base model, an old and a new version of one adapter."""
    root = tmp_path_factory.mktemp("crash")
    tiny_llama().save_pretrained(root / "base")
    out = {"root": root, "base": root / "base"}
    for seed, name in ((0, "old"), (1, "new")):
        g = torch.Generator().manual_seed(seed)
        modules = {f"model.layers.{i}.self_attn.q_proj": (torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g))
                   for i in range(2)}
        out[name] = write_adapter(root / name, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}, modules)
    return out


CASES = [
    # (point, exchange rename available, first install, the states allowed afterwards)
    ("install:staged", True, False, {"old"}),
    ("install:exchanged", True, False, {"new"}),
    ("install:between-renames", False, False, {"old"}),
    ("install:renamed", True, True, {"new"}),
    ("remove:renamed", True, False, {"absent"}),
]


@pytest.mark.parametrize(("point", "exchange", "fresh", "states"), CASES, ids=[f"{c[0]}-{'x' if c[1] else 'no-x'}" for c in CASES])
def test_kill_at_an_injected_point_keeps_the_library_consistent(versions, tmp_path, point, exchange, fresh, states):
    """
    The command dies by SIGKILL at *point*; afterwards the adapter is wholly the old or the new version.
    """
    result = kill_once(tmp_path / "run", versions["base"], versions["old"], versions["new"],
                       point=point, exchange=exchange, fresh=fresh, fork=True)

    assert (True, [], True) == (result["killed"], result["problems"], result["state"] in states), result


def test_real_adaptrix_process_killed_between_the_renames_of_a_replace(versions, tmp_path):
    """
    A separate `adaptrix convert --force` process, without an exchange rename, killed between its two renames:
    the next open puts the old adapter back (it used to stay hidden as .NAME.old-PID, listed nowhere).
    """
    result = kill_once(tmp_path / "run", versions["base"], versions["old"], versions["new"],
                       point="install:between-renames", exchange=False)

    assert (True, [], "old") == (result["killed"], result["problems"], result["state"]), result


def test_debris_of_an_older_release_is_repaired(versions, tmp_path):
    """
    A replace interrupted by an older release (the old copy in .NAME.old-PID, nothing at NAME) is rolled back on open.
    """
    from adaptrix_core.library import Library

    lib = Library(tmp_path / "lib", shipped_dir=tmp_path / "none")
    lib.install("a", versions["old"])
    (lib.root / "a").rename(lib.root / ".a.old-4242")
    shutil.copytree(versions["new"], lib.root / ".install-a-k2f9xq1z")
    reopened = Library(tmp_path / "lib", shipped_dir=tmp_path / "none")

    assert (["a"], [], sorted([".a.old-4242", ".install-a-k2f9xq1z"])) == (
        reopened.names(), [p.name for p in reopened.root.iterdir() if p.name.startswith(".")], sorted(reopened.recovered)
    )
