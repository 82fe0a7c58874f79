"""`adaptrix_core.routing.decide`: the decision every router makes once it has scored candidates."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adaptrix_core.exceptions import RoutingError
from adaptrix_core.routing import decide, proportional_weights
from adaptrix_core.types import RouteCandidate


CANDIDATES = [
    RouteCandidate("json", 2.0, "matched json"),
    RouteCandidate("french", 1.9, "matched french"),
    RouteCandidate("pirate", 0.5, "matched ahoy"),
]


def test_below_threshold_the_base_model_answers():
    """
    No candidate at the threshold: no adapters, every candidate kept, and the reason names the best one.
    """
    routing = decide(CANDIDATES, router="test", threshold=3.0)

    assert {} == dict(routing.adapters)
    assert CANDIDATES == list(routing.candidates)
    assert "test" == routing.router
    assert "base model: best json scored 2.00, below threshold 3.00" == routing.reason
    assert "base model: no adapters, below threshold 0.50" == decide([], router="test", threshold=0.5).reason


def test_best_candidate_wins_and_candidates_are_ordered_best_first():
    """
    Unordered candidates are ranked by score; the best one gets weight 1 and lends its reason.
    """
    routing = decide(reversed(CANDIDATES), router="test", threshold=1.0)

    assert {"json": 1.0} == dict(routing.adapters)
    assert ["json", "french", "pirate"] == [c.adapter for c in routing.candidates]
    assert "json:1.00; matched json" == routing.reason


@pytest.mark.parametrize(
    ("tie", "margin", "resident_wins", "note"),
    [
        ("absolute", 0.15, True, " (resident, within 0.15 of json)"),
        ("absolute", 0.05, False, ""),
        ("relative", 0.1, True, " (resident, within 10% of json)"),
        ("relative", 0.04, False, ""),  # 1.9 < 2.0 * 0.96
    ],
)
def test_resident_adapter_wins_a_near_tie(tie, margin, resident_wins, note):
    """
    A resident adapter within the margin (absolute gap, or fraction of the best score) replaces the best one.
    """
    routing = decide(CANDIDATES, router="test", threshold=1.0, resident={"french"}, tie_margin=margin, tie=tie)

    winner = "french" if resident_wins else "json"
    assert {winner: 1.0} == dict(routing.adapters)
    assert f"{winner}:1.00{note}; matched {winner}" == routing.reason


def test_top_k_above_threshold_get_the_given_weights():
    """
    top_k takes the best k candidates above the threshold; the weights function sees their scores in order.
    """
    seen = []

    def halves(scores):
        seen.append(list(scores))
        return [0.75, 0.25][: len(scores)]

    routing = decide(CANDIDATES, router="test", threshold=1.0, top_k=3, weights=halves)
    proportional = decide(CANDIDATES, router="test", threshold=1.0, top_k=2)

    assert [[2.0, 1.9]] == seen
    assert {"json": 0.75, "french": 0.25} == dict(routing.adapters)
    assert "json:0.75 + french:0.25; matched json" == routing.reason
    assert pytest.approx({"json": 2.0 / 3.9, "french": 1.9 / 3.9}) == dict(proportional.adapters)
    assert [0.25, 0.75] == proportional_weights([1.0, 3.0])


def test_bad_arguments_are_refused():
    """
    top_k below 1, an unknown tie rule, and a weights function returning the wrong count are errors.
    """
    with pytest.raises(ValueError, match="top_k"):
        decide(CANDIDATES, router="test", threshold=1.0, top_k=0)
    with pytest.raises(ValueError, match="tie"):
        decide(CANDIDATES, router="test", threshold=1.0, tie="fuzzy")
    with pytest.raises(RoutingError, match="1 weights for 2 adapters"):
        decide(CANDIDATES, router="test", threshold=1.0, top_k=2, weights=lambda scores: [1.0])


def test_routing_module_does_not_import_torch():
    """
    A router that only calls decide() can be written and imported without torch.
    """
    code = "import sys, adaptrix_core.routing; sys.exit('torch' in sys.modules)"

    assert 0 == subprocess.run([sys.executable, "-c", code], check=False).returncode
