"""
Dynamic conversion: any PEFT LoRA adapter in, proved against the base model, stored in the library.

The pipeline, one stage per step of the progress display::

    reference --(adapter source)--> local dir --read_adapter--> tensors
      --detect_adapter_all--> every plugin's claim
      --attach + load_adapter--> shapes proved, LoadReport
      --effect check--> relative logit change on a probe input
      --normalise + Library.install--> library/NAME/ (PEFT dir + adaptrix.json)

Nothing reaches the library unless every stage passed. What is stored is a
*normalised* PEFT directory: safetensors, canonical ``base_model.model.`` keys,
module names of the base model (legacy names renamed, fused modules split),
the adapter's own dtype. So ``adaptrix export`` gives a directory that PEFT
loads onto the same base model.
"""

from __future__ import annotations

import math
import re

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from .exceptions import AdapterFormatError, AdapterMismatchError, AdapterNotFoundError
from .peft_targets import short as _short
from .types import AdapterInfo, AdapterSource, Detection


if TYPE_CHECKING:
    import torch

    from torch import nn

    from .library import Library
    from .peft_format import ParsedAdapter
    from .runtime import AdaptedModel, LoadReport


Progress = Callable[[str, str], None]
"""``progress(stage, detail)``: called when a stage starts. Stages are :data:`STAGES`."""

STAGES = ("fetch", "read", "detect", "load", "check", "install")

PROBE_TOKENS = 16
EFFECT_FLOOR = 1e-6
"""Below this relative logit change an adapter is flagged as having no effect."""

# Config fields PEFT writes that do not change what a loaded LoRA computes.
_INFERENCE_IRRELEVANT = (
    "lora_dropout", "inference_mode", "init_lora_weights", "merge_weights", "revision", "auto_mapping",
    "loftq_config", "eva_config", "corda_config", "megatron_config", "megatron_core",
    "peft_version", "ensure_weight_tying", "qalora_group_size", "lora_ga_config", "arrow_config",
    "monteclora_config", "layer_replication", "runtime_config",
)
_CAUSAL_TASKS = {None, "CAUSAL_LM"}


def _quiet(stage: str, detail: str) -> None:
    pass


# sources -----------------------------------------------------------------------


def resolve_source(ref: str, pm: pluggy.PluginManager | None = None) -> tuple[AdapterSource, str]:
    """
    Pick the adapter source for *ref*: its ``scheme://`` prefix, else the first source that claims it.

    Raises:
        NotRegisteredError: An unknown scheme.
        AdapterNotFoundError: No source claims a bare reference.
    """
    from .registry import adapter_sources, get_adapter_source

    scheme, sep, rest = ref.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", scheme):
        return get_adapter_source(scheme.lower(), pm), rest
    sources = adapter_sources(pm)
    for registered in sources.values():
        if registered.obj.claims(ref):
            return registered.obj, ref
    schemes = ", ".join(f"{s}://" for s in sorted(sources)) or "none"
    raise AdapterNotFoundError(
        f"{ref!r}: not an existing directory and no adapter source claims it. "
        f"Use a path (./dir, /abs/dir), a hub repo id (user/repo), or a scheme: {schemes}."
    )


def fetch(ref: str, pm: pluggy.PluginManager | None = None) -> Path:
    """The local PEFT directory for reference *ref* (downloads through the hub source if needed)."""
    source, inner = resolve_source(ref, pm)
    path = source.fetch(inner)
    return Path(path)


# analysis ----------------------------------------------------------------------


@attrs.frozen
class Analysis:
    """
    Everything learnt about one adapter: what ``adaptrix inspect PATH`` prints and convert stores.

    ``load``, ``effect`` and ``modules`` are ``None`` when no base model was given; ``effect`` is
    also ``None`` when the base model is a skeleton on the ``meta`` device (shapes only).
    """

    ref: str
    path: Path
    parsed: ParsedAdapter
    detections: tuple[Detection, ...]
    architecture: str | None = None
    base_model: str | None = None
    load: LoadReport | None = None
    effect: float | None = None
    modules: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
    """Base-model module name -> (A, B): the normalised tensors convert stores."""
    warnings: tuple[str, ...] = ()

    def report(self) -> dict[str, Any]:
        """The compatibility report (JSON-able), as stored in ``adaptrix.json`` under ``report``."""
        parsed = self.parsed
        weights = parsed.weights_file
        dtypes = Counter(str(t.A.dtype).removeprefix("torch.") for t in parsed.modules.values())
        out: dict[str, Any] = {}
        if self.load is not None:
            out.update(self.load.to_dict())
            out.pop("name", None)
            scalings = Counter(m.scaling for m in self.load.modules)
            out["scaling"] = scalings.most_common(1)[0][0]
            if self.modules is not None and self.effect is None:  # meta skeleton: the runtime cannot count bytes
                out["bytes"] = sum(a.numel() * a.element_size() + b.numel() * b.element_size()
                                   for a, b in self.modules.values())
        else:
            ranks = Counter(t.rank for t in parsed.modules.values())
            out.update(
                architecture=self.detections[0].architecture if self.detections else None,
                base_model=parsed.config.base_model_name_or_path,
                rank=ranks.most_common(1)[0][0],
                alpha=parsed.config.lora_alpha,
                scaling=parsed.config.scaling_for("", ranks.most_common(1)[0][0]),
                params=sum(t.A.numel() + t.B.numel() for t in parsed.modules.values()),
                bytes=parsed.tensor_bytes,
                modules=[{"module": m, "r": t.rank, "in": int(t.A.shape[1]), "out": int(t.B.shape[0])}
                         for m, t in parsed.modules.items()],
            )
        out["base_model_loaded"] = self.base_model
        out["use_rslora"] = parsed.config.use_rslora
        out["detections"] = [
            {"plugin": d.plugin, "architecture": d.architecture, "confidence": d.confidence, "reason": d.reason}
            for d in self.detections
        ]
        out["unmatched_keys"] = list(parsed.unknown_keys)
        out["ignored_modules"] = [{"module": m, "reason": why} for m, why in parsed.ignored]
        out["refused"] = []
        out["ignored_fields"] = sorted(k for k in parsed.raw_config if k in _INFERENCE_IRRELEVANT)
        out["effect"] = (
            None if self.effect is None
            else {"relative_logit_change": self.effect, "probe_tokens": PROBE_TOKENS, "zero": self.effect < EFFECT_FLOOR}
        )
        out["source"] = {
            "ref": self.ref,
            "path": str(self.path),
            "weights_file": weights.name if weights is not None else None,
            "format": "safetensors" if weights is not None and weights.suffix == ".safetensors" else "pickle (weights only)",
            "dtype": dtypes.most_common(1)[0][0] if dtypes else None,
            "task_type": parsed.config.task_type,
        }
        out["warnings"] = list(dict.fromkeys([*(self.load.warnings if self.load else ()), *self.warnings]))
        return out


def _check_architecture(parsed: ParsedAdapter, detections: list[Detection], architecture: str, model: nn.Module) -> None:
    """An adapter claimed only for other architectures is refused before any tensor is placed."""
    from .detection import describe_model

    if not detections or architecture in {d.architecture for d in detections}:
        return
    best = detections[0]
    where = parsed.weights_file or parsed.path
    raise AdapterMismatchError(
        f"{where}: the adapter is for {best.architecture} ({best.reason}, plugin {best.plugin}), "
        f"but the base model {describe_model(model)} is {architecture}. "
        f"Fix: pass --model with a {best.architecture} base model."
    )


def effect_check(am: AdaptedModel, name: str, *, tokens: int = PROBE_TOKENS, seed: int = 0) -> float:
    """
    Relative change ``||logits_adapter - logits_base|| / ||logits_base||`` on a fixed random probe input.

    Zero means the adapter changes nothing (e.g. untrained: every ``lora_B`` is zero); ``inf`` means
    the adapted logits are not finite (NaN or infinite).
    """
    import torch

    model = am.model
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None) or model.get_input_embeddings().num_embeddings
    weight = next(model.parameters())
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, int(vocab), (1, tokens), generator=generator).to(weight.device)
    with torch.inference_mode():
        with am.using(None):
            base = model(ids).logits.double()
        with am.using(name):
            adapted = model(ids).logits.double()
    if not bool(torch.isfinite(adapted).all()):
        return math.inf  # in float64 the norms below cannot overflow, so only non-finite logits give inf/NaN
    denominator = base.norm().clamp_min(torch.finfo(torch.float64).tiny)
    return float((adapted - base).norm() / denominator)


MAX_DELTA = 1e18
"""Bound on ``scaling * |B row| * |A column|``: beyond it layer norms square values past float32's range."""


def _check_magnitude(parsed: ParsedAdapter) -> None:
    """
    Refuse an adapter whose weight change ``scaling * B @ A`` can reach absurd sizes, before any forward pass.

    Bounded cheaply by Cauchy-Schwarz (largest row norm of B times largest column norm of A), so no
    ``B @ A`` is formed. Real adapters stay near 1; past ``MAX_DELTA`` the model's normalisation
    layers overflow and the outputs are garbage even when the logits happen to stay finite.
    """
    for module, t in parsed.modules.items():
        scaling = parsed.config.scaling_for(module, t.rank)
        b, a = float(t.B.double().norm(dim=1).max()), float(t.A.double().norm(dim=0).max())
        bound = abs(scaling) * b * a
        if not math.isfinite(bound) or bound > MAX_DELTA:
            raise AdapterFormatError(
                f"{parsed.weights_file or parsed.path}: module {_short(module, 80)} changes weights by up to "
                f"{bound:.3g} (scaling {scaling:.3g} x largest lora_B row norm {b:.3g} x largest lora_A column norm "
                f"{a:.3g}); beyond {MAX_DELTA:.0e} the model's normalisation overflows float32. Refused."
            )


def _largest(parsed: ParsedAdapter) -> float:
    return max(float(t.B.abs().max()) for t in parsed.modules.values())


def _normalised_modules(
    parsed: ParsedAdapter, report: LoadReport
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Base-model module name -> (A, B) in the adapter's own dtype: renames applied, fused modules split."""
    order = {src: dst for src, dst in report.renamed}
    by_source: dict[str, list[Any]] = {}
    for module in report.modules:
        by_source.setdefault(module.source, []).append(module)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for source, reports in by_source.items():
        tensors = parsed.modules[source]
        a, b = tensors.A, tensors.B
        if len(reports) == 1 and len(order.get(source, (reports[0].module,))) == 1:
            out[reports[0].module] = (a, b)
            continue
        # a fused module split row-wise: each target's rows of B, in the rename's target order
        outs = {m.module: m.params // m.r - int(a.shape[1]) for m in reports}
        row = 0
        for target in order.get(source, tuple(outs)):
            rows = outs[target]
            out[target] = (a.clone(), b[row : row + rows].clone())
            row += rows
    return out


def _normalised_config(parsed: ParsedAdapter, report: LoadReport, base_name: str | None) -> dict[str, Any]:
    """A PEFT config that names every module exactly, so PEFT reproduces Adaptrix's placement."""
    raw = parsed.raw_config
    r, alpha = Counter((m.r, m.alpha) for m in report.modules).most_common(1)[0][0]
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": parsed.config.base_model_name_or_path or base_name,
        "task_type": parsed.config.task_type or "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "use_rslora": parsed.config.use_rslora,
        "fan_in_fan_out": bool(raw.get("fan_in_fan_out", False)),
        "target_modules": sorted(m.module for m in report.modules),
        "rank_pattern": {re.escape(m.module): m.r for m in report.modules if m.r != r},
        "alpha_pattern": {re.escape(m.module): m.alpha for m in report.modules if m.alpha != alpha},
        "bias": "none",
        "lora_dropout": 0.0,
        "inference_mode": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    }


def _is_meta(model: nn.Module) -> bool:
    first = next(iter(model.parameters()), None)
    return first is not None and first.is_meta


def load_base_model_weights(ref: str | None = None) -> nn.Module:
    """
    Load a base model (weights only, no tokenizer) in float32 on CPU, frozen, for conversion.

    *ref* is a hub id, local path or ``None`` for the configured default (the embedded SmolLM2).
    """
    import torch

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from .models import _from_pretrained, resolve_model_ref

    path = resolve_model_ref(ref)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # our own progress display owns stderr
    try:
        model = _from_pretrained(AutoModelForCausalLM, path, "base model", dtype=torch.float32)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.eval()
    model.requires_grad_(False)
    return model


def _read_warnings(parsed: ParsedAdapter, detections: list[Detection]) -> list[str]:
    """What reading and detection found that the user should know, though nothing was refused."""
    warnings: list[str] = []
    if not detections:
        warnings.append(
            "no architecture plugin recognises the adapter's module names; its fit was decided by names and shapes only."
        )
    if parsed.config.task_type not in _CAUSAL_TASKS:
        warnings.append(
            f"task_type is {parsed.config.task_type!r}, not 'CAUSAL_LM'; only its LoRA matrices are used, "
            "on a causal language model."
        )
    if parsed.unknown_keys:
        warnings.append(f"{len(parsed.unknown_keys)} tensor key(s) are not LoRA matrices and were ignored.")
    if parsed.ignored:
        shown = ", ".join(m for m, _ in parsed.ignored[:3]) + (" ..." if len(parsed.ignored) > 3 else "")
        warnings.append(
            f"{len(parsed.ignored)} saved module(s) are not selected by the config's target_modules / "
            f"layers_to_transform / exclude_modules and were ignored, as PEFT ignores them: {shown}"
        )
    return warnings


def analyse(
    ref: str,
    *,
    model: nn.Module | AdaptedModel | None = None,
    pm: pluggy.PluginManager | None = None,
    progress: Progress | None = None,
    load_name: str = "convert-probe",
) -> Analysis:
    """
    Fetch, read, detect and (with *model*) load *ref* onto the base model and measure its effect.

    *model* may be a plain transformers model (attached here and detached
    again, so it is left exactly as it was) or an :class:`AdaptedModel`
    (the adapter is loaded under *load_name* and unloaded again).

    Raises:
        AdapterFormatError, UnsupportedFeatureError: The files are not servable PEFT LoRA.
        AdapterMismatchError: Another architecture, modules the base lacks, shapes that do not fit.
        AdapterNotFoundError, NotRegisteredError: The reference cannot be fetched.
    """
    from .detection import detect_adapter_all
    from .peft_format import read_adapter
    from .plugins import default_plugin_manager
    from .runtime import AdaptedModel, attach

    pm = pm or default_plugin_manager()
    step = progress or _quiet
    step("fetch", ref)
    path = fetch(ref, pm)
    step("read", str(path))
    parsed = read_adapter(path)
    step("detect", f"{len(parsed.modules)} modules")
    detections = detect_adapter_all(parsed.raw_config, list(parsed.modules), pm=pm)
    warnings = _read_warnings(parsed, detections)
    if model is None:
        return Analysis(ref=ref, path=path, parsed=parsed, detections=tuple(detections), warnings=tuple(warnings))

    owned = not isinstance(model, AdaptedModel)
    am = attach(model, pm=pm) if owned else model
    try:
        base_name = str(getattr(getattr(am.model, "config", None), "_name_or_path", "") or "") or None
        step("load", f"onto {am.architecture}")
        _check_architecture(parsed, detections, am.architecture, am.model)
        _check_magnitude(parsed)
        report = am.load_adapter(load_name, parsed)
        effect: float | None = None
        try:
            if _is_meta(am.model):
                warnings.append("effect not measured: the base model is a skeleton without weights (meta device).")
            else:
                step("check", "effect on a probe input")
                effect = effect_check(am, load_name)
        finally:
            am.unload_adapter(load_name)
    finally:
        if owned:
            am.detach()
    if effect is not None and not math.isfinite(effect):
        raise AdapterFormatError(
            f"{parsed.weights_file or parsed.path}: the adapter makes the logits non-finite (NaN or infinite) on a "
            f"probe input; its values or scaling overflow (lora_alpha {_short(parsed.config.lora_alpha)}, r "
            f"{parsed.config.r}, largest |B| {_largest(parsed):.3g}). Refused."
        )
    if effect is not None and effect < EFFECT_FLOOR:
        zero = all(not bool(t.B.any()) for t in parsed.modules.values())
        warnings.append(
            f"the adapter does not change the logits (relative change {effect:.2e})"
            + ("; every lora_B is zero, as in an untrained adapter." if zero else ".")
        )
    modules = _normalised_modules(parsed, report)
    return Analysis(
        ref=ref, path=path, parsed=parsed, detections=tuple(detections), architecture=am.architecture,
        base_model=base_name, load=report, effect=effect, modules=modules, warnings=tuple(warnings),
    )


# conversion --------------------------------------------------------------------


@attrs.frozen
class Conversion:
    """The result of :func:`convert`: the installed adapter and its report."""

    info: AdapterInfo
    analysis: Analysis
    report: Mapping[str, Any]


def convert(
    ref: str,
    name: str,
    *,
    model: nn.Module | AdaptedModel | None = None,
    model_ref: str | None = None,
    library: Library | None = None,
    pm: pluggy.PluginManager | None = None,
    description: str = "",
    capabilities: Iterable[str] = (),
    domain: str = "",
    examples: Iterable[str] = (),
    overwrite: bool = False,
    progress: Progress | None = None,
) -> Conversion:
    """
    Convert adapter *ref* (path, ``user/repo``, ``hf://user/repo@rev``) into library adapter *name*.

    The name is checked first (before any download), the adapter is proved on
    the base model (*model*, or loaded from *model_ref*, default the configured
    base model), and only then installed, atomically. A failure at any stage
    leaves the library unchanged.

    Raises:
        InvalidNameError, AdapterExistsError: A bad or taken name (see ``Library.check_installable``).
        AdaptrixError: Whatever :func:`analyse` raises.
    """
    from .library import Library

    library = library if library is not None else Library()
    with library.reserve(name, overwrite=overwrite):  # a second writer of this name is refused at once
        if model is None:
            (progress or _quiet)("load", f"base model {model_ref or '(configured default)'}")
            model = load_base_model_weights(model_ref)
        analysis = analyse(ref, model=model, pm=pm, progress=progress)
        assert analysis.load is not None and analysis.modules is not None
        report = analysis.report()
        (progress or _quiet)("install", name)
        from .peft_format import write_adapter

        with library.staging(name) as tmp:  # inside the library: a crash leaves debris the next open removes
            peft_dir = write_adapter(
                tmp / name, _normalised_config(analysis.parsed, analysis.load, analysis.base_model), analysis.modules
            )
            info = library.install(
                name,
                peft_dir,
                description=description,
                capabilities=capabilities,
                domain=domain,
                examples=examples,
                source=ref,
                base_model=analysis.parsed.config.base_model_name_or_path or analysis.base_model,
                report=report,
                overwrite=overwrite,
            )
    return Conversion(info=info, analysis=analysis, report=report)


__all__ = [
    "STAGES",
    "Analysis",
    "Conversion",
    "analyse",
    "convert",
    "effect_check",
    "fetch",
    "load_base_model_weights",
    "resolve_source",
]
