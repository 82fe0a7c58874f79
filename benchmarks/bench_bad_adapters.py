"""
Bad adapters and crashes: how many generated broken adapters are refused cleanly, and whether a killed
``adaptrix convert`` ever loses or half-shows an adapter.

    .venv/bin/python benchmarks/bench_bad_adapters.py            # >= 1,000 API cases, a few hundred CLI, kill matrix
    .venv/bin/python benchmarks/bench_bad_adapters.py --quick    # a smaller sample
    .venv/bin/python benchmarks/bench_bad_adapters.py --only api --per-family 45 --seed 100   # one part

Three parts, each on tiny random models (llama, gpt2, phi2), seeded:

* API: every variant from ``adaptrix_core.mutants.generate`` through ``conversion.convert``.
* CLI: variants through the real ``adaptrix convert`` command (typer app in process, then a sample as
  separate ``adaptrix`` processes), judged on exit code 1, one ``Error:`` line, no traceback.
* Kills: ``adaptrix convert`` processes killed with SIGKILL at every injected point (``ADAPTRIX_FAULT``),
  with and without the exchange rename, and at random moments; then the library is opened and checked.

Writes ``benchmarks/results/bad_adapters.json`` (``bad_adapters_<part>[_seed<N>].json`` with ``--only`` / ``--seed``).
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import print_table, write_results  # noqa: E402


ARCHS = ("llama", "gpt2", "phi2")


def _valid(arch: str, root: Path) -> tuple[Path, Any]:
    import torch

    from adaptrix_core.peft_format import write_adapter
    from adaptrix_core.testing import tiny_gpt2, tiny_llama, tiny_phi

    modules = {
        "llama": {f"model.layers.{i}.self_attn.{m}": s for i in range(2) for m, s in (("q_proj", (32, 32)), ("v_proj", (32, 16)))},
        "gpt2": {f"transformer.h.{i}.attn.c_attn": (32, 96) for i in range(2)},
        "phi2": {f"model.layers.{i}.self_attn.q_proj": (32, 32) for i in range(2)},
    }[arch]
    g = torch.Generator().manual_seed(0)
    tensors = {m: (torch.randn(4, i, generator=g) * 0.1, torch.randn(o, 4, generator=g) * 0.1) for m, (i, o) in modules.items()}
    config = {"r": 4, "lora_alpha": 8, "target_modules": sorted({m.rsplit(".", 1)[1] for m in modules}),
              "fan_in_fan_out": arch == "gpt2", "task_type": "CAUSAL_LM"}
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2, "phi2": tiny_phi}[arch]()
    return write_adapter(root / f"valid-{arch}", config, tensors), model


def _summary(outcomes: list[Any]) -> dict[str, Any]:
    by_family: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for o in outcomes:
        c = by_family[o.family]
        c["cases"] += 1
        c["must_refuse"] += o.must_refuse
        c["refused_clean"] += o.refused and o.clean
        c["accepted"] += not o.refused and o.clean
        c["unclean"] += not o.clean
        c["must_refuse_missed"] += o.must_refuse and not (o.refused and o.clean)
    must = [o for o in outcomes if o.must_refuse]
    return {
        "cases": len(outcomes),
        "must_refuse": len(must),
        "must_refuse_refused_clean": sum(o.refused and o.clean for o in must),
        "clean": sum(o.clean for o in outcomes),
        "failures": [{"id": o.id, "message": o.message} for o in outcomes if not o.ok],
        "families": {k: dict(v) for k, v in sorted(by_family.items())},
        "longest_message": max((len(o.message) for o in outcomes if o.refused), default=0),
    }


def run_api(root: Path, per_family: int, seed: int = 0) -> dict[str, Any]:
    from adaptrix_core.library import Library
    from adaptrix_core.mutants import generate, judge_api, prepare
    from adaptrix_core.plugins import make_plugin_manager

    pm = make_plugin_manager()
    outcomes = []
    for n, arch in enumerate(ARCHS):
        valid, model = _valid(arch, root)
        library = Library(root / f"lib-{arch}", shipped_dir=root / "none")
        from adaptrix_core.conversion import convert

        convert(str(valid), "existing", model=model, library=library, pm=pm)
        for mutant in generate(valid, seed=seed + n, per_family=per_family):
            ref = prepare(valid, mutant, root / "work")
            outcomes.append(judge_api(mutant, ref, library, model, pm))
    return _summary(outcomes)


def _save_base(root: Path) -> Path:
    from adaptrix_core.testing import tiny_llama

    base = root / "base"
    if not base.exists():
        tiny_llama().save_pretrained(base)
    return base


def run_cli(root: Path, per_family: int, processes: int, seed: int = 0) -> dict[str, Any]:
    from typer.testing import CliRunner

    from adaptrix_core.cli import make_app
    from adaptrix_core.mutants import Outcome, generate, judge_cli, prepare
    from adaptrix_core.plugins import make_plugin_manager

    base = _save_base(root)
    valid, _ = _valid("llama", root / "cli")
    lib = root / "cli-lib"
    env = {"ADAPTRIX_LIBRARY_DIR": str(lib), "ADAPTRIX_SHIPPED_ADAPTERS": ""}
    os.environ.update(env)
    app, runner = make_app(make_plugin_manager()), CliRunner()
    mutants = generate(valid, seed=seed + 7, per_family=per_family)
    outcomes = [judge_cli(m, prepare(valid, m, root / "cli-work"), lib, base, app, runner) for m in mutants]
    # a sample as real processes: the console script, its exit code and its stderr
    real = []
    adaptrix = shutil.which("adaptrix") or str(Path(sys.executable).with_name("adaptrix"))
    passable = [m for m in mutants if "\x00" not in m.name]  # an argv cannot hold a NUL byte
    for mutant in random.Random(seed).sample(passable, min(processes, len(passable))):
        ref = prepare(valid, mutant, root / "proc-work")
        from adaptrix_core.mutants import _one_line, snapshot

        before = snapshot(lib)
        done = subprocess.run([adaptrix, "convert", str(ref), "--name", mutant.name, "--model", str(base)],
                              capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
        err = done.stderr.strip()
        clean = done.returncode == 1 and err.startswith("Error: ") and _one_line(err) and before == snapshot(lib)
        if done.returncode == 0:
            subprocess.run([adaptrix, "remove", mutant.name], capture_output=True, env={**os.environ, **env}, check=True)
        real.append(Outcome(mutant.id, mutant.family, done.returncode != 0, clean or done.returncode == 0,
                            mutant.must_refuse, err[-300:]))
    return {"in_process": _summary(outcomes), "processes": _summary(real)}


KILLS = (  # (point, exchange rename available, first install): every point a run can reach
    ("install:staged", True, False),
    ("install:staged", False, False),
    ("install:exchanged", True, False),
    ("install:between-renames", False, False),
    ("install:renamed", False, False),
    ("install:renamed", True, True),
    ("remove:renamed", True, False),
)


def run_kills(root: Path, repeats: int, random_kills: int, seed: int = 0) -> dict[str, Any]:
    """Kill ``adaptrix convert --force`` / ``adaptrix remove`` processes; the library must hold old or new."""
    from adaptrix_core.crashcheck import kill_once

    base = _save_base(root)
    old, _ = _valid("llama", root / "old")
    new = root / "new-adapter"
    if not new.exists():
        shutil.copytree(old, new)
        from adaptrix_core.mutants import _tensors

        _tensors(lambda t: [v.mul_(2.0) for v in t.values()])(new)
    rows = []
    for point, exchange, fresh in KILLS:
        for _ in range(repeats):
            rows.append(kill_once(root / "kill", base, old, new, point=point, exchange=exchange, fresh=fresh))
    full = [r["seconds"] for r in rows if r["point"] == "install:renamed" and r["fresh"]]
    duration = max(full) if full else 20.0  # random moments span a whole run
    for i in range(random_kills):
        rows.append(kill_once(root / "kill", base, old, new, point=None, exchange=i % 2 == 0, seed=seed + i, duration=duration))
    by_point: dict[str, dict[str, int]] = collections.defaultdict(collections.Counter)
    for r in rows:
        by_point[f"{r['point']} exchange={r['exchange']} fresh={r['fresh']}"][r["state"]] += 1
    return {
        "runs": len(rows),
        "killed": sum(r["killed"] for r in rows),
        "consistent": sum(r["consistent"] for r in rows),
        "lost": sum(r["state"] == "lost" for r in rows),
        "by_point": {k: dict(v) for k, v in sorted(by_point.items())},
        "rows": rows,
        "problems": [r for r in rows if not r["consistent"]],
    }


def main(quick: bool = False, only: str | None = None, per_family: int | None = None, seed: int = 0,
         processes: int | None = None, random_kills: int | None = None) -> None:
    """Run the parts (all, or *only* one of api / cli / kills); *seed* shifts every generator seed."""
    started = time.time()
    api_per_family = per_family or (4 if quick else 25)
    cli_per_family = per_family or (2 if quick else 10)
    results: dict[str, Any] = {"quick": quick, "seed": seed}
    with tempfile.TemporaryDirectory(prefix="adaptrix-bad-") as tmp:
        root = Path(tmp)
        if only in (None, "api"):
            results["api"] = run_api(root, api_per_family, seed)
        if only in (None, "cli"):
            results["cli"] = run_cli(root, cli_per_family, processes or (4 if quick else 12), seed)
        if only in (None, "kills"):
            results["kills"] = run_kills(root, 1 if quick else 2, random_kills if random_kills is not None else (2 if quick else 8), seed)
    rows = []
    for label, part in (("API (conversion.convert)", results.get("api")),
                        ("CLI in process (adaptrix convert)", (results.get("cli") or {}).get("in_process")),
                        ("CLI processes (adaptrix convert)", (results.get("cli") or {}).get("processes"))):
        if part is not None:
            rows.append([label, part["cases"], part["must_refuse"], part["must_refuse_refused_clean"], part["clean"]])
            for failure in part["failures"]:
                print("FAIL", failure["id"], "->", failure["message"][:300])
    if rows:
        print_table("Generated bad adapters", ["path", "cases", "must refuse", "refused cleanly", "clean outcome"], rows)
    kills = results.get("kills")
    if kills is not None:
        print_table("Killed adaptrix convert / remove", ["runs", "killed", "library consistent", "adapters lost"],
                    [[kills["runs"], kills["killed"], kills["consistent"], kills["lost"]]])
        for problem in kills["problems"]:
            print("KILL PROBLEM", problem)
    results["seconds"] = round(time.time() - started)
    path = write_results("bad_adapters" + (f"_{only}" if only else "") + (f"_seed{seed}" if seed else ""), results)
    print(f"wrote {path}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", choices=["api", "cli", "kills"], help="Run one part; writes bad_adapters_<part>[_seed<N>].json.")
    parser.add_argument("--per-family", type=int, help="Random cases per family and architecture.")
    parser.add_argument("--seed", type=int, default=0, help="Added to every generator seed (new cases, same families).")
    parser.add_argument("--processes", type=int, help="CLI cases run as separate adaptrix processes (default 12).")
    parser.add_argument("--random-kills", type=int, help="Kills at random moments (default 8).")
    args = parser.parse_args()
    main(quick=args.quick, only=args.only, per_family=args.per_family, seed=args.seed, processes=args.processes,
         random_kills=args.random_kills)
