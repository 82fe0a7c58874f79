"""The core keyword router: explainable word matching, base-model fallback, resident ties, top-k."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptrix_core.builtins.routers import KeywordRouter, spell_operators, stem, terms
from adaptrix_core.library import Library
from adaptrix_core.registry import get_router_class
from adaptrix_core.types import AdapterInfo, Router


ROOT = Path(__file__).resolve().parent.parent
DEMO = Library(ROOT / "no-user-library", shipped_dir=ROOT / "adapters").list()
"""The shipped adapters' own adaptrix.json metadata, never a copy."""


def test_hook_register_routers_core_registers_keyword(core_pm):
    """
    Core registers the keyword router under its name, and it satisfies the Router protocol.
    """
    cls = get_router_class("keyword", core_pm)

    assert KeywordRouter is cls
    assert isinstance(cls(), Router)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Please translate 'where is my hotel' into French", "french"),
        ("Return a JSON object with the fields name and email", "json"),
        ("Talk like a pirate about the weather, matey", "pirate"),
        ("Solve this arithmetic problem: 12 apples minus 5", "arithmetic"),
    ],
)
def test_routes_queries_that_name_a_capability(query, expected):
    """
    A query that uses an adapter's capability words goes to that adapter with weight 1.
    """
    routing = KeywordRouter().route(query, DEMO)

    assert {expected: 1.0} == dict(routing.adapters)
    assert expected == routing.choice
    assert "keyword" == routing.router


def test_off_topic_query_goes_to_the_base_model():
    """
    Below the threshold no adapter is chosen, and the reason says so.
    """
    routing = KeywordRouter().route("Who painted the Mona Lisa?", DEMO)

    assert {} == dict(routing.adapters)
    assert routing.choice is None
    assert "below threshold" in routing.reason


def test_every_adapter_is_a_candidate_with_an_explanation():
    """
    Candidates list every adapter, best first, and the winner's reason names the matched words.
    """
    routing = KeywordRouter().route("Give me the answer as JSON, please", DEMO)

    assert {"pirate", "json", "french", "arithmetic"} == {c.adapter for c in routing.candidates}
    assert sorted((c.score for c in routing.candidates), reverse=True) == [c.score for c in routing.candidates]
    assert "json (name +" in routing.candidates[0].reason


def test_shared_words_count_less():
    """
    A word two adapters share earns each of them half its weight.
    """
    a = AdapterInfo("a", capabilities=("travel",))
    b = AdapterInfo("b", capabilities=("travel",))
    c = AdapterInfo("c", capabilities=("cooking",))

    scores = {cand.adapter: cand.score for cand in KeywordRouter().scores("travel cooking", [a, b, c])}

    assert {"a": 1.5, "b": 1.5, "c": 3.0} == scores


def test_resident_adapter_wins_a_near_tie():
    """
    A resident adapter within tie_margin of a better non-resident one is chosen instead.
    """
    a = AdapterInfo("a", capabilities=("alpha",), description="beta")  # query scores 3 + 1
    b = AdapterInfo("b", capabilities=("alpha",), description="beta gamma")
    router = KeywordRouter(tie_margin=0.4)
    query = "alpha beta gamma"

    assert "b" == router.route(query, [a, b]).choice
    assert "a" == router.route(query, [a, b], resident={"a"}).choice
    assert "resident" in router.route(query, [a, b], resident={"a"}).reason


def test_top_k_composes_with_weights_proportional_to_scores():
    """
    With top_k=2 both adapters above the threshold are composed, weights summing to 1.
    """
    routing = KeywordRouter(top_k=2).route("translate this to french and return it as json", DEMO)

    assert {"french", "json"} == set(routing.adapters)
    assert 1.0 == pytest.approx(sum(routing.adapters.values()))


def test_no_adapters_means_base_model():
    """
    With an empty library the base model answers.
    """
    assert {} == dict(KeywordRouter().route("anything", []).adapters)


def test_terms_drop_stopwords_and_numbers_and_stem():
    """
    Content words are lower-cased and lightly stemmed; numbers and stopwords carry no signal.
    """
    assert ["translate", "apple", "french"] == terms("Translation of 12 apples into French")
    assert stem("translation") == stem("translate")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("45-6=?", "45 minus 6=? arithmetic"),
        ("5+3", "5 plus 3 arithmetic"),
        ("7 * 8", "7 times 8 arithmetic"),
        ("well-known", "well-known"),
    ],
)
def test_operators_between_numbers_count_as_words(text, expected):
    """
    `45-6=?` is read as "45 minus 6", so symbol-only arithmetic meets the words adapters describe it with.
    """
    assert expected == " ".join(spell_operators(text).split())


def test_symbol_arithmetic_routes_to_the_arithmetic_adapter():
    """
    A bare expression with an operator goes to the shipped arithmetic adapter.
    """
    assert "arithmetic" == KeywordRouter().route("45-6=?", DEMO).choice


def test_bad_top_k_is_refused():
    """
    top_k below 1 is a configuration error.
    """
    with pytest.raises(ValueError, match="top_k"):
        KeywordRouter(top_k=0)
