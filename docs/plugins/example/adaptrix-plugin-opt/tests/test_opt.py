"""The OPT pattern: detection, targets, adapter claims, and logits equal to PEFT's."""

from __future__ import annotations

import pytest

import adaptrix_plugin_opt

from adaptrix_core.detection import detect, detect_adapter_all
from adaptrix_core.testing import (
    assert_logits_match_peft,
    assert_targets_resolve,
    make_peft_adapter,
    plugin_manager,
    tiny_opt,
)


@pytest.fixture(name="pm")
def _pm():
    """Core plus this plugin only: the answers do not depend on what else is installed."""
    return plugin_manager(adaptrix_plugin_opt)


def test_detects_opt_and_outranks_the_generic_guess(pm):
    best = detect(tiny_opt(), pm=pm)

    assert ("opt", 1.0, "adaptrix_plugin_opt") == (best.architecture, best.confidence, best.plugin)


def test_every_target_resolves(pm):
    resolved = assert_targets_resolve(tiny_opt(), pm)

    assert 12 == len(resolved)  # 6 roles x 2 layers


def test_logits_equal_peft(pm, tmp_path):
    model = tiny_opt()
    adapter = make_peft_adapter(model, ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"], tmp_path / "a")

    assert_logits_match_peft(model, adapter, pm=pm)


def test_claims_opt_adapters(pm):
    config = {"base_model_name_or_path": "facebook/opt-125m", "target_modules": ["q_proj", "v_proj"]}

    best = detect_adapter_all(config, [], pm=pm)[0]

    assert ("opt", 0.9) == (best.architecture, best.confidence)


def test_runs_isolated(adaptrix_home):
    """The adaptrix pytest plugin gives every test its own ADAPTRIX_HOME and an offline hub."""
    import os

    assert (str(adaptrix_home), "1") == (os.environ["ADAPTRIX_HOME"], os.environ["HF_HUB_OFFLINE"])
