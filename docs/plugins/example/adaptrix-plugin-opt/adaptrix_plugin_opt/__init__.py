"""
OPT architecture pattern for Adaptrix (facebook/opt-125m ... opt-66b, Galactica).

OPT keeps q, k and v as separate projections and its two MLP layers directly in the decoder layer
(``fc1``, ``fc2``), with no MLP sub-module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adaptrix_core import Detection, ModuleMap, hookimpl
from adaptrix_core.detection import adapter_leaf_names, base_model_mentions


ARCHITECTURE = "opt"

MODULE_MAP = ModuleMap(
    architecture=ARCHITECTURE,
    targets={
        "attn.q": "model.decoder.layers.*.self_attn.q_proj",
        "attn.k": "model.decoder.layers.*.self_attn.k_proj",
        "attn.v": "model.decoder.layers.*.self_attn.v_proj",
        "attn.o": "model.decoder.layers.*.self_attn.out_proj",
        "mlp.up": "model.decoder.layers.*.fc1",
        "mlp.down": "model.decoder.layers.*.fc2",
    },
)


@hookimpl
def detect_architecture(model: Any, config: Any) -> Detection | None:
    if type(model).__name__ in {"OPTForCausalLM", "OPTModel"}:
        return Detection(ARCHITECTURE, 1.0, f"class is {type(model).__name__}")
    if getattr(config, "model_type", None) == "opt":
        return Detection(ARCHITECTURE, 0.9, "config.model_type == 'opt'")
    return None


@hookimpl
def detect_adapter_architecture(adapter_config: Mapping[str, Any], module_names: Sequence[str]) -> Detection | None:
    leaves = adapter_leaf_names(adapter_config, module_names)
    if not leaves & {"q_proj", "v_proj", "out_proj", "fc1", "fc2"}:
        return None
    named = base_model_mentions(adapter_config, "opt-", "galactica")
    if named:
        return Detection(ARCHITECTURE, 0.9, f"base model names {named!r}")
    if "out_proj" in leaves and leaves & {"fc1", "fc2"}:
        return Detection(ARCHITECTURE, 0.5, "out_proj with fc1/fc2, which OPT and a few others use")
    return None


@hookimpl
def map_modules(architecture: str) -> ModuleMap | None:
    return MODULE_MAP if architecture == ARCHITECTURE else None
