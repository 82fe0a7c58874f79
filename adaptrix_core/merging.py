"""
Compose LoRA adapters into one new adapter, PEFT ``add_weighted_adapter`` semantics.

Every method targets the weighted sum of the inputs' deltas,
``sum_i w_i * scale_i * B_i @ A_i`` per module; they differ in how exactly they
reach it and at what rank:

=============  ==========  ==========================================================
method         exact?      how
=============  ==========  ==========================================================
``cat``        exact       stack ``w_i * scale_i * A_i`` and ``B_i``: rank = sum of ranks
``svd``        exact if    truncated SVD of the exact summed delta to ``rank``
               rank >= sum (default: the largest input rank); otherwise the best
                           rank-``rank`` approximation (Eckart-Young)
``linear``     no          ``A = sum sign_i sqrt|w_i s_i| A_i``, ``B = sum sqrt|w_i s_i| B_i``;
                           cross terms ``B_i A_j`` make it a rough approximation
``ties``       no          TIES-merging of the A and B factors separately: keep the
                           ``density`` largest entries, elect a sign, average agreeing ones
``dare_linear`` no         DARE: drop entries at random (keep ``density``), rescale
                           by ``1/density``, then ``linear``
``dare_ties``  no          DARE drop-and-rescale, then TIES sign election
=============  ==========  ==========================================================

``linear``, ``ties`` and the ``dare_*`` methods need the same rank in every
input (per module), as in PEFT. The random drop of ``dare_*`` uses a generator
seeded from ``seed``, the module name and the factor, so a merge is
reproducible and independent of module order.

Whatever the method, :func:`merge_adapters` reports per module the relative
Frobenius error of the merged delta against the exact weighted sum, so an
approximation is never silent. The merged adapter has ``lora_alpha == r`` (so
its scaling is 1) and no rsLoRA, like PEFT's.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import AdaptrixError


if TYPE_CHECKING:
    import torch

    from .peft_format import ParsedAdapter


METHODS = ("cat", "linear", "svd", "ties", "dare_linear", "dare_ties")
EXACT_METHODS = ("cat",)
"""Methods whose result equals the weighted sum of deltas by construction (``svd`` is exact only at full rank)."""
SAME_RANK_METHODS = ("linear", "ties", "dare_linear", "dare_ties")
DENSITY_METHODS = ("ties", "dare_linear", "dare_ties")


class MergeError(AdaptrixError, ValueError):
    """A merge request is invalid (unknown method, weights that do not match, ranks that differ)."""


@attrs.frozen
class MergedAdapter:
    """
    The result of a merge, not yet on disk.

    Attributes:
        method: The composition method used.
        weights: One weight per input, in input order.
        modules: Module name -> ``(A, B)`` of the merged adapter (scaling 1).
        config: The ``adapter_config.json`` to write with it.
        errors: Module name -> relative Frobenius error of the merged delta vs the exact weighted sum.
    """

    method: str
    weights: tuple[float, ...]
    modules: Mapping[str, tuple[Any, Any]]
    config: Mapping[str, Any]
    errors: Mapping[str, float]

    @property
    def exact(self) -> bool:
        """True when every module's delta equals the weighted sum (up to float rounding)."""
        return self.max_error <= 1e-5

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def mean_error(self) -> float:
        return sum(self.errors.values()) / len(self.errors) if self.errors else 0.0

    @property
    def rank(self) -> int:
        return int(self.config["r"])

    def error_summary(self) -> dict[str, Any]:
        """JSON-able error report: max, mean and the worst modules."""
        worst = sorted(self.errors.items(), key=lambda kv: -kv[1])[:5]
        return {
            "max_relative_error": self.max_error,
            "mean_relative_error": self.mean_error,
            "exact": self.exact,
            "worst_modules": {k: v for k, v in worst},
        }


def _check_request(
    n: int, weights: Sequence[float] | None, method: str, density: float | None, rank: int | None
) -> tuple[float, ...]:
    if method not in METHODS:
        raise MergeError(f"unknown merge method {method!r}. Fix: use one of {', '.join(METHODS)}.")
    if n < 1:
        raise MergeError("merge needs at least one input adapter.")
    if weights is None:
        weights = [1.0] * n
    weights = tuple(float(w) for w in weights)
    if len(weights) != n:
        raise MergeError(
            f"got {len(weights)} weight(s) for {n} adapter(s). Fix: give one weight per adapter, in order."
        )
    if not all(math.isfinite(w) for w in weights):
        raise MergeError(f"weights must be finite numbers, got {list(weights)}.")
    if method in DENSITY_METHODS:
        if density is None:
            raise MergeError(
                f"method {method!r} needs a density (fraction of entries kept, 0 < d <= 1). Fix: pass --density 0.5."
            )
        if not 0.0 < density <= 1.0:
            raise MergeError(f"density must be in (0, 1], got {density}.")
    if rank is not None and rank < 1:
        raise MergeError(f"rank must be a positive integer, got {rank}.")
    return weights


def merge_adapters(
    adapters: Sequence[ParsedAdapter | str | os.PathLike[str]],
    weights: Sequence[float] | None = None,
    method: str = "cat",
    *,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    majority_sign_method: str = "total",
) -> MergedAdapter:
    """
    Merge *adapters* (PEFT dirs or parsed adapters) into one, weighted by *weights* (default 1.0 each).

    Args:
        method: One of :data:`METHODS`.
        rank: Output rank for ``svd`` (default: the largest input rank); ignored by the others.
        density: Fraction of entries kept by ``ties`` / ``dare_*`` (required for them).
        seed: Seed of the random drop of ``dare_*``.
        majority_sign_method: ``"total"`` or ``"frequency"``, TIES sign election as in PEFT.

    Raises:
        MergeError: Bad method, weights, density or rank; ranks that differ where the method needs them equal;
            module shapes that disagree.
        AdapterFormatError, UnsupportedFeatureError: An input cannot be read.
    """
    import torch

    from .peft_format import ParsedAdapter, read_adapter

    weights = _check_request(len(adapters), weights, method, density, rank)
    if majority_sign_method not in ("total", "frequency"):
        raise MergeError(f"majority_sign_method must be 'total' or 'frequency', got {majority_sign_method!r}.")
    parsed = [a if isinstance(a, ParsedAdapter) else read_adapter(a) for a in adapters]
    # PEFT merges a single adapter linearly (exact for one input): pruning one adapter against itself means nothing.
    method_used = "linear" if len(parsed) == 1 and method in DENSITY_METHODS else method

    names = sorted({m for p in parsed for m in p.modules})
    out_dtype = next(iter(parsed[0].modules.values())).A.dtype if parsed[0].modules else torch.float32
    merged: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    errors: dict[str, float] = {}
    for module in names:
        present = [(p, w) for p, w in zip(parsed, weights, strict=True) if module in p.modules]
        factors = []
        for p, w in present:
            t = p.modules[module]
            factors.append((t.A.to(torch.float32), t.B.to(torch.float32), w * p.config.scaling_for(module, t.rank)))
        _check_shapes(module, factors, parsed)
        if method_used == "cat":
            a, b = _cat(factors)
        elif method_used == "svd":
            a, b = _svd(factors, rank or max(f[0].shape[0] for f in factors))
        else:
            ranks = {f[0].shape[0] for f in factors}
            if len(ranks) != 1:
                raise MergeError(
                    f"module {module}: method {method_used!r} needs equal ranks, got {sorted(ranks)}. "
                    "Fix: use --method cat (exact) or --method svd --rank R."
                )
            a, b = _factorwise(method_used, factors, module, density or 1.0, seed, majority_sign_method)
        exact = sum(s * (B.double() @ A.double()) for A, B, s in factors)
        got = b.double() @ a.double()
        norm = float(torch.linalg.matrix_norm(exact))
        diff = float(torch.linalg.matrix_norm(got - exact))
        errors[module] = diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)
        merged[module] = (a.to(out_dtype).contiguous(), b.to(out_dtype).contiguous())

    return MergedAdapter(method_used, weights, merged, _config(parsed, merged), errors)


def _check_shapes(module: str, factors: list[tuple[Any, Any, float]], parsed: Sequence[ParsedAdapter]) -> None:
    shapes = {(B.shape[0], A.shape[1]) for A, B, _ in factors}
    if len(shapes) != 1:
        raise MergeError(
            f"module {module}: the inputs disagree on its shape (out, in) {sorted(shapes)}; they were trained on "
            "different base models. Fix: merge adapters of the same base model only."
        )


def _cat(factors: list[tuple[Any, Any, float]]) -> tuple[Any, Any]:
    """Exact: ``[B_1 .. B_n] @ [s_1 A_1; ..; s_n A_n] == sum s_i B_i A_i``."""
    import torch

    return torch.cat([s * A for A, _, s in factors], dim=0), torch.cat([B for _, B, _ in factors], dim=1)


def _svd(factors: list[tuple[Any, Any, float]], rank: int) -> tuple[Any, Any]:
    """Best rank-*rank* approximation of the exact summed delta: ``B = U S``, ``A = Vh``."""
    import torch

    delta = sum(s * (B @ A) for A, B, s in factors)
    u, sv, vh = torch.linalg.svd(delta, full_matrices=False)
    k = min(rank, sv.shape[0])
    b = u[:, :k] * sv[:k]
    a = vh[:k, :]
    if k < rank:  # keep every module at the requested rank, as PEFT allocates it
        a = torch.cat([a, a.new_zeros(rank - k, a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - k)], dim=1)
    return a, b


def _generator(seed: int, module: str, factor: str) -> Any:
    import torch

    digest = hashlib.sha256(f"{seed}:{module}:{factor}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def _magnitude_prune(t: Any, density: float) -> Any:
    """Keep the ``int(density * numel)`` largest-magnitude entries (PEFT ``magnitude_based_pruning``)."""
    import torch

    if density >= 1:
        return t
    k = int(density * t.numel())
    mask = torch.zeros(t.numel(), dtype=t.dtype)
    mask[torch.topk(t.abs().reshape(-1), k=k, largest=True).indices] = 1
    return t * mask.reshape(t.shape)


def _random_prune(t: Any, density: float, generator: Any) -> Any:
    """DARE: keep each entry with probability *density*, rescale by ``1/density`` (PEFT ``random_pruning``)."""
    import torch

    if density >= 1:
        return t
    mask = torch.bernoulli(torch.full_like(t, density), generator=generator)
    return t * mask / density


def _sign_election(stacked: Any, weighted: Any, method: str) -> Any:
    """TIES: majority sign per entry over the (unweighted) pruned tensors, mean of the agreeing weighted ones."""
    import torch

    sign = stacked.sign()
    magnitude = stacked.sum(dim=0) if method == "total" else sign.sum(dim=0)
    majority = torch.where(magnitude >= 0, 1.0, -1.0)
    agree = sign == majority
    kept = (weighted * agree).sum(dim=0)
    return kept / agree.sum(dim=0).clamp(min=1.0)


def _factorwise(
    method: str, factors: list[tuple[Any, Any, float]], module: str, density: float, seed: int, sign_method: str
) -> tuple[Any, Any]:
    """PEFT's ``_generalized_task_arithmetic_weighted_adapter``: combine the A's and the B's separately."""
    import torch

    w_a = [math.copysign(math.sqrt(abs(s)), s) for _, _, s in factors]  # the sign rides on A only
    w_b = [math.sqrt(abs(s)) for _, _, s in factors]
    out = []
    for which, tensors, ws in (("A", [A for A, _, _ in factors], w_a), ("B", [B for _, B, _ in factors], w_b)):
        if method in ("ties",):
            tensors = [_magnitude_prune(t, density) for t in tensors]
        elif method in ("dare_linear", "dare_ties"):
            tensors = [
                _random_prune(t, density, _generator(seed, module, f"{which}{i}")) for i, t in enumerate(tensors)
            ]
        stacked = torch.stack(tensors)
        weighted = stacked * torch.tensor(ws, dtype=stacked.dtype).view(-1, *([1] * (stacked.dim() - 1)))
        if method in ("ties", "dare_ties"):
            out.append(_sign_election(stacked, weighted, sign_method))
        else:
            out.append(weighted.sum(dim=0))
    return out[0], out[1]


def _config(parsed: Sequence[ParsedAdapter], merged: Mapping[str, tuple[Any, Any]]) -> dict[str, Any]:
    """A PEFT config for *merged*: explicit module names, ``lora_alpha == r`` (scaling 1) per module."""
    ranks = {m: int(a.shape[0]) for m, (a, _) in merged.items()}
    r = max(ranks.values(), default=1)
    first = parsed[0].config
    config: dict[str, Any] = {
        "r": r,
        "lora_alpha": r,
        "use_rslora": False,
        "target_modules": sorted(merged),
        "fan_in_fan_out": first.fan_in_fan_out,
        "bias": "none",
        "lora_dropout": 0.0,
        "base_model_name_or_path": first.base_model_name_or_path,
        "task_type": first.task_type or "CAUSAL_LM",
        "inference_mode": True,
    }
    odd = {m: k for m, k in ranks.items() if k != r}
    if odd:
        # PEFT reads pattern keys as regular expressions: escape the module names
        config["rank_pattern"] = {re.escape(m): k for m, k in odd.items()}
        config["alpha_pattern"] = {re.escape(m): float(k) for m, k in odd.items()}
    return config


def save_merged(merged: MergedAdapter, directory: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Write *merged* as a PEFT adapter directory (atomic)."""
    from .peft_format import write_adapter

    return write_adapter(directory, merged.config, merged.modules, overwrite=overwrite)


def merge_into_library(
    names: Sequence[str],
    weights: Sequence[float] | None,
    method: str,
    new_name: str,
    *,
    library: Any = None,
    rank: int | None = None,
    density: float | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[Any, MergedAdapter]:
    """
    Merge library adapters *names* and install the result as *new_name*, with lineage in its metadata.

    Lineage records the inputs (name, weight, sha256 of the weights file), the
    method and its options, and the approximation error. Returns
    ``(AdapterInfo, MergedAdapter)``.
    """
    from .library import Library, sha256_of, weights_file

    library = library if library is not None else Library()
    library.check_installable(new_name, overwrite=overwrite)
    if len(set(names)) != len(names):
        raise MergeError(
            f"the same adapter appears twice in {list(names)}. Fix: give each input once (use its weight)."
        )
    infos = [library.get(n) for n in names]
    paths = [library.path(n) for n in names]
    merged = merge_adapters(paths, weights, method, rank=rank, density=density, seed=seed)
    inputs = []
    for info, path, w in zip(infos, paths, merged.weights, strict=True):
        wf = weights_file(path)
        inputs.append({"name": info.name, "weight": w, "sha256": sha256_of(wf) if wf else None})
    lineage = {
        "method": merged.method,
        "inputs": inputs,
        "weights": list(merged.weights),
        "rank": merged.rank,
        "density": density,
        "seed": seed if method.startswith("dare") else None,
        "error": merged.error_summary(),
    }
    description = f"Merge ({method}) of " + " + ".join(f"{w:g} x {i.name}" for i, w in zip(infos, merged.weights, strict=True))
    capabilities = list(dict.fromkeys(c for i in infos for c in i.capabilities))
    domain = " + ".join(dict.fromkeys(i.domain for i in infos if i.domain))
    examples = [e for i in infos for e in i.examples]
    base_models = {i.base_model for i in infos if i.base_model}
    with tempfile.TemporaryDirectory(prefix=".merge-") as tmp:
        peft_dir = save_merged(merged, Path(tmp) / new_name)
        info = library.install(
            new_name,
            peft_dir,
            description=description,
            capabilities=capabilities,
            domain=domain,
            examples=examples,
            source=f"merge:{method}:" + ",".join(names),
            base_model=next(iter(base_models)) if len(base_models) == 1 else None,
            lineage=lineage,
            overwrite=overwrite,
        )
    return info, merged


__all__ = [
    "DENSITY_METHODS",
    "EXACT_METHODS",
    "METHODS",
    "MergeError",
    "MergedAdapter",
    "merge_adapters",
    "merge_into_library",
    "save_merged",
]
