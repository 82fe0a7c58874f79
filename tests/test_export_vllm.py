"""
``adaptrix export --for vllm``: what it writes loads in PEFT (vLLM's format) and gives Adaptrix's own logits.

No vLLM here: PEFT reads the same files vLLM reads (``adapter_config.json`` +
``adapter_model.safetensors``), so equal logits under PEFT are the proof.
"""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(name="library")
def _library(tiny_lm_library_dir):
    from adaptrix_core.library import Library

    return Library(tiny_lm_library_dir, shipped_dir=tiny_lm_library_dir.parent / "none")


def _adaptrix_logits(model_dir, library, selection, ids):
    """Logits of the tiny model under *selection*, from Adaptrix's runtime (what `adaptrix serve` computes)."""
    from transformers import AutoModelForCausalLM

    from adaptrix_core import attach

    am = attach(AutoModelForCausalLM.from_pretrained(model_dir).eval())
    for name in selection:
        am.load_adapter(name, library.path(name))
    with torch.no_grad():
        return am.forward(ids, adapters=[selection]).logits


def _peft_logits(model_dir, adapter_dir, ids):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir).eval(), str(adapter_dir))
    with torch.no_grad():
        return model(ids).logits


IDS = torch.tensor([[464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]])


def test_exported_adapter_and_composition_load_in_peft_with_equal_logits(tiny_lm_dir, library, tmp_path):
    """A single adapter and a weighted composition (one concatenated adapter) give Adaptrix's logits under PEFT."""
    from adaptrix_core.export_vllm import export_for_vllm

    result = export_for_vllm(
        tmp_path / "vllm", ["alpha"], {"mix": {"alpha": 0.7, "beta": -0.3}}, library=library, base_model="tiny"
    )
    by_name = {a.name: a for a in result.adapters}

    assert ["alpha", "mix"] == [a.name for a in result.adapters]
    assert (4, 8) == (by_name["alpha"].rank, by_name["mix"].rank)
    assert torch.allclose(
        _adaptrix_logits(tiny_lm_dir, library, {"alpha": 1.0}, IDS), _peft_logits(tiny_lm_dir, by_name["alpha"].path, IDS),
        atol=1e-5,
    )
    assert torch.allclose(
        _adaptrix_logits(tiny_lm_dir, library, {"alpha": 0.7, "beta": -0.3}, IDS),
        _peft_logits(tiny_lm_dir, by_name["mix"].path, IDS), atol=1e-5,
    )


def test_manifest_and_command_line(library, tmp_path):
    """vllm.json and serve.sh name every adapter as name=path, with a --max-lora-rank vLLM accepts."""
    from adaptrix_core.export_vllm import export_for_vllm

    result = export_for_vllm(tmp_path / "out", None, None, library=library, base_model="tiny")
    manifest = json.loads((tmp_path / "out" / "vllm.json").read_text())
    command = result.command()

    assert ["alpha", "beta", "delta", "gamma"] == [a["name"] for a in manifest["adapters"]]
    assert command == manifest["command"]
    assert command[:5] == ["vllm", "serve", "tiny", "--enable-lora", "--max-lora-rank"]
    assert "8" == command[5]
    assert f"alpha={tmp_path / 'out' / 'alpha'}" in command
    assert "exec vllm serve tiny" in (tmp_path / "out" / "serve.sh").read_text()
    for entry in manifest["adapters"]:
        config = json.loads((tmp_path / "out" / entry["path"] / "adapter_config.json").read_text())
        assert (config["r"], config["lora_alpha"], "rank_pattern" in config) == (entry["rank"], entry["rank"], False)


def test_bad_requests_write_nothing(library, tmp_path):
    """An unknown adapter, a malformed composition or a full destination fails with a fix and leaves no files."""
    from adaptrix_core.exceptions import AdapterExistsError, AdapterNotFoundError
    from adaptrix_core.export_vllm import ExportError, export_for_vllm, parse_composition

    with pytest.raises(AdapterNotFoundError, match="Known: alpha"):
        export_for_vllm(tmp_path / "a", ["nope"], library=library)
    with pytest.raises(ExportError, match="NAME=a:0.7"):
        parse_composition("alpha:0.5+beta:0.5")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(AdapterExistsError, match="--force"):
        export_for_vllm(tmp_path / "full", ["alpha"], library=library)

    assert [tmp_path / "full"] == list(tmp_path.iterdir())


def test_cli_export_for_vllm(tiny_lm_library_dir, tmp_path, monkeypatch, pm):
    """`adaptrix export --for vllm DIR -a alpha --compose mix=alpha:0.5+gamma:0.5` prints the vLLM command."""
    from typer.testing import CliRunner

    from adaptrix_core.cli import make_app

    monkeypatch.setenv("ADAPTRIX_LIBRARY_DIR", str(tiny_lm_library_dir))
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", "")
    result = CliRunner().invoke(
        make_app(pm), ["export", "--for", "vllm", str(tmp_path / "v"), "-a", "alpha", "--compose", "mix=alpha:0.5+gamma:0.5"]
    )

    assert 0 == result.exit_code, result.output
    assert "--enable-lora" in result.output
    assert "mix: rank 8 (composition, exact)" in result.output
    assert {"alpha", "mix", "vllm.json", "serve.sh"} == {p.name for p in (tmp_path / "v").iterdir()}
