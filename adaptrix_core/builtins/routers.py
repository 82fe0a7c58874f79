"""
Core's ``keyword`` router: match a query's words against what each adapter says it does.

Cheap (no model, microseconds per query) and explainable (every score lists the
words that earned it). Each adapter's vocabulary is weighted by where a word
comes from: its name and capabilities count most, then its domain, then its
description, then its example prompts. A word several adapters share counts
less for each (divided by how many share it). Below ``threshold`` the base
model answers. The semantic router plugin is the accurate choice; this one is
the dependency-free default.
"""

from __future__ import annotations

import re

from collections.abc import Collection, Sequence
from typing import ClassVar

import attrs

from ..hookspecs import hookimpl
from ..routing import decide, proportional_weights
from ..types import AdapterInfo, RouteCandidate, Routing


FIELD_WEIGHTS = {"name": 3.0, "capability": 3.0, "domain": 2.0, "description": 1.0, "example": 0.5}
"""How much one matched word is worth, by the adapter field it comes from (the highest field wins)."""

_STOPWORDS = frozenset(
    """
    a an and are as at be but by can could do does did for from has have how i if in into is it its
    me my of on or our please so that the their them then there these this those to us was we what
    when where which who why will with would you your yours give tell show make get just some any
    about also than too very want need like one ones all each out up down more most other only own
    same such no nor not now should shall may might must let lets here him her his she he they
    answer answers question questions reply replies write says say way using use
    """.split()
)

_WORD = re.compile(r"[a-z0-9]+")
_OPERATOR = re.compile(r"(?<=[\d\s])([-+*/×÷−])(?=\s*\d)")
_OPERATOR_WORDS = {"+": "plus", "-": "minus", "−": "minus", "*": "times", "×": "times", "/": "divided", "÷": "divided"}


def spell_operators(text: str) -> str:
    """
    ``45-6=?`` -> ``45 minus 6=? arithmetic``: an operator between numbers counts as its word
    ("plus", "minus", ...), and an expression with one is arithmetic whatever words it lacks.
    """
    spelled, found = _OPERATOR.subn(lambda m: f" {_OPERATOR_WORDS[m.group(1)]} ", text)
    return f"{spelled} arithmetic" if found else spelled


def stem(word: str) -> str:
    """A deliberately light suffix stripper: enough that "translate" meets "translation", "box" meets "boxes"."""
    for suffix, repl in (("ations", "ate"), ("ation", "ate"), ("ies", "y"), ("ing", ""), ("ed", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: len(word) - len(suffix)] + repl
    if word.endswith(("sses", "xes", "ches", "shes", "zes")) and len(word) > 5:
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def terms(text: str) -> list[str]:
    """Lower-cased, stemmed content words of *text* (stopwords dropped)."""
    return [stem(w) for w in _WORD.findall(spell_operators(text).lower()) if _is_content(w)]


def _is_content(word: str) -> bool:
    """Numbers and stopwords carry no routing signal (every arithmetic example has different numbers)."""
    return len(word) > 1 and not word.isdigit() and word not in _STOPWORDS


@attrs.frozen
class _Vocabulary:
    """One adapter's words: stemmed term -> (weight, field it came from, original word)."""

    weights: dict[str, tuple[float, str, str]]


def _vocabulary(info: AdapterInfo) -> _Vocabulary:
    weights: dict[str, tuple[float, str, str]] = {}

    def add(text: str, field: str) -> None:
        for word in _WORD.findall(spell_operators(text).lower()):
            if not _is_content(word):
                continue
            term = stem(word)
            weight = FIELD_WEIGHTS[field]
            if term not in weights or weights[term][0] < weight:
                weights[term] = (weight, field, word)

    add(info.name, "name")
    for capability in info.capabilities:
        add(capability, "capability")
    add(info.domain, "domain")
    add(info.description, "description")
    for example in info.examples:
        add(example, "example")
    return _Vocabulary(weights)


class KeywordRouter:
    """
    Score adapters by the weighted words they share with the query.

    Options (keyword only):
        threshold: Minimum score for an adapter to answer; below it the base model does.
        top_k: How many adapters to compose (weights proportional to their scores).
        tie_margin:
            Relative score gap within which a resident adapter beats a
            non-resident better one (avoids a load for a near tie).
    """

    name: ClassVar[str] = "keyword"

    def __init__(self, *, threshold: float = 1.0, top_k: int = 1, tie_margin: float = 0.1) -> None:
        if top_k < 1:
            msg = f"keyword router: top_k must be >= 1, got {top_k}"
            raise ValueError(msg)
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.tie_margin = float(tie_margin)
        self._cache: dict[AdapterInfo, _Vocabulary] = {}

    def _vocab(self, info: AdapterInfo) -> _Vocabulary:
        vocab = self._cache.get(info)
        if vocab is None:
            vocab = self._cache[info] = _vocabulary(info)
        return vocab

    def scores(self, query: str, adapters: Sequence[AdapterInfo]) -> list[RouteCandidate]:
        """Every adapter's score for *query* with the words behind it, best first."""
        query_terms = set(terms(query))
        vocabs = [self._vocab(a) for a in adapters]
        shared = {t: sum(1 for v in vocabs if t in v.weights) for t in query_terms}
        candidates = []
        for info, vocab in zip(adapters, vocabs, strict=True):
            score = 0.0
            hits = []
            for term in sorted(query_terms):
                if term in vocab.weights:
                    weight, field, word = vocab.weights[term]
                    earned = weight / shared[term]
                    score += earned
                    hits.append(f"{word} ({field} +{earned:.2f})")
            reason = "matched " + ", ".join(hits) if hits else "no shared words"
            candidates.append(RouteCandidate(info.name, round(score, 4), reason))
        candidates.sort(key=lambda c: (-c.score, c.adapter))
        return candidates

    def route(self, query: str, adapters: Sequence[AdapterInfo], *, resident: Collection[str] = ()) -> Routing:
        """Pick the best-scoring adapter(s) above ``threshold``, or the base model."""
        return decide(
            self.scores(query, adapters),
            router=self.name,
            threshold=self.threshold,
            top_k=self.top_k,
            resident=resident,
            tie_margin=self.tie_margin,
            tie="relative",
            weights=proportional_weights,
        )


@hookimpl
def register_routers() -> list[type[KeywordRouter]]:
    return [KeywordRouter]


__all__ = ["FIELD_WEIGHTS", "KeywordRouter", "spell_operators", "stem", "terms"]
