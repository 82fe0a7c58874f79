"""
``adaptrix export --for vllm DIR``: the library as LoRA directories a GPU fleet serves with vLLM.

vLLM serves PEFT LoRA directories (``vllm serve BASE --enable-lora --lora-modules
name=path ...``) but composes nothing at request time. So:

- each chosen library adapter is written as its own PEFT directory;
- each composition (``NAME=a:0.7+b:0.3``) is written as ONE adapter, the ``cat``
  merge of its inputs: the stacked factors give exactly the weighted sum of the
  deltas (rank = sum of ranks), so vLLM's answers equal Adaptrix's composed ones;
- every module of an adapter gets the same rank (zero padding, which changes
  nothing) and ``lora_alpha == r``: no ``rank_pattern``, which LoRA servers
  read inconsistently.

The whole tree is built in a temp directory and renamed into place, with a
``vllm.json`` manifest and ``serve.sh`` holding the command line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import AdapterExistsError, AdaptrixError


if TYPE_CHECKING:
    from .library import Library

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
"""Values vLLM accepts for ``--max-lora-rank``."""
MANIFEST = "vllm.json"
SCRIPT = "serve.sh"


class ExportError(AdaptrixError, ValueError):
    """A vLLM export request is invalid (bad composition, rank beyond what vLLM serves)."""


@attrs.frozen
class ExportedAdapter:
    """One directory of the export: its name, path, rank and (for a composition) its inputs."""

    name: str
    path: Path
    rank: int
    composition: Mapping[str, float] | None = None


@attrs.frozen
class VllmExport:
    """What ``export_for_vllm`` wrote."""

    root: Path
    adapters: tuple[ExportedAdapter, ...]
    base_model: str

    @property
    def max_lora_rank(self) -> int:
        rank = max((a.rank for a in self.adapters), default=1)
        return next(r for r in VLLM_RANKS if r >= rank)

    def command(self) -> list[str]:
        """The ``vllm serve`` command line that serves every exported adapter by its name."""
        return [
            "vllm", "serve", self.base_model, "--enable-lora", "--max-lora-rank", str(self.max_lora_rank),
            "--max-loras", str(min(len(self.adapters), 8) or 1),
            "--lora-modules", *(f"{a.name}={a.path}" for a in self.adapters),
        ]


def parse_composition(text: str) -> tuple[str, dict[str, float]]:
    """``"mix=a:0.7+b:0.3"`` -> ``("mix", {"a": 0.7, "b": 0.3})``."""
    from .runtime import check_adapter_name
    from .selection import parse_selection

    name, sep, selection = text.partition("=")
    if not sep or not name.strip() or not selection.strip():
        raise ExportError(f"--compose {text!r}: expected NAME=a:0.7+b:0.3 (a new name, then a selection).")
    weights = parse_selection(selection)
    if not weights:
        raise ExportError(f"--compose {text!r}: a composition needs at least one adapter, not the base model.")
    return check_adapter_name(name.strip()), weights


def export_for_vllm(
    dest: str | os.PathLike[str],
    names: Sequence[str] | None = None,
    compositions: Mapping[str, Mapping[str, float]] | None = None,
    *,
    library: Library | None = None,
    base_model: str | None = None,
    overwrite: bool = False,
) -> VllmExport:
    """
    Write *names* (default: every library adapter, unless only compositions are asked) and *compositions*.

    Raises:
        AdapterNotFoundError: A name (or a composition's input) is not in the library.
        AdapterExistsError: *dest* exists and is not empty, and *overwrite* is off.
        ExportError: Two outputs share a name, or an adapter's rank exceeds what vLLM serves.
    """
    from .library import Library
    from .peft_format import replace_dir

    library = library if library is not None else Library()
    compositions = dict(compositions or {})
    chosen = list(names) if names else ([] if compositions else library.names())
    clash = set(chosen) & set(compositions)
    if clash or len(set(chosen)) != len(chosen):
        raise ExportError(f"output names must be unique; {sorted(clash) or chosen} appear twice.")
    for name in [*chosen, *(n for c in compositions.values() for n in c)]:
        library.get(name)  # AdapterNotFoundError lists the known names, before anything is written
    root = Path(dest).expanduser().resolve()
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and not overwrite)):
        raise AdapterExistsError(f"{root}: exists and is not an empty directory. Fix: choose a new one, or pass --force.")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        written = [_write_one(library, name, {name: 1.0}, tmp / name, single=True) for name in chosen]
        written += [_write_one(library, name, dict(w), tmp / name, single=False) for name, w in compositions.items()]
        exported = VllmExport(
            root, tuple(attrs.evolve(a, path=root / a.name) for a in written),
            base_model or _base_model(library, [*chosen, *(n for c in compositions.values() for n in c)]),
        )
        _write_manifest(tmp, exported)
        if root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        replace_dir(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return exported


def _write_one(library: Library, name: str, weights: dict[str, float], out: Path, *, single: bool) -> ExportedAdapter:
    """One adapter directory: the ``cat`` merge of its inputs (a single adapter at weight 1 is itself, re-laid)."""
    from .merging import merge_adapters
    from .peft_format import write_adapter

    merged = merge_adapters([library.path(n) for n in weights], list(weights.values()), "cat")
    if not merged.exact:
        raise ExportError(f"{name}: the concatenated adapter is off by {merged.max_error:.3g}; refusing an inexact export.")
    modules, rank = _uniform_rank(merged.modules)
    if rank > VLLM_RANKS[-1]:
        raise ExportError(
            f"{name}: rank {rank} exceeds the largest LoRA rank vLLM serves ({VLLM_RANKS[-1]}). "
            "Fix: compose fewer adapters, or merge with `adaptrix merge --method svd --rank R` first (approximate)."
        )
    config = {**merged.config, "r": rank, "lora_alpha": rank}
    config.pop("rank_pattern", None)
    config.pop("alpha_pattern", None)
    write_adapter(out, config, modules)
    return ExportedAdapter(name, out, rank, None if single else weights)


def _uniform_rank(modules: Mapping[str, tuple[Any, Any]]) -> tuple[dict[str, tuple[Any, Any]], int]:
    """Zero-pad every module to the largest rank: ``B A`` is unchanged, and one ``r`` fits all."""
    import torch

    rank = max(int(a.shape[0]) for a, _ in modules.values())
    padded = {}
    for module, (a, b) in modules.items():
        extra = rank - int(a.shape[0])
        if extra:
            a = torch.cat([a, a.new_zeros(extra, a.shape[1])])
            b = torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1)
        padded[module] = (a, b)
    return padded, rank


def _base_model(library: Library, names: Sequence[str]) -> str:
    found = {library.get(n).base_model for n in names} - {None}
    if len(found) == 1:
        return str(next(iter(found)))
    from .config import load_config

    return load_config().base_model


def _write_manifest(tmp: Path, exported: VllmExport) -> None:
    manifest = {
        "base_model": exported.base_model,
        "max_lora_rank": exported.max_lora_rank,
        "adapters": [
            {"name": a.name, "path": a.name, "rank": a.rank, "composition": dict(a.composition) if a.composition else None}
            for a in exported.adapters
        ],
        "command": exported.command(),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    import shlex

    (tmp / SCRIPT).write_text("#!/bin/sh\n# Serve these adapters with vLLM (GPU).\nexec " + shlex.join(exported.command()) + "\n",
                              encoding="utf-8")
    (tmp / SCRIPT).chmod(0o755)


__all__ = ["ExportError", "ExportedAdapter", "VllmExport", "export_for_vllm", "parse_composition"]
