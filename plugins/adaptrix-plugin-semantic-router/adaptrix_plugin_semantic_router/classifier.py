"""
The intent classifier: softmax regression over sentence embeddings, with a calibrated "none" class.

Classes are the library's adapters plus ``NONE`` (the base model answers). Each
adapter's examples are its class; ``NONE`` learns from every adapter's
counter-examples ("not for") and a generic background set. A query's features
are its embedding plus a few *number-shape* features (how many numbers, their
size, which operator symbols sit between them): an embedding hardly tells
"37 plus 8" from "37 plus 58" or "12 * 7", and an adapter's examples and
counter-examples say which shapes it takes. The weights for them are learned
like the rest; an adapter whose examples have no numbers learns nothing from them.

Probabilities are calibrated by temperature scaling on out-of-fold logits
(k-fold over the training examples), so "0.9" means about 9 in 10.
"""

from __future__ import annotations

import re

from collections.abc import Sequence

import attrs
import numpy as np


NONE = "(none)"
"""The base-model class's label."""

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_ADD_SUB = re.compile(r"\d\s*[-+−]\s*\d|\d\s*[-+−]\s*\d*\s*=")
_MUL_DIV = re.compile(r"\d\s*[*×x·/÷^]\s*\d|\d\s*%|√")
NUMBER_FEATURES = 10
NUMBER_SCALE = 2.0
"""Number features are 0 or ``NUMBER_SCALE`` (the embedding is a unit vector spread over 512 dims)."""


def _value(token: str) -> float:
    token = token.replace(",", "") if re.fullmatch(r"\d{1,3}(,\d{3})+", token) else token.replace(",", ".")
    try:
        return float(token)
    except ValueError:
        return float(token.split(".")[0] or 0)


def number_features(text: str) -> np.ndarray:
    """The number-shape features of *text* (all zero when it has no digits)."""
    out = np.zeros(NUMBER_FEATURES, dtype=np.float32)
    values = sorted(_value(t) for t in _NUMBER.findall(text))
    if not values:
        return out
    whole = all(v == int(v) for v in values)
    flags = (
        True,  # has a number
        len(values) == 2,
        len(values) >= 3,
        values[0] <= 9 and whole,  # a one-digit operand
        len(values) >= 2 and values[0] >= 10,  # every operand has two digits or more
        values[-1] > 99,
        not whole,
        bool(_ADD_SUB.search(text)),
        bool(_MUL_DIV.search(text)),
        len(text.split()) <= 3,  # a bare expression
    )
    out[:] = [NUMBER_SCALE if f else 0.0 for f in flags]
    return out


NEIGHBOUR_SCALE = 3.0


def neighbours(similarity: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """
    (n, C): each row's highest cosine similarity to a training text of each class.

    *similarity* is (n, T) against the T training texts labelled *labels*; a
    nearest-neighbour signal the linear part alone cannot express (a request
    one word away from a counter-example is not the adapter's).
    """
    out = np.full((similarity.shape[0], n_classes), -1.0, dtype=np.float32)
    for c in range(n_classes):
        mask = labels == c
        if mask.any():
            out[:, c] = similarity[:, mask].max(axis=1)
    return out * NEIGHBOUR_SCALE


def features(embeddings: np.ndarray, texts: Sequence[str], nearest: np.ndarray) -> np.ndarray:
    """(n, 512 + NUMBER_FEATURES + C): embeddings, number-shape features, nearest-class similarities."""
    numbers = np.stack([number_features(t) for t in texts]) if texts else np.zeros((0, NUMBER_FEATURES))
    return np.concatenate([embeddings, numbers.astype(np.float32), nearest.astype(np.float32)], axis=1)


@attrs.frozen(eq=False)
class Classifier:
    """Fitted weights: ``softmax((x @ weights + bias) / temperature)`` over ``classes``."""

    classes: tuple[str, ...]
    weights: np.ndarray  # (F, C)
    bias: np.ndarray  # (C,)
    temperature: float = 1.0

    def logits(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.weights + self.bias) / self.temperature

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, C) class probabilities for feature rows *x*."""
        return _softmax(self.logits(x))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _fit_weights(
    x: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float, steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced, L2-regularised softmax regression by Nesterov gradient descent (convex: it converges)."""
    n, f = x.shape
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sample_weight = (n / (n_classes * np.maximum(counts, 1)))[y] / n
    onehot = np.eye(n_classes)[y]
    w = np.zeros((f, n_classes))
    b = np.zeros(n_classes)
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    lr, momentum = 2.0, 0.9
    x64 = x.astype(np.float64)
    for _ in range(steps):
        lw, lb = w + momentum * vw, b + momentum * vb
        grad_logits = (_softmax(x64 @ lw + lb) - onehot) * sample_weight[:, None]
        gw = x64.T @ grad_logits + l2 * lw
        gb = grad_logits.sum(0)
        vw = momentum * vw - lr * gw
        vb = momentum * vb - lr * gb
        w, b = w + vw, b + vb
    return w.astype(np.float32), b.astype(np.float32)


def _calibrate(x: np.ndarray, y: np.ndarray, n_classes: int, *, l2: float, steps: int, folds: int) -> float:
    """The temperature that minimises the out-of-fold negative log-likelihood (1.0 with too few examples)."""
    if len(y) < 2 * folds:
        return 1.0
    order = np.random.default_rng(0).permutation(len(y))
    logits = np.zeros((len(y), n_classes))
    for k in range(folds):
        held = order[k::folds]
        kept = np.setdiff1d(order, held)
        w, b = _fit_weights(x[kept], y[kept], n_classes, l2=l2, steps=steps)
        logits[held] = x[held] @ w + b
    best, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.2), np.log(5.0), 41)):
        p = _softmax(logits / t)[np.arange(len(y)), y]
        nll = -np.log(np.clip(p, 1e-12, None)).mean()
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def training_features(vectors: np.ndarray, texts: Sequence[str], y: np.ndarray, n_classes: int) -> np.ndarray:
    """Features of the training texts themselves: nearest-class similarities leave each text (and its copies) out."""
    similarity = vectors @ vectors.T
    similarity[similarity > 0.999] = -1.0
    return features(vectors, texts, neighbours(similarity, y, n_classes))


def fit(
    x: np.ndarray, y: np.ndarray, classes: Sequence[str], *, l2: float = 1e-3, steps: int = 300, folds: int = 5
) -> Classifier:
    """Fit the classifier on feature rows *x* with class indices *y* into *classes*, then calibrate it."""
    temperature = _calibrate(x, y, len(classes), l2=l2, steps=steps, folds=folds)
    w, b = _fit_weights(x, y, len(classes), l2=l2, steps=steps)
    return Classifier(tuple(classes), w, b, temperature)


__all__ = ["NONE", "NUMBER_FEATURES", "Classifier", "features", "fit", "neighbours", "number_features", "training_features"]
