"""
The contract between adaptrix-core and its plugins.

Only hook *specifications* live here. Every implementation, including
Adaptrix's own defaults in ``adaptrix_core.builtins``, uses ``hookimpl``.
Add arguments to a spec freely (implementations only receive the arguments
they name), but never rename or remove one without a ``warn_on_impl``
deprecation period.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pluggy


if TYPE_CHECKING:  # keep `adaptrix plugins` fast: no torch import here
    import typer

    from torch import nn
    from transformers import PretrainedConfig

    from .types import AdapterSource, Detection, InjectionStrategy, ModuleMap, Router


hookspec = pluggy.HookspecMarker("adaptrix")
hookimpl = pluggy.HookimplMarker("adaptrix")


@hookspec
def detect_architecture(model: nn.Module, config: PretrainedConfig | None) -> Detection | None:
    """
    Say whether *model* is an architecture you support, and how sure you are.

    Called by :func:`adaptrix_core.detection` whenever a base model is attached,
    inspected (``adaptrix detect``) or given to the engine. *config* is
    ``model.config`` when the model has one.

    Every implementation is called; this is deliberately **not** firstresult,
    because call order says nothing about quality. Core keeps the highest
    ``confidence`` and raises ``AmbiguousArchitectureError`` on a tie between
    different architectures. Return ``None`` when the model is not yours;
    never raise for "not mine". Core fills ``Detection.plugin`` with your
    plugin's name; a ``wrapper=True`` implementation sees the labelled answers
    and may rescore them. Core's generic fallback answers last, at 0.3.

    Confidence rubric (keeps independent plugins comparable):

    - 1.0: exact class match, e.g. ``type(model).__name__ == "PhiForCausalLM"``
    - 0.9: ``config.model_type`` match
    - 0.5: structural match on module names only
    - below 0.3: a guess; prefer returning ``None``
    """


@hookspec
def detect_adapter_architecture(
    adapter_config: Mapping[str, Any], module_names: Sequence[str]
) -> Detection | None:
    """
    Say whether an adapter was trained on an architecture you support.

    Called when an adapter is converted or inspected, before any base model
    is involved. *adapter_config* is the parsed ``adapter_config.json``;
    *module_names* are the adapter's target module names with PEFT prefixes
    and adapter names stripped (``transformer.h.0.attn.c_attn``).

    Every implementation is called and scored like
    :func:`detect_architecture`: 0.9 for an unambiguous module-name match
    (or ``base_model_name_or_path`` naming your family), 0.5 for names that
    other families share too (``dense``, ``query_key_value``). Return
    ``None`` when the names are not yours.
    """


@hookspec(firstresult=True)
def map_modules(architecture: str, model: nn.Module | None) -> ModuleMap | None:
    """
    Return where the adaptable layers of *architecture* live.

    Called after detection, to decide which modules get wrapped and to map an
    adapter's module names onto the base model. *model* is the real model
    when there is one (so a plugin can tell fused ``Wqkv`` checkpoints from
    split ones), else ``None``.

    Stops at first non-None result: one plugin owns each architecture. Return
    ``None`` for architectures you do not own. To extend another plugin's map
    (e.g. also target the MLP), use ``@hookimpl(wrapper=True)``:
    ``module_map = yield`` then return an extended copy.
    """


@hookspec
def register_injection_strategies() -> Iterable[InjectionStrategy]:
    """
    Return injection strategies (instances).

    Called once when the registry is built. ``strategy.name`` must be unique
    across plugins; core provides ``lora``. Return an empty list (or ``None``)
    if you provide none.
    """


@hookspec
def register_routers() -> Iterable[type[Router]]:
    """
    Return Router classes.

    Called once when the registry is built. ``cls.name`` must be unique across
    plugins; core provides ``keyword``. Classes are instantiated with keyword
    options only, when a router is first used.
    """


@hookspec
def register_adapter_sources() -> Iterable[AdapterSource]:
    """
    Return adapter sources (instances).

    Called once when the registry is built. ``source.scheme`` must be unique
    across plugins; core provides ``file`` and ``hf``.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """
    Add commands to the ``adaptrix`` CLI, e.g. ``adaptrix phi2 inspect``.

    Called once each time :func:`adaptrix_core.cli.make_app` builds the app.
    Use ``@app.command()`` or ``app.add_typer(...)``; return nothing.
    """
