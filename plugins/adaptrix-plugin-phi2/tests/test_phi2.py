"""The Phi-2 pattern: HF-native names, remote-code names, and adapter detection."""

from __future__ import annotations

import pytest

from adaptrix_core.detection import detect, detect_adapter_all, module_map
from adaptrix_core.plugins import list_plugins, make_plugin_manager
from adaptrix_core.testing import assert_targets_resolve, tiny_phi


@pytest.fixture(name="pm")
def _pm():
    return make_plugin_manager()


def test_plugin_is_discovered(pm):
    """
    Installing the distribution registers the `phi2` entry point.
    """
    assert "adaptrix-plugin-phi2" in {p.name for p in list_plugins(pm)}


def test_detects_phi_with_full_confidence(pm):
    """
    A PhiForCausalLM is detected as phi2 with confidence 1.0.
    """
    detection = detect(tiny_phi(), pm=pm)

    assert ("phi2", 1.0) == (detection.architecture, detection.confidence)


def test_every_target_matches_a_real_module(pm):
    """
    Each glob in the native map matches a module of a real HF Phi.
    """
    assert 12 == len(assert_targets_resolve(tiny_phi(), pm))


def test_remote_code_model_gets_the_fused_map(pm):
    """
    A model with mixer.Wqkv modules (remote-code Phi) is mapped with the fused names.
    """
    import torch

    class Mixer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.Wqkv = torch.nn.Linear(8, 24)
            self.out_proj = torch.nn.Linear(8, 8)

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mixer = Mixer()

    model = torch.nn.Module()
    model.transformer = torch.nn.Module()
    model.transformer.h = torch.nn.ModuleList([Block()])

    mmap = module_map("phi2", model, pm=pm)

    assert "attn.qkv" == mmap.role_of("transformer.h.0.mixer.Wqkv")


def test_legacy_fused_names_rename_onto_native_modules(pm):
    """
    The native map carries renames that split remote-code Wqkv into q, k and v.
    """
    mmap = module_map("phi2", tiny_phi(), pm=pm)
    targets = next(r.apply("transformer.h.3.mixer.Wqkv") for r in mmap.renames if r.apply("transformer.h.3.mixer.Wqkv"))

    assert (
        "model.layers.3.self_attn.q_proj",
        "model.layers.3.self_attn.k_proj",
        "model.layers.3.self_attn.v_proj",
    ) == targets


@pytest.mark.parametrize(
    ("config", "names", "architecture"),
    [
        ({"base_model_name_or_path": "microsoft/phi-1_5", "target_modules": ["fc1", "fc2", "Wqkv", "out_proj"]}, [], "phi2"),
        ({"base_model_name_or_path": "microsoft/phi-2", "target_modules": ["q_proj", "v_proj"]}, [], "phi2"),
        ({"base_model_name_or_path": None}, ["transformer.h.0.mixer.Wqkv"], "phi2"),
        ({"base_model_name_or_path": "x", "target_modules": ["q_proj", "v_proj", "fc1"]}, [], "phi2"),
    ],
)
def test_adapter_detection(pm, config, names, architecture):
    """
    Phi adapters are recognised from fused names, base model names, or fc1/fc2 with q/v.
    """
    best = detect_adapter_all(config, names, pm=pm)[0]

    assert architecture == best.architecture
    assert best.confidence >= 0.7


def test_phi3_fused_layout_is_not_phi2(pm):
    """
    Phi-3's qkv_proj/gate_up_proj layout is a different architecture; phi2 does not claim it.
    """
    config = {"base_model_name_or_path": "microsoft/Phi-3-mini-4k-instruct", "target_modules": ["qkv_proj", "o_proj"]}

    assert "phi2" not in {d.architecture for d in detect_adapter_all(config, [], pm=pm)}
