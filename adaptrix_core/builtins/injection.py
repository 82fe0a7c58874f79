"""
Core's ``lora`` injection strategy: wrap ``nn.Linear`` and transformers ``Conv1D`` modules in place.

Registered through the plugin manager like any installed plugin; a plugin
that serves other layer types (quantized linears, say) registers its own
strategy under another name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from ..exceptions import AdapterMismatchError
from ..hookspecs import hookimpl


if TYPE_CHECKING:
    from torch import nn


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


class LoraInjection:
    """Wraps each targeted module in a :class:`~adaptrix_core.lora_layer.LoraLayer`; eject puts the originals back."""

    name: ClassVar[str] = "lora"

    def inject(self, model: nn.Module, module_names: Sequence[str]) -> dict[str, nn.Module]:
        from ..lora_layer import LoraLayer, can_wrap

        modules = dict(model.named_modules())
        unwrappable = [f"{n} ({type(modules[n]).__name__})" for n in module_names if not can_wrap(modules[n])]
        if unwrappable:
            raise AdapterMismatchError(
                f"the 'lora' injection strategy wraps nn.Linear and transformers Conv1D only; cannot wrap "
                f"{', '.join(unwrappable[:5])}. Fix: target other roles, or install a strategy for these layers."
            )
        wrappers: dict[str, nn.Module] = {}
        for name in module_names:
            parent, attr = _parent(model, name)
            wrapper = LoraLayer(modules[name])
            setattr(parent, attr, wrapper)
            wrappers[name] = wrapper
        return wrappers

    def eject(self, model: nn.Module, wrappers: Mapping[str, nn.Module]) -> None:
        for name, wrapper in wrappers.items():
            parent, attr = _parent(model, name)
            setattr(parent, attr, wrapper.base_layer)


@hookimpl
def register_injection_strategies() -> list[LoraInjection]:
    return [LoraInjection()]
