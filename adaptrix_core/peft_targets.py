"""
PEFT's ``target_modules`` rules, applied to the modules an adapter file holds.

PEFT decides which modules get a LoRA layer from the config alone
(``check_target_module_exists`` in ``peft.tuners.tuners_utils``): a regex
string must match the whole module name, a list entry must equal the name or
end it after a dot, ``layers_to_transform`` / ``layers_pattern`` narrow a list
to some layers, ``exclude_modules`` removes modules. Saved tensors of modules
the config does not target are never loaded by PEFT, so Adaptrix ignores them
too (and says so), and refuses the configs PEFT refuses.
"""

from __future__ import annotations

import re

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .exceptions import AdapterFormatError


ALL_LINEAR = "all-linear"
"""PEFT's shorthand for every linear layer but the output head."""
DUMMY = "dummy-target-modules"
"""PEFT's placeholder that targets nothing."""


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to *limit* characters so an error stays one readable line."""
    try:
        text = repr(value)
    except ValueError:  # an int too long for repr (sys.get_int_max_str_digits)
        return f"<an integer of more than {4300} digits>"
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text)} characters)"


@attrs.frozen
class Targets:
    """The module-selecting fields of a LoRA config, validated as PEFT validates them."""

    target_modules: tuple[str, ...] | str | None
    exclude_modules: tuple[str, ...] | str | None = None
    layers_to_transform: tuple[int, ...] | None = None
    layers_pattern: tuple[str, ...] | None = None

    def decide(self, module: str) -> str | None:
        """``None`` if PEFT targets *module*, else why it does not."""
        excluded = self.exclude_modules
        if excluded:
            if isinstance(excluded, str):
                if re.fullmatch(excluded, module):
                    return "excluded by exclude_modules"
            elif module in excluded or any(module.endswith(f".{e}") for e in excluded):
                return "excluded by exclude_modules"
        targets = self.target_modules
        if targets is None or (isinstance(targets, str) and targets.lower() == ALL_LINEAR):
            return None
        if isinstance(targets, str):
            return None if re.fullmatch(targets, module) else "not matched by target_modules"
        if module in targets:
            return None  # named exactly: PEFT skips the layer check
        if not any(module.endswith(f".{t}") for t in targets):
            return "not matched by target_modules"
        if not self.layers_to_transform:
            return None
        layer = _layer_index(module, self.layers_pattern)
        if layer is None:
            return "no layer index to compare with layers_to_transform"
        return None if layer in self.layers_to_transform else f"layer {layer} is not in layers_to_transform"


def _layer_index(module: str, patterns: tuple[str, ...] | None) -> int | None:
    """The layer index PEFT reads from a module name: the first numbered segment (or the one after a pattern)."""
    if not patterns:
        found = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", module)
    else:
        found = None
        for pattern in patterns:
            found = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", module)
            if found is not None:
                break
    return int(found["idx"]) if found else None


def parse_targets(path: Path, raw: Mapping[str, Any], layers: tuple[int, ...] | None, pattern: tuple[str, ...] | None) -> Targets:
    """
    Validate ``target_modules`` and ``exclude_modules`` and combine them with the layer fields.

    Raises:
        AdapterFormatError: A wrong type, an invalid regex, an empty target, or a combination PEFT refuses.
    """
    targets = _names(path, "target_modules", raw.get("target_modules"))
    excluded = _names(path, "exclude_modules", raw.get("exclude_modules"))
    if targets is not None and (targets == "" or targets == () or targets == DUMMY):
        raise AdapterFormatError(
            f"{path}: field 'target_modules' is {short(raw.get('target_modules'))}, which targets no module; "
            "PEFT refuses such a config. Fix: list the modules the adapter was trained on."
        )
    if isinstance(targets, str) and (layers is not None or pattern is not None):
        raise AdapterFormatError(
            f"{path}: field 'target_modules' is a regular expression, which PEFT does not combine with "
            "'layers_to_transform' or 'layers_pattern'. Fix: use a list of module names, or drop the layer fields."
        )
    if pattern and layers is None:
        raise AdapterFormatError(
            f"{path}: field 'layers_pattern' is set without 'layers_to_transform'; PEFT refuses that. "
            "Fix: add layers_to_transform, or drop layers_pattern."
        )
    return Targets(target_modules=targets, exclude_modules=excluded, layers_to_transform=layers, layers_pattern=pattern)


def _names(path: Path, field: str, value: Any) -> tuple[str, ...] | str | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            re.compile(value)
        except (re.error, RecursionError, OverflowError) as e:
            raise AdapterFormatError(
                f"{path}: field {field!r} is not a valid regular expression ({short(str(e), 80)}): {short(value)}"
            ) from None
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AdapterFormatError(f"{path}: field {field!r} must be a string or a list of strings, got {short(value)}")


def select(
    targets: Targets, modules: Iterable[str], *, config_path: Path, weights_file: Path
) -> tuple[set[str], tuple[tuple[str, str], ...]]:
    """
    The saved modules PEFT would load, and ``(module, why)`` for the ones it would ignore.

    Raises:
        AdapterFormatError: The config targets none of the saved modules (PEFT would load nothing).
    """
    names = list(modules)
    kept: set[str] = set()
    ignored: list[tuple[str, str]] = []
    for module in names:
        why = targets.decide(module)
        if why is None:
            kept.add(module)
        else:
            ignored.append((module, why))
    if names and not kept:
        fields = f"target_modules {short(targets.target_modules)}"
        if targets.layers_to_transform is not None:
            fields += f", layers_to_transform {short(targets.layers_to_transform)}"
        if targets.exclude_modules:
            fields += f", exclude_modules {short(targets.exclude_modules)}"
        raise AdapterFormatError(
            f"{config_path}: {fields} select none of the {len(names)} modules in {weights_file.name} "
            f"(e.g. {short(names[0], 80)}); PEFT would load nothing. Fix: correct target_modules in {config_path.name}."
        )
    return kept, tuple(ignored)


__all__ = ["ALL_LINEAR", "Targets", "parse_targets", "select", "short"]
