"""
Generated broken adapters (random truncations, bit flips, non-finite and huge numbers, control characters in
names, special files, refused target_modules), through the API and through ``adaptrix convert``.

A seeded sample runs here; ``benchmarks/bench_bad_adapters.py`` runs more than a thousand (docs/library.md).
Each must be refused in one line, without a traceback, leaving the library exactly as it was.
"""

from __future__ import annotations

import pytest
import torch

from typer.testing import CliRunner

from adaptrix_core.cli import make_app
from adaptrix_core.conversion import convert
from adaptrix_core.library import Library
from adaptrix_core.mutants import generate, judge_api, judge_cli, prepare
from adaptrix_core.peft_format import write_adapter
from adaptrix_core.plugins import make_plugin_manager
from adaptrix_core.testing import tiny_gpt2, tiny_llama


FAMILIES = {
    "truncate-weights", "truncate-config", "flip-header-length", "flip-header", "flip-data", "non-finite-value",
    "huge-values", "name-control", "config-number", "huge-integer", "special-file", "target-modules",
}


def _valid(path, arch: str):
    g = torch.Generator().manual_seed(0)
    if arch == "llama":
        modules = {f"model.layers.{i}.self_attn.q_proj": (32, 32) for i in range(2)}
        config = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]}
    else:
        modules = {f"transformer.h.{i}.attn.c_attn": (32, 96) for i in range(2)}
        config = {"r": 4, "lora_alpha": 8, "target_modules": ["c_attn"], "fan_in_fan_out": True}
    tensors = {m: (torch.randn(4, i, generator=g) * 0.1, torch.randn(o, 4, generator=g) * 0.1) for m, (i, o) in modules.items()}
    return write_adapter(path, config, tensors)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Valid adapters for two architectures, their models, and a library that already holds one adapter."""
    root = tmp_path_factory.mktemp("mutants")
    pm = make_plugin_manager()
    out = {"root": root, "pm": pm, "models": {"llama": tiny_llama(), "gpt2": tiny_gpt2()}}
    out["valid"] = {arch: _valid(root / f"valid-{arch}", arch) for arch in out["models"]}
    out["library"] = Library(root / "library", shipped_dir=root / "none")
    convert(str(out["valid"]["llama"]), "existing", model=out["models"]["llama"], library=out["library"], pm=pm)
    return out


def test_generator_covers_every_family_and_is_seeded(setup):
    """
    Every family the suite promises is generated, and the same seed gives the same cases.
    """
    valid = setup["valid"]["llama"]
    first, again = generate(valid, seed=3, per_family=2), generate(valid, seed=3, per_family=2)

    assert (FAMILIES, [m.id for m in first]) == ({m.family for m in first}, [m.id for m in again])


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_generated_bad_adapters_are_refused_cleanly_through_the_api(setup, tmp_path, arch):
    """
    A seeded sample of every family: each must-refuse case raises a one-line AdaptrixError and leaves the
    library unchanged; cases that may stay valid (bit flips in data) are refused cleanly or pass every check.
    """
    seed = {"llama": 11, "gpt2": 12}[arch]
    outcomes = [
        judge_api(m, prepare(setup["valid"][arch], m, tmp_path), setup["library"], setup["models"][arch], setup["pm"])
        for m in generate(setup["valid"][arch], seed=seed, per_family=2)
    ]

    assert [] == [(o.id, o.message) for o in outcomes if not o.ok]
    assert ["existing"] == setup["library"].names()


def test_generated_bad_adapters_are_refused_cleanly_through_the_cli(setup, tmp_path, monkeypatch):
    """
    A sample through `adaptrix convert`: exit code 1, one `Error:` line on stderr, no traceback, library unchanged.
    """
    base = tmp_path / "base"
    setup["models"]["llama"].save_pretrained(base)
    library = tmp_path / "library"
    monkeypatch.setenv("ADAPTRIX_LIBRARY_DIR", str(library))
    monkeypatch.setenv("ADAPTRIX_SHIPPED_ADAPTERS", "")
    app, runner = make_app(setup["pm"]), CliRunner()
    mutants = generate(setup["valid"]["llama"], seed=21, per_family=1)
    sample = [m for m in mutants if m.must_refuse][::4]
    outcomes = [judge_cli(m, prepare(setup["valid"]["llama"], m, tmp_path / "work"), library, base, app, runner)
                for m in sample]

    assert (True, []) == (len(sample) >= 15, [(o.id, o.message) for o in outcomes if not o.ok])
