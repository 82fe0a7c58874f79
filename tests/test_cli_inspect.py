"""`adaptrix plugins`, `detect` and `targets`, through the Typer app and as a real process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys

import pytest

from typer.testing import CliRunner

from adaptrix_core.cli import make_app
from adaptrix_core.testing import tiny_gpt2, tiny_llama, tiny_phi


@pytest.fixture(scope="module", name="model_dirs")
def _model_dirs(tmp_path_factory):
    """Tiny models of every first-party architecture, plus DialoGPT, Mistral, Qwen2 and two unknown ones."""
    from transformers import (
        BloomConfig,
        BloomForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        OPTConfig,
        OPTForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    root = tmp_path_factory.mktemp("models")
    small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    models = {
        "gpt2": tiny_gpt2(),
        "dialogpt": tiny_gpt2(name_or_path="microsoft/DialoGPT-small"),
        "phi": tiny_phi(),
        "llama": tiny_llama(),
        "mistral": MistralForCausalLM(MistralConfig(**small, intermediate_size=32, num_key_value_heads=1)),
        "qwen2": Qwen2ForCausalLM(Qwen2Config(**small, intermediate_size=32, num_key_value_heads=1)),
        "opt": OPTForCausalLM(OPTConfig(**small, ffn_dim=32, word_embed_proj_dim=16)),
        "bloom": BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=16, n_layer=1, n_head=2)),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
    return root


@pytest.mark.parametrize(
    ("model", "architecture"),
    [("gpt2", "gpt2"), ("dialogpt", "gpt2"), ("phi", "phi2"), ("llama", "llama"), ("mistral", "llama"), ("qwen2", "llama")],
)
def test_detect_picks_the_architecture(pm, model_dirs, model, architecture):
    """
    `adaptrix detect` picks the right plugin with confidence >= 0.9 for each supported family.
    """
    result = CliRunner().invoke(make_app(pm), ["detect", str(model_dirs / model), "--json"])

    assert 0 == result.exit_code, result.output
    data = json.loads(result.output)
    assert architecture == data["architecture"]
    assert data["detections"][0]["confidence"] >= 0.9


@pytest.mark.parametrize("model", ["opt", "bloom"])
def test_detect_unclaimed_architecture_is_the_generic_guess(pm, model_dirs, model):
    """
    An architecture no plugin knows is core's generic guess, at confidence 0.3, and the reason says so.
    """
    result = CliRunner().invoke(make_app(pm), ["detect", str(model_dirs / model), "--json"])

    assert 0 == result.exit_code, result.output
    data = json.loads(result.output)
    assert ("generic", 0.3) == (data["architecture"], data["detections"][0]["confidence"])
    assert data["detections"][0]["reason"].startswith("a guess")


@pytest.mark.parametrize("model", ["opt", "bloom"])
def test_detect_unknown_architecture_is_one_line(model_dirs, model):
    """
    With the generic guess blocked, an architecture no plugin knows is one error line naming the installed
    patterns, exit code 1.
    """
    from adaptrix_core.plugins import make_plugin_manager

    pm = make_plugin_manager(blocked=["adaptrix_core.builtins.generic"])

    result = CliRunner().invoke(make_app(pm), ["detect", str(model_dirs / model)])

    assert 1 == result.exit_code
    assert "No installed pattern recognises" in result.output
    assert "Installed patterns: gpt2, llama, phi2" in result.output
    assert "Traceback" not in result.output


def test_targets_lists_modules_per_layer(pm, model_dirs):
    """
    `adaptrix targets` resolves every role of the map in every layer.
    """
    result = CliRunner().invoke(make_app(pm), ["targets", str(model_dirs / "llama"), "--json"])

    data = json.loads(result.output)
    assert "llama" == data["architecture"]
    assert {"0", "1"} == set(data["layers"])
    assert "model.layers.1.self_attn.q_proj" == data["layers"]["1"]["attn.q"]


def test_plugins_lists_first_party_plugins(pm):
    """
    `adaptrix plugins` lists the four distributions with versions and hooks; --all adds built-ins.
    """
    runner = CliRunner()

    listed = json.loads(runner.invoke(make_app(pm), ["plugins", "--json"]).output)
    everything = json.loads(runner.invoke(make_app(pm), ["plugins", "--all", "--json"]).output)

    names = {p["name"] for p in listed}
    assert {"adaptrix-plugin-gpt2", "adaptrix-plugin-phi2", "adaptrix-plugin-llama", "adaptrix-plugin-semantic-router"} <= names
    first_party = {"adaptrix-plugin-gpt2", "adaptrix-plugin-phi2", "adaptrix-plugin-llama", "adaptrix-plugin-semantic-router"}
    installed = {name: importlib.metadata.version(name) for name in first_party}
    assert installed == {p["name"]: p["version"] for p in listed if p["name"] in first_party}
    assert any(p["builtin"] for p in everything)
    assert not any(p["builtin"] for p in listed)


def test_real_process_prints_no_traceback(model_dirs, tmp_path):
    """
    The installed console script turns an AdaptrixError into one line and exit code 1.
    """
    adaptrix = os.path.join(os.path.dirname(sys.executable), "adaptrix")
    env = {**os.environ, "ADAPTRIX_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1",
           "ADAPTRIX_BLOCK_PLUGINS": "adaptrix_core.builtins.generic"}

    proc = subprocess.run([adaptrix, "detect", str(model_dirs / "opt")], capture_output=True, text=True, env=env, check=False)

    assert 1 == proc.returncode
    assert 1 == len(proc.stderr.strip().splitlines()), proc.stderr
    assert proc.stderr.startswith("Error: No installed pattern recognises OPTForCausalLM")


def test_hook_register_commands_adds_plugin_commands(core_pm):
    """
    A plugin's register_commands adds a working subcommand.
    """
    import typer

    from adaptrix_core import hookimpl

    class Hello:
        @hookimpl
        def register_commands(self, app):
            @app.command()
            def hello(name: str) -> None:
                typer.echo(f"hello {name}")

    core_pm.register(Hello())

    result = CliRunner().invoke(make_app(core_pm), ["hello", "adaptrix"])

    assert "hello adaptrix\n" == result.output


def test_config_command_shows_effective_settings(core_pm, tmp_path, monkeypatch):
    """
    `adaptrix config` shows the directories under ADAPTRIX_HOME and the resolved device.
    """
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path))
    monkeypatch.setenv("ADAPTRIX_DEVICE", "cpu")

    result = CliRunner().invoke(make_app(core_pm), ["config", "--json"])

    data = json.loads(result.output)
    assert (str(tmp_path / "library"), "cpu") == (data["library_dir"], data["resolved_device"])


def test_bad_config_is_one_line(core_pm, tmp_path, monkeypatch):
    """
    A broken config file is reported as one line naming the file.
    """
    monkeypatch.setenv("ADAPTRIX_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text("device = [")

    result = CliRunner().invoke(make_app(core_pm), ["config"])

    assert 1 == result.exit_code
    assert f"{tmp_path / 'config.toml'}: not valid TOML" in result.output
