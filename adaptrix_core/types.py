"""
Value types and plugin protocols shared by core and plugins.

Values are frozen attrs classes; objects that plugins provide (injection
strategies, routers, adapter sources) are ``Protocol``s, so plugin authors
never have to subclass anything. Nothing here imports torch at runtime.
"""

from __future__ import annotations

import functools
import re

from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs


if TYPE_CHECKING:
    from torch import nn


ROLES = ("attn.q", "attn.k", "attn.v", "attn.qkv", "attn.o", "mlp.gate", "mlp.up", "mlp.down")
"""Canonical module roles. Every architecture maps some of them onto module-name globs."""


def _known_roles(instance: object, attribute: attrs.Attribute[Any], targets: Mapping[str, str]) -> None:
    unknown = set(targets) - set(ROLES)
    if unknown:
        msg = f"unknown role(s) {sorted(unknown)}; expected a subset of {ROLES}"
        raise ValueError(msg)
    if not targets:
        msg = "a ModuleMap needs at least one role"
        raise ValueError(msg)


def _valid_regex(instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    try:
        re.compile(value)
    except re.error as e:
        msg = f"{attribute.name} is not a valid regular expression ({e}): {value!r}"
        raise ValueError(msg) from None


@attrs.frozen
class Detection:
    """
    A plugin's claim that a model (or an adapter) is *architecture*.

    Attributes:
        architecture: Short unique name, e.g. ``"phi2"``.

        confidence:
            0.0-1.0 on the rubric in
            :func:`adaptrix_core.hookspecs.detect_architecture`.

        reason: One human sentence; printed by ``adaptrix detect``.
    """

    architecture: str
    confidence: float = attrs.field(
        converter=float, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    reason: str = ""
    plugin: str | None = attrs.field(default=None, eq=False)
    """Name of the plugin that answered; filled in by core, not by plugins."""


@attrs.frozen
class ModuleRename:
    """
    How an adapter trained on an older naming scheme lands on today's modules.

    *pattern* is a regex matched (fully) against an adapter's module name; each
    template in *targets* is formatted with the match groups. One target is a
    rename. Several targets mean a fused module: LoRA ``A`` is shared and the
    rows of ``B`` are split between the targets in proportion to their
    ``out_features``, which is exact because ``B @ A`` splits row-wise.

    Example (remote-code Phi onto HF-native Phi)::

        ModuleRename(
            pattern=r"transformer\\.h\\.(\\d+)\\.mixer\\.Wqkv",
            targets=("model.layers.{0}.self_attn.q_proj",
                     "model.layers.{0}.self_attn.k_proj",
                     "model.layers.{0}.self_attn.v_proj"),
        )
    """

    pattern: str = attrs.field(validator=_valid_regex)
    targets: tuple[str, ...] = attrs.field(converter=tuple)

    def apply(self, module_name: str) -> tuple[str, ...] | None:
        """Return the target module names for *module_name*, or ``None`` if it does not match."""
        match = re.fullmatch(self.pattern, module_name)
        if match is None:
            return None
        return tuple(t.format(*match.groups()) for t in self.targets)


@attrs.frozen
class ModuleMap:
    """
    Where the adaptable layers of one architecture live.

    Attributes:
        architecture: The architecture this map belongs to.

        targets:
            Canonical role -> module-name glob, e.g.
            ``{"attn.q": "model.layers.*.self_attn.q_proj"}``. ``*`` stands for
            the layer index.

        renames:
            Legacy adapter module names and how they map onto *targets*
            (see :class:`ModuleRename`).
    """

    architecture: str
    targets: Mapping[str, str] = attrs.field(validator=_known_roles)
    renames: tuple[ModuleRename, ...] = attrs.field(default=(), converter=tuple)

    def role_of(self, module_name: str) -> str | None:
        """Return the role whose glob matches *module_name*, or ``None``."""
        for role, glob in self.targets.items():
            if _glob_regex(glob).fullmatch(module_name):
                return role
        return None

    def layer_of(self, module_name: str) -> int | None:
        """Return the layer index (the ``*`` of the glob) of *module_name*, or ``None``."""
        for glob in self.targets.values():
            match = _glob_regex(glob).fullmatch(module_name)
            if match is not None:
                return int(match.group(1))
        return None


@functools.lru_cache(maxsize=1024)
def _glob_regex(glob: str) -> re.Pattern[str]:
    # cached: loading an adapter asks role_of/layer_of for every module, once per glob
    return re.compile(re.escape(glob).replace(r"\*", r"(\d+)"))


@attrs.frozen
class AdapterInfo:
    """
    What routers and listings know about one adapter, without loading tensors.

    Attributes:
        name: Library name.
        description: One or two sentences of what it does.
        capabilities: Short tags, e.g. ``("json", "structured-output")``.
        domain: One word or phrase, e.g. ``"cooking"``.
        examples: Example prompts it is meant for (routers embed them).
        counter_examples:
            Requests that look close but are *not* for it ("not for"): a question
            about JSON for a JSON-output adapter. Routers learn to refuse them.
        base_model: The base model it was trained on, if known.
        path: Its PEFT directory, if it lives on disk.
        shipped: ``True`` for adapters that ship in the repository's ``adapters/``.
    """

    name: str
    description: str = ""
    capabilities: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    domain: str = ""
    examples: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    base_model: str | None = None
    path: Path | None = None
    shipped: bool = False
    counter_examples: tuple[str, ...] = attrs.field(default=(), converter=tuple)


@attrs.frozen
class RouteCandidate:
    """One adapter a router considered, with its score and why."""

    adapter: str
    score: float
    reason: str = ""


@attrs.frozen
class Routing:
    """
    A router's decision for one query.

    Attributes:
        adapters:
            Adapter name -> weight. Empty means the base model answers; several
            entries mean compose them with these weights.

        candidates: Every adapter considered, best first, for ``adaptrix route``.

        router: Name of the router that decided.

        reason: One sentence explaining the choice.
    """

    adapters: Mapping[str, float]
    candidates: tuple[RouteCandidate, ...] = attrs.field(default=(), converter=tuple)
    router: str = ""
    reason: str = ""

    @property
    def choice(self) -> str | None:
        """The single best adapter, or ``None`` when the base model answers."""
        if not self.adapters:
            return None
        return max(self.adapters.items(), key=lambda kv: kv[1])[0]


@runtime_checkable
class InjectionStrategy(Protocol):
    """
    **Protocol:** puts LoRA-capable wrappers around a model's target modules.

    Wrapping happens once per model; loading, switching and unloading
    adapters afterwards never changes module structure.
    """

    name: ClassVar[str]

    def inject(self, model: nn.Module, module_names: Sequence[str]) -> Mapping[str, nn.Module]:
        """Wrap each named module in place; return module name -> wrapper."""
        ...

    def eject(self, model: nn.Module, wrappers: Mapping[str, nn.Module]) -> None:
        """Put the original modules back exactly where they were."""
        ...


@runtime_checkable
class Router(Protocol):
    """
    **Protocol:** picks the adapter(s) for a query, or none (the base model).

    Router classes are constructed with keyword options only (all optional).
    """

    name: ClassVar[str]

    def route(
        self, query: str, adapters: Sequence[AdapterInfo], *, resident: Collection[str] = ()
    ) -> Routing:
        """Decide for one *query* among *adapters*; *resident* ones win near ties."""
        ...


@runtime_checkable
class AdapterSource(Protocol):
    """
    **Protocol:** turns a reference (``./dir``, ``user/repo``, ``hf://user/repo``) into a local PEFT dir.
    """

    scheme: ClassVar[str]

    def claims(self, ref: str) -> bool:
        """Return True if a reference *without* ``scheme://`` is meant for this source."""
        ...

    def fetch(self, ref: str) -> Path:
        """Return a local directory holding ``adapter_config.json`` and the weights."""
        ...
