"""Architecture detection: scored hooks, ranking, ties, unknown models; module maps."""

from __future__ import annotations

import pytest
import torch

from adaptrix_core import Detection, ModuleMap, ModuleRename, hookimpl
from adaptrix_core.detection import detect, detect_adapter, detect_all, module_map, resolve_targets
from adaptrix_core.exceptions import AmbiguousArchitectureError, PluginError, UnknownArchitectureError
from adaptrix_core.testing import tiny_gpt2


@pytest.fixture(name="tiny_mlp")
def _tiny_mlp():
    return torch.nn.Sequential(torch.nn.Linear(4, 4))


def test_hook_detect_architecture_highest_confidence_wins(core_pm, tiny_mlp):
    """
    When two plugins claim a model, the higher confidence wins, whatever the registration order.
    """

    class Sure:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("sure", confidence=0.9, reason="sure")

    class Unsure:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("unsure", confidence=0.3)

    core_pm.register(Sure())
    core_pm.register(Unsure())

    assert "sure" == detect(tiny_mlp, pm=core_pm).architecture
    assert ["sure", "unsure"] == [d.architecture for d in detect_all(tiny_mlp, pm=core_pm)]


def test_tie_between_architectures_is_an_error(core_pm, tiny_mlp):
    """
    Equal top confidence for different architectures raises, naming both claims.
    """

    class A:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("a", 0.9, "looks like a")

    class B:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("b", 0.9, "looks like b")

    core_pm.register(A())
    core_pm.register(B())

    with pytest.raises(AmbiguousArchitectureError, match=r"looks like a.*looks like b|looks like b.*looks like a"):
        detect(tiny_mlp, pm=core_pm)


def test_unknown_model_lists_installed_patterns(pm, tiny_mlp):
    """
    A model no plugin claims raises one message that lists the installed patterns and the fix.
    """
    with pytest.raises(UnknownArchitectureError) as excinfo:
        detect(tiny_mlp, pm=pm)

    message = str(excinfo.value)
    assert "Sequential" in message
    assert "gpt2, llama, phi2" in message
    assert "Fix:" in message


def test_plugin_returning_garbage_is_named(core_pm, tiny_mlp):
    """
    A detection hook returning something that is not a Detection is a PluginError naming the plugin.
    """

    class Broken:
        @hookimpl
        def detect_architecture(self, model):
            return "gpt2"

    core_pm.register(Broken(), name="broken")

    with pytest.raises(PluginError, match="'broken'"):
        detect(tiny_mlp, pm=core_pm)


def test_detection_rejects_confidence_out_of_range():
    """
    Confidence is validated at the boundary.
    """
    with pytest.raises(ValueError, match="confidence"):
        Detection("x", 1.5)


def test_hook_map_modules_first_owner_answers(core_pm, tiny_mlp):
    """
    map_modules stops at the first non-None answer; unknown architectures raise.
    """

    class Owner:
        @hookimpl
        def map_modules(self, architecture):
            if architecture == "mlp":
                return ModuleMap("mlp", {"mlp.up": "*"})
            return None

    core_pm.register(Owner())

    assert {"0": "mlp.up"} == resolve_targets(tiny_mlp, module_map("mlp", tiny_mlp, pm=core_pm))
    with pytest.raises(UnknownArchitectureError, match="'other'"):
        module_map("other", tiny_mlp, pm=core_pm)


def test_hook_detect_adapter_architecture_ranks_plugins(core_pm):
    """
    Adapter detection is scored like model detection.
    """

    class Guess:
        @hookimpl
        def detect_adapter_architecture(self, adapter_config, module_names):
            return Detection("guess", 0.5) if "x" in module_names else None

    core_pm.register(Guess())

    assert "guess" == detect_adapter({}, ["x"], pm=core_pm).architecture
    with pytest.raises(UnknownArchitectureError, match="adapter"):
        detect_adapter({"base_model_name_or_path": "foo"}, ["y"], pm=core_pm)


def test_module_map_rejects_unknown_roles():
    """
    Roles are a closed vocabulary; a typo fails when the map is built.
    """
    with pytest.raises(ValueError, match="attn.qq"):
        ModuleMap("x", {"attn.qq": "a.*.b"})


def test_module_map_knows_role_and_layer():
    """
    role_of/layer_of read the glob's `*` as the layer index.
    """
    mmap = ModuleMap("x", {"attn.q": "model.layers.*.self_attn.q_proj"})

    assert ("attn.q", 12) == (
        mmap.role_of("model.layers.12.self_attn.q_proj"),
        mmap.layer_of("model.layers.12.self_attn.q_proj"),
    )
    assert mmap.role_of("model.layers.1.self_attn.q_proj.lora") is None


def test_module_rename_splits_fused_names():
    """
    A rename with several targets names each split module; non-matching names give None.
    """
    rename = ModuleRename(r"h\.(\d+)\.Wqkv", ("l.{0}.q", "l.{0}.k", "l.{0}.v"))

    assert ("l.3.q", "l.3.k", "l.3.v") == rename.apply("h.3.Wqkv")
    assert rename.apply("h.3.out") is None


def test_dialogpt_reason_says_dialogpt(pm):
    """
    DialoGPT is GPT-2 weights; detection says which flavour it saw.
    """
    detection = detect(tiny_gpt2(name_or_path="microsoft/DialoGPT-small"), pm=pm)

    assert ("gpt2", 1.0) == (detection.architecture, detection.confidence)
    assert "DialoGPT" in detection.reason
