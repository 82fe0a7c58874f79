"""
Adapter conversion and cold-load time, side by side with PEFT ``load_adapter`` and a bare safetensors read.

The base model has SmolLM2-135M's shape (random weights). Two random PEFT
adapters (non-zero B), both fp32 safetensors:

- ~4 MB: r=16 on q_proj, v_proj (30 layers: 3.7 MB)
- ~40 MB: r=32 on every linear layer (30 layers x 7 modules: 39 MB)

Each loader is timed twice per repetition, interleaved so they share the
machine's noise: *warm*, with the files already in the page cache, and
*cold*, right after the kernel was told to drop the files' pages
(``posix_fadvise(POSIX_FADV_DONTNEED)`` after a ``sync``; the files are clean,
so Linux drops them and the next read goes to the disk). The loaders:

- ``bare read``: ``safetensors.torch.load_file(path)``, nothing else;
- ``adaptrix load``: ``am.load_adapter(name, dir)`` on an attached model (read,
  validate, map and place), then ``unload_adapter``;
- ``peft load``: ``peft_model.load_adapter(dir, adapter_name)`` on a PeftModel
  that already holds one adapter, then ``delete_adapter``.

``convert`` (the whole ``adaptrix convert`` pipeline with the model already in
memory: read, detect, fit, effect check on a 16-token probe, normalise, write,
install with sha256) is timed separately.

    python benchmarks/bench_load.py            # 15 repetitions
    python benchmarks/bench_load.py --quick    # 5 repetitions

Targets (issue #3): adaptrix load <= 0.3x PEFT and <= 2x the bare read.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import time
import warnings

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results  # noqa: E402


SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True,
)
ADAPTERS = {  # name -> (rank, target modules)
    "4MB r16 q,v": (16, ["q_proj", "v_proj"]),
    "40MB r32 all-linear": (32, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
}


def build_model(seed: int = 0) -> Any:
    import torch

    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M)).eval().requires_grad_(False)


def make_adapter(path: Path, rank: int, targets: list[str]) -> Path:
    """A random PEFT adapter with non-zero B, saved by PEFT itself."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(build_model(), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets,
                                                     init_lora_weights=False))
    model.save_pretrained(path)
    return path


def evict_from_page_cache(path: Path) -> bool:
    """Ask the kernel to drop *path*'s cached pages (every file below a directory); False where it cannot."""
    if not hasattr(os, "posix_fadvise"):
        return False
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    for file in files:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def _timed(fn: Any, *, cold: Path | None = None) -> float:
    gc.collect()
    if cold is not None:
        evict_from_page_cache(cold)
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_adapter(label: str, path: Path, repeats: int, am: Any, peft_model: Any, base: Any, root: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from adaptrix_core.conversion import convert
    from adaptrix_core.library import Library
    from adaptrix_core.peft_format import read_adapter

    weights = path / "adapter_model.safetensors"
    size = weights.stat().st_size
    os.sync()  # written pages are clean from here on, so eviction can drop them
    load_file(weights)  # into the page cache
    times: dict[str, list[float]] = {k: [] for k in ("bare", "read", "ours", "peft", "bare_cold", "ours_cold",
                                                      "peft_cold")}
    for i in range(repeats):
        name = f"b{i}"
        for suffix, cold in (("", None), ("_cold", path)):
            times["bare" + suffix].append(_timed(lambda: load_file(weights), cold=cold))
            if not suffix:
                times["read"].append(_timed(lambda: read_adapter(path)))
            times["ours" + suffix].append(_timed(lambda name=name: am.load_adapter(name, path), cold=cold))
            am.unload_adapter(name)
            times["peft" + suffix].append(
                _timed(lambda name=name: peft_model.load_adapter(str(path), adapter_name=name), cold=cold)
            )
            peft_model.delete_adapter(name)
    library = Library(root / f"library-{label.split()[0]}", shipped_dir=root / "none")
    conversions = []
    for i in range(max(3, repeats // 3)):
        conversions.append(_timed(lambda i=i: convert(str(path), f"c{i}", model=base, library=library)))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "adapter": label,
        "file_bytes": size,
        "bare_read_ms": med["bare"] * 1e3,
        "adaptrix_read_ms": med["read"] * 1e3,
        "adaptrix_load_ms": med["ours"] * 1e3,
        "peft_load_ms": med["peft"] * 1e3,
        "convert_ms": statistics.median(conversions) * 1e3,
        "load_vs_peft": med["ours"] / med["peft"],
        "load_vs_bare_read": med["ours"] / med["bare"],
        "cold_bare_read_ms": med["bare_cold"] * 1e3,
        "cold_adaptrix_load_ms": med["ours_cold"] * 1e3,
        "cold_peft_load_ms": med["peft_cold"] * 1e3,
        "cold_load_vs_peft": med["ours_cold"] / med["peft_cold"],
        "cold_load_vs_bare_read": med["ours_cold"] / med["bare_cold"],
        "repeats": repeats,
    }


def main(quick: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Adapter conversion and cold-load time vs PEFT and a bare read.")
    parser.add_argument("--quick", action="store_true", help="5 repetitions instead of 15.")
    parser.add_argument("--repeats", type=int, default=None, help="Repetitions per adapter (median reported).")
    args = parser.parse_args(argv if argv is not None else [])
    quick = quick or args.quick
    repeats = args.repeats or (5 if quick else 15)

    import torch

    from peft import PeftModel

    from adaptrix_core.runtime import attach

    torch.set_grad_enabled(False)
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory(prefix="adaptrix-bench-load-") as tmp:
        root = Path(tmp)
        paths = {label: make_adapter(root / f"adapter-{i}", *spec) for i, (label, spec) in enumerate(ADAPTERS.items())}
        am = attach(build_model())
        # PEFT's own multi-adapter path: a PeftModel holding one adapter, loading more
        first = next(iter(paths.values()))
        peft_model = PeftModel.from_pretrained(build_model(), str(first), adapter_name="resident").eval()
        base = build_model()
        rows = [bench_adapter(label, path, repeats, am, peft_model, base, root) for label, path in paths.items()]

    print_table(
        "adapter load, cold (page cache dropped before each load; median ms)",
        ["adapter", "MB", "bare read", "adaptrix load", "peft load", "load/peft", "load/bare"],
        [[r["adapter"], r["file_bytes"] / 2**20, r["cold_bare_read_ms"], r["cold_adaptrix_load_ms"],
          r["cold_peft_load_ms"], r["cold_load_vs_peft"], r["cold_load_vs_bare_read"]] for r in rows],
    )
    print_table(
        "adapter load, warm (from the page cache; median ms; SmolLM2-135M shape, fp32, CPU)",
        ["adapter", "MB", "bare read", "adaptrix read", "adaptrix load", "peft load", "load/peft", "load/bare",
         "convert"],
        [[r["adapter"], r["file_bytes"] / 2**20, r["bare_read_ms"], r["adaptrix_read_ms"], r["adaptrix_load_ms"],
          r["peft_load_ms"], r["load_vs_peft"], r["load_vs_bare_read"], r["convert_ms"]] for r in rows],
    )
    targets = {"load_vs_peft": 0.3, "load_vs_bare_read": 2.0}
    result = {
        "shape": "smollm2-135m",
        "dtype": "float32",
        "rows": rows,
        "targets": targets,
        "targets_met": {
            r["adapter"]: {k: r[k] <= v for k, v in targets.items()}
            | {f"cold_{k}": r[f"cold_{k}"] <= v for k, v in targets.items()}
            for r in rows
        },
    }
    write_results("load", result)
    return result


if __name__ == "__main__":
    main(argv=sys.argv[1:])
