"""
The LoRA wrapper put around each targeted ``nn.Linear`` or transformers ``Conv1D``.

A wrapper holds any number of named adapters and never changes shape after it
is installed: loading, switching and unloading adapters only edit its
dictionaries. At forward time it reads the caller's selection (a context
variable shared by every wrapper of one model) and looks up a cached *plan*:

- one adapter: ``y = base(x) + (x @ A.T * (w * scaling)) @ B.T``, with no copies;
- several adapters summed: their ``A`` and ``w * scaling * B`` concatenated
  along the rank, so the sum is still two matmuls;
- a mixed batch (one selection per row) with one adapter besides the base: its
  ``A``/``B`` with a per-row coefficient (zero for base rows), no copies;
- a mixed batch with several adapters, at most one per row: a per-wrapper
  *bank* (stacks of the adapters served this way, ``scaling`` folded into
  ``B``) kept across batches, and each row's slot index and weight (a base
  row points at any slot with weight 0), so a new row mix costs time proportional to the rows, not a
  copy of every adapter (rows join and leave at every step under continuous
  batching);
- rows that compose several adapters: their concatenation with a per-row
  coefficient mask on the rank dimension, built per row mix.

Banks and cached plans are memory the adapters' own tensors do not include:
:meth:`LoraLayer.plan_bytes` counts them and :meth:`LoraLayer.drop_plans`
frees them (the cache counts both in its byte budget).

Merged adapters are already inside the base weight, so plans subtract their
merged weight: a request for exactly the merged set costs nothing extra, and
any other request is still exact.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from torch import nn

from .selection import BASE, Choice, RowChoice


_MAX_PLANS = 64
"""Cached plans per wrapper; a server cycling through more selections rebuilds them."""


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2) stores its weight as ``(in, out)``."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def can_wrap(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


class Lora:
    """One adapter's tensors in one wrapper. ``A`` may be shared with sibling wrappers (a split fused module)."""

    __slots__ = ("A", "B", "scaling")

    def __init__(self, A: torch.Tensor, B: torch.Tensor, scaling: float) -> None:  # noqa: N803
        self.A = A
        self.B = B
        self.scaling = scaling


class SelectionState:
    """What every wrapper of one model reads at forward time: the caller's selection and the merged set."""

    def __init__(self) -> None:
        self.var: ContextVar[Choice | RowChoice | None] = ContextVar(f"adaptrix_selection_{id(self)}", default=None)
        self.default: Choice = BASE
        self.merged: dict[str, float] = {}

    def current(self) -> Choice | RowChoice:
        choice = self.var.get()
        return self.default if choice is None else choice


class LoraLayer(nn.Module):
    """
    Wraps one ``nn.Linear`` / ``Conv1D``; holds any number of named LoRA adapters.

    The original module stays at ``base_layer`` untouched (until a merge), so
    ejecting the wrapper restores the model exactly.
    """

    def __init__(self, base_layer: nn.Module, state: SelectionState | None = None) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = is_conv1d(base_layer)
        weight = base_layer.weight
        if self.fan_in_fan_out:
            self.in_features, self.out_features = weight.shape
        else:
            self.out_features, self.in_features = weight.shape
        self.loras: dict[str, Lora] = {}
        self.state = state or SelectionState()
        self._plans: dict[Any, Any] = {}
        self._plan_bytes: dict[Any, int] = {}
        self._bank: _Bank | None = None
        self._original_weight: torch.Tensor | None = None

    # adapters ---------------------------------------------------------------

    def add_lora(self, name: str, A: torch.Tensor, B: torch.Tensor, scaling: float) -> None:  # noqa: N803
        """Add adapter *name*; ``A`` is ``(r, in)``, ``B`` is ``(out, r)``, already on the right device and dtype."""
        self.loras[name] = Lora(A, B, float(scaling))
        self._forget(name)

    def remove_lora(self, name: str) -> None:
        self.loras.pop(name, None)
        self._forget(name)

    def _forget(self, name: str) -> None:
        self._clear_plans()
        if self._bank is not None:
            self._bank.release(name)

    def _clear_plans(self) -> None:
        self._plans.clear()
        self._plan_bytes.clear()

    def invalidate(self) -> None:
        """Forget cached plans and the bank (after merges, or in-place edits of an adapter's tensors)."""
        self.drop_plans()

    def drop_plans(self) -> None:
        """Free every cached plan and the bank; they are rebuilt on the next forward that needs them."""
        self._clear_plans()
        self._bank = None

    def plan_bytes(self) -> int:
        """Bytes held by cached plans and the bank beyond the adapters' own tensors."""
        bank = self._bank.nbytes() if self._bank is not None else 0
        return bank + sum(self._plan_bytes.values())

    def delta_weight(self, name: str, weight: float = 1.0) -> torch.Tensor:
        """The adapter's ``(out, in)`` weight delta, ``weight * scaling * B @ A``, in float32. The one place merge maths lives."""
        lora = self.loras[name]
        return (lora.B.float() @ lora.A.float()) * (lora.scaling * weight)

    # merge -------------------------------------------------------------------

    @torch.no_grad()
    def merge(self, name: str, weight: float = 1.0) -> None:
        """Fold ``weight`` x adapter *name* into the base weight, keeping the original for :meth:`unmerge`."""
        base_weight = self.base_layer.weight
        if self._original_weight is None:
            self._original_weight = base_weight.detach().clone()
        delta = self.delta_weight(name, weight)
        if self.fan_in_fan_out:
            delta = delta.T
        base_weight.data = (base_weight.data.float() + delta.to(base_weight.device)).to(base_weight.dtype)
        self.drop_plans()

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the base weight bit for bit."""
        if self._original_weight is not None:
            self.base_layer.weight.data = self._original_weight
            self._original_weight = None
        self.drop_plans()

    @property
    def merged(self) -> bool:
        return self._original_weight is not None

    # forward -----------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if not self.loras:
            return result
        choice = self.state.var.get()
        if choice is None:
            choice = self.state.default
        plan = self._plans.get(choice)
        if plan is None:
            plan = self._plan(choice)
        if plan is _NOTHING:
            return result
        if len(plan) == 4:
            delta = self._gathered(x, *plan)
        else:
            A, B, coef = plan  # noqa: N806
            x = x.to(A.dtype)
            if type(coef) is float:
                delta = F.linear(F.linear(x, A) * coef, B)
            else:
                _check_rows(coef.shape[0], x)
                delta = F.linear(F.linear(x, A) * coef.view(coef.shape[0], *([1] * (x.dim() - 2)), coef.shape[1]), B)
        if torch.is_grad_enabled():
            return result + delta.to(result.dtype)
        return result.add_(delta.to(result.dtype))

    @staticmethod
    def _gathered(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, index: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:  # noqa: N803
        """Each row through its own adapter: gather its ``A``/``B`` from the stacks, then two batched matmuls."""
        _check_rows(index.shape[0], x)
        rows = x.to(A.dtype).reshape(x.shape[0], -1, x.shape[-1])
        h = torch.bmm(rows, A.index_select(0, index).transpose(1, 2)) * coef
        return torch.bmm(h, B.index_select(0, index).transpose(1, 2)).reshape(*x.shape[:-1], B.shape[1])

    def _effective(self, choice: Choice) -> list[tuple[str, float]]:
        """The choice minus what is merged, restricted to adapters this layer holds."""
        merged = self.state.merged
        if not merged:
            return [(n, w) for n, w in choice.items if n in self.loras]
        weights = dict(choice.items)
        for name, w in merged.items():
            weights[name] = weights.get(name, 0.0) - w
        return [(n, w) for n, w in sorted(weights.items()) if w != 0.0 and n in self.loras]

    def _plan(self, choice: Choice | RowChoice) -> Any:
        if isinstance(choice, RowChoice):
            plan = self._row_plan(choice)
        else:
            plan = self._uniform_plan(choice)
        if len(self._plans) >= _MAX_PLANS:
            self._clear_plans()
        self._plans[choice] = plan
        self._plan_bytes[choice] = _owned_bytes(plan, self)
        return plan

    def _uniform_plan(self, choice: Choice) -> Any:
        terms = self._effective(choice)
        if not terms:
            return _NOTHING
        if len(terms) == 1:
            name, w = terms[0]
            lora = self.loras[name]
            return lora.A, lora.B, float(w * lora.scaling)
        loras = [(self.loras[n], w) for n, w in terms]
        A = torch.cat([lora.A for lora, _ in loras], dim=0)  # noqa: N806
        B = torch.cat([lora.B * (w * lora.scaling) for lora, w in loras], dim=1)  # noqa: N806
        return A, B, 1.0

    def _row_plan(self, choice: RowChoice) -> Any:
        rows = [self._effective(row) for row in choice.rows]
        names = sorted({n for row in rows for n, _ in row})
        if not names:
            return _NOTHING
        if all(len(row) <= 1 for row in rows) and (len(names) == 1 or not torch.is_grad_enabled()):
            if len(names) == 1:
                lora = self.loras[names[0]]
                weights = [row[0][1] * lora.scaling if row else 0.0 for row in rows]
                coef = torch.tensor(weights, dtype=lora.A.dtype, device=lora.A.device).view(-1, 1)
                return lora.A, lora.B, coef
            return self._bank_plan(rows, names)
        return self._masked_plan([dict(row) for row in rows], names)

    def _masked_plan(self, rows: list[dict[str, float]], names: list[str]) -> Any:
        """Rows composing several adapters: the batch's adapters concatenated, a per-row mask on the rank."""
        offsets, total = {}, 0
        for name in names:
            offsets[name] = total
            total += self.loras[name].A.shape[0]
        A = torch.cat([self.loras[n].A for n in names], dim=0)  # noqa: N806
        B = torch.cat([self.loras[n].B for n in names], dim=1)  # noqa: N806
        coef = torch.zeros(len(rows), total, dtype=A.dtype, device=A.device)
        for i, row in enumerate(rows):
            for name, w in row.items():
                lora = self.loras[name]
                start = offsets[name]
                coef[i, start : start + lora.A.shape[0]] = w * lora.scaling
        return A, B, coef

    def _bank_plan(self, rows: list[list[tuple[str, float]]], names: list[str]) -> Any:
        """Each row's slot in the bank and its weight: no adapter tensor is copied unless new to the bank."""
        bank = self._bank
        if bank is not None and bank.A.is_inference() != torch.is_inference_mode_enabled():
            bank = None  # stacks made under inference mode cannot be written outside it (and the reverse is slow)
        if bank is None or not bank.fits(self.loras[n] for n in names if n not in bank.slots):
            bank = _Bank.for_loras(self, {n: self.loras[n] for n in names}, bank)
            self._clear_plans()  # cached plans point into the old stacks: let them go with it
            self._bank = bank
        for name in names:
            bank.slot(name, self.loras[name])
        first = bank.A
        slots = [bank.slots[row[0][0]] if row else 0 for row in rows]  # a base row: weight 0 on slot 0
        weights = [row[0][1] if row else 0.0 for row in rows]
        index = torch.tensor(slots, device=first.device)
        coef = torch.tensor(weights, dtype=first.dtype, device=first.device).view(-1, 1, 1)
        return bank.A, bank.B, index, coef

    def extra_repr(self) -> str:
        return f"adapters={len(self.loras)}, fan_in_fan_out={self.fan_in_fan_out}"


def _check_rows(rows: int, x: torch.Tensor) -> None:
    if rows != x.shape[0]:
        from .exceptions import SelectionError

        raise SelectionError(
            f"per-row adapters name {rows} rows but the batch has {x.shape[0]}; give one selection per row."
        )


_GATHER_FROM = 3
"""Distinct single-adapter rows from which a mixed batch gathers per-row adapters instead of masking."""

_NOTHING = object()
"""Plan marker: no adapter delta for this layer under this selection."""


class _Bank:
    """
    One wrapper's stacks of the adapters its mixed batches use: ``A`` is ``(slots, rank, in)``, ``B`` is
    ``(slots, out, rank)`` with each adapter's scaling folded in, ranks zero-padded.

    Slots are kept across batches and freed when their adapter is unloaded; the stacks grow by half when full,
    so they hold about one copy of the adapters that mixed batches use (counted by the cache's budget).
    """

    def __init__(self, A: torch.Tensor, B: torch.Tensor) -> None:  # noqa: N803
        self.A = A
        self.B = B
        self.slots: dict[str, int] = {}

    @classmethod
    def for_loras(cls, layer: LoraLayer, loras: dict[str, Lora], old: _Bank | None) -> _Bank:
        """A bank big enough for *loras* plus what *old* held (whose slots are carried over)."""
        kept = dict(old.slots) if old is not None and old.A.is_inference() == torch.is_inference_mode_enabled() else {}
        rank = max([lora.A.shape[0] for lora in loras.values()] + ([old.A.shape[1]] if old is not None else []))
        wanted = len(kept) + len(set(loras) - set(kept))
        capacity = max(wanted, (old.A.shape[0] * 3 + 1) // 2 if old is not None else 0)
        like = next(iter(loras.values())).A
        bank = cls(
            like.new_zeros(capacity, rank, layer.in_features), like.new_zeros(capacity, layer.out_features, rank)
        )
        if old is not None and old.A.is_inference() == torch.is_inference_mode_enabled():
            r = old.A.shape[1]
            with torch.no_grad():
                bank.A[: old.A.shape[0], :r] = old.A
                bank.B[: old.B.shape[0], :, :r] = old.B
            bank.slots = kept
        return bank

    def fits(self, loras: Any) -> bool:
        """Whether every adapter of *loras* fits the rank, and a slot is free for each (at worst)."""
        loras = list(loras)
        rank_ok = all(lora.A.shape[0] <= self.A.shape[1] for lora in loras)
        return rank_ok and len(self.slots) + len(loras) <= self.A.shape[0]

    def slot(self, name: str, lora: Lora) -> int:
        found = self.slots.get(name)
        if found is not None:
            return found
        used = set(self.slots.values())
        found = next(i for i in range(self.A.shape[0]) if i not in used)
        r = lora.A.shape[0]
        with torch.no_grad():
            self.A[found].zero_()
            self.B[found].zero_()
            self.A[found, :r] = lora.A
            self.B[found, :, :r] = lora.B * lora.scaling
        self.slots[name] = found
        return found

    def release(self, name: str) -> None:
        """Free *name*'s slot (no row indexes it any more; the next adapter there overwrites it whole)."""
        self.slots.pop(name, None)

    def nbytes(self) -> int:
        return self.A.numel() * self.A.element_size() + self.B.numel() * self.B.element_size()


def _owned_bytes(plan: Any, layer: LoraLayer) -> int:
    """Bytes of a plan's tensors that are neither an adapter's own nor the bank's (the bank is counted once)."""
    if plan is _NOTHING:
        return 0
    shared = {id(t) for lora in layer.loras.values() for t in (lora.A, lora.B)}
    if layer._bank is not None:
        shared.update((id(layer._bank.A), id(layer._bank.B)))
    return sum(t.numel() * t.element_size() for t in plan if isinstance(t, torch.Tensor) and id(t) not in shared)
