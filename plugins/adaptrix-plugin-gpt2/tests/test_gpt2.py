"""The GPT-2 / DialoGPT pattern, exercised through real entry-point discovery."""

from __future__ import annotations

import pytest

from adaptrix_core.detection import detect, detect_adapter_all
from adaptrix_core.plugins import list_plugins, make_plugin_manager
from adaptrix_core.testing import assert_targets_resolve, tiny_gpt2


@pytest.fixture(name="pm")
def _pm():
    return make_plugin_manager()


def test_plugin_is_discovered(pm):
    """
    Installing the distribution registers the `gpt2` entry point.
    """
    assert "adaptrix-plugin-gpt2" in {p.name for p in list_plugins(pm)}


@pytest.mark.parametrize("name_or_path", ["gpt2", "microsoft/DialoGPT-medium"])
def test_detects_gpt2_and_dialogpt_with_full_confidence(pm, name_or_path):
    """
    GPT2LMHeadModel is gpt2 with confidence 1.0, whether plain GPT-2 or DialoGPT.
    """
    detection = detect(tiny_gpt2(name_or_path=name_or_path), pm=pm)

    assert ("gpt2", 1.0, "gpt2") == (detection.architecture, detection.confidence, detection.plugin)


def test_every_target_matches_a_real_conv1d_module(pm):
    """
    Each glob matches a real module, and every matched module is a transformers Conv1D.
    """
    from transformers.pytorch_utils import Conv1D

    model = tiny_gpt2()
    resolved = assert_targets_resolve(model, pm)

    modules = dict(model.named_modules())
    assert 8 == len(resolved)
    assert all(isinstance(modules[name], Conv1D) for name in resolved)


@pytest.mark.parametrize(
    ("config", "names", "confidence"),
    [
        ({"base_model_name_or_path": "gpt2", "target_modules": ["c_attn", "c_proj"]}, [], 0.9),
        ({"base_model_name_or_path": None, "target_modules": ["c_attn"]}, ["transformer.h.0.mlp.c_fc"], 0.9),
        ({"base_model_name_or_path": "D:/Model/Qwen-1_8B-Chat", "target_modules": ["c_attn"]}, [], 0.5),
    ],
)
def test_adapter_detection_scores_names(pm, config, names, confidence):
    """
    c_fc or a GPT-2 base name is sure; c_attn alone is shared with Qwen-1, so only 0.5.
    """
    best = detect_adapter_all(config, names, pm=pm)[0]

    assert ("gpt2", confidence) == (best.architecture, best.confidence)
