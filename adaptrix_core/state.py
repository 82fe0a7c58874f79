"""
The CLI session: which adapters are active between ``adaptrix`` invocations.

``adaptrix load pirate`` in one shell and ``adaptrix query ...`` in the next
share one small JSON file in ``config.state_dir``. Writes are atomic (temp
file + ``os.replace``), so a crash never leaves half a file. A file that is
corrupt anyway (edited by hand, disk trouble) is reported, moved aside as
``session.json.corrupt`` and replaced by an empty session: never a crash.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import warnings

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .config import AdaptrixConfig, load_config
from .exceptions import StateError


STATE_FILE = "session.json"
STATE_VERSION = 1


class CorruptStateWarning(UserWarning):
    """The session file could not be read; it was moved aside and the session reset."""


@attrs.frozen
class SessionState:
    """
    What ``load`` / ``switch`` / ``unload`` chose.

    Attributes:
        active: Adapter name -> weight, in the order they were loaded; empty = the base model.
        updated: When it was last written (ISO 8601 UTC), or ``None`` for a fresh session.
    """

    active: Mapping[str, float] = attrs.field(factory=dict, converter=dict)
    updated: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "active": dict(self.active), "updated": self.updated}


def _warn(message: str) -> None:
    warnings.warn(message, CorruptStateWarning, stacklevel=3)


class StateStore:
    """
    Reads and writes the session file.

    Args:
        path: The file; default ``<config.state_dir>/session.json``.
        config: Settings used to find the default path.
        on_corrupt: Called with a one-line message when the file is corrupt
            (default: a ``CorruptStateWarning``); the CLI prints it in yellow.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        config: AdaptrixConfig | None = None,
        on_corrupt: Callable[[str], None] | None = None,
    ) -> None:
        if path is None:
            path = (config or load_config()).state_dir / STATE_FILE
        self.path = Path(path)
        self._on_corrupt = on_corrupt or _warn

    def read(self) -> SessionState:
        """The saved session; an empty one when there is none or it was corrupt (reported, then reset)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return SessionState()
        except OSError as e:
            raise StateError(f"{self.path}: cannot read the session file ({e.strerror}). Fix: check its permissions.") from None
        try:
            return _parse(raw)
        except ValueError as e:
            aside = self.path.with_name(self.path.name + ".corrupt")
            try:
                os.replace(self.path, aside)
                where = f"moved to {aside}"
            except OSError:
                where = "left in place"
            self._on_corrupt(
                f"{self.path}: the session file is corrupt ({e}); it was {where} and the session reset "
                "to the base model. Run `adaptrix load NAME` to choose adapters again."
            )
            return SessionState()

    def write(self, state: SessionState) -> SessionState:
        """Save *state* atomically (stamped with the time); returns what was written."""
        state = attrs.evolve(state, updated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        data = json.dumps(state.to_dict(), indent=2).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            raise StateError(
                f"{self.path}: cannot write the session file ({e.strerror}). Fix: check that "
                f"{self.path.parent} is writable, or set ADAPTRIX_STATE_DIR."
            ) from None
        return state

    def update(self, change: Callable[[dict[str, float]], dict[str, float]]) -> SessionState:
        """Read, apply *change* to a copy of the active set, write: one step for ``load``/``switch``/``unload``."""
        current = self.read()
        return self.write(SessionState(change(dict(current.active))))


def _parse(raw: bytes) -> SessionState:
    """Validate the file's contents; any problem is a ``ValueError`` naming it."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"field 'version' is {data.get('version')!r}, expected {STATE_VERSION}")
    active = data.get("active")
    if not isinstance(active, dict):
        raise ValueError("field 'active' must be an object of adapter name -> weight")
    for name, weight in active.items():
        if not name or isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
            raise ValueError(f"field 'active' has a bad entry {name!r}: {weight!r} (expected a finite number)")
    updated = data.get("updated")
    if updated is not None and not isinstance(updated, str):
        raise ValueError("field 'updated' must be a string")
    return SessionState({str(k): float(v) for k, v in active.items()}, updated)
