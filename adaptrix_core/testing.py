"""
Helpers for tests, Adaptrix's own and plugin authors': tiny random models and conformance checks.

Every model here is built from a config with a few thousand parameters, so a
test never downloads anything and runs in milliseconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from .detection import detect, module_map, resolve_targets


if TYPE_CHECKING:
    from torch import nn


def tiny_gpt2(*, name_or_path: str = "", seed: int = 0) -> nn.Module:
    """A 2-layer random GPT-2 (Conv1D layers); pass ``name_or_path='microsoft/DialoGPT-small'`` for DialoGPT."""
    import torch

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    config._name_or_path = name_or_path
    return GPT2LMHeadModel(config).eval()


def tiny_phi(*, seed: int = 0) -> nn.Module:
    """A 2-layer random HF-native Phi (q/k/v_proj, dense, fc1, fc2)."""
    import torch

    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    config = PhiConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )
    return PhiForCausalLM(config).eval()


def tiny_llama(*, layers: int = 2, seed: int = 0) -> nn.Module:
    """A random LLaMA with grouped-query attention (4 heads, 2 KV heads)."""
    import torch

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    return LlamaForCausalLM(config).eval()


TINY_MODELS = {"gpt2": tiny_gpt2, "phi2": tiny_phi, "llama": tiny_llama}
"""Architecture name -> factory of a tiny random model of it."""


def assert_targets_resolve(model: nn.Module, pm: pluggy.PluginManager) -> dict[str, str]:
    """
    Detect *model*, map its modules, and check every role's glob matches a real module.

    Returns module name -> role. A plugin author's first test.
    """
    detection = detect(model, pm=pm)
    mmap = module_map(detection.architecture, model, pm=pm)
    resolved = resolve_targets(model, mmap)
    missing = set(mmap.targets) - set(resolved.values())
    assert not missing, f"roles {sorted(missing)} of {mmap.architecture!r} match no module of {type(model).__name__}"
    return resolved
