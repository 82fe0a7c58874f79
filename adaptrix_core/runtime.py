"""
The low-level runtime: many LoRA adapters on one frozen transformers model.

``attach(model)`` wraps the architecture's target modules once (through an
injection strategy); afterwards adapters are loaded, selected, merged and
unloaded without changing module structure::

    am = attach(model)
    am.load_adapter("a", "path/to/peft_dir")
    am.set_active({"a": 0.7, "b": 0.3})
    with am.using("b"):                       # context-local: threads and tasks never mix
        logits = am.model(input_ids).logits
    am.forward(input_ids, adapters=["a", "b", None])   # one adapter per row, one pass

Loading, creating and saving adapters live in ``runtime_loading.py``; the value types (``LoraSpec``,
``LoadReport``, layer specs, name rules) in ``runtime_types.py``. Every name stays importable from here.
"""

from __future__ import annotations

import contextlib

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

from .detection import describe_model, detect, module_map, resolve_targets
from .exceptions import (
    AdapterInUseError,
    AdapterMismatchError,
    AdapterNotFoundError,
    AdaptrixError,
    SelectionError,
)
from .plugins import default_plugin_manager
from .runtime_loading import AdapterLoading
from .runtime_types import (
    DEFAULT_ROLES,
    FUSED_DEFAULT_ROLES,
    LayerSpec,
    LoadReport,
    LoraSpec,
    ModuleReport,
    _layer_from_name,
    _Resident,
    _unique_bytes,
    check_adapter_name,
    default_roles,
    resolve_layers,
)
from .selection import SelectionLike, make_choice, make_row_choice
from .types import Detection, ModuleMap


if TYPE_CHECKING:
    import torch

    from torch import nn

    from .lora_layer import LoraLayer


__all__ = [
    "DEFAULT_ROLES",
    "FUSED_DEFAULT_ROLES",
    "AdaptedModel",
    "LayerSpec",
    "LoadReport",
    "LoraSpec",
    "ModuleReport",
    "attach",
    "check_adapter_name",
    "default_roles",
    "resolve_layers",
]


class AdaptedModel(AdapterLoading):
    """
    A transformers model with LoRA wrappers around its target modules. Build it with :func:`attach`.

    Selections are context-local: :meth:`set_active` sets the default every
    caller sees, and :meth:`using` / :meth:`using_rows` override it for the
    current thread or asyncio task only.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        architecture: str,
        mmap: ModuleMap | None,
        wrapped: Mapping[str, str | None],
        wrappers: Mapping[str, LoraLayer],
        strategy: Any,
        num_layers: int,
        detection: Detection | None = None,
    ) -> None:
        from .lora_layer import SelectionState

        self.model = model
        self.architecture = architecture
        self.module_map = mmap
        self.wrapped: dict[str, str | None] = dict(wrapped)
        self.num_layers = num_layers
        self.detection = detection
        """How the architecture was decided (``None`` when given explicitly or with ``targets=``)."""
        self._wrappers = dict(wrappers)
        self._strategy = strategy
        self._state = SelectionState()
        for wrapper in self._wrappers.values():
            wrapper.state = self._state
        self._adapters: dict[str, _Resident] = {}
        self._attached = True
        model_modules = {n for n, _ in model.named_modules()}
        self._unwrapped_modules = model_modules - set(self._wrappers)

    def __repr__(self) -> str:
        return (
            f"<AdaptedModel({self.architecture}, wrapped={len(self._wrappers)}, adapters={len(self._adapters)}, "
            f"active={self.active!r})>"
        )

    # adapters -----------------------------------------------------------------

    @property
    def adapters(self) -> tuple[str, ...]:
        """Names of the resident adapters, in load order."""
        return tuple(self._adapters)

    def report(self, name: str) -> LoadReport:
        return self._resident(name).report

    def resident_bytes(self, name: str) -> int:
        """Bytes of tensor memory adapter *name* holds (shared tensors counted once)."""
        res = self._resident(name)
        return _unique_bytes([t for a, b, _, _ in res.modules.values() for t in (a, b)])

    def _resident(self, name: str) -> _Resident:
        try:
            return self._adapters[name]
        except KeyError:
            known = ", ".join(self._adapters) or "none"
            raise AdapterNotFoundError(f"adapter {name!r} is not loaded. Loaded: {known}.") from None

    def _check_attached(self) -> None:
        if not self._attached:
            raise AdaptrixError("this AdaptedModel was detached; call attach(model) again.")


    def unload_adapter(self, name: str) -> None:
        """
        Remove adapter *name* and free its tensors.

        Raises:
            AdapterNotFoundError: It is not loaded.
            AdapterInUseError: It is merged into the base weights (unmerge first).
        """
        res = self._resident(name)
        if name in self._state.merged:
            raise AdapterInUseError(f"adapter {name!r} is merged into the base weights. Fix: call unmerge() first.")
        for module in res.modules:
            self._wrappers[module].remove_lora(name)
        del self._adapters[name]

    def plan_bytes(self) -> int:
        """Bytes of every wrapper's cached plans and adapter banks (memory beyond the adapters' own tensors)."""
        return sum(w.plan_bytes() for w in self._wrappers.values())

    def drop_plans(self) -> None:
        """Free every cached plan and bank; the next forwards rebuild what they need."""
        for wrapper in self._wrappers.values():
            wrapper.drop_plans()

    def delta_weight(self, name: str, module_name: str) -> torch.Tensor:
        """The ``(out, in)`` float32 weight delta adapter *name* adds to *module_name* (scaling included)."""
        res = self._resident(name)
        if module_name not in res.modules:
            raise AdapterNotFoundError(f"adapter {name!r} does not adapt module {module_name!r}.")
        return self._wrappers[module_name].delta_weight(name)

    # selection --------------------------------------------------------------

    def set_active(self, selection: SelectionLike) -> None:
        """
        Set the default selection every caller sees (O(1): no tensor is touched).

        *selection*: ``None`` (base), ``"a"``, ``["a", "b"]``, ``{"a": 0.7, "b": 0.3}`` or ``"a:0.7+b:0.3"``.
        """
        choice = make_choice(selection)
        self._check_loaded(choice.as_dict())
        self._state.default = choice

    @property
    def active(self) -> dict[str, float]:
        """The selection in force for the calling thread or task."""
        from .selection import RowChoice

        choice = self._state.current()
        if isinstance(choice, RowChoice):
            return {}
        return choice.as_dict()

    @contextlib.contextmanager
    def using(self, selection: SelectionLike) -> Iterator[AdaptedModel]:
        """Use *selection* inside the block, for this thread or asyncio task only."""
        choice = make_choice(selection)
        self._check_loaded(choice.as_dict())
        token = self._state.var.set(choice)
        try:
            yield self
        finally:
            self._state.var.reset(token)

    @contextlib.contextmanager
    def using_rows(self, rows: Sequence[SelectionLike]) -> Iterator[AdaptedModel]:
        """One selection per batch row inside the block (mixed batches, e.g. for ``model.generate``)."""
        from .selection import RowChoice

        choice = make_row_choice(rows)
        for row in choice.rows if isinstance(choice, RowChoice) else (choice,):
            self._check_loaded(row.as_dict())
        token = self._state.var.set(choice)
        try:
            yield self
        finally:
            self._state.var.reset(token)

    def forward(self, input_ids: torch.Tensor, *, adapters: Sequence[SelectionLike] | None = None, **kwargs: Any) -> Any:
        """Run the model; *adapters* gives one selection per row (``None`` rows get the base model)."""
        if adapters is None:
            return self.model(input_ids, **kwargs)
        if len(adapters) != input_ids.shape[0]:
            raise SelectionError(f"adapters= names {len(adapters)} rows but input_ids has {input_ids.shape[0]}.")
        with self.using_rows(adapters):
            return self.model(input_ids, **kwargs)

    def weights_key(self, selection: Mapping[str, float]) -> tuple[Any, ...]:
        """
        What the model computes under *selection* depends on, as a hashable key: each adapter's load and weight,
        and what is merged into the base. Equal keys mean equal keys and values for equal prompts (the
        serving scheduler's prefix cache relies on it). In-place edits of an adapter's tensors (training)
        do not change the key.
        """
        used = tuple(sorted((name, self._resident(name).serial, float(w)) for name, w in selection.items()))
        merged = tuple(sorted((name, self._resident(name).serial, w) for name, w in self._state.merged.items()))
        return used, merged

    def _check_loaded(self, weights: Mapping[str, float]) -> None:
        missing = [n for n in weights if n not in self._adapters]
        if missing:
            known = ", ".join(self._adapters) or "none"
            raise AdapterNotFoundError(f"adapter(s) {', '.join(map(repr, missing))} not loaded. Loaded: {known}.")

    # merge ------------------------------------------------------------------

    def merge(self, name: str, weight: float = 1.0) -> None:
        """
        Fold adapter *name* into the base weights: zero overhead while it is the selection.

        Other selections stay exact (their plans subtract the merged delta).
        :meth:`unmerge` restores the base weights bit for bit.
        """
        res = self._resident(name)
        if name in self._state.merged:
            raise AdapterInUseError(f"adapter {name!r} is already merged.")
        for module in res.modules:
            self._wrappers[module].merge(name, weight)
        self._state.merged[name] = float(weight)
        for wrapper in self._wrappers.values():
            wrapper.invalidate()

    @property
    def merged(self) -> dict[str, float]:
        return dict(self._state.merged)

    def unmerge(self) -> None:
        """Restore the original base weights exactly. Warns (does not raise) when nothing is merged."""
        if not self._state.merged:
            import warnings

            warnings.warn("nothing is merged; unmerge() did nothing", stacklevel=2)
            return
        for wrapper in self._wrappers.values():
            wrapper.unmerge()
        self._state.merged.clear()
        for wrapper in self._wrappers.values():
            wrapper.invalidate()

    def detach(self) -> nn.Module:
        """Unmerge, drop every adapter and put the original modules back; returns the model."""
        if not self._attached:
            return self.model
        if self._state.merged:
            self.unmerge()
        for name in list(self._adapters):
            self.unload_adapter(name)
        self._strategy.eject(self.model, self._wrappers)
        self._wrappers.clear()
        self._attached = False
        object.__setattr__(self.model, "_adaptrix_attached", None)
        return self.model



def attach(
    model: nn.Module,
    *,
    pm: pluggy.PluginManager | None = None,
    architecture: str | None = None,
    roles: Sequence[str] | None = None,
    layers: LayerSpec = None,
    targets: Sequence[str] | None = None,
    strategy: str = "lora",
) -> AdaptedModel:
    """
    Wrap *model*'s adaptable modules in place (no copy of base weights) and return the handle.

    Args:
        model: A loaded transformers model (or any ``nn.Module`` when *targets* is given).
        pm: Plugin manager (default: the lazily built one with installed plugins).
        architecture: Skip detection and use this architecture's module map.
        roles: Wrap only these roles (default: every role the architecture maps).
        layers: Wrap only these layers (see :data:`LayerSpec`).
        targets: Bypass detection: module names (or name suffixes) to wrap.
        strategy: Injection strategy name (core: ``lora``).

    Raises:
        UnknownArchitectureError: No plugin recognises the model (pass *targets*).
        AdaptrixError: The model is already attached.
    """
    from .registry import get_injection_strategy

    if getattr(model, "_adaptrix_attached", None) is not None:
        raise AdaptrixError(
            f"{describe_model(model)} is already attached; use its AdaptedModel, or call detach() on it first."
        )
    pm = pm or default_plugin_manager()
    mmap: ModuleMap | None
    detection: Detection | None = None
    if targets is not None:
        mmap = None
        architecture = architecture or "custom"
        resolved: dict[str, str | None] = {
            n: None for n, _ in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)
        }
        if not resolved:
            raise AdapterMismatchError(f"targets={list(targets)} match no module of {describe_model(model)}.")
    else:
        if architecture is None:
            detection = detect(model, pm=pm)
            architecture = detection.architecture
        mmap = module_map(architecture, model, pm=pm)
        resolved = dict(resolve_targets(model, mmap, roles))
    layer_of = (lambda n: mmap.layer_of(n)) if mmap is not None else _layer_from_name
    all_layers = {layer_of(n) for n in resolved} - {None}
    num_layers = max(all_layers) + 1 if all_layers else 1
    if layers is not None:
        band = set(resolve_layers(layers, num_layers))
        resolved = {n: r for n, r in resolved.items() if layer_of(n) in band}
    if not resolved:
        raise AdapterMismatchError(f"roles={roles!r}, layers={layers!r} select no module of {describe_model(model)}.")
    injector = get_injection_strategy(strategy, pm)
    wrappers = injector.inject(model, list(resolved))
    am = AdaptedModel(
        model, architecture=architecture, mmap=mmap, wrapped=resolved, wrappers=wrappers, strategy=injector,
        num_layers=num_layers, detection=detection,
    )
    object.__setattr__(model, "_adaptrix_attached", am)
    return am
