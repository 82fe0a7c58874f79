"""
The library's file-system protocol: per-name write locks, atomic swaps, and repair of crash debris.

Every write to adapter ``NAME`` (install, replace, remove, metadata) holds an
exclusive ``flock`` on ``root/.lock-NAME`` for its whole duration; a second
writer of the same name gets a clean error instead of waiting. Work in
progress lives in dot-prefixed siblings that listings never show::

    .install-NAME-1a2b3c4d   a new version being built (or, after an exchange, the old one being deleted)
    .convert-NAME-1a2b3c4d   conversion scratch space
    .old-NAME-PID            the old version, between the two renames of a replace without exchange
    .remove-NAME-PID         an adapter being deleted
    .meta-NAME-1a2b3c4d      a new adaptrix.json before it is renamed into place
    .lock-NAME               the write lock (unlinked by its holder on release)

:func:`recover` runs when a library is opened: for each name whose lock it can
take (so never under a live writer) it rolls an interrupted replace back to the
old version when the new one never arrived, and deletes the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import threading

from collections.abc import Iterator
from pathlib import Path

from .atomic import exchange, fault_point
from .exceptions import AdapterError, AdapterExistsError, AdaptrixError


_HELD = threading.local()
_DEBRIS = (  # (pattern, is it an old version to restore?), first match wins; each prefix names one kind
    (re.compile(r"^\.old-(?P<name>.+)-\d+$"), True),
    (re.compile(r"^\.install-(?P<name>.+)-[a-z0-9_]{8}$"), False),
    (re.compile(r"^\.convert-(?P<name>.+)-[0-9a-f]{8}$"), False),
    (re.compile(r"^\.meta-(?P<name>.+)-[0-9a-f]{8}$"), False),
    (re.compile(r"^\.remove-(?P<name>.+)-\d+$"), False),
    (re.compile(r"^\.lock-(?P<name>.+)$"), False),
    (re.compile(r"^\.(?P<name>.+)\.old-\d+$"), True),  # written by releases before the .old- prefix
)


def _held() -> set[str]:
    if not hasattr(_HELD, "paths"):
        _HELD.paths = set()
    return _HELD.paths  # type: ignore[no-any-return]


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on *path*, or ``None`` if another holder has it."""
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:  # the previous holder may have unlinked the file between our open and our lock
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    return None


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "another process"
    return f"process {pid}" if pid.isdigit() else "another process"


@contextlib.contextmanager
def name_lock(root: Path, name: str, *, reentrant: bool = True) -> Iterator[None]:
    """
    Hold the write lock of adapter *name* (re-entrant within one thread unless *reentrant* is off).

    Raises:
        AdapterExistsError: Another process or thread (or, not re-entrant, this one) is writing *name* now.
        AdapterError: The library cannot be written (read-only, vanished).
    """
    path = root / f".lock-{name}"
    key = str(path)
    if reentrant and key in _held():
        yield
        return
    try:
        fd = _try_lock(path)
    except OSError as e:  # a read-only or vanished library
        raise AdapterError(f"{root}: cannot write to the library ({e.strerror or e}).") from None
    if fd is None:
        raise AdapterExistsError(
            f"adapter {name!r} is being written by {_holder(path)} right now ({root}). "
            "Fix: wait for it to finish, or choose another --name."
        )
    _held().add(key)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        _held().discard(key)
        with contextlib.suppress(OSError):
            os.unlink(path)  # while still locked, so nobody can be waiting on this inode
        os.close(fd)


def delete(path: Path) -> None:
    """Delete a file, link or directory tree; a path already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def swap_in(root: Path, staged: Path, name: str) -> None:
    """
    Make the finished directory *staged* become ``root/NAME`` (caller holds the lock), replacing any old entry.

    With an exchange rename there is no instant without a complete ``NAME``; without one, the old
    entry waits as ``.old-NAME-PID`` between two renames, and :func:`recover` puts it back if the
    process dies there.
    """
    dest = root / name
    if not os.path.lexists(dest):
        os.rename(staged, dest)
        fault_point("install:renamed")
        return
    if exchange(staged, dest):
        fault_point("install:exchanged")
        delete(staged)  # it holds the old version now
        return
    old = root / f".old-{name}-{os.getpid()}"
    os.replace(dest, old)
    fault_point("install:between-renames")
    try:
        os.replace(staged, dest)
    except BaseException:
        os.replace(old, dest)
        raise
    fault_point("install:renamed")
    delete(old)


def remove(root: Path, name: str) -> None:
    """Rename ``root/NAME`` aside (it vanishes from listings at once), then delete it (caller holds the lock)."""
    trash = root / f".remove-{name}-{os.getpid()}"
    os.replace(root / name, trash)
    fault_point("remove:renamed")
    delete(trash)


def recover(root: Path) -> list[str]:
    """
    Repair what crashed writers left in *root*; returns the entries it removed or restored.

    Names being written now are skipped (their lock is held). Never raises: a library
    that cannot be repaired (read-only, vanished) is still readable.
    """
    try:
        entries = [e.name for e in os.scandir(root) if e.name.startswith(".")]
    except OSError:
        return []
    from .runtime import check_adapter_name

    by_name: dict[str, list[tuple[str, bool]]] = {}
    for entry in entries:
        for pattern, old in _DEBRIS:
            found = pattern.match(entry)
            if found is not None:
                by_name.setdefault(found["name"], []).append((entry, old))
                break
    done: list[str] = []
    for name, debris in by_name.items():
        try:
            check_adapter_name(name)  # a dot-file that only looks like debris is not ours to touch
            with name_lock(root, name, reentrant=False):  # never under a writer, even one in this thread
                for entry, old in sorted(debris):
                    path = root / entry
                    if entry == f".lock-{name}" or not os.path.lexists(path):
                        continue
                    if old and path.is_dir() and not os.path.lexists(root / name):
                        os.rename(path, root / name)  # the replace died between its renames: back to the old one
                    else:
                        delete(path)
                    done.append(entry)
        except (AdaptrixError, OSError):
            continue
    return done


__all__ = ["delete", "name_lock", "recover", "remove", "swap_in"]
