"""
Putting adapter tensors into an attached model: load a PEFT adapter, create a fresh one, save one.

Split out of ``runtime.py``: :class:`AdapterLoading` is a mixin of :class:`~adaptrix_core.runtime.AdaptedModel`
(the methods are documented and used there).
"""

from __future__ import annotations

import math
import os
import re

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .detection import describe_model
from .exceptions import AdapterExistsError, AdapterMismatchError, SelectionError
from .peft_format import LoraConfig, ParsedAdapter, read_adapter, write_adapter
from .runtime_types import (
    LayerSpec,
    LoadReport,
    LoraSpec,
    ModuleReport,
    _layer_from_name,
    _Resident,
    _short,
    _unique_bytes,
    check_adapter_name,
    default_roles,
    resolve_layers,
    unknown_roles_message,
)


if TYPE_CHECKING:
    import torch

    from torch import nn

    from .lora_layer import LoraLayer
    from .types import Detection, ModuleMap


_Placement = tuple[str, str, "torch.Tensor", "torch.Tensor", int, float, float]
"""(target module, the adapter's own module name, A, B, r, alpha, scaling)."""


class AdapterLoading:
    """Load, create and save adapters; mixed into :class:`~adaptrix_core.runtime.AdaptedModel`."""

    model: nn.Module
    architecture: str
    module_map: ModuleMap | None
    wrapped: dict[str, str | None]
    num_layers: int
    detection: Detection | None
    _wrappers: dict[str, LoraLayer]
    _adapters: dict[str, _Resident]
    _unwrapped_modules: set[str]

    def _check_attached(self) -> None:  # defined by AdaptedModel
        raise NotImplementedError

    def _resident(self, name: str) -> _Resident:  # defined by AdaptedModel
        raise NotImplementedError

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
        self._check_attached()
        check_adapter_name(name)
        if name in self._adapters:
            raise AdapterExistsError(f"adapter {name!r} is already loaded. Fix: unload it first, or pick another name.")
        parsed = source if isinstance(source, ParsedAdapter) else read_adapter(source)
        band = set(resolve_layers(layers, self.num_layers)) if layers is not None else None

        placements, skipped, renamed = self._place(parsed, band, layers)
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

    def _place(
        self, parsed: ParsedAdapter, band: set[int] | None, layers: LayerSpec
    ) -> tuple[list[_Placement], list[tuple[str, str]], list[tuple[str, tuple[str, ...]]]]:
        """
        Where each of the adapter's modules lands: (placements, skipped, renamed).

        Raises:
            AdapterMismatchError: Modules the model lacks, shapes or ranks that do not fit, nothing left.
        """
        where = parsed.weights_file or parsed.path
        placements: list[_Placement] = []
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
        return placements, skipped, renamed

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
        return tuple(warnings) + self._guess_warning()

    def _guess_warning(self) -> tuple[str, ...]:
        """A low-confidence detection (the generic fallback) is said in every report on this model."""
        d = self.detection
        if d is None or d.confidence >= 0.5:
            return ()
        return (
            f"the module map is a guess ({d.plugin or d.architecture}, confidence {d.confidence:g}): {d.reason}. "
            "Fix: check the wrapped modules with `adaptrix targets MODEL`, or install a plugin for this "
            "architecture.",
        )

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
        roles = spec.roles or self.default_roles()
        unknown = set(roles) - available
        if unknown:
            raise SelectionError(unknown_roles_message(unknown, available, self.architecture))
        band = set(resolve_layers(spec.layers, self.num_layers))
        targets = [m for m, role in self.wrapped.items() if role in roles and self._layer_of(m) in band]
        if not targets:
            raise SelectionError(f"roles {list(roles)} in layers={spec.layers!r} match no wrapped module.")
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
            warnings=self._guess_warning(),
            params=sum(r.params for r in reports),
            bytes=_unique_bytes([t for a, b, _, _ in modules.values() for t in (a, b)]),
            base_model=self._base_name(),
        )
        for target, (a, b, _, _) in modules.items():
            self._wrappers[target].add_lora(name, a, b, spec.scaling)
        config = {"use_rslora": spec.use_rslora, "base_model_name_or_path": self._base_name(), "task_type": "CAUSAL_LM"}
        save_config = None
        if self.module_map is not None:
            tails = sorted({self.module_map.targets[role].split("*.", 1)[-1] for role in roles})
            save_config = {
                **config,
                "r": spec.r,
                "lora_alpha": spec.alpha,
                "target_modules": tails,
                "layers_to_transform": sorted(band) if band != set(range(self.num_layers)) else None,
            }
        self._adapters[name] = _Resident(name, report, modules, config, save_config)
        return report

    def default_roles(self) -> tuple[str, ...]:
        """What a fresh adapter adapts when no roles are named: ``attn.q`` + ``attn.v``, or ``attn.qkv`` when fused."""
        return default_roles({role for role in self.wrapped.values() if role})

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
