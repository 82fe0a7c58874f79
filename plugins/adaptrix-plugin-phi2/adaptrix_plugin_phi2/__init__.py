"""
Phi-2 architecture pattern for Adaptrix.

Two naming schemes exist. transformers' native ``PhiForCausalLM`` has separate
``q_proj``/``k_proj``/``v_proj`` and ``dense``; the older remote-code
checkpoints (``phi-msft``) fuse them into ``mixer.Wqkv`` with ``mixer.out_proj``.
Adapters trained on the old names land on the native modules through
:class:`~adaptrix_core.ModuleRename`: the fused LoRA ``B`` is split row-wise
into q, k and v, which is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adaptrix_core import Detection, ModuleMap, ModuleRename, hookimpl
from adaptrix_core.detection import adapter_leaf_names, base_model_mentions


ARCHITECTURE = "phi2"

_LEGACY_RENAMES = (
    ModuleRename(
        pattern=r"transformer\.h\.(\d+)\.mixer\.Wqkv",
        targets=(
            "model.layers.{0}.self_attn.q_proj",
            "model.layers.{0}.self_attn.k_proj",
            "model.layers.{0}.self_attn.v_proj",
        ),
    ),
    ModuleRename(pattern=r"transformer\.h\.(\d+)\.mixer\.out_proj", targets=("model.layers.{0}.self_attn.dense",)),
    ModuleRename(pattern=r"transformer\.h\.(\d+)\.mlp\.fc1", targets=("model.layers.{0}.mlp.fc1",)),
    ModuleRename(pattern=r"transformer\.h\.(\d+)\.mlp\.fc2", targets=("model.layers.{0}.mlp.fc2",)),
)

NATIVE_MAP = ModuleMap(
    architecture=ARCHITECTURE,
    targets={
        "attn.q": "model.layers.*.self_attn.q_proj",
        "attn.k": "model.layers.*.self_attn.k_proj",
        "attn.v": "model.layers.*.self_attn.v_proj",
        "attn.o": "model.layers.*.self_attn.dense",
        "mlp.up": "model.layers.*.mlp.fc1",
        "mlp.down": "model.layers.*.mlp.fc2",
    },
    renames=_LEGACY_RENAMES,
)

REMOTE_CODE_MAP = ModuleMap(
    architecture=ARCHITECTURE,
    targets={
        "attn.qkv": "transformer.h.*.mixer.Wqkv",
        "attn.o": "transformer.h.*.mixer.out_proj",
        "mlp.up": "transformer.h.*.mlp.fc1",
        "mlp.down": "transformer.h.*.mlp.fc2",
    },
)

_REMOTE_MODEL_TYPES = {"phi-msft", "mixformer-sequential"}


@hookimpl
def detect_architecture(model: Any, config: Any) -> Detection | None:
    model_type = getattr(config, "model_type", None)
    if type(model).__name__ == "PhiForCausalLM" and model_type == "phi":
        return Detection(ARCHITECTURE, 1.0, "class is PhiForCausalLM (HF-native q/k/v_proj, dense, fc1, fc2)")
    if model_type == "phi":
        return Detection(ARCHITECTURE, 0.9, "config.model_type == 'phi'")
    if model_type in _REMOTE_MODEL_TYPES:
        return Detection(ARCHITECTURE, 0.9, f"config.model_type == {model_type!r} (remote-code Phi: Wqkv, out_proj)")
    return None


@hookimpl
def detect_adapter_architecture(adapter_config: Mapping[str, Any], module_names: Sequence[str]) -> Detection | None:
    leaves = adapter_leaf_names(adapter_config, module_names)
    named = base_model_mentions(adapter_config, "phi-2", "phi_2", "phi-1", "phi-1_5", "phi2", "microsoft/phi")
    if any(".mixer.Wqkv" in n for n in module_names) or ("Wqkv" in leaves and named):
        return Detection(ARCHITECTURE, 0.9, "targets mixer.Wqkv, the remote-code Phi fused attention")
    if "qkv_proj" in leaves or "gate_up_proj" in leaves:
        return None  # Phi-3's fused layout is a different architecture
    phi_only = leaves & {"dense", "fc1", "fc2", "Wqkv", "out_proj"}
    shared = leaves & {"q_proj", "k_proj", "v_proj"}
    if named and (phi_only or shared):
        return Detection(ARCHITECTURE, 0.9, f"targets {sorted(phi_only | shared)} and base model names {named!r}")
    if {"fc1", "fc2"} & leaves and shared:
        return Detection(ARCHITECTURE, 0.7, "targets q/k/v_proj with fc1/fc2, the Phi MLP names")
    if phi_only or shared:
        return Detection(ARCHITECTURE, 0.4, f"targets {sorted(phi_only | shared)}, which other families share")
    return None


@hookimpl
def map_modules(architecture: str, model: Any) -> ModuleMap | None:
    if architecture != ARCHITECTURE:
        return None
    if model is not None and any(name.endswith("mixer.Wqkv") for name, _ in model.named_modules()):
        return REMOTE_CODE_MAP
    return NATIVE_MAP
