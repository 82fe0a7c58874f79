"""The main job on the real embedded model: shipped adapters change its answers, and `adaptrix demo` runs."""

from __future__ import annotations

from pathlib import Path

import pytest


REPO_ADAPTERS = Path(__file__).resolve().parent.parent / "adapters"


def test_every_demo_adapter_ships_small_with_metadata():
    """
    Each demo adapter is a PEFT folder under 16 MB (french, a 690-phrase phrasebook at rank 16 on every
    layer, is 11.8 MB; the others 1.9 MB) with adaptrix.json naming its metric and how it was made.
    """
    import json

    from adaptrix_core.demo import DEMO_ADAPTERS
    from adaptrix_core.library import Library

    library = Library(REPO_ADAPTERS.parent / "no-user-library", shipped_dir=REPO_ADAPTERS)
    for name in DEMO_ADAPTERS:
        info = library.get(name)
        meta = json.loads((info.path / "adaptrix.json").read_text())
        size = (info.path / "adapter_model.safetensors").stat().st_size
        assert (True, name) == (info.shipped, meta["extra"]["metric"])
        assert size < 16 * 2**20
        assert "HuggingFaceTB/SmolLM2-135M-Instruct" == meta["base_model"]
        assert meta["extra"]["training"]["options"]["seed"] == 0


@pytest.mark.slow
def test_a_shipped_adapter_changes_the_real_models_answer(embedded_lm, tmp_path):
    """On SmolLM2-135M, the shipped pirate adapter turns a plain answer into pirate talk."""
    from adaptrix_core.engine import AdaptrixEngine
    from adaptrix_core.evaluation import pirate_words
    from adaptrix_core.library import Library

    model, tokenizer = embedded_lm
    library = Library(tmp_path / "library", shipped_dir=REPO_ADAPTERS)
    with AdaptrixEngine.from_model(model, tokenizer, library=library) as engine:
        base, pirate = engine.generate(["How do I make a cup of tea?"] * 2, adapters=[None, "pirate"],
                                       max_new_tokens=20)

    assert base != pirate
    assert len(pirate_words(pirate)) >= 2, pirate
    assert len(pirate_words(base)) < 2, base


@pytest.mark.slow
def test_demo_command_runs_end_to_end(embedded_cache_dir, monkeypatch):
    """`adaptrix demo` loads the default model, answers with every adapter, hot-swaps, composes and routes."""
    from typer.testing import CliRunner

    from adaptrix_core.cli import make_app

    monkeypatch.setenv("ADAPTRIX_CACHE_DIR", str(embedded_cache_dir))
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", str(REPO_ADAPTERS))
    monkeypatch.setenv("COLUMNS", "200")

    result = CliRunner().invoke(make_app(), ["demo", "--max-new-tokens", "12"])

    assert 0 == result.exit_code, result.output
    out = result.output
    for heading in ("Shipped adapters", "1. Base model vs each adapter", "2. Hot-swap", "3. Two adapters composed",
                    "4. Routing", "Demo done"):
        assert heading in out
    assert "switch_adapter('pirate', 'json') took" in out
    for routed in ("pirate (", "json (", "french (", "arithmetic (", "base ("):
        assert routed in out


def test_dataset_generator_rebuilds_the_shipped_datasets_exactly(tmp_path):
    """make_datasets.py reproduces the committed JSONL files byte for byte, and they are what each adapter trained on."""
    import importlib.util
    import json

    from adaptrix_core.demo import DEMO_ADAPTERS
    from adaptrix_core.training import dataset_sha256, read_dataset

    spec = importlib.util.spec_from_file_location("make_datasets", REPO_ADAPTERS / "datasets" / "make_datasets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    module.main(tmp_path)

    for name in DEMO_ADAPTERS:
        for split in ("train", "heldout"):
            file = f"{name}.{split}.jsonl"
            assert (REPO_ADAPTERS / "datasets" / file).read_bytes() == (tmp_path / file).read_bytes(), file
        recorded = json.loads((REPO_ADAPTERS / name / "adaptrix.json").read_text())["extra"]["training"]
        assert recorded["dataset_sha256"] == dataset_sha256(read_dataset(tmp_path / f"{name}.train.jsonl"))
        train = {e.prompt for e in read_dataset(tmp_path / f"{name}.train.jsonl")}
        held = {e.prompt for e in read_dataset(tmp_path / f"{name}.heldout.jsonl")}
        assert set() == train & held
