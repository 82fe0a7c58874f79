"""
Kill ``adaptrix convert --force`` / ``adaptrix remove`` at an injected point and check the library (tests, benchmarks).

One run: install an old version of adapter ``a``, start the command with
``ADAPTRIX_FAULT=kill:POINT`` (it SIGKILLs itself there; with ``no-exchange``
the replace takes the two-rename path), then open the library as the next
process would and check that ``a`` is exactly the old version or exactly the
new one (``remove``: the old one or gone), that nothing is listed broken, that
its weights match the recorded sha256, and that no debris is left.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

from pathlib import Path
from typing import Any


def adaptrix_command() -> list[str]:
    """The installed ``adaptrix`` console script next to this interpreter (or on PATH)."""
    script = Path(sys.executable).with_name("adaptrix")
    return [str(script)] if script.exists() else [shutil.which("adaptrix") or "adaptrix"]


def _run_forked(argv: list[str], env: dict[str, str]) -> bool:
    """Run the CLI in a forked child of this (already warmed-up) process; ``True`` if it died by SIGKILL."""
    pid = os.fork()
    if pid == 0:  # child: the real command line, in process
        code = 1
        try:
            os.environ.update(env)
            from .cli import make_app

            make_app()(argv, standalone_mode=False)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def _run_process(argv: list[str], env: dict[str, str], kill_after: float | None) -> bool:
    """Run ``adaptrix ARGV`` as a new process; ``True`` if it died by SIGKILL."""
    proc = subprocess.Popen(
        [*adaptrix_command(), *argv], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=900)
    return proc.returncode == -signal.SIGKILL


def check(lib: Path, name: str, old_sha: str, new_source: str) -> tuple[str, list[str]]:
    """Open the library (which repairs debris) and say which version *name* is: old, new, absent; and problems."""
    from .exceptions import AdaptrixError
    from .library import Library

    library = Library(lib, shipped_dir=lib / ".no-shipped")
    problems = [f"broken: {b.name}: {b.reason}" for b in library.broken()]
    leftovers = sorted(p.name for p in lib.iterdir() if p.name.startswith(".")) if lib.exists() else []
    problems += [f"debris left: {p}" for p in leftovers]
    if name not in library:
        return "absent", problems
    try:
        library.verify(name)
    except AdaptrixError as e:
        return "corrupt", [*problems, str(e)]
    meta = library.metadata(name)
    if meta.get("sha256") == old_sha:
        return "old", problems
    if meta.get("source") == new_source:
        return "new", problems
    return "unknown", [*problems, f"neither version: {meta.get('source')}"]


def kill_once(
    workdir: Path, base: Path, old: Path, new: Path, *, point: str | None, exchange: bool = True,
    seed: int | None = None, fork: bool = False, fresh: bool = False, duration: float = 20.0,
) -> dict[str, Any]:
    """
    One kill run in *workdir*. *point* ``None`` kills at a random moment in ``[0, duration)`` seconds (by *seed*).

    *fresh*: no old version first (a first install). ``remove:*`` points run ``adaptrix remove`` instead.
    """
    from .library import Library

    if workdir.exists():
        shutil.rmtree(workdir)
    lib = workdir / "lib"
    lib.mkdir(parents=True)
    old_sha = ""
    if not fresh:
        library = Library(lib, shipped_dir=lib / ".no-shipped")
        library.install("a", old, source=str(old))
        old_sha = str(library.metadata("a")["sha256"])
    removing = point is not None and point.startswith("remove:")
    argv = ["remove", "a"] if removing else ["convert", str(new), "--name", "a", "--model", str(base), "--force"]
    faults = ([f"kill:{point}"] if point else []) + ([] if exchange else ["no-exchange"])
    env = {"ADAPTRIX_LIBRARY_DIR": str(lib), "ADAPTRIX_SHIPPED_ADAPTERS": "", "ADAPTRIX_FAULT": ",".join(faults)}
    kill_after = None if point is not None else random.Random(seed).uniform(0, duration)
    started = time.perf_counter()
    killed = _run_forked(argv, env) if fork else _run_process(argv, env, kill_after)
    seconds = time.perf_counter() - started
    state, problems = check(lib, "a", old_sha, str(new))
    allowed = {"old", "absent"} if removing else ({"absent", "new"} if fresh else {"old", "new"})
    if state not in allowed:
        problems.append(f"state {state!r}, expected one of {sorted(allowed)}")
    if state == "absent" and not removing and not fresh:
        state = "lost"
    return {
        "point": point or "random", "exchange": exchange, "fresh": fresh, "killed": killed, "state": state,
        "consistent": not problems, "problems": problems, "seconds": round(seconds, 2),
        **({"kill_after": round(kill_after, 2)} if kill_after is not None else {}),
    }


__all__ = ["adaptrix_command", "check", "kill_once"]
