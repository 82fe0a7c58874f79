"""The generic fallback pattern: unclaimed decoders are detected, attached, loaded and trained by a structural guess."""

from __future__ import annotations

import pytest
import torch

from adaptrix_core import Detection, attach, hookimpl
from adaptrix_core.builtins import generic
from adaptrix_core.detection import detect, detect_all, module_map
from adaptrix_core.testing import (
    TINY_UNCLAIMED,
    assert_logits_match_peft,
    assert_targets_resolve,
    make_peft_adapter,
    tiny_gpt2,
    tiny_llama,
)


FAMILIES = sorted(TINY_UNCLAIMED)
EXPECTED_ROLES = {
    "bloom": {"attn.qkv", "attn.o", "mlp.up", "mlp.down"},
    "falcon": {"attn.qkv", "attn.o", "mlp.up", "mlp.down"},
    "gpt_neox": {"attn.qkv", "attn.o", "mlp.up", "mlp.down"},
    "opt": {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.up", "mlp.down"},
}
ALL_LINEAR = {
    "bloom": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "falcon": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "gpt_neox": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_unclaimed_families_are_detected_as_a_generic_guess(core_pm, family):
    """
    With only core installed, BLOOM, OPT, Falcon and GPT-NeoX are `generic` at 0.3, and the reason says it is a guess.
    """
    model = TINY_UNCLAIMED[family]()

    best = detect(model, pm=core_pm)

    assert ("generic", 0.3, "adaptrix_core.builtins.generic") == (best.architecture, best.confidence, best.plugin)
    assert best.reason.startswith("a guess")
    assert EXPECTED_ROLES[family] == set(module_map("generic", model, pm=core_pm).targets)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_guessed_target_resolves_in_every_layer(core_pm, family):
    """
    Each guessed role matches one module per layer (2 layers).
    """
    resolved = assert_targets_resolve(TINY_UNCLAIMED[family](), core_pm)

    assert 2 * len(EXPECTED_ROLES[family]) == len(resolved)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_equal_peft_on_every_linear_layer(core_pm, family, tmp_path):
    """
    A PEFT adapter on every Linear of an unclaimed family gives PEFT's logits through the generic map (1e-5).
    """
    model = TINY_UNCLAIMED[family]()
    adapter = make_peft_adapter(model, ALL_LINEAR[family], tmp_path / family, r=4, alpha=8)

    diff = assert_logits_match_peft(model, adapter, pm=core_pm, atol=1e-5)

    assert diff <= 1e-5


def test_a_real_plugin_outranks_the_guess(core_pm):
    """
    The generic pattern answers last and lowest: a plugin that knows the family wins, and both claims are listed.
    """

    class Bloom:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("bloom", 0.9, "config.model_type == 'bloom'") if model.config.model_type == "bloom" else None

    core_pm.register(Bloom(), name="bloom-plugin")

    claims = [(d.plugin, d.architecture, d.confidence) for d in detect_all(TINY_UNCLAIMED["bloom"](), pm=core_pm)]

    assert [("bloom-plugin", "bloom", 0.9), ("adaptrix_core.builtins.generic", "generic", 0.3)] == claims


def test_first_party_models_guess_the_same_roles_their_plugins_map(pm):
    """
    On GPT-2 and LLaMA the guess finds the very modules their plugins map (a check of the name tables).
    """
    for model, architecture in ((tiny_gpt2(), "gpt2"), (tiny_llama(), "llama")):
        guessed = generic.guess(model).module_map()
        owned = module_map(architecture, model, pm=pm)

        assert dict(owned.targets) == dict(guessed.targets)


def test_models_without_a_layer_stack_are_not_claimed(core_pm):
    """
    A bare MLP has no decoder stack: the generic pattern returns None rather than guess.
    """
    assert [] == detect_all(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)), pm=core_pm)


def test_load_and_fresh_adapter_reports_say_the_map_is_a_guess(core_pm, tmp_path):
    """
    Loading onto (or creating on) a guessed map puts the guess into the report's warnings; the default
    roles on a fused-QKV family are attn.qkv.
    """
    model = TINY_UNCLAIMED["falcon"]()
    adapter = make_peft_adapter(model, ["query_key_value"], tmp_path / "a")
    am = attach(model, pm=core_pm)

    loaded = am.load_adapter("a", adapter)
    fresh = am.add_adapter("b")

    assert any("guess" in w for w in loaded.warnings)
    assert any("guess" in w for w in fresh.warnings)
    assert {"attn.qkv"} == {m.role for m in fresh.modules}


def test_convert_onto_a_guessed_model_installs_and_reports_the_guess(core_pm, tmp_path):
    """
    `convert` proves a PEFT adapter on a GPT-NeoX model only the generic pattern knows, and installs it.
    """
    from adaptrix_core.conversion import convert
    from adaptrix_core.library import Library

    model = TINY_UNCLAIMED["gpt_neox"]()
    adapter = make_peft_adapter(model, ["query_key_value", "dense_4h_to_h"], tmp_path / "a")
    library = Library(tmp_path / "library", shipped_dir=tmp_path / "none")

    result = convert(str(adapter), "neox-a", model=model, library=library, pm=core_pm)

    assert ["neox-a"] == library.names()
    assert "generic" == result.analysis.architecture
    assert any("guess" in w for w in result.analysis.load.warnings)


def test_training_on_a_guessed_model_defaults_to_attn_qkv_and_learns(core_pm, lm_helpers):
    """
    `train_adapter` on a BLOOM model (generic map) adapts attn.qkv by default and lowers the loss.
    """
    from adaptrix_core.training import Example, TrainOptions, train_adapter

    am = attach(TINY_UNCLAIMED["bloom"](vocab_size=50304), pm=core_pm)
    examples = [Example(({"role": "user", "content": f"Say hi {i}"},), "Arr, matey!") for i in range(4)]
    options = TrainOptions(r=4, alpha=8, layers="all", lr=1e-2, steps=8, batch_size=2, warmup=1, max_length=64)

    result = train_adapter(am, lm_helpers.gpt2_tokenizer(), examples, "pirate", options, progress=False)

    assert ("attn.qkv",) == result.options.roles
    assert result.final_loss < result.first_loss


def test_a_plugin_guess_at_the_same_confidence_wins_over_the_generic_one(core_pm):
    """
    A plugin answering 0.3 for a family ties with the generic guess in confidence but is preferred, not ambiguous.
    """

    class Guess:
        @hookimpl
        def detect_architecture(self, model):
            return Detection("mpt", 0.3, "looks a bit like MPT")

    core_pm.register(Guess(), name="guess")

    best = detect(TINY_UNCLAIMED["opt"](), pm=core_pm)

    assert ("mpt", "guess") == (best.architecture, best.plugin)
