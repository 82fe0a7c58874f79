"""
The adapter library: one PEFT directory per adapter, plus an ``adaptrix.json`` of metadata.

Layout (``root`` defaults to ``load_config().library_dir``)::

    root/
      pirate/
        adapter_config.json
        adapter_model.safetensors
        adaptrix.json            # name, description, capabilities, domain, ..., sha256, report
      .install-json-1a2b3c4d/    # an install in progress: dot-prefixed, never listed

Installs build a complete directory under a dot-prefixed temp name inside
``root`` and swap it into place with one exchange rename (see
:mod:`adaptrix_core.library_fs` for the protocol, the per-name write lock and
the repair of crash debris when a library is opened), so a listing shows the
old adapter or the new one, never a half-installed one and never none.
Entries that are not complete adapters are listed by :meth:`Library.broken`
with the reason. Loading verifies the weights against the ``sha256`` recorded
at install. Adapters shipped in the repository's ``adapters/`` folder are
listed alongside; a user adapter may not reuse a shipped adapter's name.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import shutil

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from . import library_fs
from .atomic import fault_point, make_dir
from .exceptions import AdapterError, AdapterExistsError, AdapterFormatError, AdapterNotFoundError, InvalidNameError
from .peft_targets import short
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


@attrs.frozen
class BrokenAdapter:
    """A library entry that is not a complete adapter: listed with the reason, removable, never loaded."""

    name: str
    path: Path
    reason: str
    shipped: bool = False


_VERIFIED: dict[str, tuple[int, ...]] = {}
"""Weights path -> the stat signature it had when its sha256 last matched (per process)."""


def _metadata_or_reason(directory: Path) -> tuple[dict[str, Any] | None, str]:
    """``adaptrix.json`` as a dict, or ``None`` and why not (the entry is then broken)."""
    from .peft_format import not_a_regular_file

    path = directory / METADATA_NAME
    problem = not_a_regular_file(path)
    if problem is not None:
        return None, f"{METADATA_NAME} is {problem}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        return None, f"{METADATA_NAME} is unreadable or not valid JSON ({short(str(e), 80)[1:-1]})"
    if not isinstance(data, dict):
        return None, f"{METADATA_NAME} holds a {type(data).__name__}, not a JSON object"
    return data, ""


def _looks_like_an_adapter(entry: Path) -> bool:
    return entry.is_dir() and any(os.path.lexists(entry / n) for n in (CONFIG_NAME, METADATA_NAME, *WEIGHTS_NAMES))


def _problem(entry: Path) -> str | None:
    """Why *entry* is not a complete adapter directory, or ``None`` if it is one."""
    from .peft_format import not_a_regular_file

    if not entry.is_dir():
        kind = not_a_regular_file(entry)
        return f"not a directory ({kind or 'a regular file'})"
    config = not_a_regular_file(entry / CONFIG_NAME)
    if config is not None:
        return f"{CONFIG_NAME} is {config}"
    if weights_file(entry) is None:
        return f"{WEIGHTS_NAMES[0]} is {not_a_regular_file(entry / WEIGHTS_NAMES[0])}"
    return None


def _read_entry(entry: Path, *, shipped: bool) -> AdapterInfo | BrokenAdapter | None:
    """One library entry as an adapter, or why it is broken; ``None`` for what is not an entry at all."""
    if entry.name.startswith("."):
        return None  # installs in progress, removals and locks are dot-prefixed
    if shipped and not _looks_like_an_adapter(entry):
        return None  # the shipped folder also holds a README and datasets
    reason = _problem(entry)
    meta = None
    if reason is None:
        meta, reason = _metadata_or_reason(entry)
    if meta is None:
        return BrokenAdapter(entry.name, entry, reason, shipped)
    return _info(entry.name, entry, meta, shipped=shipped)


def _metadata_at(directory: Path) -> dict[str, Any]:
    meta, reason = _metadata_or_reason(directory)
    if meta is None:  # removed or corrupted between the listing and now
        raise AdapterFormatError(f"{directory / METADATA_NAME}: {reason}.")
    return meta


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
        self.recovered = tuple(library_fs.recover(self.root))
        """Crash debris this open removed or rolled back (see :func:`adaptrix_core.library_fs.recover`)."""

    def __repr__(self) -> str:
        return f"<Library root={str(self.root)!r} shipped={str(self.shipped_dir)!r}>"

    # reading -----------------------------------------------------------------

    def _scan_all(self, folder: Path | None, *, shipped: bool) -> tuple[dict[str, AdapterInfo], dict[str, BrokenAdapter]]:
        found: dict[str, AdapterInfo] = {}
        broken: dict[str, BrokenAdapter] = {}
        if folder is None or not folder.is_dir():
            return found, broken
        for entry in folder.iterdir():
            read = _read_entry(entry, shipped=shipped)
            if isinstance(read, AdapterInfo):
                found[entry.name] = read
            elif read is not None:
                broken[entry.name] = read
        return found, broken

    def _scan(self, folder: Path | None, *, shipped: bool) -> dict[str, AdapterInfo]:
        return self._scan_all(folder, shipped=shipped)[0]

    def _all(self) -> dict[str, AdapterInfo]:
        found = self._scan(self.root, shipped=False)
        found.update(self._scan(self.shipped_dir, shipped=True))  # shipped names win; installs refuse them anyway
        return found

    def _lookup(self, name: object) -> AdapterInfo | None:
        """
        The complete adapter *name*, reading only its own entry (a load must not cost a scan of the
        library); ``None`` where :meth:`_all` would not list it, or for a name outside the adapter-name rule
        (no separators, no leading dot), which only a scan may resolve.
        """
        try:
            check_name(name)  # type: ignore[arg-type]  # anything not a str fails it too
        except InvalidNameError:
            return None
        for folder, shipped in ((self.shipped_dir, True), (self.root, False)):  # shipped names win, as in _all
            if folder is None:
                continue
            entry = folder / name
            if os.path.lexists(entry) and name in os.listdir(folder):  # listed under exactly this name
                read = _read_entry(entry, shipped=shipped)
                if isinstance(read, AdapterInfo):
                    return read
        return None

    def broken(self) -> list[BrokenAdapter]:
        """Entries that are not complete adapters (missing files, corrupt ``adaptrix.json``), sorted by name."""
        found, broken = self._scan_all(self.root, shipped=False)
        shipped_found, shipped_broken = self._scan_all(self.shipped_dir, shipped=True)
        for name in shipped_found:
            broken.pop(name, None)
        broken.update(shipped_broken)
        return sorted(broken.values(), key=lambda b: b.name)

    def _broken_entry(self, name: str) -> BrokenAdapter | None:
        return next((b for b in self.broken() if b.name == name), None)

    def list(self) -> list[AdapterInfo]:
        """Every complete adapter, user and shipped, sorted by name."""
        return sorted(self._all().values(), key=lambda info: info.name)

    def names(self) -> list[str]:
        return [info.name for info in self.list()]

    def __contains__(self, name: object) -> bool:
        return self._lookup(name) is not None

    def get(self, name: str) -> AdapterInfo:
        """
        The adapter called *name*.

        Raises:
            AdapterNotFoundError: No such adapter; the message lists the known names.
        """
        info = self._lookup(name)
        if info is not None:
            return info
        found = self._all()
        try:
            return found[name]
        except KeyError:
            broken = self._broken_entry(name) if isinstance(name, str) else None
            if broken is not None:
                raise AdapterFormatError(
                    f"adapter {name!r} ({broken.path}) is broken: {broken.reason}. "
                    + ("Fix: restore it in the shipped adapters folder." if broken.shipped
                       else f"Fix: `adaptrix remove {name}`, then convert it again.")
                ) from None
            known = ", ".join(sorted(found)) or "none"
            raise AdapterNotFoundError(
                f"no adapter named {name!r} in the library ({self.root}) or the shipped adapters. Known: {known}. "
                "Fix: `adaptrix list-adapters`, or `adaptrix convert SOURCE --name NAME` to add it."
            ) from None

    def path(self, name: str) -> Path:
        """The PEFT directory of adapter *name*, with its weights verified (see :meth:`verify`)."""
        return self.verify(name).path  # type: ignore[return-value]  # every listed adapter lives on disk

    def verify(self, name: str) -> AdapterInfo:
        """
        Check the weights of adapter *name* against the ``sha256`` recorded when it was installed.

        The hash is computed on the first check in a process and again whenever the file's size,
        mtime, ctime or inode changed; otherwise this is one ``stat``.

        Raises:
            AdapterNotFoundError: No such adapter.
            AdapterFormatError: The weights changed since install (or the entry is broken).
        """
        info = self.get(name)
        assert info.path is not None
        expected = _metadata_at(info.path).get("sha256")
        weights = weights_file(info.path)
        if not isinstance(expected, str) or weights is None:
            return info  # installs before sha256 was recorded: nothing to compare with
        st = weights.stat()
        signature = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev)
        if _VERIFIED.get(str(weights)) == signature:
            return info
        actual = sha256_of(weights)
        if actual != expected:
            raise AdapterFormatError(
                f"{weights}: changed since adapter {name!r} was installed (sha256 {actual[:12]}..., "
                f"recorded {expected[:12]}...); refusing to load it. "
                f"Fix: convert it again with --force, or `adaptrix remove {name}`."
            )
        _VERIFIED[str(weights)] = signature
        return info

    def metadata(self, name: str) -> dict[str, Any]:
        """The adapter's ``adaptrix.json``."""
        directory = self.get(name).path
        assert directory is not None
        return _metadata_at(directory)

    # writing -----------------------------------------------------------------

    def _check_root(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise AdapterError(
                f"{self.root}: the library directory is a file, not a directory. "
                "Fix: move that file away, or set library_dir (ADAPTRIX_LIBRARY_DIR) to a directory."
            )

    def _check_new_name(self, name: str, *, overwrite: bool) -> None:
        check_name(name)
        self._check_root()
        shipped = self._scan(self.shipped_dir, shipped=True)
        if name in shipped:
            raise AdapterExistsError(
                f"{name!r} is the name of a shipped adapter ({shipped[name].path}); user adapters cannot shadow it. "
                "Fix: choose another --name."
            )
        if not overwrite and os.path.lexists(self.root / name):
            broken = self._broken_entry(name)
            raise AdapterExistsError(
                f"an adapter named {name!r} is already in the library ({self.root / name})"
                + (f", broken: {broken.reason}" if broken is not None else "")
                + ". Fix: choose another --name, or pass --force to replace it."
            )

    @contextlib.contextmanager
    def reserve(self, name: str, *, overwrite: bool = False) -> Iterator[None]:
        """
        Hold the write lock of *name* for a whole conversion, after :meth:`check_installable`.

        A second writer of the same name, in any process, gets ``AdapterExistsError`` at once.
        """
        self.check_installable(name, overwrite=overwrite)
        self._ensure_root()
        with library_fs.name_lock(self.root, name):
            self.check_installable(name, overwrite=overwrite)
            yield

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A scratch directory inside the library (deleted afterwards, or on the next open after a crash)."""
        self._ensure_root()
        path = make_dir(self.root, f".convert-{name}-")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def _ensure_root(self) -> None:
        self._check_root()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise AdapterError(f"{self.root}: cannot create the library directory ({e.strerror or e}).") from None

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
        try:
            text = json.dumps(meta, indent=2, default=str, allow_nan=False) + "\n"
        except ValueError:
            raise AdapterError(f"the metadata of {name!r} holds a NaN or infinite number; refusing to store it.") from None
        self._ensure_root()
        with library_fs.name_lock(self.root, name):
            self._check_new_name(name, overwrite=overwrite)  # again, now that no other writer can interleave
            try:
                tmp = make_dir(self.root, f".install-{name}-")
                try:
                    shutil.copyfile(src / CONFIG_NAME, tmp / CONFIG_NAME)
                    shutil.copyfile(weights, tmp / weights.name)
                    (tmp / METADATA_NAME).write_text(text, encoding="utf-8")
                    fault_point("install:staged")
                    library_fs.swap_in(self.root, tmp, name)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
            except OSError as e:
                raise AdapterError(f"{self.root}: could not install {name!r} ({e.strerror or e}).") from None
        return self.get(name)

    def update_metadata(self, name: str, **fields: Any) -> AdapterInfo:
        """Change metadata fields of a user adapter (atomically rewrites ``adaptrix.json``)."""
        info = self.get(name)
        if info.shipped:
            raise AdapterError(f"{name!r} is a shipped adapter; its metadata is read-only.")
        unknown = set(fields) - set(_KNOWN_FIELDS)
        if unknown:
            raise AdapterError(f"unknown adaptrix.json field(s) {sorted(unknown)}; known: {', '.join(_KNOWN_FIELDS)}.")
        with library_fs.name_lock(self.root, name):
            meta = {**self.metadata(name), **fields}
            path = self.root / name / METADATA_NAME
            tmp = self.root / f".meta-{name}-{os.urandom(4).hex()}"
            try:
                tmp.write_text(json.dumps(meta, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
                os.replace(tmp, path)
            finally:
                library_fs.delete(tmp)
        return self.get(name)

    def remove(self, name: str) -> None:
        """
        Delete user adapter *name* (renamed aside first, so it vanishes from listings at once).

        A broken entry (see :meth:`broken`) is removed too.

        Raises:
            AdapterNotFoundError: No such adapter.
            AdapterError: It is a shipped adapter (remove it from ``adapters/`` instead).
        """
        check_name(name)
        shipped = {**self._scan(self.shipped_dir, shipped=True), **self._scan_all(self.shipped_dir, shipped=True)[1]}
        if name in shipped:
            raise AdapterError(
                f"{name!r} is a shipped adapter ({shipped[name].path}); only your own adapters can be removed."
            )
        if not os.path.lexists(self.root / name):
            self.get(name)  # AdapterNotFoundError, listing the known names
        with library_fs.name_lock(self.root, name):
            try:
                library_fs.remove(self.root, name)
            except FileNotFoundError:
                self.get(name)  # removed by someone else meanwhile
            except OSError as e:
                raise AdapterError(f"{self.root / name}: could not remove it ({e.strerror or e}).") from None

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
        tmp = make_dir(dest.parent, f".{dest.name}.")
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

