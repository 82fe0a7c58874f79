"""
Core's adapter sources: ``file`` (a local PEFT directory) and ``hf`` (a Hugging Face hub repo).

References a user may type, and who claims them:

- ``./dir``, ``../dir``, ``/abs/dir``, ``~/dir``, or any existing directory: ``file``
- ``file://dir``: ``file``, explicitly
- ``user/repo`` (not an existing local path): ``hf``
- ``hf://user/repo`` or ``hf://user/repo@revision``: ``hf``, explicitly

Both are registered through the plugin manager like an installed plugin, so a
plugin can add ``s3://`` or ``civitai://`` the same way.
"""

from __future__ import annotations

import os
import re

from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from ..exceptions import AdapterFormatError, AdapterNotFoundError
from ..hookspecs import hookimpl
from ..types import AdapterSource


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
"""What the hub source downloads: the adapter and nothing else (no checkpoints, no optimizer state)."""

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*(@[A-Za-z0-9_.\-/]+)?$")
_PATH_START = ("./", "../", "/", "~", ".\\", "..\\")


class FileSource:
    """A PEFT directory on local disk; the path is used in place, never copied here."""

    scheme: ClassVar[str] = "file"

    def claims(self, ref: str) -> bool:
        """Paths that look like paths (``./x``, ``/x``, ``~/x``), and any existing directory."""
        return ref.startswith(_PATH_START) or Path(ref).expanduser().is_dir()

    def fetch(self, ref: str) -> Path:
        path = Path(ref).expanduser()
        if not path.exists():
            raise AdapterNotFoundError(f"{path}: no such directory. Fix: check the path of the adapter directory.")
        if not path.is_dir():
            raise AdapterFormatError(
                f"{path}: is a file, not a directory. Fix: pass the directory that holds adapter_config.json."
            )
        return path


def parse_repo_ref(ref: str) -> tuple[str, str | None]:
    """``user/repo@rev`` -> ``("user/repo", "rev")``; raises for anything that is not a repo id."""
    if not _REPO_ID.match(ref):
        raise AdapterNotFoundError(
            f"{ref!r} is not a Hugging Face repo id. Expected 'user/repo' or 'user/repo@revision'."
        )
    repo, _, revision = ref.partition("@")
    return repo, revision or None


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


class HubSource:
    """
    A LoRA adapter repo on the Hugging Face hub, fetched into HF's own cache.

    Only the adapter files are downloaded. With ``HF_HUB_OFFLINE=1`` (read at
    fetch time, not import time) only the local cache is consulted, and a miss
    is an :class:`~adaptrix_core.exceptions.AdapterNotFoundError` that says so.
    """

    scheme: ClassVar[str] = "hf"

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.cache_dir = cache_dir

    def claims(self, ref: str) -> bool:
        """``user/repo[@rev]`` that is not an existing local path."""
        return bool(_REPO_ID.match(ref)) and not Path(ref).expanduser().exists()

    def fetch(self, ref: str) -> Path:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        repo, revision = parse_repo_ref(ref)
        offline = _env_true("HF_HUB_OFFLINE") or bool(constants.HF_HUB_OFFLINE)
        cache_dir = self.cache_dir or os.environ.get("HF_HUB_CACHE") or None
        where = f"hf://{ref}"
        try:
            path = Path(
                snapshot_download(
                    repo,
                    revision=revision,
                    cache_dir=cache_dir,
                    allow_patterns=list(ADAPTER_FILES),
                    local_files_only=offline,
                    endpoint=os.environ.get("HF_ENDPOINT") or None,  # read now: huggingface_hub reads it at import
                )
            )
        except LocalEntryNotFoundError:
            if offline:
                raise AdapterNotFoundError(
                    f"{where}: not in the local Hugging Face cache, and downloads are off (HF_HUB_OFFLINE=1). "
                    "Fix: unset HF_HUB_OFFLINE to download it, or convert a local directory instead."
                ) from None
            raise AdapterNotFoundError(
                f"{where}: the hub could not be reached and the repo is not in the local cache. "
                "Fix: check your network connection, or set HF_TOKEN for a private repo."
            ) from None
        except RevisionNotFoundError:
            raise AdapterNotFoundError(f"{where}: revision {revision!r} does not exist in {repo!r}.") from None
        except RepositoryNotFoundError:
            raise AdapterNotFoundError(
                f"{where}: no such repo on the hub (or it is private: set HF_TOKEN). Fix: check the repo id."
            ) from None
        except (EntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise AdapterNotFoundError(f"{where}: download failed ({type(e).__name__}: {first}).") from None
        if not (path / "adapter_config.json").is_file():
            raise AdapterFormatError(
                f"{where}: the repo has no adapter_config.json at its root, so it is not a PEFT adapter repo "
                f"(is it a full model?). Looked in {path}."
            )
        return path


@hookimpl
def register_adapter_sources() -> Iterable[AdapterSource]:
    return [FileSource(), HubSource()]
