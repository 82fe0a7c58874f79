"""
Directory operations that never show a half-written state: exchange renames, normal-mode temp dirs, fault points.

``exchange(a, b)`` swaps two paths in one step with Linux ``renameat2(RENAME_EXCHANGE)``;
where the kernel or file system lacks it, callers fall back to two renames and
the library repairs an interrupted pair on its next open.

Fault injection (tests only): ``ADAPTRIX_FAULT`` holds comma-separated tokens.
``kill:POINT`` sends SIGKILL to this process when it reaches ``fault_point(POINT)``;
``no-exchange`` makes :func:`exchange` report that it is unavailable.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import signal
import sys

from pathlib import Path


FAULT_ENV = "ADAPTRIX_FAULT"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV}


def _faults() -> set[str]:
    return {t.strip() for t in os.environ.get(FAULT_ENV, "").split(",") if t.strip()}


def fault_point(point: str) -> None:
    """Die here, by a real SIGKILL, if ``ADAPTRIX_FAULT`` asks for ``kill:<point>`` (crash tests)."""
    if f"kill:{point}" in _faults():
        os.kill(os.getpid(), signal.SIGKILL)


def _renameat2():  # type: ignore[no-untyped-def]
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):  # musl before 1.2.? or an old glibc
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_RENAMEAT2 = _renameat2()


def exchange(a: Path, b: Path) -> bool:
    """
    Swap *a* and *b* (both must exist) atomically; ``False`` if this system cannot, leaving both untouched.

    Raises:
        OSError: The swap was possible in principle but failed (permissions, a vanished path).
    """
    if _RENAMEAT2 is None or "no-exchange" in _faults():
        return False
    result = _RENAMEAT2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    code = ctypes.get_errno()
    if code in _UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def make_dir(parent: Path, prefix: str) -> Path:
    """
    A new empty directory ``parent/<prefix><random>`` with the umask's normal mode (``mkdtemp`` gives 0700).

    What is built in it is later renamed into place, so it must already have the mode the result should have.
    """
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(parent / prefix))


__all__ = ["FAULT_ENV", "exchange", "fault_point", "make_dir"]
