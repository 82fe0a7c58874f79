"""
The LoRA wrapper put around each targeted ``nn.Linear`` or transformers ``Conv1D``.

A wrapper holds any number of named adapters and never changes shape after it
is installed: loading, switching and unloading adapters only edit its
dictionaries. At forward time it reads the caller's selection (a context
variable shared by every wrapper of one model) and looks up a cached *plan*:

- one adapter: ``y = base(x) + (x @ A.T * (w * scaling)) @ B.T``, with no copies;
- several adapters summed: their ``A`` and ``w * scaling * B`` concatenated
  along the rank, so the sum is still two matmuls;
- a mixed batch (one selection per row): the same concatenation over every
  adapter the batch uses, with a per-row coefficient mask on the rank
  dimension, so every row is computed in the same two matmuls; rows that chose
  the base model have an all-zero mask.

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
        self._original_weight: torch.Tensor | None = None

    # adapters ---------------------------------------------------------------

    def add_lora(self, name: str, A: torch.Tensor, B: torch.Tensor, scaling: float) -> None:  # noqa: N803
        """Add adapter *name*; ``A`` is ``(r, in)``, ``B`` is ``(out, r)``, already on the right device and dtype."""
        self.loras[name] = Lora(A, B, float(scaling))
        self._plans.clear()

    def remove_lora(self, name: str) -> None:
        self.loras.pop(name, None)
        self._plans.clear()

    def invalidate(self) -> None:
        """Forget cached plans (after merges, or in-place edits of a concatenated adapter)."""
        self._plans.clear()

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
        self._plans.clear()

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the base weight bit for bit."""
        if self._original_weight is not None:
            self.base_layer.weight.data = self._original_weight
            self._original_weight = None
        self._plans.clear()

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
            self._plans.clear()
        self._plans[choice] = plan
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
        rows = [dict(self._effective(row)) for row in choice.rows]
        names = sorted({n for row in rows for n in row})
        if not names:
            return _NOTHING
        if len(names) >= _GATHER_FROM and all(len(row) <= 1 for row in rows):
            return self._gather_plan(rows, names)
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

    def _gather_plan(self, rows: list[dict[str, float]], names: list[str]) -> Any:
        """
        Stacks of the batch's adapters (ranks zero-padded, a zero slot for base rows) and each row's slot.

        With many distinct single-adapter rows this beats the masked concatenation, whose work
        grows with (adapters in the batch) x rank for every row.
        """
        rank = max(self.loras[n].A.shape[0] for n in names)
        first = self.loras[names[0]].A
        A = first.new_zeros(len(names) + 1, rank, self.in_features)  # noqa: N806
        B = first.new_zeros(len(names) + 1, self.out_features, rank)  # noqa: N806
        for slot, name in enumerate(names):
            lora = self.loras[name]
            r = lora.A.shape[0]
            A[slot, :r] = lora.A
            B[slot, :, :r] = lora.B
        slots, coef = [], []
        for row in rows:
            (name, w), = row.items() if row else (("", 0.0),)
            slots.append(names.index(name) if row else len(names))
            coef.append(w * self.loras[name].scaling if row else 0.0)
        index = torch.tensor(slots, device=first.device)
        return A, B, index, torch.tensor(coef, dtype=first.dtype, device=first.device).view(-1, 1, 1)

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
