"""The runtime computes what PEFT computes: adapters made by PEFT give PEFT's logits, alone, summed and per row."""

from __future__ import annotations

import pytest
import torch

from peft import LoraConfig, PeftModel, get_peft_model

from adaptrix_core import attach
from adaptrix_core.testing import logits_row_by_row, tiny_gpt2, tiny_llama, tiny_phi


FACTORIES = {"gpt2": tiny_gpt2, "phi2": tiny_phi, "llama": tiny_llama}
ALL_LINEAR = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "phi2": ["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
QV = {"gpt2": ["c_attn"], "phi2": ["q_proj", "v_proj"], "llama": ["q_proj", "v_proj"]}

CONFIGS = {
    "r4-qv": {"r": 4, "lora_alpha": 8},
    "r8-all-alpha-odd": {"r": 8, "lora_alpha": 13, "all": True},
    "r2-rslora": {"r": 2, "lora_alpha": 4, "use_rslora": True},
    "patterns": {"r": 4, "lora_alpha": 8, "all": True, "rank_pattern": {"0": 2}, "alpha_pattern": {"1": 3.0}},
    "layer-subset": {"r": 4, "lora_alpha": 16, "all": True, "layers_to_transform": [1]},
    "r1-float-alpha": {"r": 1, "lora_alpha": 0.5},
}


def _pattern_keys(arch: str, pattern: dict[str, float]) -> dict[str, float]:
    """Turn a layer index into a regex key over that layer's first target module."""
    prefix = "transformer.h" if arch == "gpt2" else "model.layers"
    leaf = QV[arch][0]
    return {rf"{prefix}\.{layer}\..*{leaf}": value for layer, value in pattern.items()}


def _peft_config(arch: str, spec: dict, seed: int = 0) -> LoraConfig:
    spec = dict(spec)
    targets = ALL_LINEAR[arch] if spec.pop("all", False) else QV[arch]
    for key in ("rank_pattern", "alpha_pattern"):
        if key in spec:
            spec[key] = _pattern_keys(arch, spec[key])
    return LoraConfig(
        target_modules=targets,
        init_lora_weights=False,  # non-zero B: a zero adapter would prove nothing
        fan_in_fan_out=arch == "gpt2",
        lora_dropout=0.0,
        **spec,
    )


def _save_peft_adapter(arch: str, spec: dict, directory, seed: int = 0) -> PeftModel:
    torch.manual_seed(seed)
    peft_model = get_peft_model(FACTORIES[arch](), _peft_config(arch, spec, seed))
    peft_model.save_pretrained(directory)
    return peft_model.eval()


def _ids(seed: int = 0, rows: int = 3, length: int = 9) -> torch.Tensor:
    return torch.randint(1, 128, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_logits_equal_peft(arch, config_name, tmp_path):
    """
    An adapter saved by PEFT with non-zero B gives PEFT's logits within 1e-5, and differs from the base.
    """
    peft_model = _save_peft_adapter(arch, CONFIGS[config_name], tmp_path / "a")
    ids = _ids()
    model = FACTORIES[arch]()
    am = attach(model)
    am.load_adapter("a", tmp_path / "a")

    with torch.no_grad():
        expected = peft_model(ids).logits
        base = model(ids).logits
        with am.using("a"):
            actual = model(ids).logits

    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    assert (actual - base).abs().max() > 1e-4


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_weighted_sum_equals_peft_cat_combination(arch, tmp_path):
    """
    {"a": 0.7, "b": -0.4} equals PEFT's exact 'cat' weighted combination of the same two adapters.
    """
    peft_a = _save_peft_adapter(arch, CONFIGS["r4-qv"], tmp_path / "a", seed=1)
    _save_peft_adapter(arch, CONFIGS["r2-rslora"] | {"use_rslora": False}, tmp_path / "b", seed=2)
    peft_a.load_adapter(str(tmp_path / "b"), adapter_name="b")
    peft_a.add_weighted_adapter(["default", "b"], [0.7, -0.4], "ab", combination_type="cat")
    peft_a.set_adapter("ab")
    model = FACTORIES[arch]()
    am = attach(model)
    am.load_adapter("a", tmp_path / "a")
    am.load_adapter("b", tmp_path / "b")
    ids = _ids(1)

    with torch.no_grad():
        expected = peft_a(ids).logits
        with am.using({"a": 0.7, "b": -0.4}):
            actual = model(ids).logits

    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_mixed_batch_equals_peft_adapter_names_row_by_row(arch, tmp_path):
    """
    One adapter per row (and the base model for a None row) matches PEFT's adapter_names= forward.
    """
    peft_model = _save_peft_adapter(arch, CONFIGS["r4-qv"], tmp_path / "a", seed=1)
    _save_peft_adapter(arch, CONFIGS["r8-all-alpha-odd"], tmp_path / "b", seed=2)
    peft_model.load_adapter(str(tmp_path / "b"), adapter_name="b")
    model = FACTORIES[arch]()
    am = attach(model)
    am.load_adapter("a", tmp_path / "a")
    am.load_adapter("b", tmp_path / "b")
    ids = _ids(2, rows=4)

    with torch.no_grad():
        expected = peft_model(ids, adapter_names=["default", "b", "__base__", "b"]).logits
        actual = am.forward(ids, adapters=["a", "b", None, "b"]).logits

    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_mixed_batch_rows_with_compositions_equal_their_own_runs(tmp_path):
    """
    A row may itself be a weighted composition; each row equals running it alone.
    """
    _save_peft_adapter("llama", CONFIGS["r4-qv"], tmp_path / "a", seed=1)
    _save_peft_adapter("llama", CONFIGS["r8-all-alpha-odd"], tmp_path / "b", seed=2)
    model = tiny_llama()
    am = attach(model)
    am.load_adapter("a", tmp_path / "a")
    am.load_adapter("b", tmp_path / "b")
    rows = [{"a": 0.5, "b": 0.5}, None, "a", {"b": 2.0}]
    ids = _ids(3, rows=4)

    with torch.no_grad():
        mixed = am.forward(ids, adapters=rows).logits

    torch.testing.assert_close(mixed, logits_row_by_row(am, ids, rows), atol=1e-5, rtol=0)


def test_exported_adapter_loads_in_peft_with_equal_logits(tmp_path):
    """
    save_adapter writes a PEFT directory that PeftModel.from_pretrained loads with our logits.
    """
    _save_peft_adapter("phi2", CONFIGS["patterns"], tmp_path / "a")
    model = tiny_phi()
    am = attach(model)
    am.load_adapter("a", tmp_path / "a", layers=[1])
    am.save_adapter("a", tmp_path / "out")
    ids = _ids(4)
    with torch.no_grad(), am.using("a"):
        ours = model(ids).logits
    am.detach()

    reloaded = PeftModel.from_pretrained(tiny_phi(), tmp_path / "out").eval()
    with torch.no_grad():
        theirs = reloaded(ids).logits

    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_fresh_adapter_saved_loads_in_peft(arch, tmp_path):
    """
    An adapter created with add_adapter (B made non-zero) round-trips through PEFT with equal logits.
    """
    from adaptrix_core.runtime import LoraSpec

    model = FACTORIES[arch]()
    am = attach(model)
    roles = ("attn.qkv", "mlp.down") if arch == "gpt2" else ("attn.q", "attn.v", "mlp.down")
    am.add_adapter("fresh", LoraSpec(r=4, alpha=8, roles=roles, layers="middle"), seed=3)
    with torch.no_grad():
        for t in am.adapter_parameters("fresh"):
            t.normal_(0, 0.1)
    am.save_adapter("fresh", tmp_path / "fresh")
    ids = _ids(5)
    with torch.no_grad(), am.using("fresh"):
        ours = model(ids).logits

    reloaded = PeftModel.from_pretrained(FACTORIES[arch](), tmp_path / "fresh").eval()
    with torch.no_grad():
        theirs = reloaded(ids).logits

    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(FACTORIES))
def test_many_adapter_mixed_batch_equals_peft_row_by_row(arch, tmp_path):
    """
    With three or more distinct adapters of different ranks (the gathered path), rows still match PEFT's adapter_names.
    """
    peft_model = _save_peft_adapter(arch, CONFIGS["r4-qv"], tmp_path / "a", seed=1)
    for name, config, seed in (("b", "r8-all-alpha-odd", 2), ("c", "r2-rslora", 3)):
        _save_peft_adapter(arch, CONFIGS[config], tmp_path / name, seed=seed)
        peft_model.load_adapter(str(tmp_path / name), adapter_name=name)
    model = FACTORIES[arch]()
    am = attach(model)
    for name in ("a", "b", "c"):
        am.load_adapter(name, tmp_path / name)
    ids = _ids(6, rows=5)

    with torch.no_grad():
        expected = peft_model(ids, adapter_names=["c", "default", "__base__", "b", "c"]).logits
        actual = am.forward(ids, adapters=["c", "a", None, "b", {"c": 1.0}]).logits

    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
