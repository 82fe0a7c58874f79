"""
Measure what an adapter does: its metric on held-out prompts, with and without it.

Each metric is a strict yes/no check of one answer against the dataset's
reference response, so a score is "the share of held-out prompts where the
adapter's behaviour is really there":

- ``pirate``: at least two different pirate words (arr, matey, ye, ahoy, ...).
- ``json``: the whole answer parses as one JSON object (no prose, no code fence).
- ``french``: the answer equals the reference translation after normalising
  case, apostrophes, spaces and final punctuation (accents must be right).
- ``arithmetic``: the last number in the answer is exactly the reference's last number.

Both runs (with and without the adapter) go through the engine in one mixed
batch per chunk: the same prompts, greedy decoding, the same token budget.
"""

from __future__ import annotations

import json
import re
import time
import unicodedata

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .exceptions import TrainingError


if TYPE_CHECKING:
    from .engine import AdaptrixEngine
    from .training import Example


# metrics ------------------------------------------------------------------------------

PIRATE_MARKERS = (
    "arr", "arrr", "matey", "mateys", "ahoy", "ye", "yer", "aye", "me hearty", "me hearties", "yo ho",
    "savvy", "shiver me timbers", "landlubber", "landlubbers", "scallywag", "avast", "booty", "doubloons",
    "buccaneer", "grog",
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def pirate_words(text: str) -> set[str]:
    """The distinct pirate markers in *text* (whole words, any case)."""
    lowered = text.lower()
    return {m for m in PIRATE_MARKERS if re.search(rf"(?<![a-z]){re.escape(m)}(?![a-z])", lowered)}


def score_pirate(output: str, reference: str) -> bool:
    """At least two different pirate words: one stray "ye" or "aye" is not pirate talk."""
    return len(pirate_words(output)) >= 2


def score_json(output: str, reference: str) -> bool:
    """The whole answer (whitespace aside) is one JSON object."""
    try:
        return isinstance(json.loads(output.strip()), dict)
    except ValueError:
        return False


def normalize_french(text: str) -> str:
    """Case, apostrophes, quotes, spacing around punctuation and final punctuation do not count; accents do."""
    text = unicodedata.normalize("NFC", text).strip().lower()
    text = text.replace("\u2019", "'").replace("\u00a0", " ").strip("\"«» ")
    text = re.sub(r"\s+([?!:;,.])", r"\1", text)
    text = re.sub(r"\s+", " ", text)
    return text.rstrip(".!? ").strip()


def score_french(output: str, reference: str) -> bool:
    """The answer is the reference translation (normalised; the first line only, so a trailing note fails)."""
    first = output.strip().splitlines()[0] if output.strip() else ""
    return normalize_french(first) == normalize_french(reference) and normalize_french(output) == normalize_french(first)


def last_number(text: str) -> str | None:
    """The last number written in *text* (``"12"``, ``"-3"``, ``"2.5"``), or ``None``."""
    found = _NUMBER.findall(text.replace(",", ""))
    return found[-1] if found else None


def score_arithmetic(output: str, reference: str) -> bool:
    """The answer's last number is exactly the reference's last number."""
    expected = last_number(reference)
    got = last_number(output)
    if expected is None or got is None:
        return False
    return float(got) == float(expected)


@attrs.frozen
class Metric:
    """A yes/no check of one answer against its reference, and the token budget it needs."""

    name: str
    description: str
    score: Callable[[str, str], bool]
    max_new_tokens: int = 64


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("pirate", "at least two different pirate words (arr, matey, ye, ahoy, ...)", score_pirate, 48),
        Metric("json", "the whole answer parses as one JSON object", score_json, 64),
        Metric("french", "normalised exact match with the reference French", score_french, 32),
        Metric("arithmetic", "the last number equals the reference's last number", score_arithmetic, 112),
    )
}


def get_metric(name: str) -> Metric:
    """
    Raises:
        TrainingError: Unknown metric name (the message lists the known ones).
    """
    try:
        return METRICS[name]
    except KeyError:
        raise TrainingError(f"unknown metric {name!r}. Fix: use --metric with one of {', '.join(METRICS)}.") from None


# evaluation ---------------------------------------------------------------------------


@attrs.frozen
class EvalRow:
    prompt: str
    reference: str
    with_adapter: str
    without_adapter: str
    ok_with: bool
    ok_without: bool


@attrs.frozen
class EvalReport:
    """Scores with and without the adapter on the same prompts."""

    adapter: str
    metric: str
    rows: tuple[EvalRow, ...]
    seconds: float
    max_new_tokens: int

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def with_score(self) -> float:
        return sum(r.ok_with for r in self.rows) / max(1, self.n)

    @property
    def without_score(self) -> float:
        return sum(r.ok_without for r in self.rows) / max(1, self.n)

    def to_dict(self, *, rows: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "adapter": self.adapter,
            "metric": self.metric,
            "n": self.n,
            "with_adapter": round(self.with_score, 4),
            "without_adapter": round(self.without_score, 4),
            "max_new_tokens": self.max_new_tokens,
            "seconds": round(self.seconds, 1),
        }
        if rows:
            data["rows"] = [attrs.asdict(r) for r in self.rows]
        return data


def _scores(metric: Metric, output: str, example: Example) -> bool:
    """Right against the reference or any of the example's other accepted answers."""
    return any(bool(metric.score(output, reference)) for reference in (example.response, *example.accept))


def evaluate(
    engine: AdaptrixEngine,
    adapter: str,
    examples: Sequence[Example],
    metric: Metric | str,
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalReport:
    """
    Answer every example's prompt with *adapter* and with the base model; score both with *metric*.

    Each chunk of *batch_size* prompts runs as one mixed batch of ``2 * batch_size`` rows
    (half with the adapter, half without), greedy, so the two sides see identical conditions.
    """
    metric = get_metric(metric) if isinstance(metric, str) else metric
    budget = max_new_tokens or metric.max_new_tokens
    start = time.perf_counter()
    rows: list[EvalRow] = []
    for first in range(0, len(examples), batch_size):
        chunk = examples[first : first + batch_size]
        prompts = [e.prompt for e in chunk]
        outputs = engine.generate(
            prompts + prompts, adapters=[adapter] * len(chunk) + [None] * len(chunk), max_new_tokens=budget
        )
        for example, with_out, without_out in zip(chunk, outputs[: len(chunk)], outputs[len(chunk) :]):
            rows.append(
                EvalRow(
                    prompt=example.prompt,
                    reference=example.response,
                    with_adapter=with_out,
                    without_adapter=without_out,
                    ok_with=_scores(metric, with_out, example),
                    ok_without=_scores(metric, without_out, example),
                )
            )
        if on_batch is not None:
            on_batch(len(rows), len(examples))
    return EvalReport(adapter, metric.name, tuple(rows), time.perf_counter() - start, budget)
