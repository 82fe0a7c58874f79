"""
LoRA runtime vs PEFT, side by side in one run: switch latency, decode speed, mixed batches, resident bytes.

Models have real shapes and random weights (SmolLM2-135M and GPT-2 small);
adapters are random PEFT adapters with non-zero B. Every ratio compares two
numbers measured in this run, on this machine, interleaved to share the noise.

    python benchmarks/bench_runtime.py            # full matrix
    python benchmarks/bench_runtime.py --quick    # SmolLM2 shape, r=8 on q,v only
    python benchmarks/bench_runtime.py --device cuda --shape llama-7b --dtype bfloat16 --adapters 32
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
import warnings

from pathlib import Path
from typing import Any


sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table, write_results  # noqa: E402


SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {
        "kind": "llama",
        "config": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                       tie_word_embeddings=True),
        "qv": ["q_proj", "v_proj"],
        "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
    "gpt2-small": {
        "kind": "gpt2",
        "config": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
        "qv": ["c_attn"],
        "all": ["c_attn", "c_proj", "c_fc"],
    },
    "llama-7b": {
        "kind": "llama",
        "config": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
        "qv": ["q_proj", "v_proj"],
        "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    },
}


def build_model(shape: str, device: str, dtype: Any, seed: int = 0) -> Any:
    import torch

    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    spec = SHAPES[shape]
    torch.manual_seed(seed)
    with torch.device(device):
        if spec["kind"] == "gpt2":
            model = GPT2LMHeadModel(GPT2Config(**spec["config"]))
        else:
            model = LlamaForCausalLM(LlamaConfig(**spec["config"]))
    return model.to(dtype).eval().requires_grad_(False)


def make_adapters(shape: str, targets: list[str], rank: int, count: int, root: Path) -> list[Path]:
    """Save *count* random PEFT adapters (non-zero B) for *shape* under *root*."""
    import torch

    from peft import LoraConfig, get_peft_model

    model = build_model(shape, "cpu", torch.float32)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False,
                        fan_in_fan_out=SHAPES[shape]["kind"] == "gpt2")
    peft_model = get_peft_model(model, config)
    paths = []
    for i in range(count):
        torch.manual_seed(100 + i)
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name:
                    p.normal_(0, 0.02)
        path = root / f"{shape}-r{rank}-{len(targets)}-{i}"
        peft_model.save_pretrained(path)
        paths.append(path)
    del peft_model, model
    gc.collect()
    return paths


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _live_tensor_bytes(device: str) -> int:
    """Bytes of every distinct tensor storage alive on *device* (found through the garbage collector)."""
    import torch

    gc.collect()
    seen: dict[int, int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and obj.device.type == torch.device(device).type:
                storage = obj.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _file_tensor_bytes(directory: Path) -> int:
    """Tensor bytes stored in an adapter's safetensors file (from its header: no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(directory / "adapter_model.safetensors"), "pt") as f:
        total = 0
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            meta = f.get_slice(key)
            numel = 1
            for dim in meta.get_shape():
                numel *= dim
            total += numel * {"F32": 4, "F16": 2, "BF16": 2}.get(meta.get_dtype(), 4)
        return total


def _per_call(fn: Any, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def _stepper(model: Any, ids: Any, device: str, context: Any = None, **kwargs: Any) -> Any:
    """
    Prefill *ids* once; return a function timing one decode step at a fixed context length.

    Timing single KV-cached steps (not ``generate``) measures the model alone: no sampling loop,
    no stopping criteria, the same cache length every time. *context* is a context-manager factory
    (e.g. a per-row selection) entered around every step, inside the timer: PEFT's ``adapter_names=``
    sets up its per-row hooks inside every call, so both sides pay for choosing the rows.
    """
    import contextlib

    import torch

    context = context or contextlib.nullcontext
    with torch.inference_mode(), context():
        cache = model(ids, use_cache=True, **kwargs).past_key_values
    token = ids[:, -1:]

    def step() -> float:
        with torch.inference_mode():
            start = time.perf_counter()  # entering the selection is part of the step, as PEFT's adapter_names is
            with context():
                model(token, past_key_values=cache, use_cache=True, **kwargs)
            _sync(device)
            elapsed = time.perf_counter() - start
        cache.crop(-1)
        return elapsed

    return step


def _rounds(variants: dict[str, tuple[Any, Any, Any]], rounds: int, steps: int) -> dict[str, float]:
    """
    Fastest decode step of each variant; variants interleave within every round.

    On a shared machine the minimum is the estimate least disturbed by other processes.
    Round 0 warms caches and plans and is not counted.
    """
    best = dict.fromkeys(variants, float("inf"))
    for round_ in range(rounds + 1):
        for key, (step, setup, teardown) in variants.items():
            if setup:
                setup()
            fastest = min(step() for _ in range(steps))
            if teardown:
                teardown()
            if round_:
                best[key] = min(best[key], fastest)
    return best


def bench_case(shape: str, targets_name: str, rank: int, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import torch

    from peft import PeftModel

    from adaptrix_core import attach

    dtype = getattr(torch, args.dtype)
    device = args.device
    targets = SHAPES[shape][targets_name]
    n_adapters = max(args.adapters, 8)
    paths = make_adapters(shape, targets, rank, n_adapters, root)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 1000, (1, args.prompt), generator=gen).to(device)
    batch_ids = torch.randint(1, 1000, (8, args.prompt), generator=gen).to(device)
    result: dict[str, Any] = {"shape": shape, "targets": targets_name, "rank": rank}

    # ---- ours ----
    ours_model = build_model(shape, device, dtype)
    am = attach(ours_model)
    load_times = []
    live_before = _live_tensor_bytes(device)
    for i, path in enumerate(paths):
        start = time.perf_counter()
        am.load_adapter(f"a{i}", path)
        load_times.append(time.perf_counter() - start)
    # Measured from outside the runtime: what loading added to the process's live tensors, against the
    # tensor bytes in the adapter files. The runtime's own accounting is reported beside it, not used.
    result["live_bytes_added"] = _live_tensor_bytes(device) - live_before
    result["file_tensor_bytes"] = sum(_file_tensor_bytes(p) for p in paths)
    result["ours_resident_bytes"] = sum(am.resident_bytes(f"a{i}") for i in range(len(paths)))
    result["ours_load_ms"] = 1000 * statistics.median(load_times)

    # ---- PEFT ----
    peft_base = build_model(shape, device, dtype)
    peft_model = PeftModel.from_pretrained(peft_base, paths[0], adapter_name="a0").eval()
    peft_loads = []
    for i, path in enumerate(paths[1:], start=1):
        start = time.perf_counter()
        peft_model.load_adapter(path, adapter_name=f"a{i}")
        peft_loads.append(time.perf_counter() - start)
    result["peft_load_ms"] = 1000 * statistics.median(peft_loads)

    # switch latency with 2 and N residents (PEFT grows with residents; ours must not)
    for residents in (2, n_adapters):
        names = [f"a{i}" for i in range(residents)]
        extra = [f"a{i}" for i in range(residents, n_adapters)]
        for name in extra:  # PEFT: keep exactly `residents` adapters loaded
            peft_model.delete_adapter(name)
        for name in extra:
            am.unload_adapter(name)
        flip = iter(range(10**9))

        def ours_switch() -> None:
            am.set_active(names[next(flip) % residents])

        def peft_switch() -> None:
            peft_model.set_adapter(names[next(flip) % residents])

        ours = min(_per_call(ours_switch, 2000) for _ in range(3))
        peft = min(_per_call(peft_switch, 20 if residents > 2 else 100) for _ in range(3))
        result[f"switch_{residents}_ours_us"] = 1e6 * ours
        result[f"switch_{residents}_peft_us"] = 1e6 * peft
        for i, name in enumerate(extra, start=residents):  # reload for later steps
            am.load_adapter(name, paths[i])
            peft_model.load_adapter(paths[i], adapter_name=name)
    result["switch_residents"] = n_adapters

    # decode: bare model, wrapped without adapter, one adapter, three summed, merged; ours and PEFT
    bare = build_model(shape, device, dtype)
    twin = build_model(shape, device, dtype)  # a second bare model: its "overhead" is the noise floor
    ours_step = _stepper(ours_model, ids, device)
    peft_step = _stepper(peft_model, ids, device)
    three = ["a0", "a1", "a2"]
    best = _rounds(
        {
            "bare": (_stepper(bare, ids, device), None, None),
            "bare_twin": (_stepper(twin, ids, device), None, None),
            "wrapped": (ours_step, lambda: am.set_active(None), None),
            "ours_one": (ours_step, lambda: am.set_active("a0"), None),
            "peft_one": (peft_step, lambda: peft_model.base_model.set_adapter("a0"), None),
            "ours_three": (ours_step, lambda: am.set_active(dict.fromkeys(three, 1.0)), None),
            "peft_three": (peft_step, lambda: peft_model.base_model.set_adapter(three), None),
            "ours_merged": (ours_step, lambda: (am.set_active("a0"), am.merge("a0")), am.unmerge),
            "peft_merged": (
                peft_step,
                lambda: (peft_model.base_model.set_adapter("a0"), peft_model.merge_adapter(["a0"])),
                peft_model.unmerge_adapter,
            ),
        },
        args.repeats,
        args.tokens,
    )
    del bare, twin
    am.set_active(None)
    peft_model.base_model.set_adapter("a0")
    result["decode_tok_s"] = {k: 1.0 / v for k, v in best.items()}
    result["ours_unmerged_overhead"] = best["ours_one"] / best["bare"] - 1
    result["peft_unmerged_overhead"] = best["peft_one"] / best["bare"] - 1
    for kind in ("three", "merged"):
        result[f"ours_{kind}_overhead"] = best[f"ours_{kind}"] / best["bare"] - 1
        result[f"peft_{kind}_overhead"] = best[f"peft_{kind}"] / best["bare"] - 1
    result["wrapped_no_adapter_overhead"] = best["wrapped"] / best["bare"] - 1
    result["noise_floor"] = abs(best["bare_twin"] / best["bare"] - 1)

    # mixed batch: 8 rows with 8 different adapters vs the same 8 rows on one adapter
    rows = [f"a{i}" for i in range(8)]
    mixed = _rounds(
        {
            "ours_mixed": (_stepper(ours_model, batch_ids, device, context=lambda: am.using_rows(rows)), None, None),
            "ours_single": (_stepper(ours_model, batch_ids, device, context=lambda: am.using("a0")), None, None),
            "peft_mixed": (_stepper(peft_model, batch_ids, device, adapter_names=rows), None, None),
            "peft_single": (_stepper(peft_model, batch_ids, device, adapter_names=["a0"] * 8), None, None),
        },
        args.repeats,
        args.tokens,
    )
    result["mixed_vs_single_ours"] = mixed["ours_single"] / mixed["ours_mixed"]
    result["mixed_vs_single_peft"] = mixed["peft_single"] / mixed["peft_mixed"]
    result["mixed_batch_tok_s"] = {k: 8.0 / v for k, v in mixed.items()}

    del am, ours_model, peft_model, peft_base
    gc.collect()
    return result


def main(quick: bool = False, argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="SmolLM2 shape, r=8 on q,v only.")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES), help="Model shape(s) (repeatable).")
    parser.add_argument("--adapters", type=int, default=50, help="Resident adapters for the switch test.")
    parser.add_argument("--tokens", type=int, default=8, help="Decode steps timed per variant and round.")
    parser.add_argument("--prompt", type=int, default=16, help="Prompt length in tokens.")
    parser.add_argument("--repeats", type=int, default=5, help="Rounds; every variant runs once per round.")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    args = parser.parse_args(argv or [])
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    quick = quick or args.quick
    warnings.filterwarnings("ignore")
    shapes = args.shape or (["smollm2-135m"] if quick else ["smollm2-135m", "gpt2-small"])
    cases = [(s, t, r) for s in shapes for t in ("qv", "all") for r in (8, 16)]
    if quick:
        cases = [(shapes[0], "qv", 8)]
        args.repeats = min(args.repeats, 3)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, targets, rank in cases:
            print(f"... {shape} r={rank} on {targets}", file=sys.stderr, flush=True)
            results.append(bench_case(shape, targets, rank, args, Path(tmp)))
    rows = []
    for r in results:
        label = f"{r['shape']} r{r['rank']} {r['targets']}"
        rows += [
            (label, "switch, 2 resident (us)", r["switch_2_ours_us"], r["switch_2_peft_us"],
             r["switch_2_ours_us"] / r["switch_2_peft_us"], "<= 0.05"),
            (label, f"switch, {r['switch_residents']} resident (us)", r[f"switch_{r['switch_residents']}_ours_us"],
             r[f"switch_{r['switch_residents']}_peft_us"],
             r[f"switch_{r['switch_residents']}_ours_us"] / r[f"switch_{r['switch_residents']}_peft_us"], "<= 0.05"),
            (label, "decode overhead, 1 adapter unmerged", r["ours_unmerged_overhead"], r["peft_unmerged_overhead"],
             _ratio(r["ours_unmerged_overhead"], r["peft_unmerged_overhead"]), "<= 0.5"),
            (label, "decode overhead, 3 adapters summed", r["ours_three_overhead"], r["peft_three_overhead"],
             _ratio(r["ours_three_overhead"], r["peft_three_overhead"]), ""),
            (label, "decode overhead, merged", r["ours_merged_overhead"], r["peft_merged_overhead"], None, "ours <= 0.01"),
            (label, "decode overhead, wrapped, no adapter", r["wrapped_no_adapter_overhead"], None, None, ""),
            (label, "noise floor (bare vs identical bare)", r["noise_floor"], None, None, ""),
            (label, "mixed batch 8x8 / single-adapter batch", r["mixed_vs_single_ours"], r["mixed_vs_single_peft"],
             None, "ours >= 0.9"),
            (label, "live tensor bytes added / file tensor bytes", r["live_bytes_added"] / r["file_tensor_bytes"], None,
             None, "<= 1.1"),
            (label, "load (ms)", r["ours_load_ms"], r["peft_load_ms"], r["ours_load_ms"] / r["peft_load_ms"], ""),
        ]
    print_table(
        f"LoRA runtime vs PEFT ({args.device}, {args.dtype}, fastest KV-cached decode step after a "
        f"{args.prompt}-token prompt, {args.repeats} rounds x {args.tokens} steps)",
        ["case", "measure", "ours", "PEFT", "ours/PEFT", "target"],
        rows,
    )
    out = {"device": args.device, "dtype": args.dtype, "tokens": args.tokens, "prompt": args.prompt, "cases": results}
    write_results("runtime", out)
    return out


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


if __name__ == "__main__":
    main(argv=sys.argv[1:])
