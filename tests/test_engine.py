"""AdaptrixEngine: queries with adapters, batches, streaming, load-on-demand, the active set, routing, status."""

from __future__ import annotations

import pytest

from adaptrix_core.engine import ACTIVE, AdaptrixEngine
from adaptrix_core.exceptions import AdapterInUseError, AdapterNotFoundError, GenerationError


PROMPT = "Hello there, how are you?"


@pytest.fixture(name="config", scope="module")
def _config(tmp_path_factory):
    from adaptrix_core.config import load_config

    home = tmp_path_factory.mktemp("engine-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTRIX_HOME", str(home))
        mp.setenv("ADAPTRIX_ROUTER", "keyword")  # the tiny adapters have one-line descriptions: route by name
        mp.delenv("ADAPTRIX_CONFIG", raising=False)
        return load_config()


@pytest.fixture(name="library", scope="module")
def _library(tiny_lm_library_dir):
    from adaptrix_core.library import Library

    return Library(tiny_lm_library_dir, shipped_dir=tiny_lm_library_dir.parent / "none")


@pytest.fixture(name="loaded", scope="module")
def _loaded(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval(), AutoTokenizer.from_pretrained(tiny_lm_dir)


@pytest.fixture(name="one_thread", scope="module", autouse=True)
def _one_thread():
    """Tiny models run fastest on one intra-op thread (and do not fight other processes for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(name="engine")
def _engine(loaded, library, config):
    """A fresh engine over the shared tiny model (closing it detaches the runtime again)."""
    model, tokenizer = loaded
    with AdaptrixEngine.from_model(model, tokenizer, library=library, config=config) as engine:
        yield engine


def hf_greedy(engine, ids, selection, n):
    """Reference: transformers' own generate() under the same adapter selection."""
    import torch

    with engine.am.using(selection), torch.no_grad():
        out = engine.model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=n,
            min_new_tokens=n, do_sample=False, pad_token_id=0,
        )
    return engine.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)


@pytest.mark.parametrize("selection", [None, "alpha", {"alpha": 0.6, "beta": 0.4}])
def test_greedy_query_matches_transformers_generate(engine, selection):
    """The engine's decode loop gives the same greedy text as transformers' generate() with that selection."""
    ids = engine.encode_chat([{"role": "user", "content": PROMPT}])
    engine.cache.acquire(["alpha", "beta"])  # make them resident for the reference run
    expected = hf_greedy(engine, ids, selection, 10)

    assert expected == engine.query(PROMPT, selection, max_new_tokens=10)


def test_repetition_penalty_matches_transformers_generate(engine):
    """repetition_penalty=1.3 gives transformers' greedy answer with the same penalty; 1.0 changes nothing."""
    import torch

    ids = engine.encode_chat([{"role": "user", "content": PROMPT}])
    engine.cache.acquire(["alpha"])
    with engine.am.using("alpha"), torch.no_grad():
        out = engine.model.generate(
            torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=12,
            min_new_tokens=12, do_sample=False, pad_token_id=0, repetition_penalty=1.3,
        )
    expected = engine.tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    penalized = engine.query(PROMPT, "alpha", max_new_tokens=12, repetition_penalty=1.3)

    assert expected == penalized
    assert engine.query(PROMPT, "alpha", max_new_tokens=12) == engine.query(
        PROMPT, "alpha", max_new_tokens=12, repetition_penalty=1.0
    )
    assert penalized != engine.query(PROMPT, "alpha", max_new_tokens=12)


def test_repetition_penalty_rule_and_bad_values():
    """Seen tokens: a positive logit is divided by the penalty, a negative one multiplied; <= 0 is refused."""
    import torch

    from adaptrix_core.generation import apply_repetition_penalty

    logits = torch.tensor([2.0, -2.0, 1.0, 3.0])
    apply_repetition_penalty(logits, torch.tensor([0, 1]), 2.0)

    assert [1.0, -4.0, 1.0, 3.0] == logits.tolist()


def test_repetition_penalty_must_be_positive(engine):
    """A zero or negative penalty is a GenerationError naming the field."""
    with pytest.raises(GenerationError, match="repetition_penalty must be > 0"):
        engine.query(PROMPT, None, max_new_tokens=2, repetition_penalty=0.0)


def test_incremental_text_equals_decoding_all_tokens(engine):
    """Pieces of a row fed token by token (multi-byte characters split across tokens) join to the full decode."""
    from adaptrix_core.generation import GenerationRequest

    text = "Caf\u00e9 \U0001F642 na\u00efve \u00fcber \u4e2d\u6587 end"
    ids = engine.tokenizer(text)["input_ids"]
    row = engine.decoder.new_row(0, GenerationRequest([1], {}, len(ids)))
    pieces = [row.push(t, eos=False, full=False) for t in ids]

    assert engine.tokenizer.decode(ids) == "".join(p.text for p in pieces)
    assert "\ufffd" not in "".join(p.text for p in pieces[:-1])
    assert "length" == pieces[-1].finish_reason


def test_adapters_change_the_answer(engine):
    """Base, alpha, beta and a composition answer differently; the dict and string forms agree."""
    answers = [engine.query(PROMPT, sel, max_new_tokens=8) for sel in (None, "alpha", "beta", "alpha:0.5+beta:0.5")]

    assert (4, answers[3]) == (len(set(answers)), engine.query(PROMPT, {"alpha": 0.5, "beta": 0.5}, max_new_tokens=8))


def test_batch_with_mixed_rows_equals_one_by_one(engine):
    """generate() with a different selection per row and different prompt lengths equals per-row queries."""
    prompts = ["Hi", PROMPT, "The capital of France is", PROMPT]
    rows = [None, "alpha", "beta:0.7+gamma:0.3", "delta"]
    expected = [engine.query(p, r, max_new_tokens=8) for p, r in zip(prompts, rows)]

    assert expected == engine.generate(prompts, rows, max_new_tokens=8)


def test_stream_pieces_join_to_the_full_answer(engine):
    """Streaming yields several pieces that join to the non-streamed text; the finish reason is set."""
    stream = engine.query(PROMPT, "gamma", max_new_tokens=8, stream=True)
    pieces = list(stream)

    assert (engine.query(PROMPT, "gamma", max_new_tokens=8), True, "length", 8) == (
        "".join(pieces), len(pieces) > 1, stream.finish_reason, stream.completion_tokens
    )


def test_library_adapter_is_loaded_on_demand(engine):
    """The first request for a library adapter loads it (a miss); the next one is a hit."""
    engine.query(PROMPT, "delta", max_new_tokens=2)
    engine.query(PROMPT, "delta", max_new_tokens=2)
    stats = engine.cache.stats()

    assert (["delta"], 1, 1) == (engine.resident(), stats["misses"], stats["hits"])


def test_bounded_cache_evicts_and_reloads_transparently(loaded, library, config):
    """With room for two adapters, cycling through four evicts and reloads, and answers do not change."""
    model, tokenizer = loaded
    with AdaptrixEngine.from_model(model, tokenizer, library=library, config=config, cache_max_adapters=2) as engine:
        first = [engine.query(PROMPT, name, max_new_tokens=6) for name in ("alpha", "beta", "gamma", "delta")]
        again = [engine.query(PROMPT, name, max_new_tokens=6) for name in ("alpha", "beta", "gamma", "delta")]
        stats = engine.cache.stats()

    assert (first, 2, 6, 8) == (again, stats["resident_count"], stats["evictions"], stats["misses"])


def test_unknown_adapter_names_the_known_ones_and_holds_nothing(engine):
    """An unknown adapter raises AdapterNotFoundError listing the library; the others are not left leased."""
    with pytest.raises(AdapterNotFoundError, match="Known: alpha, beta, delta, gamma"):
        engine.query(PROMPT, "alpha+nope", max_new_tokens=2)

    assert 0 == engine.cache.in_use("alpha")


def test_load_switch_unload_drive_the_active_set(engine):
    """load_adapter activates, switch_adapter swaps in place keeping the weight, unload_adapter removes."""
    engine.load_adapter("alpha")
    engine.load_adapter("beta", weight=0.5)
    after_load = engine.active()
    engine.switch_adapter("beta", "gamma")
    after_switch = engine.active()
    engine.unload_adapter("alpha")

    assert ({"alpha": 1.0, "beta": 0.5}, {"alpha": 1.0, "gamma": 0.5}, {"gamma": 0.5}, ["beta", "gamma"]) == (
        after_load, after_switch, engine.active(), sorted(engine.resident())
    )


def test_default_adapters_are_the_active_set(engine):
    """query() without adapters= (or with ACTIVE) uses the active set; adapters=None is the base model."""
    engine.load_adapter("beta")
    beta = engine.query(PROMPT, "beta", max_new_tokens=6)

    assert (beta, beta, engine.query(PROMPT, "base", max_new_tokens=6)) == (
        engine.query(PROMPT, max_new_tokens=6), engine.query(PROMPT, ACTIVE, max_new_tokens=6),
        engine.query(PROMPT, None, max_new_tokens=6),
    )


def test_switch_from_inactive_adapter_is_an_error(engine):
    """Switching from an adapter that is not active says what is active."""
    with pytest.raises(AdapterNotFoundError, match="not active"):
        engine.switch_adapter("alpha", "beta")


def test_adapter_in_use_cannot_be_unloaded(engine):
    """While a stream holds an adapter, unloading it fails; after the stream closes it works."""
    stream = engine.query(PROMPT, "alpha", max_new_tokens=8, stream=True)
    next(stream)
    with pytest.raises(AdapterInUseError):
        engine.unload_adapter("alpha")
    stream.close()
    engine.unload_adapter("alpha")

    assert [] == engine.resident()


def test_auto_routes_with_the_configured_router(engine):
    """adapters='auto' asks the keyword router, which picks the adapter whose name the prompt mentions."""
    stream = engine.query("please answer with alpha style", "auto", max_new_tokens=6, stream=True)
    text = stream.text()

    assert ({"alpha": 1.0}, engine.query("please answer with alpha style", "alpha", max_new_tokens=6)) == (
        dict(stream.routing.adapters), text
    )


def test_chat_template_is_used_when_the_tokenizer_has_one(engine):
    """A query is wrapped in the tokenizer's chat template; chat_template=False sends the raw text."""
    templated = engine.tokenizer("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")["input_ids"]

    assert (templated, engine.query("hi", None, max_new_tokens=5, chat_template=False)) == (
        engine.encode_chat([{"role": "user", "content": "hi"}]),
        engine.generate(["hi"], [None], max_new_tokens=5, chat_template=False)[0],
    )


def test_stop_string_ends_the_answer_before_it(engine):
    """A stop string taken from the middle of an answer cuts the answer just before it."""
    full = engine.query(PROMPT, "alpha", max_new_tokens=12)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    cut = engine.query(PROMPT, "alpha", max_new_tokens=12, stop=[stop])

    assert full[: full.index(stop)] == cut


def test_sampling_is_reproducible_with_a_seed(engine):
    """Sampling with the same seed repeats the text; greedy ignores the seed."""
    first = engine.query(PROMPT, "beta", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)

    assert first == engine.query(PROMPT, "beta", max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7)


def test_prompt_longer_than_the_context_is_refused(engine):
    """A prompt that does not fit the model's context is a GenerationError before any work."""
    with pytest.raises(GenerationError, match="context holds 256"):
        engine.query("word " * 400, None, chat_template=False)


def test_status_reports_model_cache_and_memory(engine):
    """status() names the base model and device, the active set, per-adapter bytes and the process RSS."""
    engine.load_adapter("alpha")
    status = engine.status()

    assert ("gpt2", "cpu", {"alpha": 1.0}, engine.am.resident_bytes("alpha"), True) == (
        status["architecture"], status["device"], status["active"], status["cache"]["adapters"]["alpha"]["bytes"],
        status["cache"]["memory"]["rss_bytes"] > 0,
    )


def test_close_detaches_the_runtime(loaded, library, config):
    """Closing an engine made from a loaded model puts the model's original modules back."""
    model, tokenizer = loaded
    before = sorted(type(m).__name__ for m in model.modules())
    with AdaptrixEngine.from_model(model, tokenizer, library=library, config=config) as engine:
        engine.load_adapter("alpha")

    assert before == sorted(type(m).__name__ for m in model.modules())


def test_already_attached_model_keeps_its_adapters_pinned(loaded, library, config):
    """from_model on an attached model adopts its in-memory adapters (pinned) and leaves it attached."""
    from adaptrix_core import attach
    from adaptrix_core.runtime import LoraSpec

    model, tokenizer = loaded
    am = attach(model)
    try:
        am.add_adapter("fresh", LoraSpec(r=2, roles=("attn.qkv",)))
        engine = AdaptrixEngine.from_model(model, tokenizer, library=library, config=config, cache_max_adapters=1)
        engine.query(PROMPT, "alpha", max_new_tokens=2)
        engine.close()
        state = (sorted(engine.resident()), am.adapters, model._adaptrix_attached is am)
    finally:
        am.detach()

    assert (["fresh"], ("fresh",), True) == state


def test_loading_a_resident_name_from_another_source_is_refused(engine, library, tmp_path):
    """
    A resident adapter is never silently kept when a different source is asked for under its name;
    a failed load leaves no stale source behind, so the library adapter still loads afterwards.
    """
    from adaptrix_core.exceptions import AdapterExistsError, AdapterFormatError

    engine.load_adapter("alpha")
    with pytest.raises(AdapterExistsError, match="another source"):
        engine.load_adapter("alpha", library.path("beta"))
    engine.unload_adapter("alpha")

    with pytest.raises(AdapterFormatError):
        engine.load_adapter("alpha", tmp_path / "missing")
    engine.load_adapter("alpha")

    assert "alpha" in engine.active()
