"""
Generated broken adapters, and the judge of whether each was refused cleanly (tests and benchmarks only).

:func:`generate` turns one valid PEFT adapter directory into seeded random
variants, family by family: truncations at random offsets, bit flips in the
safetensors header length, header and data, non-finite and huge tensor values,
non-finite, huge and overlong numbers in the config, control characters in
names, special files (FIFOs, devices, dangling links, directories) instead of
files, and ``target_modules`` PEFT refuses. :func:`judge_api` and
:func:`judge_cli` run one variant through ``convert`` and report whether the
refusal was clean: one line, an ``AdaptrixError`` (exit code 1 on the CLI),
no traceback, the library byte-for-byte unchanged.

Families whose variants may still be valid adapters (a flipped bit in a
header's metadata string, in tensor data) are marked ``must_refuse=False``:
for them either a clean refusal or an install that passed every check is right.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import traceback

from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from .exceptions import AdaptrixError


CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
MAX_LINE = 400
"""The longest error line a refusal may print."""


@attrs.frozen
class Mutant:
    """One broken variant: *apply* edits a copy of the valid adapter directory in place."""

    id: str
    family: str
    apply: Callable[[Path], None]
    must_refuse: bool = True
    name: str = "candidate"


@attrs.frozen
class Outcome:
    """What happened to one variant."""

    id: str
    family: str
    refused: bool
    clean: bool
    must_refuse: bool
    message: str

    @property
    def ok(self) -> bool:
        return self.clean and (self.refused or not self.must_refuse)


def snapshot(root: Path) -> list[tuple[str, int, int]]:
    """Every path under *root* with its size and mtime: equal snapshots mean an untouched library."""
    if not root.exists():
        return []
    return sorted((str(p.relative_to(root)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*"))


# families ------------------------------------------------------------------------------------------------------------


def _truncate(name: str, at: int) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[:at])

    return apply


def _flip(name: str, offset: int, bit: int) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        data = bytearray((d / name).read_bytes())
        data[offset] ^= 1 << bit
        (d / name).write_bytes(bytes(data))

    return apply


def _tensors(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        from safetensors.torch import load_file, save_file

        tensors = load_file(d / WEIGHTS)
        edit(tensors)
        save_file(tensors, d / WEIGHTS, metadata={"format": "pt"})

    return apply


def _set_element(key: str, index: int, value: float) -> Callable[[dict[str, Any]], None]:
    def edit(tensors: dict[str, Any]) -> None:
        tensors[key].view(-1)[index % tensors[key].numel()] = value

    return edit


def _fill(key: str, value: float) -> Callable[[dict[str, Any]], None]:
    def edit(tensors: dict[str, Any]) -> None:
        tensors[key].fill_(value)

    return edit


def _config_text(field: str, raw: str, *, nested: str | None = None) -> Callable[[Path], None]:
    """Set *field* (or ``field[nested]``) of the config to the literal JSON text *raw* (NaN, 1e400, 10**5000, ...)."""

    def apply(d: Path) -> None:
        cfg = json.loads((d / CONFIG).read_text())
        cfg[field] = {nested: "@@"} if nested is not None else "@@"
        (d / CONFIG).write_text(json.dumps(cfg).replace('"@@"', raw))

    return apply


def _config(**changes: Any) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        cfg = json.loads((d / CONFIG).read_text())
        cfg.update(changes)
        (d / CONFIG).write_text(json.dumps(cfg))

    return apply


def _special(name: str, kind: str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        path = d / name
        path.unlink()
        if kind == "directory":
            path.mkdir()
        elif kind == "fifo":
            os.mkfifo(path)
        elif kind == "dangling-link":
            path.symlink_to(d / "does-not-exist")
        else:  # a device: /dev/null, /dev/zero
            path.symlink_to(kind)

    return apply


def _header_length(d: Path) -> int:
    return int(struct.unpack("<Q", (d / WEIGHTS).read_bytes()[:8])[0])


def generate(valid: Path, *, seed: int = 0, per_family: int = 10) -> list[Mutant]:
    """Seeded broken variants of the adapter in *valid*: *per_family* of each random family, plus fixed cases."""
    from safetensors.torch import load_file

    rng = random.Random(seed)
    size = (valid / WEIGHTS).stat().st_size
    header = _header_length(valid)
    config_text = (valid / CONFIG).read_text()
    keys = sorted(load_file(valid / WEIGHTS))
    b_keys = [k for k in keys if ".lora_B." in k]
    out: list[Mutant] = []

    def add(family: str, detail: str, apply: Callable[[Path], None], **kw: Any) -> None:
        out.append(Mutant(f"{family}:{detail}", family, apply, **kw))

    for _ in range(per_family):
        at = rng.randrange(0, size)
        add("truncate-weights", str(at), _truncate(WEIGHTS, at))
        at = rng.randrange(0, config_text.rindex("}") + 1)
        add("truncate-config", str(at), _truncate(CONFIG, at))
        offset, bit = rng.randrange(0, 8), rng.randrange(0, 8)
        add("flip-header-length", f"{offset}.{bit}", _flip(WEIGHTS, offset, bit))
        offset, bit = rng.randrange(8, 8 + header), rng.randrange(0, 8)
        add("flip-header", f"{offset}.{bit}", _flip(WEIGHTS, offset, bit), must_refuse=False)
        offset, bit = rng.randrange(8 + header, size), rng.randrange(0, 8)
        add("flip-data", f"{offset}.{bit}", _flip(WEIGHTS, offset, bit), must_refuse=False)
        key, index, value = rng.choice(keys), rng.randrange(0, 1 << 16), rng.choice([float("nan"), float("inf"), -float("inf")])
        add("non-finite-value", f"{key}[{index}]={value}", _tensors(_set_element(key, index, value)))
        key, value = rng.choice(b_keys), rng.choice([3e38, -3e38, 1e38, 2e38])
        add("huge-values", f"{key}={value}", _tensors(_fill(key, value)))
        name = rng.choice(["pirate", "a", "adapter-1", "base", "x.y"])
        at = rng.randrange(0, len(name) + 1)
        char = rng.choice([chr(c) for c in (*range(0, 32), 127)] + ["\u0085", "\u2028", "\u200b"])
        add("name-control", repr(name[:at] + char + name[at:]), lambda d: None, name=name[:at] + char + name[at:])
    leaf = keys[0].removesuffix(".weight").rsplit(".", 2)[1]  # e.g. q_proj, c_attn
    for field, nested in (("r", None), ("lora_alpha", None), ("rank_pattern", leaf), ("alpha_pattern", leaf)):
        raws = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1" + "0" * 400, "-" + "9" * 400, "7" * 5000]
        if field in ("lora_alpha", "alpha_pattern"):
            raws += ["1e39", "1e308", "-1e308", "3.4e38"]
        for raw in raws:
            add("config-number", f"{field}{'.' + nested if nested else ''}={raw[:12]}", _config_text(field, raw, nested=nested))
    for field in ("extra_field", "base_model_name_or_path", "peft_version"):
        add("huge-integer", field, _config_text(field, "8" * 4400))
    add("huge-integer", "nested", _config_text("runtime_config", "9" * 5000, nested="x"))
    for name in ("base\n", "pirate\n", "a\nb", "\nx", "x\r", "x\x00", "x\ty", "x\x1b[31m"):
        add("name-control", repr(name), lambda d: None, name=name)
    for file in (CONFIG, WEIGHTS):
        for kind in ("directory", "fifo", "dangling-link", "/dev/null", "/dev/zero"):
            add("special-file", f"{file}={kind}", _special(file, kind))
    for label, changes in (
        ("empty-list", {"target_modules": []}), ("empty-string", {"target_modules": ""}),
        ("dummy", {"target_modules": "dummy-target-modules"}), ("no-match", {"target_modules": ["nope_proj"]}),
        ("regex-no-match", {"target_modules": r".*\.nope"}), ("layer-99", {"layers_to_transform": [99]}),
        ("pattern-alone", {"layers_pattern": "layers"}),
        ("regex-with-layers", {"target_modules": ".*q_proj", "layers_to_transform": [0]}),
        ("all-excluded", {"exclude_modules": ["q_proj", "v_proj", "k_proj", "o_proj", "down_proj", "c_attn", "c_fc", "dense", "fc1"]}),
    ):
        add("target-modules", label, _config(**changes))
    return out


# judging ------------------------------------------------------------------------------------------------------------


def _one_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message and len(message) <= MAX_LINE and "Traceback" not in message


def judge_api(mutant: Mutant, ref: Path, library: Any, model: Any, pm: Any) -> Outcome:
    """Run *mutant* (already applied at *ref*) through ``conversion.convert``."""
    from .conversion import convert

    before = snapshot(library.root)
    try:
        convert(str(ref), mutant.name, model=model, library=library, pm=pm)
    except AdaptrixError as e:
        message = str(e)
        clean = _one_line(message) and before == snapshot(library.root)
        return Outcome(mutant.id, mutant.family, True, clean, mutant.must_refuse, message)
    except Exception as e:  # noqa: BLE001  (any other exception is a traceback for the user)
        text = "".join(traceback.format_exception_only(type(e), e)).strip()
        return Outcome(mutant.id, mutant.family, False, False, mutant.must_refuse, f"UNCAUGHT {text}")
    library.remove(mutant.name)  # accepted: every check passed; leave the library as it was
    return Outcome(mutant.id, mutant.family, False, True, mutant.must_refuse, "accepted")


def judge_cli(mutant: Mutant, ref: Path, library_root: Path, base: Path, app: Any, runner: Any) -> Outcome:
    """Run *mutant* through ``adaptrix convert`` (a typer app, in process): exit 1 and one ``Error:`` line."""
    before = snapshot(library_root)
    result = runner.invoke(app, ["convert", str(ref), "--name", mutant.name, "--model", str(base)])
    stderr = result.stderr.strip()
    if result.exit_code == 0:
        from .library import Library

        Library(library_root).remove(mutant.name)
        return Outcome(mutant.id, mutant.family, False, True, mutant.must_refuse, "accepted")
    clean = (
        result.exit_code == 1 and isinstance(result.exception, SystemExit) and stderr.startswith("Error: ")
        and _one_line(stderr) and before == snapshot(library_root)
    )
    shown = stderr if clean else f"exit {result.exit_code}: {stderr[-300:]} {result.exception!r}"
    return Outcome(mutant.id, mutant.family, True, clean, mutant.must_refuse, shown)


def prepare(valid: Path, mutant: Mutant, workdir: Path) -> Path:
    """A fresh copy of *valid* under *workdir* with *mutant* applied."""
    d = workdir / "adapter"
    if d.exists() or d.is_symlink():
        shutil.rmtree(d)
    shutil.copytree(valid, d)
    mutant.apply(d)
    return d


__all__ = ["MAX_LINE", "Mutant", "Outcome", "generate", "judge_api", "judge_cli", "prepare", "snapshot"]
