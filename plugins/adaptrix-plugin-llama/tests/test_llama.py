"""The LLaMA-family pattern: LLaMA, Mistral, Qwen2 and SmolLM share one layout."""

from __future__ import annotations

import pytest

from adaptrix_core.detection import detect, detect_adapter_all
from adaptrix_core.plugins import list_plugins, make_plugin_manager
from adaptrix_core.testing import assert_targets_resolve, tiny_llama


@pytest.fixture(name="pm")
def _pm():
    return make_plugin_manager()


def test_plugin_is_discovered(pm):
    """
    Installing the distribution registers the `llama` entry point.
    """
    assert "adaptrix-plugin-llama" in {p.name for p in list_plugins(pm)}


def test_detects_llama_with_full_confidence(pm):
    """
    A LlamaForCausalLM is detected as llama with confidence 1.0.
    """
    detection = detect(tiny_llama(), pm=pm)

    assert ("llama", 1.0) == (detection.architecture, detection.confidence)


def test_every_target_matches_a_real_module(pm):
    """
    All seven roles (attention and gated MLP) resolve in every layer.
    """
    assert 14 == len(assert_targets_resolve(tiny_llama(), pm))


@pytest.mark.parametrize(
    ("config", "names", "confidence"),
    [
        ({"base_model_name_or_path": "meta-llama/Llama-2-7b-hf", "target_modules": ["q_proj", "v_proj"]}, [], 0.9),
        ({"base_model_name_or_path": "Qwen/Qwen2.5-0.5B-Instruct", "target_modules": ["q_proj", "o_proj"]}, [], 0.9),
        ({"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}, ["model.layers.0.self_attn.q_proj"], 0.9),
        ({"base_model_name_or_path": "local/model", "target_modules": ["o_proj", "down_proj"]}, [], 0.7),
    ],
)
def test_adapter_detection(pm, config, names, confidence):
    """
    LLaMA-family adapters are recognised; a family base name makes it sure.
    """
    best = detect_adapter_all(config, names, pm=pm)[0]

    assert ("llama", confidence) == (best.architecture, best.confidence)


@pytest.mark.parametrize(
    "config",
    [
        {"base_model_name_or_path": "bigscience/bloom-560m", "target_modules": ["query_key_value", "dense"]},
        {"base_model_name_or_path": "microsoft/Phi-3-mini-4k-instruct", "target_modules": ["qkv_proj", "o_proj"]},
    ],
)
def test_other_families_are_not_claimed(pm, config):
    """
    BLOOM and Phi-3 adapters are not LLaMA-family.
    """
    assert "llama" not in {d.architecture for d in detect_adapter_all(config, [], pm=pm)}
