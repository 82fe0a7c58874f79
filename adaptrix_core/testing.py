"""
Helpers for tests, Adaptrix's own and plugin authors': tiny random models and conformance checks.

Every model here is built from a config with a few thousand parameters, so a
test never downloads anything and runs in milliseconds. The fixtures that go
with them (temporary ``ADAPTRIX_HOME``, offline hub, plugin managers) are in
:mod:`adaptrix_core.pytest_plugin`, which pytest loads automatically once
adaptrix-core is installed. docs/plugins/testing.md documents each helper.
"""

from __future__ import annotations

import copy
import os

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from .detection import detect, module_map, resolve_targets


if TYPE_CHECKING:
    import torch

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


def tiny_bloom(*, seed: int = 0, vocab_size: int = 128) -> nn.Module:
    """A 2-layer random BLOOM (fused ``self_attention.query_key_value``, ALiBi, no position embeddings)."""
    import torch

    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(seed)
    config = BloomConfig(vocab_size=vocab_size, hidden_size=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)
    return BloomForCausalLM(config).eval()


def tiny_opt(*, seed: int = 0, vocab_size: int = 128) -> nn.Module:
    """A 2-layer random OPT (``self_attn.{q,k,v,out}_proj``, ``fc1``/``fc2`` directly in the layer)."""
    import torch

    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    config = OPTConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64,
        max_position_embeddings=64, word_embed_proj_dim=32, bos_token_id=0, eos_token_id=0, pad_token_id=1,
    )
    return OPTForCausalLM(config).eval()


def tiny_falcon(*, seed: int = 0, vocab_size: int = 128) -> nn.Module:
    """A 2-layer random Falcon (fused ``query_key_value``, multi-query attention, parallel attention + MLP)."""
    import torch

    from transformers import FalconConfig, FalconForCausalLM

    torch.manual_seed(seed)
    config = FalconConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, bos_token_id=0,
        eos_token_id=0,
    )
    return FalconForCausalLM(config).eval()


def tiny_gpt_neox(*, seed: int = 0, vocab_size: int = 128) -> nn.Module:
    """A 2-layer random GPT-NeoX / Pythia (fused ``attention.query_key_value``, rotary)."""
    import torch

    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
    )
    return GPTNeoXForCausalLM(config).eval()


TINY_MODELS = {"gpt2": tiny_gpt2, "phi2": tiny_phi, "llama": tiny_llama}
"""Architecture name -> factory of a tiny random model of it (the first-party plugins' architectures)."""

TINY_UNCLAIMED = {"bloom": tiny_bloom, "opt": tiny_opt, "falcon": tiny_falcon, "gpt_neox": tiny_gpt_neox}
"""``model_type`` -> factory, for families no first-party plugin claims (the generic pattern's test bed)."""


def plugin_manager(*plugins: Any, load_entry_points: bool = False) -> pluggy.PluginManager:
    """
    A fresh manager with core's defaults and exactly *plugins* (modules or objects) registered.

    Pins the plugin set, so a test gives the same answer whatever else is installed. Pass
    ``load_entry_points=True`` to add the installed plugins too.
    """
    from .plugins import make_plugin_manager

    pm = make_plugin_manager(load_entry_points=load_entry_points)
    for plugin in plugins:
        if pm.is_registered(plugin):
            continue
        pm.register(plugin, name=getattr(plugin, "__name__", None))
    return pm


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


def make_peft_adapter(
    model: nn.Module, target_modules: Sequence[str] | str, directory: str | os.PathLike[str], *, r: int = 4,
    alpha: float = 8, seed: int = 0, **lora_config: Any,
) -> Path:
    """
    Save a random PEFT LoRA adapter for *model* (non-zero ``B``: a zero adapter proves nothing) into *directory*.

    *model* is not modified (PEFT works on a copy). Needs ``peft`` (adaptrix-core's ``test`` extra).
    """
    import torch

    from peft import LoraConfig, get_peft_model

    fused_conv = any(type(m).__name__ == "Conv1D" for m in model.modules())
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=target_modules, init_lora_weights=False, lora_dropout=0.0,
        fan_in_fan_out=fused_conv, **lora_config,
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    peft_model.save_pretrained(directory)
    return Path(directory)


def assert_logits_match_peft(
    model: nn.Module, adapter_dir: str | os.PathLike[str], *, pm: pluggy.PluginManager | None = None,
    atol: float = 1e-5, seq_len: int = 8, seed: int = 0,
) -> float:
    """
    Load *adapter_dir* with PEFT and with Adaptrix onto copies of *model*; assert their logits agree.

    The proof a pattern is right: wrong targets, a wrong layer index or a missed ``fan_in_fan_out``
    all show up as a logit difference. Returns the largest absolute difference.
    """
    import torch

    from peft import PeftModel

    from .runtime import attach

    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 100)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (2, seq_len), generator=generator)
    with torch.no_grad():
        expected = PeftModel.from_pretrained(copy.deepcopy(model), str(adapter_dir)).eval()(ids).logits
        am = attach(copy.deepcopy(model), pm=pm)
        am.load_adapter("under-test", adapter_dir)
        with am.using("under-test"):
            actual = am.model(ids).logits
        base = model(ids).logits
    assert (expected - base).abs().max() > atol, "the adapter does not change the logits: the check would prove nothing"
    diff = float((expected - actual).abs().max())
    assert diff <= atol, f"Adaptrix's logits differ from PEFT's by {diff:.3g} (allowed {atol:g}) on {adapter_dir}"
    return diff


def logits_row_by_row(am: Any, input_ids: torch.Tensor, rows: Sequence[Any]) -> torch.Tensor:
    """
    Each row of *input_ids* run on its own under its own selection, stacked: the reference a mixed batch
    (``am.forward(input_ids, adapters=rows)``) must equal.
    """
    import torch

    alone = []
    with torch.no_grad():
        for i, row in enumerate(rows):
            with am.using(row):
                alone.append(am.model(input_ids[i : i + 1]).logits[0])
    return torch.stack(alone)
