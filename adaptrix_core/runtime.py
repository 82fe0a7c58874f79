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
"""

from __future__ import annotations

import contextlib
import math
import os
import re

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from .detection import describe_model, detect, module_map, resolve_targets
from .exceptions import (
    AdapterExistsError,
    AdapterInUseError,
    AdapterMismatchError,
    AdapterNotFoundError,
    AdaptrixError,
    InvalidNameError,
    SelectionError,
)
from .peft_format import LoraConfig, ParsedAdapter, read_adapter, write_adapter
from .plugins import default_plugin_manager
from .selection import SelectionLike, make_choice, make_row_choice
from .types import ModuleMap


if TYPE_CHECKING:
    import torch

    from torch import nn

    from .lora_layer import LoraLayer


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


@attrs.frozen
class LoraSpec:
    """
    A fresh adapter's shape, for :meth:`AdaptedModel.add_adapter` (training).

    Attributes:
        r: Rank.
        alpha: ``lora_alpha``; scaling is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA).
        roles: Canonical roles to adapt (``adaptrix_core.ROLES``).
        layers: Which layers (see :data:`LayerSpec`).
        use_rslora: Rank-stabilised scaling.
    """

    r: int = attrs.field(default=8, validator=attrs.validators.gt(0))
    alpha: float = 16.0
    roles: tuple[str, ...] = attrs.field(default=("attn.q", "attn.v"), converter=tuple)
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


def _unique_bytes(tensors: Sequence[torch.Tensor]) -> int:
    seen: dict[tuple[int, int], int] = {}
    for t in tensors:
        seen[(t.data_ptr(), t.numel())] = t.numel() * t.element_size()
    return sum(seen.values())


class AdaptedModel:
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
    ) -> None:
        from .lora_layer import SelectionState

        self.model = model
        self.architecture = architecture
        self.module_map = mmap
        self.wrapped: dict[str, str | None] = dict(wrapped)
        self.num_layers = num_layers
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

    def load_adapter(
        self, name: str, source: str | os.PathLike[str] | ParsedAdapter, *, layers: LayerSpec = None
    ) -> LoadReport:
        """
        Load a PEFT LoRA adapter (a directory or a :class:`ParsedAdapter`) under *name*.

        Everything is checked before anything is installed, so a refused
        adapter leaves the model as it was.

        Args:
            name: How selections refer to it.
            source: PEFT directory, or an adapter already read with :func:`read_adapter`.
            layers: Keep only this band of the adapter's layers (the rest is reported as skipped).

        Raises:
            AdapterExistsError: *name* is already loaded.
            AdapterFormatError, UnsupportedFeatureError: The files are not servable PEFT LoRA.
            AdapterMismatchError: Modules the model lacks, shapes that do not fit, nothing matched.
        """
        import torch

        self._check_attached()
        check_adapter_name(name)
        if name in self._adapters:
            raise AdapterExistsError(f"adapter {name!r} is already loaded. Fix: unload it first, or pick another name.")
        parsed = source if isinstance(source, ParsedAdapter) else read_adapter(source)
        where = parsed.weights_file or parsed.path
        band = set(resolve_layers(layers, self.num_layers)) if layers is not None else None

        placements: list[tuple[str, str, torch.Tensor, torch.Tensor, int, float, float]] = []
        skipped: list[tuple[str, str]] = [(k, "not a LoRA tensor") for k in parsed.unknown_keys]
        renamed: list[tuple[str, tuple[str, ...]]] = []
        missing: list[str] = []
        problems: list[str] = []
        claimed: dict[str, str] = {}
        for source_name, tensors in parsed.modules.items():
            targets = self._locate(source_name)
            if targets is None:
                missing.append(source_name)
                continue
            if targets != (source_name,):
                renamed.append((source_name, targets))
            r = tensors.rank
            config_r, alpha = parsed.config.rank_alpha_for(source_name)
            if config_r != r:
                problems.append(
                    f"{source_name}: tensors have rank {r} but the config gives r={config_r} "
                    f"(field 'r' or 'rank_pattern')"
                )
                continue
            scaling = parsed.config.scaling_for(source_name, r)
            pieces = self._split(source_name, targets, tensors.A, tensors.B, problems)
            for target, a, b in pieces:
                if target in claimed:
                    problems.append(f"{source_name} and {claimed[target]} both land on {target}")
                    continue
                claimed[target] = source_name
                layer = self._layer_of(target)
                if band is not None and layer not in band:
                    skipped.append((target, f"layer {layer} is outside layers={layers!r}"))
                    continue
                placements.append((target, source_name, a, b, r, alpha, scaling))
        if missing:
            raise AdapterMismatchError(self._missing_message(where, missing))
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise AdapterMismatchError(f"{where}: the adapter does not fit {describe_model(self.model)}: {shown}.")
        if not placements:
            raise AdapterMismatchError(
                f"{where}: the adapter matches no module of {describe_model(self.model)}"
                + (f" within layers={layers!r}" if band is not None else "")
                + ". Nothing to load."
            )

        modules: dict[str, tuple[torch.Tensor, torch.Tensor, int, float]] = {}
        reports = []
        converted: dict[int, torch.Tensor] = {}
        for target, source_name, a, b, r, alpha, scaling in placements:
            weight = self._wrappers[target].base_layer.weight
            a = converted.setdefault(id(a), a.to(device=weight.device, dtype=weight.dtype).contiguous())
            b = b.to(device=weight.device, dtype=weight.dtype).contiguous()
            modules[target] = (a, b, r, alpha)
            reports.append(
                ModuleReport(
                    module=target,
                    role=self.wrapped[target],
                    layer=self._layer_of(target),
                    r=r,
                    alpha=alpha,
                    scaling=scaling,
                    params=a.numel() + b.numel(),
                    source=source_name,
                )
            )
        tensors_list = [t for a, b, _, _ in modules.values() for t in (a, b)]
        report = LoadReport(
            name=name,
            architecture=self.architecture,
            modules=tuple(reports),
            skipped=tuple(skipped),
            renamed=tuple(renamed),
            warnings=self._warnings(parsed.config),
            params=sum(r.params for r in reports),
            bytes=_unique_bytes(tensors_list),
            base_model=parsed.config.base_model_name_or_path,
        )
        for (target, _, _, _, _, _, scaling), (a, b, _, _) in zip(placements, modules.values(), strict=True):
            self._wrappers[target].add_lora(name, a, b, scaling)
        config = {
            "use_rslora": parsed.config.use_rslora,
            "base_model_name_or_path": parsed.config.base_model_name_or_path,
            "task_type": parsed.config.task_type or "CAUSAL_LM",
        }
        self._adapters[name] = _Resident(name, report, modules, config)
        return report

    def _locate(self, source_name: str) -> tuple[str, ...] | None:
        """The wrapped module(s) an adapter's module name lands on, or ``None``."""
        if source_name in self.wrapped:
            return (source_name,)
        if self.module_map is not None:
            for rename in self.module_map.renames:
                targets = rename.apply(source_name)
                if targets is not None:
                    return targets
        # trained on the bare backbone (``layers.0...``) or the head model (``model.layers.0...``)
        suffix = "." + source_name
        found = [w for w in self.wrapped if w.endswith(suffix)]
        if len(found) == 1:
            return (found[0],)
        stripped = source_name.partition(".")[2]
        if stripped in self.wrapped:
            return (stripped,)
        return None

    def _missing_message(self, where: Any, missing: list[str]) -> str:
        present = [m for m in missing if m in self._unwrapped_modules]
        absent = [m for m in missing if m not in self._unwrapped_modules]
        parts = []
        if absent:
            parts.append(
                f"{len(absent)} module(s) that {describe_model(self.model)} does not have: "
                f"{', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}"
            )
        if present:
            parts.append(
                f"{len(present)} module(s) that exist but are not adapted by this model's wrappers: "
                f"{', '.join(present[:5])}{' ...' if len(present) > 5 else ''}"
                " (attach with more roles or layers to include them)"
            )
        return (
            f"{where}: the adapter targets {' and '.join(parts)}. "
            f"Is it for another architecture? This model is {self.architecture}."
        )

    def _split(
        self, source_name: str, targets: tuple[str, ...], A: torch.Tensor, B: torch.Tensor, problems: list[str]  # noqa: N803
    ) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
        """One module, or a fused one split row-wise over its targets (exact: ``B @ A`` splits by rows)."""
        wrappers = [self._wrappers[t] for t in targets]
        outs = [w.out_features for w in wrappers]
        for target, wrapper in zip(targets, wrappers, strict=True):
            if A.shape[1] != wrapper.in_features:
                problems.append(
                    f"{source_name}: lora_A is {tuple(A.shape)} but {target} takes {wrapper.in_features} inputs"
                )
                return []
        if B.shape[0] != sum(outs):
            what = f"{targets[0]} gives" if len(targets) == 1 else f"{', '.join(targets)} together give"
            problems.append(f"{source_name}: lora_B is {tuple(B.shape)} but {what} {sum(outs)} outputs")
            return []
        if len(targets) == 1:
            return [(targets[0], A, B)]
        return [(t, A, b) for t, b in zip(targets, B.split(outs, dim=0), strict=True)]

    def _layer_of(self, module_name: str) -> int | None:
        if self.module_map is not None:
            layer = self.module_map.layer_of(module_name)
            if layer is not None:
                return layer
        return _layer_from_name(module_name)

    def _warnings(self, config: LoraConfig) -> tuple[str, ...]:
        warnings = []
        ours = str(getattr(getattr(self.model, "config", None), "_name_or_path", "") or "")
        theirs = config.base_model_name_or_path or ""
        if ours and theirs and _short(ours) != _short(theirs):
            warnings.append(
                f"the adapter was trained on {theirs!r}, this base model is {ours!r}; shapes fit, "
                "but its behaviour may differ."
            )
        return tuple(warnings)

    def add_adapter(self, name: str, spec: LoraSpec | None = None, *, seed: int = 0) -> LoadReport:
        """
        Create a fresh trainable adapter, initialised as PEFT does (``A`` Kaiming-uniform, ``B`` zeros).

        Its tensors are leaves with ``requires_grad=True``: train them with
        :meth:`adapter_parameters`, then :meth:`save_adapter`.
        """
        import torch

        self._check_attached()
        check_adapter_name(name)
        if name in self._adapters:
            raise AdapterExistsError(f"adapter {name!r} is already loaded. Fix: unload it first, or pick another name.")
        spec = spec or LoraSpec()
        available = {role for role in self.wrapped.values() if role}
        unknown = set(spec.roles) - available
        if unknown:
            raise SelectionError(
                f"roles {sorted(unknown)} are not wrapped in this {self.architecture} model; wrapped roles: "
                f"{sorted(available)}."
            )
        band = set(resolve_layers(spec.layers, self.num_layers))
        targets = [m for m, role in self.wrapped.items() if role in spec.roles and self._layer_of(m) in band]
        if not targets:
            raise SelectionError(f"roles {list(spec.roles)} in layers={spec.layers!r} match no wrapped module.")
        generator = torch.Generator().manual_seed(seed)
        modules = {}
        reports = []
        for target in targets:
            wrapper = self._wrappers[target]
            weight = wrapper.base_layer.weight
            a = torch.empty(spec.r, wrapper.in_features, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            a = a.to(device=weight.device, dtype=weight.dtype).requires_grad_(True)
            b = torch.zeros(wrapper.out_features, spec.r, device=weight.device, dtype=weight.dtype, requires_grad=True)
            modules[target] = (a, b, spec.r, float(spec.alpha))
            reports.append(
                ModuleReport(target, self.wrapped[target], self._layer_of(target), spec.r, float(spec.alpha),
                             spec.scaling, a.numel() + b.numel(), target)
            )
        report = LoadReport(
            name=name,
            architecture=self.architecture,
            modules=tuple(reports),
            params=sum(r.params for r in reports),
            bytes=_unique_bytes([t for a, b, _, _ in modules.values() for t in (a, b)]),
            base_model=self._base_name(),
        )
        for target, (a, b, _, _) in modules.items():
            self._wrappers[target].add_lora(name, a, b, spec.scaling)
        config = {"use_rslora": spec.use_rslora, "base_model_name_or_path": self._base_name(), "task_type": "CAUSAL_LM"}
        save_config = None
        if self.module_map is not None:
            tails = sorted({self.module_map.targets[role].split("*.", 1)[-1] for role in spec.roles})
            save_config = {
                **config,
                "r": spec.r,
                "lora_alpha": spec.alpha,
                "target_modules": tails,
                "layers_to_transform": sorted(band) if band != set(range(self.num_layers)) else None,
            }
        self._adapters[name] = _Resident(name, report, modules, config, save_config)
        return report

    def adapter_parameters(self, name: str) -> list[torch.Tensor]:
        """The adapter's tensors (A then B per module); leaves with ``requires_grad`` for fresh adapters."""
        res = self._resident(name)
        seen: dict[int, torch.Tensor] = {}
        for a, b, _, _ in res.modules.values():
            seen.setdefault(id(a), a)
            seen.setdefault(id(b), b)
        return list(seen.values())

    def save_adapter(
        self, name: str, directory: str | os.PathLike[str], *, base_model_name_or_path: str | None = None,
        overwrite: bool = False,
    ) -> Path:
        """
        Write adapter *name* as a PEFT directory (atomically) that PEFT, vLLM and LoRAX load.

        Modules are written under this model's names (after any rename or fused split).
        """
        res = self._resident(name)
        base = base_model_name_or_path or res.config.get("base_model_name_or_path") or self._base_name()
        extra = {"bias": "none", "lora_dropout": 0.0, "inference_mode": True,
                 "fan_in_fan_out": any(self._wrappers[m].fan_in_fan_out for m in res.modules)}
        if res.save_config is not None:
            config = {**extra, **res.save_config, "base_model_name_or_path": base}
        else:
            r, alpha = Counter((r, a) for _, _, r, a in res.modules.values()).most_common(1)[0][0]
            config = {
                **extra,
                **res.config,
                "base_model_name_or_path": base,
                "r": r,
                "lora_alpha": alpha,
                "target_modules": sorted(res.modules),
                "rank_pattern": {re.escape(m): mr for m, (_, _, mr, _) in res.modules.items() if mr != r},
                "alpha_pattern": {re.escape(m): ma for m, (_, _, _, ma) in res.modules.items() if ma != alpha},
            }
        return write_adapter(directory, config, {m: (a, b) for m, (a, b, _, _) in res.modules.items()},
                             overwrite=overwrite)

    def _base_name(self) -> str | None:
        return str(getattr(getattr(self.model, "config", None), "_name_or_path", "") or "") or None

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


def _short(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1].lower()


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
    if targets is not None:
        mmap = None
        architecture = architecture or "custom"
        resolved: dict[str, str | None] = {
            n: None for n, _ in model.named_modules() if any(n == t or n.endswith("." + t) for t in targets)
        }
        if not resolved:
            raise AdapterMismatchError(f"targets={list(targets)} match no module of {describe_model(model)}.")
    else:
        architecture = architecture or detect(model, pm=pm).architecture
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
        num_layers=num_layers,
    )
    object.__setattr__(model, "_adaptrix_attached", am)
    return am


def _layer_from_name(name: str) -> int | None:
    match = re.search(r"\.(\d+)\.", name)
    return int(match.group(1)) if match else None

