"""
GPT-2 architecture pattern for Adaptrix (also DialoGPT, which is GPT-2 weights fine-tuned for chat).

GPT-2 uses ``transformers.Conv1D`` layers, whose weight is stored (in, out):
core's LoRA wrapper handles that with PEFT's ``fan_in_fan_out`` convention.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adaptrix_core import Detection, ModuleMap, hookimpl
from adaptrix_core.detection import adapter_leaf_names, base_model_mentions


ARCHITECTURE = "gpt2"

MODULE_MAP = ModuleMap(
    architecture=ARCHITECTURE,
    targets={
        "attn.qkv": "transformer.h.*.attn.c_attn",
        "attn.o": "transformer.h.*.attn.c_proj",
        "mlp.up": "transformer.h.*.mlp.c_fc",
        "mlp.down": "transformer.h.*.mlp.c_proj",
    },
)


def _flavour(model: Any) -> str:
    name = str(getattr(getattr(model, "config", None), "_name_or_path", "") or getattr(model, "name_or_path", ""))
    return "DialoGPT" if "dialogpt" in name.lower() else "GPT-2"


@hookimpl
def detect_architecture(model: Any, config: Any) -> Detection | None:
    flavour = _flavour(model)
    if type(model).__name__ in {"GPT2LMHeadModel", "GPT2Model", "GPT2ForSequenceClassification"}:
        return Detection(ARCHITECTURE, 1.0, f"class is {type(model).__name__} ({flavour})")
    if getattr(config, "model_type", None) == "gpt2":
        return Detection(ARCHITECTURE, 0.9, f"config.model_type == 'gpt2' ({flavour})")
    return None


@hookimpl
def detect_adapter_architecture(adapter_config: Mapping[str, Any], module_names: Sequence[str]) -> Detection | None:
    leaves = adapter_leaf_names(adapter_config, module_names)
    if not leaves & {"c_attn", "c_proj", "c_fc"}:
        return None
    named = base_model_mentions(adapter_config, "gpt2", "dialogpt", "distilgpt")
    if named:
        return Detection(ARCHITECTURE, 0.9, f"targets {sorted(leaves & {'c_attn', 'c_proj', 'c_fc'})} and base model names {named!r}")
    if "c_fc" in leaves:
        return Detection(ARCHITECTURE, 0.9, "targets mlp.c_fc, which only GPT-2 has")
    # Qwen-1 also names its attention c_attn/c_proj.
    return Detection(ARCHITECTURE, 0.5, "targets c_attn/c_proj, shared by GPT-2 and Qwen-1")


@hookimpl
def map_modules(architecture: str) -> ModuleMap | None:
    return MODULE_MAP if architecture == ARCHITECTURE else None
