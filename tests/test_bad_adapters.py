"""
Mutation suite: a few hundred broken variants of valid adapters, each refused cleanly.

For every mutation, conversion must raise an ``AdaptrixError`` whose message
names the file or field at fault, and the library directory must be exactly as
it was (no new file, not even a dot-prefixed temp dir). Tiny models and the
plugin manager are shared per module to keep the whole file fast.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from safetensors.torch import load_file, save_file

from adaptrix_core.conversion import convert
from adaptrix_core.exceptions import (
    AdapterExistsError,
    AdapterFormatError,
    AdapterMismatchError,
    AdapterNotFoundError,
    AdaptrixError,
    InvalidNameError,
    NotRegisteredError,
    UnsupportedFeatureError,
)
from adaptrix_core.library import Library
from adaptrix_core.peft_format import write_adapter
from adaptrix_core.plugins import make_plugin_manager
from adaptrix_core.testing import tiny_gpt2, tiny_llama, tiny_phi


CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
BIN = "adapter_model.bin"

# module name -> (in, out) for each tiny model (hidden 32; llama kv dim 16)
MODULES = {
    "llama": {
        **{f"model.layers.{i}.self_attn.q_proj": (32, 32) for i in range(2)},
        **{f"model.layers.{i}.self_attn.v_proj": (32, 16) for i in range(2)},
        **{f"model.layers.{i}.mlp.down_proj": (64, 32) for i in range(2)},
    },
    "gpt2": {
        **{f"transformer.h.{i}.attn.c_attn": (32, 96) for i in range(2)},
        **{f"transformer.h.{i}.mlp.c_fc": (32, 128) for i in range(2)},
    },
    "phi2": {
        **{f"model.layers.{i}.self_attn.q_proj": (32, 32) for i in range(2)},
        **{f"model.layers.{i}.self_attn.dense": (32, 32) for i in range(2)},
        **{f"model.layers.{i}.mlp.fc1": (32, 64) for i in range(2)},
    },
}
BASE_NAMES = {"llama": "HuggingFaceTB/SmolLM2-135M", "gpt2": "gpt2", "phi2": "microsoft/phi-2"}
FIRST = {arch: next(iter(mods)) for arch, mods in MODULES.items()}


def _valid_config(arch: str) -> dict:
    return {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in MODULES[arch]}),
        "base_model_name_or_path": BASE_NAMES[arch],
        "task_type": "CAUSAL_LM",
        "bias": "none",
        "fan_in_fan_out": arch == "gpt2",
    }


def _valid_modules(arch: str, r: int = 4) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return {m: (torch.randn(r, i, generator=g), torch.randn(o, r, generator=g)) for m, (i, o) in MODULES[arch].items()}


# mutations ---------------------------------------------------------------------------------------------------------
# Each is (id, function(directory, arch), expected exception, substrings the message must contain).

Mutation = tuple[str, Callable[[Path, str], None], type[AdaptrixError], tuple[str, ...]]


def _edit_config(**changes: object) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        cfg = json.loads((d / CONFIG).read_text())
        for key, value in changes.items():
            if value is _DELETE:
                cfg.pop(key, None)
            else:
                cfg[key] = value
        (d / CONFIG).write_text(json.dumps(cfg))

    return apply


_DELETE = object()


def _write_config_text(text: str | bytes) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        (d / CONFIG).write_bytes(text if isinstance(text, bytes) else text.encode())

    return apply


def _truncate_config(fraction: float) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        data = (d / CONFIG).read_bytes()
        (d / CONFIG).write_bytes(data[: max(1, int(len(data) * fraction))])

    return apply


def _remove(name: str) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        (d / name).unlink()

    return apply


def _config_is_dir(d: Path, arch: str) -> None:
    (d / CONFIG).unlink()
    (d / CONFIG).mkdir()


def _truncate_weights(cut: int | float) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        data = (d / WEIGHTS).read_bytes()
        n = int(len(data) * cut) if isinstance(cut, float) else (cut if cut >= 0 else len(data) + cut)
        (d / WEIGHTS).write_bytes(data[:n])

    return apply


def _corrupt_weights(offset: int, junk: bytes) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        data = bytearray((d / WEIGHTS).read_bytes())
        data[offset : offset + len(junk)] = junk
        (d / WEIGHTS).write_bytes(bytes(data))

    return apply


def _random_weights(n: int) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        (d / WEIGHTS).write_bytes(os.urandom(n) if n else b"")

    return apply


def _edit_tensors(edit: Callable[[dict[str, torch.Tensor], str], None]) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        tensors = load_file(d / WEIGHTS)
        edit(tensors, arch)
        save_file(tensors, d / WEIGHTS)

    return apply


def _key(arch: str, kind: str, module: str | None = None) -> str:
    return f"base_model.model.{module or FIRST[arch]}.lora_{kind}.weight"


def _set(kind: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, torch.Tensor], str], None]:
    def edit(t: dict[str, torch.Tensor], arch: str) -> None:
        t[_key(arch, kind)] = make(t[_key(arch, kind)])

    return edit


def _drop(kind: str) -> Callable[[dict[str, torch.Tensor], str], None]:
    def edit(t: dict[str, torch.Tensor], arch: str) -> None:
        del t[_key(arch, kind)]

    return edit


def _add(suffix: str, shape: tuple[int, ...] = (4, 32)) -> Callable[[dict[str, torch.Tensor], str], None]:
    def edit(t: dict[str, torch.Tensor], arch: str) -> None:
        t[f"base_model.model.{FIRST[arch]}.{suffix}"] = torch.zeros(shape)

    return edit


def _foreign_module(module: Callable[[str], str]) -> Callable[[dict[str, torch.Tensor], str], None]:
    def edit(t: dict[str, torch.Tensor], arch: str) -> None:
        name = module(arch)
        t[f"base_model.model.{name}.lora_A.weight"] = torch.randn(4, 32)
        t[f"base_model.model.{name}.lora_B.weight"] = torch.randn(32, 4)

    return edit


def _target_also(module: Callable[[str], str]) -> Callable[[Path, str], None]:
    """Name the foreign module in target_modules too, so PEFT would target it (and fail on the base model)."""

    def apply(d: Path, arch: str) -> None:
        cfg = json.loads((d / CONFIG).read_text())
        cfg["target_modules"] = [*cfg["target_modules"], module(arch)]
        (d / CONFIG).write_text(json.dumps(cfg))

    return apply


def _both(*steps: Callable[[Path, str], None]) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        for step in steps:
            step(d, arch)

    return apply


def _foreign(module: Callable[[str], str]) -> Callable[[Path, str], None]:
    return _both(_edit_tensors(_foreign_module(module)), _target_also(module))


def _only_unknown(t: dict[str, torch.Tensor], arch: str) -> None:
    t.clear()
    t["base_model.model.lm_head.weight"] = torch.zeros(2, 2)


def _two_adapter_names(t: dict[str, torch.Tensor], arch: str) -> None:
    a, b = t.pop(_key(arch, "A")), t.pop(_key(arch, "B"))
    stem = f"base_model.model.{FIRST[arch]}"
    t[f"{stem}.lora_A.default.weight"], t[f"{stem}.lora_B.default.weight"] = a, b
    t[f"{stem}.lora_A.other.weight"], t[f"{stem}.lora_B.other.weight"] = a.clone(), b.clone()


def _all_rank(r: int) -> Callable[[dict[str, torch.Tensor], str], None]:
    def edit(t: dict[str, torch.Tensor], arch: str) -> None:
        t.clear()
        for module, (a, b) in _valid_modules(arch, r).items():
            t[_key(arch, "A", module)], t[_key(arch, "B", module)] = a, b

    return edit


def _other_architecture(other: str) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        shutil.rmtree(d)
        write_adapter(d, _valid_config(other), _valid_modules(other))

    return apply


class _Exploit:
    """A pickle that would run a shell command on load: torch.load(weights_only=True) must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _as_bin(payload: Callable[[dict[str, torch.Tensor]], object], *, legacy: bool = False) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        tensors = load_file(d / WEIGHTS)
        (d / WEIGHTS).unlink()
        obj = payload(tensors)
        if legacy:
            (d / BIN).write_bytes(pickle.dumps(obj))
        else:
            torch.save(obj, d / BIN)

    return apply


def _bin_bytes(data: Callable[[bytes], bytes]) -> Callable[[Path, str], None]:
    def apply(d: Path, arch: str) -> None:
        tensors = load_file(d / WEIGHTS)
        (d / WEIGHTS).unlink()
        torch.save(tensors, d / BIN)
        (d / BIN).write_bytes(data((d / BIN).read_bytes()))

    return apply


def _mlx_config(d: Path, arch: str) -> None:
    (d / CONFIG).write_text(json.dumps(
        {"fine_tune_type": "lora", "lora_parameters": {"rank": 8, "scale": 20.0}, "model": "mlx-community/x", "num_layers": 16}
    ))


def _mlx_weights(d: Path, arch: str) -> None:
    (d / WEIGHTS).rename(d / "adapters.safetensors")


F, U, M = AdapterFormatError, UnsupportedFeatureError, AdapterMismatchError

CONFIG_MUTATIONS: list[Mutation] = [
    ("config-missing", _remove(CONFIG), F, (CONFIG, "missing")),
    ("config-empty", _write_config_text(""), F, (CONFIG, "JSON")),
    ("config-whitespace", _write_config_text("   \n"), F, (CONFIG, "JSON")),
    *[(f"config-truncated-{k}", _truncate_config(k / 6), F, (CONFIG, "JSON")) for k in range(1, 6)],
    ("config-array", _write_config_text("[]"), F, (CONFIG, "object")),
    ("config-string", _write_config_text('"LORA"'), F, (CONFIG, "object")),
    ("config-null", _write_config_text("null"), F, (CONFIG, "object")),
    ("config-number", _write_config_text("8"), F, (CONFIG, "object")),
    ("config-not-utf8", _write_config_text(b'{"r": 4, "x": "\xff\xfe"}'), F, (CONFIG,)),
    ("config-deep-nesting", _write_config_text("[" * 100000 + "]" * 100000), F, (CONFIG,)),
    ("config-is-directory", _config_is_dir, F, (CONFIG,)),
    ("config-mlx", _mlx_config, F, (CONFIG, "MLX")),
    *[(f"peft-type-{v}", _edit_config(peft_type=v), F, (CONFIG, "peft_type"))
      for v in ("IA3", "LOHA", "LOKR", "PROMPT_TUNING", "VERA", "ADALORA", "BOFT", "lora2", "", 7, ["LORA"], {"a": 1})],
    *[(f"r-{name}", _edit_config(r=v), F, (CONFIG, "'r'"))
      for name, v in (("missing", _DELETE), ("zero", 0), ("negative", -1), ("string", "8"), ("float", 1.5),
                      ("bool", True), ("null", None), ("list", [8]))],
    *[(f"alpha-{name}", _edit_config(lora_alpha=v), F, (CONFIG, "lora_alpha"))
      for name, v in (("string", "x"), ("bool", True), ("null", None), ("list", [8]), ("infinite", float("inf")), ("nan", float("nan")))],
    *[(f"refused-{field}", _edit_config(**{field: value}), U, (CONFIG, field))
      for field, value in (("use_dora", True), ("lora_bias", True), ("modules_to_save", ["lm_head"]),
                           ("layer_replication", [[0, 1]]), ("enable_lora", [True, False, True]),
                           ("target_parameters", ["mlp.experts"]), ("trainable_token_indices", [1, 2]),
                           ("use_qalora", True), ("alora_invocation_tokens", [5]))],
    *[(f"bias-{v}", _edit_config(bias=v), U, (CONFIG, "bias")) for v in ("all", "lora_only")],
    ("bias-number", _edit_config(bias=3), F, (CONFIG, "bias")),
    *[(f"rank-pattern-{name}", _edit_config(rank_pattern=v), F, (CONFIG, "rank_pattern"))
      for name, v in (("string", "x"), ("list", [1]), ("bad-regex", {"(": 4}), ("bad-value", {"q_proj": "x"}),
                      ("zero", {"q_proj": 0}), ("float", {"q_proj": 2.5}))],
    *[(f"alpha-pattern-{name}", _edit_config(alpha_pattern=v), F, (CONFIG, "alpha_pattern"))
      for name, v in (("number", 5), ("bad-regex", {"[": 1}), ("bad-value", {"q_proj": "a"}), ("bool", {"q": True}))],
    *[(f"target-modules-{name}", _edit_config(target_modules=v), F, (CONFIG, "target_modules"))
      for name, v in (("number", 5), ("ints", [1, 2]), ("object", {"a": 1}), ("bad-regex", "(q_proj"))],
    *[(f"layers-to-transform-{name}", _edit_config(layers_to_transform=v), F, (CONFIG, "layers_to_transform"))
      for name, v in (("string", "x"), ("floats", [1.5]), ("object", {"a": 1}), ("negative", [-1]), ("bools", [True]))],
    *[(f"layers-pattern-{name}", _edit_config(layers_pattern=v), F, (CONFIG, "layers_pattern"))
      for name, v in (("number", 5), ("ints", [1]))],
    *[(f"{field}-{name}", _edit_config(**{field: v}), F, (CONFIG, field))
      for field in ("use_rslora", "fan_in_fan_out") for name, v in (("string", "yes"), ("number", 2), ("list", []))],
    *[(f"base-model-{name}", _edit_config(base_model_name_or_path=v), F, (CONFIG, "base_model_name_or_path"))
      for name, v in (("number", 5), ("list", ["gpt2"]), ("object", {"a": 1}))],
    *[(f"task-type-{name}", _edit_config(task_type=v), F, (CONFIG, "task_type")) for name, v in (("number", 5), ("list", []))],
    ("rank-mismatch-config", _edit_config(r=8), M, (WEIGHTS, "rank")),
    ("rank-pattern-mismatch", _edit_config(rank_pattern={".*": 2}), M, (WEIGHTS, "rank")),
]

WEIGHT_MUTATIONS: list[Mutation] = [
    ("weights-missing", _remove(WEIGHTS), F, (WEIGHTS,)),
    ("weights-mlx-name", _mlx_weights, F, (WEIGHTS, "adapters.safetensors")),
    ("weights-empty", _random_weights(0), F, (WEIGHTS,)),
    *[(f"weights-random-{n}", _random_weights(n), F, (WEIGHTS,)) for n in (1, 7, 8, 64, 4096)],
    *[(f"weights-truncated-{cut}", _truncate_weights(cut), F, (WEIGHTS,)) for cut in (1, 4, 8, 9, 20, 0.3, 0.5, 0.9, -1)],
    ("weights-header-length-huge", _corrupt_weights(0, b"\xff\xff\xff\xff\xff\xff\xff\x7f"), F, (WEIGHTS,)),
    ("weights-header-length-zero", _corrupt_weights(0, b"\x00" * 8), F, (WEIGHTS,)),
    ("weights-header-not-json", _corrupt_weights(8, b"#!garbage"), F, (WEIGHTS,)),
    ("weights-header-bad-dtype", _corrupt_weights(8, b'{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,4]}}  '), F, (WEIGHTS,)),
    *[(f"shape-{name}", _edit_tensors(_set(kind, make)), M, (WEIGHTS, FIRST_SUBSTR))
      for name, kind, make, FIRST_SUBSTR in (
          ("a-wide", "A", lambda a: torch.randn(a.shape[0], a.shape[1] + 1), "lora_A"),
          ("a-narrow", "A", lambda a: torch.randn(a.shape[0], a.shape[1] - 1), "lora_A"),
          ("b-tall", "B", lambda b: torch.randn(b.shape[0] + 1, b.shape[1]), "lora_B"),
          ("b-short", "B", lambda b: torch.randn(b.shape[0] - 3, b.shape[1]), "lora_B"),
      )],
    *[(f"shape-{name}", _edit_tensors(_set(kind, make)), F, (WEIGHTS, "shape" if "rank" not in name else "rank"))
      for name, kind, make in (
          ("a-1d", "A", lambda a: a.flatten()),
          ("b-1d", "B", lambda b: b.flatten()),
          ("a-3d", "A", lambda a: a.unsqueeze(0)),
          ("b-scalar", "B", lambda b: b.sum()),
          ("rank-a-b-differ", "A", lambda a: torch.randn(a.shape[0] + 1, a.shape[1])),
          ("rank-zero", "A", lambda a: torch.randn(0, a.shape[1])),
          ("rank-transposed-a", "A", lambda a: a.T.contiguous()),
      )],
    *[(f"dtype-{kind}-{str(dt).removeprefix('torch.')}", _edit_tensors(_set(kind, lambda t, dt=dt: t.to(dt))), F,
       (WEIGHTS, "dtype"))
      for kind in ("A", "B") for dt in (torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool, torch.float8_e4m3fn,
                                         torch.complex64)],
    *[(f"values-{name}", _edit_tensors(_set(kind, make)), F, (WEIGHTS, "NaN"))
      for name, kind, make in (
          ("nan-a", "A", lambda a: a.index_fill(0, torch.tensor([0]), float("nan"))),
          ("inf-b", "B", lambda b: b.index_fill(0, torch.tensor([0]), float("inf"))),
          ("neg-inf-a", "A", lambda a: a.index_fill(1, torch.tensor([1]), float("-inf"))),
      )],
    ("missing-lora-b", _edit_tensors(_drop("B")), F, (WEIGHTS, "lora_B")),
    ("missing-lora-a", _edit_tensors(_drop("A")), F, (WEIGHTS, "lora_A")),
    ("no-lora-tensors", _edit_tensors(_only_unknown), F, (WEIGHTS, "no LoRA")),
    ("two-adapter-names", _edit_tensors(_two_adapter_names), F, (WEIGHTS, "two lora_A")),
    ("embedding-lora", _edit_tensors(_add("lora_embedding_A")), U, (WEIGHTS, "embedding")),
    ("dora-magnitude", _edit_tensors(_add("lora_magnitude_vector.weight", (32,))), U, (WEIGHTS, "DoRA")),
    ("modules-to-save-tensor", _edit_tensors(_add("modules_to_save.default.weight")), U, (WEIGHTS, "modules_to_save")),
    ("lora-b-bias", _edit_tensors(_add("lora_B.bias", (32,))), U, (WEIGHTS, "lora_bias")),
    ("module-layer-99", _foreign(lambda a: FIRST[a].replace(".0.", ".99.")), M, (WEIGHTS, "does not have")),
    ("module-unknown-leaf", _foreign(lambda a: FIRST[a].rsplit(".", 1)[0] + ".foo_proj"), M,
     (WEIGHTS, "does not have")),
    ("module-unknown-tree", _foreign(lambda a: "encoder.block.0.layer.0.SelfAttention.q"), M,
     (WEIGHTS, "does not have")),
    ("module-not-wrapped", _foreign(lambda a: "lm_head"), M, (WEIGHTS, "lm_head")),
    ("all-rank-8-config-4", _edit_tensors(_all_rank(8)), M, (WEIGHTS, "rank")),
]

BIN_MUTATIONS: list[Mutation] = [
    ("pickle-exploit", _as_bin(lambda t: {**t, "x": _Exploit()}), F, (BIN, "code execution")),
    ("pickle-exploit-only", _as_bin(lambda t: _Exploit()), F, (BIN, "code execution")),
    ("pickle-exploit-legacy", _as_bin(lambda t: _Exploit(), legacy=True), F, (BIN,)),
    ("pickle-exploit-legacy-dict", _as_bin(lambda t: {"a": _Exploit()}, legacy=True), F, (BIN,)),
    ("bin-list", _as_bin(lambda t: list(t.values())), F, (BIN, "dict")),
    ("bin-int-keys", _as_bin(lambda t: dict(enumerate(t.values()))), F, (BIN, "dict")),
    ("bin-tensor", _as_bin(lambda t: torch.zeros(3)), F, (BIN, "dict")),
    ("bin-non-tensor-value", _as_bin(lambda t: {k: v.tolist() for k, v in t.items()}), F, (BIN, "not a tensor")),
    ("bin-int-tensor", _as_bin(lambda t: {k: v.to(torch.int64) for k, v in t.items()}), F, (BIN, "dtype")),
    ("bin-truncated-half", _bin_bytes(lambda b: b[: len(b) // 2]), F, (BIN,)),
    ("bin-truncated-tail", _bin_bytes(lambda b: b[:-10]), F, (BIN,)),
    ("bin-random", _bin_bytes(lambda b: os.urandom(len(b))), F, (BIN,)),
    ("bin-empty", _bin_bytes(lambda b: b""), F, (BIN,)),
]

ARCH_MUTATIONS: list[tuple[str, str, str]] = [  # (base arch, adapter arch, expected substring)
    ("llama", "gpt2", "gpt2"),
    ("gpt2", "llama", "llama"),
    ("gpt2", "phi2", "phi2"),
    ("phi2", "gpt2", "gpt2"),
]

ALL = [(m, arch) for m in (*CONFIG_MUTATIONS, *WEIGHT_MUTATIONS, *BIN_MUTATIONS) for arch in MODULES]


# fixtures ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Tiny models, a plugin manager, valid adapters per architecture, and a library holding one adapter."""
    root = tmp_path_factory.mktemp("bad-adapters")
    pm = make_plugin_manager()
    models = {"llama": tiny_llama(), "gpt2": tiny_gpt2(), "phi2": tiny_phi()}
    valid = {arch: write_adapter(root / f"valid-{arch}", _valid_config(arch), _valid_modules(arch)) for arch in MODULES}
    (root / "shipped").mkdir()
    library = Library(root / "library", shipped_dir=root / "shipped")
    convert(str(valid["llama"]), "existing", model=models["llama"], library=library, pm=pm)
    shutil.copytree(library.path("existing"), root / "shipped" / "pirate")
    return {"root": root, "pm": pm, "models": models, "valid": valid, "library": library}


def _snapshot(directory: Path) -> list[tuple[str, int, int]]:
    return sorted(
        (str(p.relative_to(directory)), p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")
    )


def _refused(shared, ref: str, arch: str, name: str = "candidate") -> AdaptrixError:
    library: Library = shared["library"]
    before = _snapshot(library.root)
    try:
        convert(ref, name, model=shared["models"][arch], library=library, pm=shared["pm"])
    except AdaptrixError as e:
        assert before == _snapshot(library.root)
        return e
    library.remove(name)  # keep the shared library clean for the next case
    pytest.fail(f"{ref} was accepted as {name!r}")


def _mutant(shared, tmp_path: Path, arch: str, mutate: Callable[[Path, str], None]) -> Path:
    d = tmp_path / "adapter"
    shutil.copytree(shared["valid"][arch], d)
    mutate(d, arch)
    return d


# tests -------------------------------------------------------------------------------------------------------------


def test_valid_adapters_convert(shared, tmp_path):
    """
    The unmutated adapters convert for each architecture (so every refusal below is due to its mutation).
    """
    library = Library(tmp_path / "lib", shipped_dir=tmp_path / "none")
    for arch, model in shared["models"].items():
        convert(str(shared["valid"][arch]), f"ok-{arch}", model=model, library=library, pm=shared["pm"])

    assert ["ok-gpt2", "ok-llama", "ok-phi2"] == library.names()


@pytest.mark.parametrize(("mutation", "arch"), ALL, ids=[f"{m[0]}-{a}" for m, a in ALL])
def test_mutation_is_refused_cleanly(shared, tmp_path, mutation, arch):
    """
    Each broken adapter raises the expected AdaptrixError naming the file/field, and the library is unchanged.
    """
    _, mutate, expected, substrings = mutation
    error = _refused(shared, str(_mutant(shared, tmp_path, arch, mutate)), arch)

    assert (expected, True) == (type(error), all(s in str(error) for s in substrings)), str(error)


@pytest.mark.parametrize(("base", "other", "named"), ARCH_MUTATIONS)
def test_adapter_for_another_architecture_is_refused(shared, tmp_path, base, other, named):
    """
    An adapter whose modules belong to another architecture is refused, naming the file and both architectures.
    """
    error = _refused(shared, str(_mutant(shared, tmp_path, base, _other_architecture(other))), base)

    assert (AdapterMismatchError, True, True) == (type(error), WEIGHTS in str(error), named in str(error)), str(error)


BAD_NAMES = ["../x", "..", "a/b", "/abs", "a\\b", "", ".hidden", "-x", "x" * 200, "base", "none", "auto", "a b",
             "a:b", "a+b", "a..b", "名前", "a\nb", "x/../../etc"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_name_is_refused(shared, name):
    """
    Names with separators, '..', reserved words or odd characters raise InvalidNameError naming the name.
    """
    error = _refused(shared, str(shared["valid"]["llama"]), "llama", name=name)

    assert (InvalidNameError, True) == (type(error), repr(name) in str(error))


@pytest.mark.parametrize(("name", "why"), [("existing", "already in the library"), ("pirate", "shipped adapter")])
def test_duplicate_name_is_refused(shared, name, why):
    """
    A name already in the library, or a shipped adapter's name, raises AdapterExistsError.
    """
    error = _refused(shared, str(shared["valid"]["llama"]), "llama", name=name)

    assert (AdapterExistsError, True) == (type(error), why in str(error))


@pytest.mark.parametrize(
    ("ref", "expected", "substring"),
    [
        ("./does-not-exist", AdapterNotFoundError, "does-not-exist"),
        ("/does/not/exist", AdapterNotFoundError, "/does/not/exist"),
        ("file:///does/not/exist", AdapterNotFoundError, "/does/not/exist"),
        ("hf://nobody/no-such-adapter", AdapterNotFoundError, "HF_HUB_OFFLINE"),
        ("nobody/no-such-adapter@v2", AdapterNotFoundError, "HF_HUB_OFFLINE"),
        ("zz://x", NotRegisteredError, "'zz'"),
        ("not a ref!", AdapterNotFoundError, "not a ref!"),
    ],
)
def test_bad_reference_is_refused(shared, ref, expected, substring):
    """
    References that cannot be fetched (missing path, offline hub miss, unknown scheme) are clean errors.
    """
    error = _refused(shared, ref, "llama")

    assert (expected, True) == (type(error), substring in str(error)), str(error)


def test_file_instead_of_directory_is_refused(shared, tmp_path):
    """
    A path to a file (e.g. the weights themselves) is refused with a fix.
    """
    error = _refused(shared, str(shared["valid"]["llama"] / WEIGHTS), "llama")

    assert (AdapterFormatError, True) == (type(error), "not a directory" in str(error))


class _Touch:
    """A pickle whose loading creates a directory: proof, on disk, that its code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("wrap", ["bare", "in-dict"])
def test_exploit_never_ran(shared, tmp_path, legacy, wrap):
    """
    Refusing a malicious pickle happens before any of its code runs: the directory its payload would create
    does not exist afterwards (patching os.system proved nothing: pickles call posix.system).
    """
    marker = tmp_path / "pwned"
    payload = (lambda t: _Touch(marker)) if wrap == "bare" else (lambda t: {**t, "x": _Touch(marker)})
    ref = str(_mutant(shared, tmp_path, "llama", _as_bin(payload, legacy=legacy)))
    error = _refused(shared, ref, "llama")

    assert (False, True) == (marker.exists(), BIN in str(error))
