"""
The runtime's value types and naming rules: adapter names, layer specs, fresh-adapter shapes, load reports.

Split out of ``runtime.py``; ``adaptrix_core.runtime`` re-exports every public name here.
"""

from __future__ import annotations

import itertools
import math
import re

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import InvalidNameError, SelectionError


if TYPE_CHECKING:
    import torch


LayerSpec = str | int | range | Sequence[int] | None
"""``None``/``"all"``, ``"middle"`` (the middle third), ``"4-8"``, ``"1,3,5"``, an int, a range or a list."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def check_adapter_name(name: str) -> str:
    """
    Adapter names are file and URL safe and cannot be confused with selection syntax.

    Raises:
        InvalidNameError: Empty, too long, ``..``, path separators, ``:`` / ``+`` / spaces, or ``base``.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name.lower() in {"base", "none", "auto"}:
        raise InvalidNameError(
            f"adapter name {name!r} is not allowed: use 1-128 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit, without '..'; 'base', 'none' and 'auto' are reserved."
        )
    return name


def resolve_layers(spec: LayerSpec, num_layers: int) -> tuple[int, ...]:
    """
    Turn a layer spec into sorted layer indices of a model with *num_layers* layers.

    Raises:
        SelectionError: An unknown spec or an index outside ``0..num_layers-1``.
    """
    if spec is None or spec == "all":
        return tuple(range(num_layers))
    if spec == "middle":
        start = num_layers // 3
        return tuple(range(start, max(start + 1, num_layers - start)))
    indices: list[int]
    if isinstance(spec, bool):
        raise SelectionError(f"layers={spec!r} is not a layer spec.")
    if isinstance(spec, int):
        indices = [spec]
    elif isinstance(spec, str):
        try:
            indices = []
            for part in spec.split(","):
                lo, sep, hi = part.strip().partition("-")
                indices.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
        except ValueError:
            raise SelectionError(
                f"layers={spec!r} is not a layer spec. Use 'all', 'middle', '4-8', '1,3,5', an int or a list."
            ) from None
    elif isinstance(spec, range | Sequence) and all(isinstance(i, int) and not isinstance(i, bool) for i in spec):
        indices = list(spec)
    else:
        raise SelectionError(f"layers={spec!r} is not a layer spec. Use 'all', 'middle', '4-8', '1,3,5', an int or a list.")
    bad = [i for i in indices if not 0 <= i < num_layers]
    if bad or not indices:
        raise SelectionError(f"layers={spec!r} selects {bad or 'no layers'}; this model has layers 0-{num_layers - 1}.")
    return tuple(sorted(set(indices)))


DEFAULT_ROLES = ("attn.q", "attn.v")
"""What a fresh adapter adapts by default where q, k and v are separate modules."""

FUSED_DEFAULT_ROLES = ("attn.qkv",)
"""The default where q, k and v are one fused module (GPT-2, GPT-NeoX, BLOOM, Falcon)."""


def default_roles(available: set[str] | frozenset[str]) -> tuple[str, ...]:
    """
    The roles a fresh adapter adapts when none are named: ``attn.q`` + ``attn.v``, or ``attn.qkv`` when fused.

    Raises:
        SelectionError: The model wraps neither (names the roles it does wrap).
    """
    if set(DEFAULT_ROLES) <= available:
        return DEFAULT_ROLES
    if set(FUSED_DEFAULT_ROLES) <= available:
        return FUSED_DEFAULT_ROLES
    raise SelectionError(
        f"this model wraps neither attn.q + attn.v nor attn.qkv, so there is no default; wrapped roles: "
        f"{sorted(available)}. Fix: name the roles to adapt (--targets ...)."
    )


def unknown_roles_message(unknown: set[str], available: set[str], architecture: str) -> str:
    """Name the roles that exist, and say when the wanted ones are fused into ``attn.qkv``."""
    message = f"roles {sorted(unknown)} are not wrapped in this {architecture} model; wrapped roles: {sorted(available)}."
    if unknown & {"attn.q", "attn.k", "attn.v"} and "attn.qkv" in available:
        message += " Here q, k and v are one fused module: use attn.qkv (e.g. --targets attn.qkv)."
    return message


@attrs.frozen
class LoraSpec:
    """
    A fresh adapter's shape, for :meth:`AdaptedModel.add_adapter` (training).

    Attributes:
        r: Rank.
        alpha: ``lora_alpha``; scaling is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        roles: Canonical roles to adapt (``adaptrix_core.ROLES``); empty: :func:`default_roles` of the model.
        layers: Which layers (see :data:`LayerSpec`).
        use_rslora: Rank-stabilised scaling.
    """

    r: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    alpha: float = 16.0
    roles: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    layers: Any = None
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r


@attrs.frozen
class ModuleReport:
    """How one base-model module receives an adapter."""

    module: str
    role: str | None
    layer: int | None
    r: int
    alpha: float
    scaling: float
    params: int
    source: str
    """The adapter's own name for the module (differs after a rename or a fused split)."""


@attrs.frozen
class LoadReport:
    """
    What loading an adapter did: the compatibility report shown by ``adaptrix inspect``.

    ``skipped`` lists adapter modules left out, with why (``layers=`` band,
    unmatched keys); ``renamed`` lists legacy names mapped onto today's modules.
    """

    name: str
    architecture: str
    modules: tuple[ModuleReport, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    renamed: tuple[tuple[str, tuple[str, ...]], ...] = ()
    warnings: tuple[str, ...] = ()
    params: int = 0
    bytes: int = 0
    base_model: str | None = None

    @property
    def rank(self) -> int:
        """The most common rank."""
        return Counter(m.r for m in self.modules).most_common(1)[0][0]

    @property
    def alpha(self) -> float:
        return Counter(m.alpha for m in self.modules).most_common(1)[0][0]

    def by_layer(self) -> dict[int | None, dict[str, str]]:
        """Layer -> role -> module name."""
        out: dict[int | None, dict[str, str]] = {}
        for m in self.modules:
            out.setdefault(m.layer, {})[m.role or m.module] = m.module
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (stored in the library's ``adaptrix.json``)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "base_model": self.base_model,
            "rank": self.rank,
            "alpha": self.alpha,
            "params": self.params,
            "bytes": self.bytes,
            "modules": [attrs.asdict(m) for m in self.modules],
            "layers": {str(k): v for k, v in sorted(self.by_layer().items(), key=lambda kv: (kv[0] is None, kv[0] or 0))},
            "skipped": [list(s) for s in self.skipped],
            "renamed": [[src, list(dst)] for src, dst in self.renamed],
            "warnings": list(self.warnings),
        }


@attrs.define
class _Resident:
    """One loaded adapter: where its tensors went and what to write back on save."""

    name: str
    report: LoadReport
    modules: dict[str, tuple[torch.Tensor, torch.Tensor, int, float]]
    """Model module name -> (A, B, r, alpha)."""
    config: dict[str, Any]
    """Base PEFT config fields (use_rslora, base model, task type) for :meth:`AdaptedModel.save_adapter`."""
    save_config: dict[str, Any] | None = None
    """An exact PEFT config for these modules when a short one is known (fresh adapters)."""
    serial: int = attrs.field(init=False, factory=lambda: next(_LOAD_SERIALS))
    """Tells this load from any other load of the same name (see :meth:`AdaptedModel.weights_key`)."""


_LOAD_SERIALS = itertools.count()


def _unique_bytes(tensors: Sequence[torch.Tensor]) -> int:
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return sum(seen.values())


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


def _layer_from_name(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None

