"""`adaptrix push`: a library adapter becomes a PEFT repo with a model card, proved against a fake hub on loopback."""

from __future__ import annotations

import importlib.util
import json

from pathlib import Path

import pytest

from safetensors.torch import load_file

from adaptrix_core.exceptions import AdapterNotFoundError
from adaptrix_core.hub import PushError, model_card, push_adapter
from adaptrix_core.library import Library


def _load_fake_hub():
    spec = importlib.util.spec_from_file_location("adaptrix_tests_fake_hub", Path(__file__).with_name("fake_hub.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FakeHub = _load_fake_hub().FakeHub


@pytest.fixture(name="hub")
def _hub(monkeypatch, tmp_path):
    """A fake hub on 127.0.0.1, with huggingface_hub pointed at it and allowed to talk (only to it)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token")
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


def test_model_card_says_what_the_adapter_is_and_how_to_use_it():
    """
    The card of the shipped pirate adapter has the hub metadata, its description, capabilities, evaluation
    numbers, training run, lineage and the Adaptrix, PEFT and vLLM recipes.
    """
    library = Library()
    meta = library.metadata("pirate")
    config = json.loads((library.path("pirate") / "adapter_config.json").read_text())

    card = model_card("pirate", meta, "me/pirate", adapter_config=config)

    header = card.split("---")[1]
    for fragment in ("library_name: peft", "base_model: HuggingFaceTB/SmolLM2-135M-Instruct", "- adaptrix"):
        assert fragment in header
    evaluation, training = meta["extra"]["eval"], meta["extra"]["training"]
    row = f"| pirate | {evaluation['n']} | {evaluation['with_adapter']:.0%} | {evaluation['without_adapter']:.0%} |"
    for fragment in (
        meta["description"], "pirate, roleplay, style", row, f"`adaptrix train`: {training['steps']} steps",
        "Made by `adaptrix train pirate.train.jsonl`", "adaptrix convert hf://me/pirate --name pirate",
        'PeftModel.from_pretrained(base, "me/pirate")', "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora",
    ):
        assert fragment in card


def test_push_uploads_a_peft_repo_with_a_validated_card(hub):
    """
    A private push creates the repo private and uploads the card, the config and the exact weights.
    """
    library = Library()

    result = push_adapter("pirate", "me/pirate", private=True)

    repo = hub.repos["me/pirate"]
    local = (library.path("pirate") / "adapter_model.safetensors").read_bytes()
    assert (True, True) == (repo.private, result.private)
    assert ("README.md", "adapter_config.json", "adapter_model.safetensors") == result.files == tuple(sorted(repo.files))
    assert local == repo.files["adapter_model.safetensors"]
    assert "peft" == hub.validated[-1]["library_name"]
    assert (f"{hub.url}/me/pirate", repo.sha) == (result.url, result.commit)


def test_push_then_convert_from_the_same_hub_round_trips(hub, lm_helpers, tiny_lm_dir, tiny_lm_library_dir, tmp_path):
    """
    An adapter pushed to the hub converts back (`hf://user/repo`) onto the same base with identical tensors.
    """
    from transformers import AutoModelForCausalLM

    from adaptrix_core.conversion import convert

    source = Library(tiny_lm_library_dir, shipped_dir=tmp_path / "none")
    push_adapter("alpha", "me/alpha", library=source)
    target = Library(tmp_path / "other-library", shipped_dir=tmp_path / "none")

    converted = convert("hf://me/alpha", "alpha-again", model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
                        library=target)

    before = load_file(source.path("alpha") / "adapter_model.safetensors")
    after = load_file(target.path("alpha-again") / "adapter_model.safetensors")
    assert sorted(before) == sorted(after)
    assert all(before[k].equal(after[k]) for k in before)
    assert "alpha-again" == converted.info.name


def test_cli_push_prints_the_repo_and_how_to_convert_it(hub):
    """
    `adaptrix push NAME REPO --private --json` reports the repo URL, commit and files.
    """
    from typer.testing import CliRunner

    from adaptrix_core.cli import make_app
    from adaptrix_core.plugins import make_plugin_manager

    result = CliRunner().invoke(make_app(make_plugin_manager()), ["push", "json", "me/json-adapter", "--private", "--json"])

    assert 0 == result.exit_code, result.output
    out = json.loads(result.output)
    assert (f"{hub.url}/me/json-adapter", True, hub.repos["me/json-adapter"].sha) == (out["url"], out["private"], out["commit"])


@pytest.mark.parametrize(
    ("name", "repo_id", "error", "fragment"),
    [
        ("pirate", "not-a-repo-id", PushError, "not a hub repo id"),
        ("pirate", "me/x/y", PushError, "not a hub repo id"),
        ("no-such-adapter", "me/x", AdapterNotFoundError, "no adapter named 'no-such-adapter'"),
    ],
)
def test_bad_input_is_refused_before_any_network(name, repo_id, error, fragment):
    """
    A malformed repo id or an unknown adapter fails with a clear error (the default offline hub is never asked).
    """
    with pytest.raises(error, match=fragment):
        push_adapter(name, repo_id)


def test_offline_mode_refuses_to_push():
    """
    With HF_HUB_OFFLINE=1 (the test default) push says why it cannot run and how to fix it.
    """
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push_adapter("pirate", "me/pirate")


def test_unreachable_hub_is_one_clear_error(hub, monkeypatch):
    """
    A hub that does not answer (a closed port) is a PushError naming the endpoint, not a traceback.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"

    with pytest.raises(PushError, match="could not reach the hub at http://127.0.0.1"):
        push_adapter("pirate", "me/pirate", endpoint=closed)
