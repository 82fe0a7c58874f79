"""
The adapter library: one PEFT directory per adapter, plus an ``adaptrix.json`` of metadata.

Layout (``root`` defaults to ``load_config().library_dir``)::

    root/
      pirate/
        adapter_config.json
        adapter_model.safetensors
        adaptrix.json            # name, description, capabilities, domain, ..., sha256, report
      .install-json-k2f9/        # an install in progress: dot-prefixed, never listed

Installs build a complete directory under a dot-prefixed temp name inside
``root`` and ``os.replace`` it into place, so a crash leaves either the old
state or the new one, and a listing never shows a half-installed adapter.
Adapters shipped in the repository's ``adapters/`` folder are listed
alongside; a user adapter may not reuse a shipped adapter's name.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tempfile

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .exceptions import AdapterError, AdapterExistsError, AdapterFormatError, AdapterNotFoundError
from .types import AdapterInfo


METADATA_NAME = "adaptrix.json"
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
SHIPPED_ENV = "ADAPTRIX_SHIPPED_ADAPTERS"
"""Environment variable naming the shipped-adapters folder; set it to ``""`` to list none."""

_KNOWN_FIELDS = (
    "name", "description", "capabilities", "domain", "examples", "counter_examples", "source", "base_model",
    "created", "sha256", "report", "lineage", "extra",
)


def default_shipped_dir() -> Path | None:
    """The repository's ``adapters/`` folder, or ``$ADAPTRIX_SHIPPED_ADAPTERS`` (``""`` = none)."""
    env = os.environ.get(SHIPPED_ENV)
    if env is not None:
        return Path(env).expanduser() if env.strip() else None
    import adaptrix_core

    return Path(adaptrix_core.__file__).resolve().parent.parent / "adapters"


def check_name(name: str) -> str:
    """The runtime's adapter-name rule (no separators, no ``..``); raises ``InvalidNameError``."""
    from .runtime import check_adapter_name

    return check_adapter_name(name)


def weights_file(directory: Path) -> Path | None:
    """The adapter weights file in *directory* (safetensors preferred), or ``None``."""
    for name in WEIGHTS_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_metadata(directory: Path) -> dict[str, Any] | None:
    """``adaptrix.json`` as a dict, or ``None`` if it is missing or unreadable (the entry is then skipped)."""
    try:
        data = json.loads((directory / METADATA_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _str_tuple(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(str(v) for v in value)
    return ()


def _info(name: str, directory: Path, meta: Mapping[str, Any], *, shipped: bool) -> AdapterInfo:
    base = meta.get("base_model")
    return AdapterInfo(
        name=name,
        description=str(meta.get("description") or ""),
        capabilities=_str_tuple(meta.get("capabilities")),
        domain=str(meta.get("domain") or ""),
        examples=_str_tuple(meta.get("examples")),
        counter_examples=_str_tuple(meta.get("counter_examples")),
        base_model=str(base) if base else None,
        path=directory,
        shipped=shipped,
    )


class Library:
    """
    The user's adapters (under *root*) and the shipped ones (under *shipped_dir*), by name.

    Args:
        root: Library directory; default ``load_config().library_dir``. Created on first install.
        shipped_dir:
            Folder of shipped adapters; default :func:`default_shipped_dir`.
            A folder that does not exist simply contributes nothing.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, *, shipped_dir: str | os.PathLike[str] | None = None) -> None:
        if root is None:
            from .config import load_config

            root = load_config().library_dir
        self.root = Path(root).expanduser()
        self.shipped_dir = Path(shipped_dir).expanduser() if shipped_dir is not None else default_shipped_dir()

    def __repr__(self) -> str:
        return f"<Library root={str(self.root)!r} shipped={str(self.shipped_dir)!r}>"

    # reading -----------------------------------------------------------------

    def _scan(self, folder: Path | None, *, shipped: bool) -> dict[str, AdapterInfo]:
        found: dict[str, AdapterInfo] = {}
        if folder is None or not folder.is_dir():
            return found
        for entry in folder.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue  # installs in progress and removals are dot-prefixed
            if not (entry / CONFIG_NAME).is_file() or weights_file(entry) is None:
                continue
            meta = _read_metadata(entry)
            if meta is None:
                continue
            found[entry.name] = _info(entry.name, entry, meta, shipped=shipped)
        return found

    def _all(self) -> dict[str, AdapterInfo]:
        found = self._scan(self.root, shipped=False)
        found.update(self._scan(self.shipped_dir, shipped=True))  # shipped names win; installs refuse them anyway
        return found

    def list(self) -> list[AdapterInfo]:
        """Every complete adapter, user and shipped, sorted by name."""
        return sorted(self._all().values(), key=lambda info: info.name)

    def names(self) -> list[str]:
        return [info.name for info in self.list()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._all()

    def get(self, name: str) -> AdapterInfo:
        """
        The adapter called *name*.

        Raises:
            AdapterNotFoundError: No such adapter; the message lists the known names.
        """
        found = self._all()
        try:
            return found[name]
        except KeyError:
            known = ", ".join(sorted(found)) or "none"
            raise AdapterNotFoundError(
                f"no adapter named {name!r} in the library ({self.root}) or the shipped adapters. Known: {known}. "
                "Fix: `adaptrix list-adapters`, or `adaptrix convert SOURCE --name NAME` to add it."
            ) from None

    def path(self, name: str) -> Path:
        """The PEFT directory of adapter *name*."""
        path = self.get(name).path
        assert path is not None  # every listed adapter lives on disk
        return path

    def metadata(self, name: str) -> dict[str, Any]:
        """The adapter's ``adaptrix.json``."""
        meta = _read_metadata(self.path(name))
        if meta is None:  # removed or corrupted between the listing and now
            raise AdapterFormatError(f"{self.path(name) / METADATA_NAME}: missing or not a JSON object.")
        return meta

    # writing -----------------------------------------------------------------

    def _check_new_name(self, name: str, *, overwrite: bool) -> None:
        check_name(name)
        shipped = self._scan(self.shipped_dir, shipped=True)
        if name in shipped:
            raise AdapterExistsError(
                f"{name!r} is the name of a shipped adapter ({shipped[name].path}); user adapters cannot shadow it. "
                "Fix: choose another --name."
            )
        if not overwrite and (self.root / name).exists():
            raise AdapterExistsError(
                f"an adapter named {name!r} is already in the library ({self.root / name}). "
                "Fix: choose another --name, or pass --force to replace it."
            )

    def check_installable(self, name: str, *, overwrite: bool = False) -> None:
        """
        Raise now what :meth:`install` would raise for *name* (bad name, duplicate), before any slow work.

        Raises:
            InvalidNameError: *name* is empty, too long, or has path separators or ``..``.
            AdapterExistsError: The name is taken (and *overwrite* is off), or is a shipped adapter's.
        """
        self._check_new_name(name, overwrite=overwrite)

    def install(
        self,
        name: str,
        peft_dir: str | os.PathLike[str],
        *,
        description: str = "",
        capabilities: Iterable[str] = (),
        domain: str = "",
        examples: Iterable[str] = (),
        counter_examples: Iterable[str] = (),
        source: str = "",
        base_model: str | None = None,
        report: Mapping[str, Any] | None = None,
        lineage: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> AdapterInfo:
        """
        Copy the PEFT directory *peft_dir* into the library as *name*, with metadata, atomically.

        Only ``adapter_config.json`` and the weights file are copied. Validation
        of the adapter itself is :mod:`adaptrix_core.conversion`'s job; this
        checks the name and that the two files are there.

        Raises:
            InvalidNameError, AdapterExistsError: See :meth:`check_installable`.
            AdapterFormatError: *peft_dir* lacks ``adapter_config.json`` or the weights.
        """
        self._check_new_name(name, overwrite=overwrite)
        src = Path(peft_dir)
        weights = weights_file(src)
        if not (src / CONFIG_NAME).is_file() or weights is None:
            raise AdapterFormatError(
                f"{src}: a PEFT adapter directory needs {CONFIG_NAME} and {WEIGHTS_NAMES[0]} (or {WEIGHTS_NAMES[1]})."
            )
        meta: dict[str, Any] = {
            "name": name,
            "description": description,
            "capabilities": list(capabilities),
            "domain": domain,
            "examples": list(examples),
            "source": source,
            "base_model": base_model,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "sha256": sha256_of(weights),
            "report": dict(report) if report is not None else None,
        }
        counter_examples = list(counter_examples)
        if counter_examples:
            meta["counter_examples"] = counter_examples
        if lineage is not None:
            meta["lineage"] = dict(lineage)
        if extra:
            meta["extra"] = dict(extra)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".install-{name}-", dir=self.root))
        try:
            shutil.copyfile(src / CONFIG_NAME, tmp / CONFIG_NAME)
            shutil.copyfile(weights, tmp / weights.name)
            (tmp / METADATA_NAME).write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
            from .peft_format import replace_dir

            dest = self.root / name
            if dest.exists() and not overwrite:  # lost a race with another install
                raise AdapterExistsError(f"an adapter named {name!r} appeared in {self.root} during the install.")
            replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(name)

    def update_metadata(self, name: str, **fields: Any) -> AdapterInfo:
        """Change metadata fields of a user adapter (atomically rewrites ``adaptrix.json``)."""
        info = self.get(name)
        if info.shipped:
            raise AdapterError(f"{name!r} is a shipped adapter; its metadata is read-only.")
        unknown = set(fields) - set(_KNOWN_FIELDS)
        if unknown:
            raise AdapterError(f"unknown adaptrix.json field(s) {sorted(unknown)}; known: {', '.join(_KNOWN_FIELDS)}.")
        meta = {**self.metadata(name), **fields}
        path = self.path(name) / METADATA_NAME
        tmp = path.with_name(f".{METADATA_NAME}.{os.getpid()}")
        tmp.write_text(json.dumps(meta, indent=2, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return self.get(name)

    def remove(self, name: str) -> None:
        """
        Delete user adapter *name* (renamed aside first, so it vanishes from listings at once).

        Raises:
            AdapterNotFoundError: No such adapter.
            AdapterError: It is a shipped adapter (remove it from ``adapters/`` instead).
        """
        info = self.get(name)
        if info.shipped:
            raise AdapterError(
                f"{name!r} is a shipped adapter ({info.path}); only your own adapters can be removed."
            )
        dest = self.root / name
        trash = self.root / f".remove-{name}-{os.getpid()}"
        os.replace(dest, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def export(self, name: str, dest_dir: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
        """
        Write adapter *name* as a plain PEFT directory at *dest_dir* (config + weights, no ``adaptrix.json``).

        The result loads with ``PeftModel.from_pretrained``; the write is atomic.

        Raises:
            AdapterNotFoundError: No such adapter.
            AdapterExistsError: *dest_dir* exists and is not empty (and *overwrite* is off).
        """
        src = self.path(name)
        dest = Path(dest_dir).expanduser()
        if dest.exists() and not dest.is_dir():
            raise AdapterExistsError(f"{dest}: exists and is a file. Fix: choose a directory path.")
        if dest.is_dir() and any(dest.iterdir()) and not overwrite:
            raise AdapterExistsError(f"{dest}: exists and is not empty. Fix: choose a new directory, or pass overwrite.")
        weights = weights_file(src)
        assert weights is not None  # listed adapters have weights
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            shutil.copyfile(src / CONFIG_NAME, tmp / CONFIG_NAME)
            shutil.copyfile(weights, tmp / weights.name)
            if dest.is_dir() and not any(dest.iterdir()):
                dest.rmdir()
            from .peft_format import replace_dir

            replace_dir(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return dest

