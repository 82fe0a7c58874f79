"""
LLaMA-family architecture pattern for Adaptrix: LLaMA 1-3, Mistral, Qwen2 and SmolLM.

They share one module layout (``model.layers.N.self_attn.{q,k,v,o}_proj`` and a
gated MLP), so one ModuleMap serves them all; the detection reason names the
family.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adaptrix_core import Detection, ModuleMap, hookimpl
from adaptrix_core.detection import adapter_leaf_names, base_model_mentions


ARCHITECTURE = "llama"

FAMILIES = {  # model_type -> class name
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}

MODULE_MAP = ModuleMap(
    architecture=ARCHITECTURE,
    targets={
        "attn.q": "model.layers.*.self_attn.q_proj",
        "attn.k": "model.layers.*.self_attn.k_proj",
        "attn.v": "model.layers.*.self_attn.v_proj",
        "attn.o": "model.layers.*.self_attn.o_proj",
        "mlp.gate": "model.layers.*.mlp.gate_proj",
        "mlp.up": "model.layers.*.mlp.up_proj",
        "mlp.down": "model.layers.*.mlp.down_proj",
    },
)

_NAME_HINTS = ("llama", "mistral", "qwen2", "qwen/qwen2", "smollm", "tinyllama", "alpaca", "vicuna")


@hookimpl
def detect_architecture(model: Any, config: Any) -> Detection | None:
    cls = type(model).__name__
    model_type = getattr(config, "model_type", None)
    if cls in FAMILIES.values():
        return Detection(ARCHITECTURE, 1.0, f"class is {cls}")
    if model_type in FAMILIES:
        return Detection(ARCHITECTURE, 0.9, f"config.model_type == {model_type!r}")
    return None


@hookimpl
def detect_adapter_architecture(adapter_config: Mapping[str, Any], module_names: Sequence[str]) -> Detection | None:
    leaves = adapter_leaf_names(adapter_config, module_names)
    ours = leaves & {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    if not ours:
        return None
    if any(n.startswith(("model.decoder.", "transformer.")) for n in module_names):
        return None  # OPT / GPT-Neo put q_proj elsewhere
    named = base_model_mentions(adapter_config, *_NAME_HINTS)
    foreign = leaves & {"qkv_proj", "gate_up_proj", "Wqkv", "c_attn", "query_key_value"}
    if foreign:
        # Copy-pasted target lists often name another family's fused module too (alpaca-lora era configs
        # list query_key_value next to q_proj/v_proj); only a LLaMA base model name keeps the claim.
        if not named or module_names:
            return None
        return Detection(ARCHITECTURE, 0.9, f"targets {sorted(ours)} and base model names {named!r} "
                                            f"({sorted(foreign)} match nothing in LLaMA)")
    if named:
        return Detection(ARCHITECTURE, 0.9, f"targets {sorted(ours)} and base model names {named!r}")
    if leaves & {"o_proj", "gate_proj", "up_proj", "down_proj"}:
        return Detection(ARCHITECTURE, 0.7, f"targets {sorted(ours)}, the LLaMA-family layout")
    return Detection(ARCHITECTURE, 0.5, f"targets {sorted(ours)}, which other families share")


@hookimpl
def map_modules(architecture: str) -> ModuleMap | None:
    return MODULE_MAP if architecture == ARCHITECTURE else None
