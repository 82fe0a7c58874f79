"""
The ``semantic`` router: decide by what a request asks for, in any of 16 languages.

Each adapter's ``examples`` (requests it is for) and ``counter_examples``
("not for": requests that look close but belong elsewhere) are embedded with
the multilingual Universal Sentence Encoder (:mod:`.encoder`), and a small
softmax classifier with a calibrated "none of them" class is fitted over them
(:mod:`.classifier`). The fit is keyed by a hash of the model and every text,
cached on disk, and redone only when the library's routing texts change. A
query costs one embedding (a few ms) and one tiny matrix product; its score per
adapter is the probability that the adapter is the one meant.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np

from adaptrix_core import AdapterInfo, RouteCandidate, Routing, hookimpl
from adaptrix_core.exceptions import RoutingError
from adaptrix_core.routing import decide

from .background import BACKGROUND, OVERLAP
from .classifier import NONE, Classifier, features, fit, neighbours, training_features
from .encoder import MODEL_DISTRIBUTION, EmbeddingModelMissingError, Encoder, get_encoder, model_version


FIT_FORMAT = 2
"""Bump when the features or the fit change: cached fits are then redone."""


def training_texts(info: AdapterInfo) -> tuple[str, ...]:
    """The requests that stand for *info*: its description and examples (or what it says about itself)."""
    texts = [t.strip() for t in (info.description, *info.examples) if t.strip()]
    if not texts:
        texts = [f"{info.name}: {info.domain}. {', '.join(info.capabilities)}".strip()]
    return tuple(texts)


@attrs.frozen(eq=False)
class Fitted:
    """A classifier fitted for one set of adapters, with the texts it learned from (for the reasons)."""

    classifier: Classifier
    vectors: np.ndarray  # (n, 512) unit embeddings of every training text
    texts: tuple[str, ...]
    owners: tuple[str, ...]  # the adapter each text belongs to
    positive: np.ndarray  # (n,) bool: an example (True) or a counter-example / background request (False)
    labels: np.ndarray  # (n,) class index of each text (the last class is NONE)


class SemanticRouter:
    """
    Route by intent: a calibrated classifier over multilingual sentence embeddings.

    Options (keyword only):
        threshold: An adapter answers only if its probability is at least this; else the base model does.
        top_k: How many adapters to compose (each must clear ``threshold``; weights are their probabilities).
        tie_margin: A resident adapter within this probability of the best one wins (no load needed).
        cache_dir: Where the prepared encoder and the fits live (default ``load_config().cache_dir/semantic-router``).
        background: Also learn "none" from the built-in everyday requests (:mod:`.background`), not only
            from the adapters' counter-examples.
        l2: The classifier's L2 regularisation.
    """

    name: ClassVar[str] = "semantic"

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        top_k: int = 1,
        tie_margin: float = 0.05,
        cache_dir: str | Path | None = None,
        background: bool = True,
        l2: float = 1e-3,
    ) -> None:
        if top_k < 1:
            raise RoutingError(f"semantic router: top_k must be >= 1, got {top_k}. Fix: pass top_k=1 or more.")
        if not 0.0 < threshold <= 1.0:
            raise RoutingError(f"semantic router: threshold is a probability in (0, 1], got {threshold}.")
        self.threshold = float(threshold)
        self.top_k = int(top_k)
        self.tie_margin = float(tie_margin)
        self.background = bool(background)
        self.l2 = float(l2)
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._fits: dict[tuple[Any, ...], Fitted] = {}
        self._lock = threading.Lock()

    @property
    def cache_dir(self) -> Path:
        """Where the prepared encoder and the fitted classifiers are kept."""
        if self._cache_dir is None:
            from adaptrix_core.config import load_config

            self._cache_dir = load_config().cache_dir / "semantic-router"
        return self._cache_dir

    @property
    def encoder(self) -> Encoder:
        """The shared multilingual encoder (loaded on first use, from the prepared copy when there is one)."""
        return get_encoder(self.cache_dir)

    # -- fitting ------------------------------------------------------------------------------

    def _key(self, adapters: Sequence[AdapterInfo]) -> tuple[Any, ...]:
        return (
            tuple((a.name, training_texts(a), tuple(a.counter_examples)) for a in adapters),
            self.background,
            self.l2,
        )

    def fitted(self, adapters: Sequence[AdapterInfo]) -> Fitted:
        """The classifier for *adapters*: from memory, from the disk cache, or fitted now (well under a second)."""
        key = self._key(adapters)
        found = self._fits.get(key)
        if found is not None:
            return found
        with self._lock:
            found = self._fits.get(key)
            if found is None:
                found = self._load_or_fit(key, adapters)
                if len(self._fits) > 16:
                    self._fits.clear()
                self._fits[key] = found
        return found

    def _load_or_fit(self, key: tuple[Any, ...], adapters: Sequence[AdapterInfo]) -> Fitted:
        names = [a.name for a in adapters]
        if NONE in names or len(set(names)) != len(names):
            raise RoutingError(f"semantic router: adapter names must be unique and not {NONE!r}; got {names}.")
        identity = f"{MODEL_DISTRIBUTION}:{model_version()}"
        digest = hashlib.sha256(json.dumps([FIT_FORMAT, identity, repr(key)]).encode()).hexdigest()[:32]
        path = self.cache_dir / f"fit-{digest}.npz"
        cached = _read_fit(path)
        if cached is not None:
            return cached
        result = self._fit(adapters)
        _write_fit(path, result)
        return result

    def _fit(self, adapters: Sequence[AdapterInfo]) -> Fitted:
        texts, owners, positive = [], [], []
        for a in adapters:
            for t in training_texts(a):
                texts.append(t), owners.append(a.name), positive.append(True)
            for t in a.counter_examples:
                if t.strip():
                    texts.append(t.strip()), owners.append(a.name), positive.append(False)
        vectors = self.encoder.embed(texts)
        if self.background:
            extra = self.encoder.embed(BACKGROUND)
            pos = vectors[np.array(positive, dtype=bool)]
            keep = (extra @ pos.T).max(axis=1) < OVERLAP if len(pos) else np.ones(len(BACKGROUND), dtype=bool)
            kept = [t for t, k in zip(BACKGROUND, keep, strict=True) if k]
            texts += kept
            owners += [""] * len(kept)
            positive += [False] * len(kept)
            vectors = np.concatenate([vectors, extra[keep]])
        classes = [*(a.name for a in adapters), NONE]
        index = {name: i for i, name in enumerate(classes)}
        y = np.array([index[o] if p else len(classes) - 1 for o, p in zip(owners, positive, strict=True)])
        x = training_features(vectors, texts, y, len(classes))
        classifier = fit(x, y, classes, l2=self.l2)
        return Fitted(classifier, vectors, tuple(texts), tuple(owners), np.array(positive, dtype=bool), y)

    def prepare(self, adapters: Sequence[AdapterInfo]) -> None:
        """Load the encoder and fit (or read) the classifier now, so the first query is as fast as the rest."""
        if adapters:
            self.fitted(adapters)
            self.encoder.embed(["warm up"])

    # -- routing ------------------------------------------------------------------------------

    def scores(self, query: str, adapters: Sequence[AdapterInfo]) -> list[RouteCandidate]:
        """Every adapter's probability of being the one *query* asks for, best first, with the evidence."""
        if not adapters:
            return []
        fitted = self.fitted(adapters)
        views = _views(query) if CLAUSES else [query]
        vectors = self.encoder.embed(views)
        similarities = vectors @ fitted.vectors.T
        nearest = neighbours(similarities, fitted.labels, len(fitted.classifier.classes))
        all_probs = fitted.classifier.probabilities(features(vectors, views, nearest))
        probs = all_probs[0].copy()
        if len(views) > 1:
            probs[:-1] = all_probs[:, :-1].max(axis=0)
        similarity = similarities[0]
        p_none = float(probs[-1])
        candidates = []
        for i, a in enumerate(adapters):
            candidates.append(RouteCandidate(a.name, round(float(probs[i]), 4), _reason(fitted, a.name, similarity, p_none)))
        candidates.sort(key=lambda c: (-c.score, c.adapter))
        return candidates

    def route(self, query: str, adapters: Sequence[AdapterInfo], *, resident: Collection[str] = ()) -> Routing:
        """The adapter(s) *query* asks for, or the base model when "none of them" is likelier."""
        return decide(
            self.scores(query, adapters),
            router=self.name,
            threshold=self.threshold,
            top_k=self.top_k,
            resident=resident,
            tie_margin=self.tie_margin,
            tie="absolute",
            weights=_renormalised,
        )


CLAUSES = True
_CLAUSE = re.compile(r"[^,:;!?.]+")


def _views(query: str) -> list[str]:
    clauses = [m.group().strip() for m in _CLAUSE.finditer(query)]
    clauses = [c for c in clauses if len(c.split()) >= 2]
    return [query, *clauses] if len(clauses) > 1 else [query]


def _renormalised(scores: list[float]) -> list[float]:
    total = sum(scores)
    return [s / total for s in scores]


def _reason(fitted: Fitted, name: str, similarity: np.ndarray, p_none: float) -> str:
    """``p(none) 0.03; closest example '...' 0.81; closest not-for '...' 0.64`` for adapter *name*."""
    parts = [f"none of them {p_none:.2f}"]
    mine = np.array([o == name for o in fitted.owners], dtype=bool)
    for label, mask in (("closest example", mine & fitted.positive), ("closest not-for", mine & ~fitted.positive)):
        if mask.any():
            idx = np.flatnonzero(mask)
            best = idx[int(np.argmax(similarity[idx]))]
            parts.append(f"{label} {_short(fitted.texts[best])!r} {similarity[best]:.2f}")
    return "; ".join(parts)


def _short(text: str, limit: int = 50) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_fit(path: Path) -> Fitted | None:
    """A cached fit, or ``None`` when absent or unreadable (it is only a cache)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode("utf-8"))
            classifier = Classifier(tuple(meta["classes"]), z["weights"], z["bias"], float(meta["temperature"]))
            return Fitted(
                classifier, z["vectors"], tuple(meta["texts"]), tuple(meta["owners"]), z["positive"], z["labels"]
            )
    except Exception:  # noqa: BLE001 - a corrupt cache file is refitted, never fatal
        return None


def _write_fit(path: Path, fitted: Fitted) -> None:
    """Write *fitted* atomically; a read-only cache only costs refitting next time."""
    c = fitted.classifier
    meta = {"classes": list(c.classes), "temperature": c.temperature, "texts": list(fitted.texts),
            "owners": list(fitted.owners)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, weights=c.weights, bias=c.bias, vectors=fitted.vectors, positive=fitted.positive, labels=fitted.labels,
                     meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8))
        os.replace(tmp, path)
        tmp = None
    except OSError:
        return
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


@hookimpl
def register_routers() -> list[type[SemanticRouter]]:
    return [SemanticRouter]


__all__ = ["EmbeddingModelMissingError", "Fitted", "SemanticRouter", "training_texts"]
