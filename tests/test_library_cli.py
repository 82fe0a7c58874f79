"""The library CLI: convert, list-adapters, inspect, remove, export, through a real app and a saved tiny model."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import typer

from typer.testing import CliRunner

from adaptrix_core.cli import make_app
from adaptrix_core.library import METADATA_NAME, Library
from adaptrix_core.peft_format import write_adapter
from adaptrix_core.plugins import make_plugin_manager
from adaptrix_core.testing import tiny_llama


COMMANDS = ("convert", "list-adapters", "inspect", "remove", "export")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny LLaMA saved to disk (weights and config only, no tokenizer) and a valid adapter for it."""
    root = tmp_path_factory.mktemp("cli")
    tiny_llama().save_pretrained(root / "base")
    g = torch.Generator().manual_seed(0)
    modules = {}
    for i in range(2):
        modules[f"model.layers.{i}.self_attn.q_proj"] = (torch.randn(4, 32, generator=g), torch.randn(32, 4, generator=g))
        modules[f"model.layers.{i}.self_attn.v_proj"] = (torch.randn(4, 32, generator=g), torch.randn(16, 4, generator=g))
    write_adapter(root / "adapter", {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
                                     "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M"}, modules)
    return root


@pytest.fixture(name="cli")
def _cli(tmp_path, monkeypatch):
    """Run `adaptrix ...` with an app built from a fresh plugin manager; shipped adapters from a temp folder."""
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", str(shipped))
    app = make_app(make_plugin_manager())
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, [str(a) for a in args])

    run.shipped = shipped
    return run


def _convert(cli, saved, name="demo", *extra):
    return cli("convert", saved / "adapter", "--name", name, "--model", saved / "base", *extra)


def test_convert_installs_with_metadata(cli, saved):
    """
    convert proves the adapter on --model and installs it with description, capabilities, domain and examples.
    """
    result = _convert(cli, saved, "demo", "--description", "Demo.", "-c", "json", "-c", "format", "--domain", "data",
                      "-e", "List fruits", "--example", "Give JSON")
    info = Library().get("demo")

    assert (0, True) == (result.exit_code, "Installed demo: llama, 4 modules in 2 layers, r=4" in result.output), result.output
    assert ("Demo.", ("json", "format"), "data", ("List fruits", "Give JSON"), "HuggingFaceTB/SmolLM2-135M") == (
        info.description, info.capabilities, info.domain, info.examples, info.base_model
    )


def test_convert_json_prints_the_report(cli, saved):
    """
    convert --json prints the installed adapter and its full compatibility report.
    """
    result = _convert(cli, saved, "j", "--json")
    data = json.loads(result.output)

    assert ("j", "llama", 4, ["llama", "phi2"]) == (
        data["adapter"]["name"], data["report"]["architecture"], data["report"]["rank"],
        [d["architecture"] for d in data["report"]["detections"]],
    )


def test_convert_duplicate_is_one_error_line_and_force_replaces(cli, saved):
    """
    A taken name exits 1 with one 'Error:' line and no traceback; --force replaces the adapter.
    """
    _convert(cli, saved, "dup")
    refused = _convert(cli, saved, "dup")
    forced = _convert(cli, saved, "dup", "--force", "--description", "again")

    assert (1, 1, "Traceback" in refused.output) == (refused.exit_code, refused.output.count("Error:"), False)
    assert ("already in the library", 0, "again") == (
        "already in the library" if "already in the library" in refused.output else refused.output,
        forced.exit_code, Library().get("dup").description,
    )


@pytest.mark.parametrize("name", ["../x", "a/b", "base"])
def test_convert_bad_name(cli, saved, name):
    """
    An invalid --name exits 1 before any work, and nothing is written.
    """
    result = _convert(cli, saved, name)

    assert (1, "is not allowed", []) == (
        result.exit_code, "is not allowed" if "is not allowed" in result.output else result.output, Library().list()
    )


def test_convert_broken_adapter_names_the_file(cli, saved, tmp_path):
    """
    A truncated weights file exits 1 with an error that names it; the library stays empty.
    """
    broken = tmp_path / "broken"
    shutil.copytree(saved / "adapter", broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    result = cli("convert", broken, "--name", "b", "--model", saved / "base")

    assert (1, True, []) == (result.exit_code, str(weights) in result.output.replace("\n", ""), Library().list())


def test_convert_from_hub_cache_by_repo_id(cli, saved, tmp_path, monkeypatch):
    """
    `adaptrix convert user/repo` reads the offline HF cache.
    """
    storage = tmp_path / "hub" / "models--user--lora"
    shutil.copytree(saved / "adapter", storage / "snapshots" / ("b" * 40))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text("b" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    result = cli("convert", "user/lora", "--name", "hub", "--model", saved / "base")

    assert (0, "user/lora") == (result.exit_code, Library().metadata("hub")["source"]), result.output


def test_list_adapters_table_and_json(cli, saved):
    """
    list-adapters shows user and shipped adapters; --json gives every field.
    """
    _convert(cli, saved, "mine", "--domain", "testing")
    shutil.copytree(Library().path("mine"), cli.shipped / "pirate")
    table = cli("list-adapters")
    data = json.loads(cli("list-adapters", "--json").output)

    assert (0, True, True) == (table.exit_code, "mine" in table.output, "shipped" in table.output)
    assert [("mine", False, "testing"), ("pirate", True, "testing")] == [(d["name"], d["shipped"], d["domain"]) for d in data]


def test_list_adapters_shows_the_whole_base_model_the_origin_and_the_description(cli, saved):
    """
    The base model id is never cut at 80 columns, the origin column is labelled, and descriptions are shown.
    """
    _convert(cli, saved, "mine", "--description", "Answers like a careful librarian.", "--domain", "books")
    shutil.copytree(Library().path("mine"), cli.shipped / "pirate")
    meta = json.loads((cli.shipped / "pirate" / METADATA_NAME).read_text())
    long_base = "some-organisation-with-a-long-name/SmolLM2-135M-Instruct-finetuned-v2"
    (cli.shipped / "pirate" / METADATA_NAME).write_text(json.dumps({**meta, "base_model": long_base}))
    table = cli("list-adapters")
    header = table.output.splitlines()[0].split()
    flat = "".join(table.output.split())

    assert (["name", "origin", "description"], True, True, True) == (
        header, f"basemodel:{long_base}" in flat, "Answerslikeacarefullibrarian." in flat, "domain:books" in flat
    ), table.output


def test_a_broken_entry_is_listed_with_its_reason_and_removable(cli, saved):
    """
    A corrupt adaptrix.json shows as a broken row with the reason (it used to vanish); `remove` deletes it.
    """
    _convert(cli, saved, "bad")
    (Library().root / "bad" / METADATA_NAME).write_text("[1, 2")
    listed = cli("list-adapters")
    as_json = json.loads(cli("list-adapters", "--json").output)
    removed = cli("remove", "bad")

    assert (True, True, [("bad", True)]) == (
        "broken:" in listed.output, "adaptrix remove NAME" in listed.output, [(d["name"], bool(d["broken"])) for d in as_json]
    ), listed.output
    assert (0, [], []) == (removed.exit_code, Library().names(), Library().broken())


def test_inspect_with_a_non_finite_rank_is_one_error_line(cli, saved, tmp_path):
    """
    `inspect` of an adapter whose r is NaN: exit 1 and one line naming the field (it used to be a traceback).
    """
    broken = tmp_path / "nan"
    shutil.copytree(saved / "adapter", broken)
    config = (broken / "adapter_config.json").read_text()
    (broken / "adapter_config.json").write_text(json.dumps({**json.loads(config), "r": "@"}).replace('"@"', "NaN"))
    result = cli("inspect", broken)

    assert (1, 1, True) == (result.exit_code, len(result.output.strip().splitlines()), "'r'" in result.output), result.output


def test_list_adapters_empty(cli):
    """
    An empty library says how to add an adapter.
    """
    result = cli("list-adapters")

    assert (0, True) == (result.exit_code, "adaptrix convert" in result.output)


def test_inspect_library_adapter(cli, saved):
    """
    inspect NAME prints the stored report: modules per layer and role, rank, effect, detections.
    """
    _convert(cli, saved, "ins")
    result = cli("inspect", "ins")
    meta = json.loads(cli("inspect", "ins", "--json").output)

    assert (0, True, True, True) == (
        result.exit_code, "matched modules" in result.output, "r=4 alpha=8.0" in result.output, "effect" in result.output
    ), result.output
    assert ("ins", "llama") == (meta["name"], meta["report"]["architecture"])


def test_inspect_path_without_and_with_a_base_model(cli, saved):
    """
    inspect PATH reports the adapter alone; with --model it also fits it onto that model's skeleton.
    """
    alone = cli("inspect", saved / "adapter")
    fitted = cli("inspect", saved / "adapter", "--model", saved / "base", "--json")
    report = json.loads(fitted.output)["report"]

    assert (0, True, []) == (alone.exit_code, "adapter modules" in alone.output, Library().list())
    assert (0, ["0", "1"], None) == (fitted.exit_code, sorted(report["layers"]), report["effect"])


def test_inspect_unknown_is_an_error(cli):
    """
    inspect of a name that is neither in the library nor a path exits 1 with one error line.
    """
    result = cli("inspect", "./no-such-adapter")

    assert (1, True) == (result.exit_code, "no such directory" in result.output)


def test_remove(cli, saved):
    """
    remove deletes a user adapter; removing a shipped one is refused.
    """
    _convert(cli, saved, "gone")
    shutil.copytree(Library().path("gone"), cli.shipped / "pirate")
    removed = cli("remove", "gone")
    shipped = cli("remove", "pirate")

    assert (0, 1, ["pirate"]) == (removed.exit_code, shipped.exit_code, Library().names())


def test_export(cli, saved, tmp_path):
    """
    export writes a plain PEFT dir; a non-empty destination needs --force.
    """
    _convert(cli, saved, "out")
    first = cli("export", "out", tmp_path / "exp")
    (tmp_path / "exp" / "extra.txt").write_text("x")
    again = cli("export", "out", tmp_path / "exp")
    forced = cli("export", "out", tmp_path / "exp", "--force")

    assert (0, 1, 0) == (first.exit_code, again.exit_code, forced.exit_code)
    assert ["adapter_config.json", "adapter_model.safetensors"] == sorted(p.name for p in (tmp_path / "exp").iterdir())
    assert not (tmp_path / "exp" / METADATA_NAME).exists()


def test_every_library_command_and_option_has_help():
    """
    Each library command has a help text, and so does each of its options and arguments.
    """
    group = typer.main.get_command(make_app(make_plugin_manager()))
    missing = []
    for name in COMMANDS:
        command = group.commands[name]
        if not command.help:
            missing.append(name)
        missing += [f"{name} {p.name}" for p in command.params if not getattr(p, "help", None)]

    assert [] == missing
