"""
Conversion: PEFT adapters in, proved on the base model, normalised into the library, and out again.

The round trips check the issue's promise end to end: an adapter made by PEFT,
converted and exported by Adaptrix, loads in ``PeftModel.from_pretrained``
with logits equal to Adaptrix's within 1e-5.
"""

from __future__ import annotations

import json
import re
import shutil

from pathlib import Path

import pytest
import torch

from safetensors.torch import load_file, save_file

from adaptrix_core.conversion import STAGES, analyse, convert
from adaptrix_core.library import Library
from adaptrix_core.peft_format import write_adapter
from adaptrix_core.plugins import make_plugin_manager
from adaptrix_core.runtime import attach
from adaptrix_core.testing import tiny_gpt2, tiny_llama, tiny_phi


IDS = torch.tensor([[1, 5, 9, 33, 70, 2, 101, 64], [3, 3, 7, 120, 11, 0, 42, 8]])
MAKERS = {"llama": tiny_llama, "gpt2": tiny_gpt2, "phi2": tiny_phi}


@pytest.fixture(scope="module")
def pm():
    """One plugin manager (with the first-party architecture plugins) for the module."""
    return make_plugin_manager()


@pytest.fixture(name="lib")
def _lib(tmp_path):
    """An empty library, no shipped adapters."""
    return Library(tmp_path / "library", shipped_dir=tmp_path / "no-shipped")


def _peft_adapter(path: Path, arch: str, *, init: bool = False, seed: int = 1, **config) -> Path:
    """Save an adapter made by PEFT itself (non-zero B unless init=True) for a tiny model of *arch*."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(MAKERS[arch](), LoraConfig(init_lora_weights=init, **config))
    model.save_pretrained(path)
    return path


def _adaptrix_logits(arch: str, adapter_dir: Path, pm) -> torch.Tensor:
    am = attach(MAKERS[arch](), pm=pm)
    am.load_adapter("a", adapter_dir)
    with torch.inference_mode(), am.using("a"):
        return am.model(IDS).logits


def _peft_logits(arch: str, adapter_dir: Path) -> torch.Tensor:
    import warnings

    from peft import PeftModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PEFT notes fan_in_fan_out fixes for Conv1D
        model = PeftModel.from_pretrained(MAKERS[arch](), str(adapter_dir)).eval()
    with torch.inference_mode():
        return model(IDS).logits


ROUND_TRIPS = {
    "llama-qv": ("llama", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}),
    "llama-patterns-rslora": ("llama", {
        "r": 4, "lora_alpha": 8, "use_rslora": True, "target_modules": ["q_proj", "k_proj", "o_proj", "gate_proj", "down_proj"],
        "rank_pattern": {"o_proj": 2}, "alpha_pattern": {"down_proj": 3},
    }),
    "gpt2-conv1d": ("gpt2", {"r": 4, "lora_alpha": 16, "target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
    "phi-layer-subset": ("phi2", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "dense", "fc1"],
                                  "layers_to_transform": [1]}),
}


@pytest.mark.parametrize("case", list(ROUND_TRIPS))
def test_round_trip_peft_to_adaptrix_to_peft(pm, lib, tmp_path, case):
    """
    PEFT adapter -> convert -> export -> PeftModel.from_pretrained: logits equal Adaptrix's within 1e-5.
    """
    arch, config = ROUND_TRIPS[case]
    src = _peft_adapter(tmp_path / "src", arch, **config)
    convert(str(src), "rt", model=MAKERS[arch](), library=lib, pm=pm)
    exported = lib.export("rt", tmp_path / "exported")

    ours = _adaptrix_logits(arch, lib.path("rt"), pm)
    theirs = _peft_logits(arch, exported)
    original = _peft_logits(arch, src)

    assert (True, True) == (
        torch.allclose(ours, theirs, atol=1e-5, rtol=0), torch.allclose(original, theirs, atol=1e-5, rtol=0)
    ), (ours - theirs).abs().max()


def _legacy_phi_adapter(path: Path) -> Path:
    """A remote-code Phi adapter (``transformer.h.N.mixer.Wqkv``) for the tiny Phi's shapes."""
    g = torch.Generator().manual_seed(3)
    modules = {}
    for i in range(2):
        modules[f"transformer.h.{i}.mixer.Wqkv"] = (torch.randn(4, 32, generator=g), torch.randn(96, 4, generator=g))
        modules[f"transformer.h.{i}.mixer.out_proj"] = (torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g))
    return write_adapter(path, {"r": 4, "lora_alpha": 8, "target_modules": ["Wqkv", "out_proj"],
                                "base_model_name_or_path": "microsoft/phi-1_5"}, modules)


def test_legacy_phi_wqkv_is_split_and_exports_for_native_phi(pm, lib, tmp_path):
    """
    A remote-code Phi adapter is stored split onto q/k/v_proj and dense; PEFT loads the export on native Phi.
    """
    src = _legacy_phi_adapter(tmp_path / "legacy")
    result = convert(str(src), "legacy", model=tiny_phi(), library=lib, pm=pm)
    exported = lib.export("legacy", tmp_path / "exported")
    stored = sorted({re.sub(r"\.lora_[AB]\.weight$", "", k) for k in load_file(exported / "adapter_model.safetensors")})

    assert [f"base_model.model.model.layers.{i}.{m}" for i in range(2)
            for m in ("self_attn.dense", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj")] == stored
    assert ["transformer.h.0.mixer.Wqkv", ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                           "model.layers.0.self_attn.v_proj"]] == result.report["renamed"][0]
    assert torch.allclose(_adaptrix_logits("phi2", src, pm), _peft_logits("phi2", exported), atol=1e-5, rtol=0)


def test_report_has_the_compatibility_fields(pm, lib, tmp_path):
    """
    The stored report lists modules per layer and role, rank, alpha, scaling, params, bytes, detections and effect.
    """
    src = _peft_adapter(tmp_path / "src", "llama", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    convert(str(src), "a", model=tiny_llama(), library=lib, pm=pm, description="d", capabilities=["x"], domain="y")
    meta = lib.metadata("a")
    report = meta["report"]

    assert {
        "architecture": "llama", "rank": 4, "alpha": 8.0, "scaling": 2.0, "params": 4 * (4 * 32 + 32 * 4) - 2 * (4 * 16),
        "layers": {"0": {"attn.q": "model.layers.0.self_attn.q_proj", "attn.v": "model.layers.0.self_attn.v_proj"},
                   "1": {"attn.q": "model.layers.1.self_attn.q_proj", "attn.v": "model.layers.1.self_attn.v_proj"}},
        "unmatched_keys": [], "refused": [], "skipped": [], "renamed": [],
    } == {k: report[k] for k in ("architecture", "rank", "alpha", "scaling", "params", "layers", "unmatched_keys",
                                 "refused", "skipped", "renamed")}
    assert (report["params"] * 4, True, ["llama", "phi2"], str(src)) == (
        report["bytes"], report["effect"]["relative_logit_change"] > 0.01,
        [d["architecture"] for d in report["detections"]], meta["source"],
    )
    assert all(d["reason"] and 0 < d["confidence"] <= 1 for d in report["detections"])


def test_zero_adapter_is_flagged_not_refused(pm, lib, tmp_path):
    """
    An untrained adapter (every lora_B zero) converts, with effect 0 and a warning that says why.
    """
    src = _peft_adapter(tmp_path / "src", "gpt2", init=True, r=2, target_modules=["c_attn"])
    result = convert(str(src), "zero", model=tiny_gpt2(), library=lib, pm=pm)

    assert (0.0, True) == (result.report["effect"]["relative_logit_change"], result.report["effect"]["zero"])
    assert any("every lora_B is zero" in w for w in result.report["warnings"])


def test_base_model_name_mismatch_is_a_warning(pm, lib, tmp_path):
    """
    An adapter trained on another checkpoint of the same architecture converts, with a warning naming both.
    """
    src = _peft_adapter(tmp_path / "src", "gpt2", r=2, target_modules=["c_attn"])
    cfg = json.loads((src / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "gpt2"}))
    result = convert(str(src), "w", model=tiny_gpt2(name_or_path="microsoft/DialoGPT-small"), library=lib, pm=pm)

    assert any("'gpt2'" in w and "DialoGPT-small" in w for w in result.report["warnings"])


def _canonical(tmp_path: Path, pm) -> tuple[Path, dict[str, torch.Tensor]]:
    src = _peft_adapter(tmp_path / "canonical", "llama", r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    return src, load_file(src / "adapter_model.safetensors")


def _variant(tmp_path: Path, src: Path, name: str, rekey) -> Path:
    d = tmp_path / name
    shutil.copytree(src, d)
    tensors = load_file(d / "adapter_model.safetensors")
    save_file({rekey(k): v for k, v in tensors.items()}, d / "adapter_model.safetensors")
    return d


@pytest.mark.parametrize(
    "rekey",
    [
        lambda k: k.removeprefix("base_model.model."),
        lambda k: "base_model.model." + k,
        lambda k: k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"),
    ],
    ids=["no-prefix", "double-prefix", "adapter-name-in-key"],
)
def test_key_variants_store_the_same_normalised_tensors(pm, lib, tmp_path, rekey):
    """
    Keys without the PEFT prefix, with a doubled prefix, or with an adapter name inside are stored canonically.
    """
    src, canonical = _canonical(tmp_path, pm)
    convert(str(_variant(tmp_path, src, "variant", rekey)), "v", model=tiny_llama(), library=lib, pm=pm)
    stored = load_file(lib.path("v") / "adapter_model.safetensors")

    assert (sorted(canonical), True) == (sorted(stored), all(torch.equal(canonical[k], stored[k]) for k in canonical))


def test_bin_adapter_is_stored_as_safetensors(pm, lib, tmp_path):
    """
    A weights-only adapter_model.bin converts; the library keeps safetensors.
    """
    src, canonical = _canonical(tmp_path, pm)
    (src / "adapter_model.safetensors").unlink()
    torch.save(canonical, src / "adapter_model.bin")
    info = convert(str(src), "b", model=tiny_llama(), library=lib, pm=pm).info

    assert ["adapter_config.json", "adapter_model.safetensors", "adaptrix.json"] == sorted(p.name for p in info.path.iterdir())


def test_half_precision_adapter_keeps_its_dtype(pm, lib, tmp_path):
    """
    A float16 adapter is proved on a float32 model but stored in float16 (no silent doubling of size).
    """
    src, canonical = _canonical(tmp_path, pm)
    save_file({k: v.half() for k, v in canonical.items()}, src / "adapter_model.safetensors")
    result = convert(str(src), "h", model=tiny_llama(), library=lib, pm=pm)
    stored = load_file(lib.path("h") / "adapter_model.safetensors")

    assert ({torch.float16}, "float16") == ({t.dtype for t in stored.values()}, result.report["source"]["dtype"])


def test_old_peft_config_with_missing_and_extra_fields(pm, lib, tmp_path):
    """
    A PEFT 0.2-era config (no peft_type, no lora_alpha, merge_weights, enable_lora: null) converts.
    """
    src, _ = _canonical(tmp_path, pm)
    (src / "adapter_config.json").write_text(json.dumps({
        "r": 2, "target_modules": ["q_proj", "v_proj"], "merge_weights": False, "enable_lora": None,
        "fan_in_fan_out": False, "lora_dropout": 0.05, "base_model_name_or_path": "decapoda-research/llama-7b-hf",
    }))
    result = convert(str(src), "old", model=tiny_llama(), library=lib, pm=pm)

    assert (8.0, 4.0, ["lora_dropout", "merge_weights"]) == (
        result.report["alpha"], result.report["scaling"], result.report["ignored_fields"]
    )


def test_unknown_keys_and_task_type_are_reported(pm, lib, tmp_path):
    """
    Tensors that are not LoRA matrices are listed as unmatched keys; a non-causal task_type is a warning.
    """
    src, canonical = _canonical(tmp_path, pm)
    save_file({**canonical, "base_model.model.score.weight": torch.zeros(2, 32)}, src / "adapter_model.safetensors")
    cfg = json.loads((src / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps({**cfg, "task_type": "SEQ_CLS"}))
    report = convert(str(src), "u", model=tiny_llama(), library=lib, pm=pm).report

    assert ["base_model.model.score.weight"] == report["unmatched_keys"]
    assert (True, True) == (any("SEQ_CLS" in w for w in report["warnings"]), any("not LoRA" in w for w in report["warnings"]))


def test_conversion_leaves_the_model_as_it_was(pm, lib, tmp_path):
    """
    A plain model given to convert is attached and detached again: same modules, same logits.
    """
    model = tiny_llama()
    with torch.inference_mode():
        before = model(IDS).logits
    modules = [(n, type(m).__name__) for n, m in model.named_modules()]
    src, _ = _canonical(tmp_path, pm)
    convert(str(src), "c", model=model, library=lib, pm=pm)
    with torch.inference_mode():
        after = model(IDS).logits

    assert (modules, True) == ([(n, type(m).__name__) for n, m in model.named_modules()], torch.equal(before, after))


def test_conversion_on_an_adapted_model_unloads_its_probe(pm, lib, tmp_path):
    """
    Given an AdaptedModel, convert loads the adapter under a probe name and unloads it; residents stay.
    """
    src, _ = _canonical(tmp_path, pm)
    am = attach(tiny_llama(), pm=pm)
    am.load_adapter("resident", src)
    convert(str(src), "c", model=am, library=lib, pm=pm)

    assert (("resident",), ["c"]) == (am.adapters, lib.names())


def test_progress_reports_every_stage_in_order(pm, lib, tmp_path):
    """
    The progress callback sees fetch, read, detect, load, check and install, in that order.
    """
    src, _ = _canonical(tmp_path, pm)
    seen = []
    convert(str(src), "p", model=tiny_llama(), library=lib, pm=pm, progress=lambda stage, detail: seen.append(stage))

    assert list(STAGES) == seen


def test_overwrite_replaces_an_adapter(pm, lib, tmp_path):
    """
    Converting again with overwrite=True replaces the stored adapter and its metadata.
    """
    src, _ = _canonical(tmp_path, pm)
    convert(str(src), "o", model=tiny_llama(), library=lib, pm=pm, description="one")
    convert(str(src), "o", model=tiny_llama(), library=lib, pm=pm, description="two", overwrite=True)

    assert ("two", ["o"]) == (lib.get("o").description, lib.names())


def test_analyse_without_a_model_reports_the_adapter_alone(pm, tmp_path):
    """
    Without a base model, the report lists the adapter's own modules with their shapes and every plugin's claim.
    """
    src, _ = _canonical(tmp_path, pm)
    report = analyse(str(src), pm=pm).report()

    assert ({"module": "model.layers.0.self_attn.v_proj", "r": 2, "in": 32, "out": 16}, None, "llama") == (
        report["modules"][1], report["effect"], report["detections"][0]["architecture"]
    )


def test_analyse_on_a_meta_skeleton_checks_shapes_only(pm, tmp_path):
    """
    On a weightless (meta) model the adapter is fitted (shapes, roles) but the effect is not measured.
    """
    src, _ = _canonical(tmp_path, pm)
    with torch.device("meta"):
        skeleton = tiny_llama()
    report = analyse(str(src), model=skeleton, pm=pm).report()

    assert (None, 4, 2 * (2 * 32 + 32 * 2 + 2 * 32 + 16 * 2) * 4) == (
        report["effect"], len(report["modules"]), report["bytes"]
    )
    assert any("not measured" in w for w in report["warnings"])


def test_convert_from_the_hub_cache(pm, lib, tmp_path, monkeypatch):
    """
    `hf://user/repo` converts from a pre-populated HF cache in offline mode; the source is recorded.
    """
    src, _ = _canonical(tmp_path, pm)
    storage = tmp_path / "hub" / "models--user--lora"
    shutil.copytree(src, storage / "snapshots" / ("a" * 40))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    convert("hf://user/lora", "from-hub", model=tiny_llama(), library=lib, pm=pm)

    assert "hf://user/lora" == lib.metadata("from-hub")["source"]


def test_runtime_can_save_a_split_fused_adapter(pm, tmp_path):
    """
    Saving an adapter whose fused module was split (shared A, B views) writes a PEFT dir that loads back equal.
    """
    am = attach(tiny_phi(), pm=pm)
    am.load_adapter("legacy", _legacy_phi_adapter(tmp_path / "legacy"))
    saved = am.save_adapter("legacy", tmp_path / "saved")

    assert torch.allclose(_adaptrix_logits("phi2", tmp_path / "legacy", pm), _peft_logits("phi2", saved), atol=1e-5, rtol=0)
