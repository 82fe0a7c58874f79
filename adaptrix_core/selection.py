"""
Which adapters answer, with which weights: parsing and the frozen form the LoRA layers read.

Users write a selection as ``None`` (the base model), ``"a"``, ``["a", "b"]``,
``{"a": 0.7, "b": 0.3}`` or, on the command line and in HTTP requests,
``"a:0.7+b:0.3"``. Core turns each into a :class:`Choice`, hashed once, so a
LoRA layer finds its cached plan with one dictionary lookup per forward.
"""

from __future__ import annotations

import math
import re

from collections.abc import Mapping, Sequence
from typing import Any, Union

from .exceptions import SelectionError


BASE_NAMES = frozenset({"", "base", "none"})
"""Spellings of "no adapter, the base model" in selection strings."""

_TERM = re.compile(r"^\s*(?P<name>[^:+\s][^:+]*?)\s*(?::\s*(?P<weight>[^:+]+?)\s*)?$")

SelectionLike = Union[None, str, Sequence[str], Mapping[str, float]]
"""What every public call accepts as a selection."""


def parse_selection(text: str) -> dict[str, float]:
    """
    Parse ``"a"``, ``"a:0.7+b:0.3"`` or ``"base"`` into name -> weight.

    Raises:
        SelectionError: A term is empty, a weight is not a finite number, or a name repeats.
    """
    if text.strip().lower() in BASE_NAMES:
        return {}
    weights: dict[str, float] = {}
    for term in text.split("+"):
        match = _TERM.match(term)
        if match is None:
            raise SelectionError(
                f"cannot parse adapter selection {text!r} at {term!r}. Expected NAME or NAME:WEIGHT joined by '+', "
                "e.g. 'pirate' or 'pirate:0.7+json:0.3'."
            )
        weight = _weight(match["weight"], text) if match["weight"] is not None else 1.0
        _add(weights, match["name"], weight, text)
    return weights


def _weight(raw: str, text: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SelectionError(f"weight {raw!r} in adapter selection {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise SelectionError(f"weight {raw!r} in adapter selection {text!r} must be finite.")
    return value


def _add(weights: dict[str, float], name: str, weight: float, where: Any) -> None:
    if name in weights:
        raise SelectionError(f"adapter {name!r} appears twice in selection {where!r}; give it once with one weight.")
    if weight != 0.0:
        weights[name] = weight


def normalize_selection(selection: SelectionLike) -> dict[str, float]:
    """
    Turn any accepted selection form into name -> weight (empty: the base model).

    Raises:
        SelectionError: An unknown form, a non-numeric or non-finite weight, a repeated name.
    """
    if selection is None:
        return {}
    if isinstance(selection, str):
        return parse_selection(selection)
    weights: dict[str, float] = {}
    if isinstance(selection, Mapping):
        for name, weight in selection.items():
            if not isinstance(name, str) or isinstance(weight, bool) or not isinstance(weight, int | float):
                raise SelectionError(f"selection {dict(selection)!r} must map adapter names to numbers.")
            if not math.isfinite(weight):
                raise SelectionError(f"weight of adapter {name!r} must be finite, got {weight!r}.")
            _add(weights, name, float(weight), dict(selection))
        return weights
    if isinstance(selection, Sequence):
        for name in selection:
            if not isinstance(name, str):
                raise SelectionError(f"selection {list(selection)!r} must be a list of adapter names.")
            _add(weights, name, 1.0, list(selection))
        return weights
    raise SelectionError(
        f"cannot use {selection!r} as an adapter selection. Use None, a name, a list of names, "
        "or a dict of name -> weight."
    )


def format_selection(weights: Mapping[str, float]) -> str:
    """The inverse of :func:`parse_selection`: ``{"a": 0.7, "b": 0.3}`` -> ``"a:0.7+b:0.3"``."""
    if not weights:
        return "base"
    return "+".join(name if w == 1.0 else f"{name}:{w:g}" for name, w in weights.items())


class Choice:
    """
    A frozen selection: ``items`` is a sorted tuple of (name, weight).

    The hash is computed once; LoRA layers key their cached plans by it.
    """

    __slots__ = ("_hash", "items")

    def __init__(self, weights: Mapping[str, float]) -> None:
        self.items: tuple[tuple[str, float], ...] = tuple(sorted(weights.items()))
        self._hash = hash(self.items)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Choice) and self.items == other.items

    def __bool__(self) -> bool:
        return bool(self.items)

    def as_dict(self) -> dict[str, float]:
        return dict(self.items)

    def __repr__(self) -> str:
        return f"Choice({format_selection(dict(self.items))!r})"


class RowChoice:
    """One :class:`Choice` per batch row, for mixed batches."""

    __slots__ = ("_hash", "rows")

    def __init__(self, rows: Sequence[Choice]) -> None:
        self.rows: tuple[Choice, ...] = tuple(rows)
        self._hash = hash(("rows", self.rows))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowChoice) and self.rows == other.rows

    def __repr__(self) -> str:
        return f"RowChoice({[format_selection(r.as_dict()) for r in self.rows]!r})"


BASE = Choice({})
"""The base model: no adapter."""


_INTERNED: dict[Any, Any] = {}
_MAX_INTERNED = 4096


def _intern(obj: Any) -> Any:
    """The one live copy of an equal choice, so plan caches hit on identity instead of ``__eq__``."""
    found = _INTERNED.get(obj)
    if found is not None:
        return found
    if len(_INTERNED) >= _MAX_INTERNED:
        _INTERNED.clear()
    _INTERNED[obj] = obj
    return obj


def make_choice(selection: SelectionLike) -> Choice:
    """Normalize *selection* and freeze it."""
    if selection is None:
        return BASE
    return _intern(Choice(normalize_selection(selection)))


def make_row_choice(rows: Sequence[SelectionLike]) -> Choice | RowChoice:
    """Freeze one selection per row; all rows alike collapse to a plain :class:`Choice`."""
    if isinstance(rows, str | Mapping) or not isinstance(rows, Sequence):
        raise SelectionError(f"per-row adapters must be a list with one selection per batch row, got {rows!r}.")
    if not rows:
        raise SelectionError("per-row adapters must name one selection per batch row; the list is empty.")
    choices = [make_choice(row) for row in rows]
    if all(c is choices[0] for c in choices):
        return choices[0]
    return _intern(RowChoice(choices))
