"""
The continuous-batching scheduler on a tiny GPT-2 with four adapters.

Greedy output of a row in a shared, left-padded batch must equal the same request
run alone, token for token (only float summation order differs, never a token);
rows join a running batch and leave it; a cancelled row, queued or decoding,
releases its adapters' lease; stopping never strands a queued row.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

from adaptrix_core.engine import AdaptrixEngine
from adaptrix_core.exceptions import GenerationError
from adaptrix_core.generation import GenerationRequest
from adaptrix_core.scheduler import BatchScheduler, Job


PROMPTS = (
    "Hello there, how are you?",
    "Tell me a story",
    "What is the capital of a country that has a very long name and many rivers?",
    "Hi",
    "The quick brown fox jumps over the lazy dog. Then what happens next?",
    "Numbers: 1 2 3 4",
)
SELECTIONS = (None, "alpha", "beta", "gamma", "delta", {"alpha": 0.6, "beta": 0.4})
WAIT = 60


@pytest.fixture(name="engine", scope="module")
def _engine(tiny_lm_dir, tiny_lm_library_dir, tmp_path_factory):
    import torch

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptrix_core.config import load_config
    from adaptrix_core.library import Library

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTRIX_HOME", str(tmp_path_factory.mktemp("scheduler-home")))
        config = load_config()
    library = Library(tiny_lm_library_dir, shipped_dir=tiny_lm_library_dir.parent / "none")
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    with AdaptrixEngine.from_model(model, tokenizer, library=library, config=config) as engine:
        yield engine
    torch.set_num_threads(before)


def request(engine, prompt, selection, n=12, **options):
    from adaptrix_core.selection import normalize_selection

    return GenerationRequest(engine.encode(prompt), normalize_selection(selection), n, **options)


def alone_tokens(engine, req):
    """The request decoded on its own: prefill, then one step at a time, batch of one."""
    held = engine.lease([req])
    try:
        batch, _ = engine.decoder.prefill([engine.decoder.new_row(0, req)])
        row = batch.rows[0]
        while not row.done:
            engine.decoder.step(batch)
        return row.tokens
    finally:
        engine.cache.release(held)


def decode_rest(decoder, batch):
    """Step *batch* until every row is done; its rows (they leave the batch as they finish)."""
    rows = list(batch.rows)
    while batch.rows:
        decoder.step(batch)
        batch.retire()
    return rows


def alone_text(engine, req):
    held = engine.lease([req])
    try:
        return "".join(p.text for pieces in engine.decoder.stream([req]) for p in pieces)
    finally:
        engine.cache.release(held)


class Client:
    """A job and what the worker told it, with the lease taken as the server takes it."""

    def __init__(self, engine, req):
        self.held = engine.lease([req])
        self.pieces = []
        self.errors = []
        self.finished = threading.Event()
        self.first = threading.Event()
        self.job = Job(req, on_piece=self._piece, on_error=self.errors.append, on_done=self._done)
        self._release = lambda: engine.cache.release(self.held)

    def _piece(self, piece):
        self.pieces.append(piece)
        self.first.set()

    def _done(self):
        self._release()
        self.finished.set()

    @property
    def text(self):
        return "".join(p.text for p in self.pieces)


@pytest.fixture(name="scheduler")
def _scheduler(engine):
    scheduler = BatchScheduler(engine.decoder, window_s=0.05)
    scheduler.start()
    yield scheduler
    scheduler.stop(timeout=WAIT)


def test_rows_joining_mid_decode_give_the_tokens_of_a_lone_run(engine):
    """
    Three rows of different lengths decode 4 steps, two more join (merged KV, left-padded), one leaves: every
    row's greedy tokens equal its lone run's exactly.
    """
    first = [request(engine, p, s) for p, s in zip(PROMPTS[:3], SELECTIONS[:3])]
    later = [request(engine, p, s, n=8) for p, s in zip(PROMPTS[3:5], SELECTIONS[3:5])]
    expected = [alone_tokens(engine, r) for r in first + later]
    held = engine.lease(first + later)
    try:
        decoder = engine.decoder
        batch, _ = decoder.prefill([decoder.new_row(i, r) for i, r in enumerate(first)])
        for _ in range(4):
            decoder.step(batch)
        joined, _ = decoder.prefill([decoder.new_row(3 + i, r) for i, r in enumerate(later)])
        batch.merge(joined)
        rows = decode_rest(decoder, batch)
    finally:
        engine.cache.release(held)

    assert expected == [row.tokens for row in rows]


def test_shared_left_padding_is_trimmed_when_the_long_row_leaves(engine):
    """After the longest prompt's row finishes, the columns only it used are cut from the cache and mask."""
    long_req = request(engine, PROMPTS[4], None, n=1)
    short_req = request(engine, PROMPTS[3], None, n=6)
    decoder = engine.decoder
    batch, _ = decoder.prefill([decoder.new_row(0, long_req), decoder.new_row(1, short_req)])
    width = batch.kv.width
    batch.retire()

    assert 1 == len(batch)
    assert len(short_req.input_ids) == batch.kv.width < width
    assert len(short_req.input_ids) == batch.kv.cache.get_seq_length()


def test_32_concurrent_requests_with_random_adapters_match_lone_runs(engine, scheduler):
    """32 rows with random prompts, adapters and lengths through the scheduler: each text equals its lone run."""
    rng = random.Random(0)
    reqs = [request(engine, rng.choice(PROMPTS), rng.choice(SELECTIONS), n=rng.randint(2, 16)) for _ in range(32)]
    expected = [alone_text(engine, r) for r in reqs]
    clients = [Client(engine, r) for r in reqs]
    for client in clients:
        scheduler.submit(client.job)
    for client in clients:
        assert client.finished.wait(WAIT)

    assert expected == [c.text for c in clients]
    assert [] == [e for c in clients for e in c.errors]
    assert {n: 0 for n in ("alpha", "beta", "gamma", "delta")} == {n: engine.cache.in_use(n) for n in ("alpha", "beta", "gamma", "delta")}
    assert scheduler.stats()["largest_batch"] > 1


def test_a_row_submitted_mid_decode_joins_and_finishes_first(engine, scheduler):
    """A short request arriving while a long one decodes joins the running batch instead of waiting for it."""
    long_client = Client(engine, request(engine, PROMPTS[0], "alpha", n=200, ignore_eos=True))
    scheduler.submit(long_client.job)
    assert long_client.first.wait(WAIT)
    short_client = Client(engine, request(engine, PROMPTS[2], "beta", n=3, ignore_eos=True))
    scheduler.submit(short_client.job)
    assert short_client.finished.wait(WAIT)
    short_done_while_long_ran = not long_client.finished.is_set()
    assert long_client.finished.wait(WAIT)

    assert short_done_while_long_ran
    assert 200 == long_client.pieces[-1].tokens
    assert 2 == scheduler.stats()["largest_batch"]


def test_exact_mode_never_joins_a_running_batch(engine):
    """With exact=True a row that arrives mid-decode waits until the running batch has finished."""
    scheduler = BatchScheduler(engine.decoder, window_s=0.0, exact=True)
    scheduler.start()
    try:
        long_client = Client(engine, request(engine, PROMPTS[0], "alpha", n=40, ignore_eos=True))
        scheduler.submit(long_client.job)
        assert long_client.first.wait(WAIT)
        short_client = Client(engine, request(engine, PROMPTS[0], "beta", n=2, ignore_eos=True))
        scheduler.submit(short_client.job)
        assert short_client.finished.wait(WAIT)
    finally:
        scheduler.stop(timeout=WAIT)

    assert long_client.finished.is_set()
    assert 1 == scheduler.stats()["largest_batch"]
    assert alone_text(engine, short_client.job.request) == short_client.text


class Gate:
    """Holds the worker inside its next decode step until opened."""

    def __init__(self, decoder):
        self.entered = threading.Event()
        self.open = threading.Event()
        self._step = decoder.step

    def step(self, batch):
        self.entered.set()
        assert self.open.wait(WAIT)
        return self._step(batch)


def test_cancel_while_queued_releases_the_lease(engine, monkeypatch):
    """
    The reported leak: a row whose client leaves while it is still queued behind a running batch never runs,
    and its adapter's lease is released (in_use 0, so it can be unloaded and evicted).
    """
    scheduler = BatchScheduler(engine.decoder, window_s=0.0, max_batch=1)
    gate = Gate(engine.decoder)
    monkeypatch.setattr(engine.decoder, "step", gate.step)
    scheduler.start()
    try:
        running = Client(engine, request(engine, PROMPTS[0], None, n=48, ignore_eos=True))
        scheduler.submit(running.job)
        assert gate.entered.wait(WAIT)
        queued = Client(engine, request(engine, PROMPTS[1], "gamma", n=8))
        scheduler.submit(queued.job)
        in_use_while_queued = engine.cache.in_use("gamma")
        queued.job.cancel()
        gate.open.set()
        assert queued.finished.wait(WAIT)
        assert running.finished.wait(WAIT)
    finally:
        scheduler.stop(timeout=WAIT)

    assert 1 == in_use_while_queued
    assert [] == queued.pieces
    assert 0 == engine.cache.in_use("gamma")
    engine.unload_adapter("gamma")
    assert "gamma" not in engine.resident()


def test_cancel_while_decoding_releases_the_lease(engine, scheduler):
    """A row cancelled mid-answer leaves the batch at the next step and releases its lease."""
    client = Client(engine, request(engine, PROMPTS[0], "delta", n=500, ignore_eos=True))
    scheduler.submit(client.job)
    assert client.first.wait(WAIT)
    client.job.cancel()
    steps_at_cancel = scheduler.stats()["steps"]
    assert client.finished.wait(WAIT)
    steps_after = scheduler.stats()["steps"] - steps_at_cancel

    assert 0 == engine.cache.in_use("delta")
    assert client.pieces[-1].finish_reason is None
    assert len(client.pieces) < 500
    assert steps_after <= 3  # the row left at the next step: it was not decoded to its end unseen


def test_max_batch_bounds_the_running_rows(engine):
    """With max_batch=2, five concurrent requests never run more than two rows at once, and all finish right."""
    scheduler = BatchScheduler(engine.decoder, window_s=0.05, max_batch=2)
    scheduler.start()
    try:
        reqs = [request(engine, PROMPTS[i % len(PROMPTS)], SELECTIONS[i % len(SELECTIONS)], n=6) for i in range(5)]
        expected = [alone_text(engine, r) for r in reqs]
        clients = [Client(engine, r) for r in reqs]
        for client in clients:
            scheduler.submit(client.job)
        for client in clients:
            assert client.finished.wait(WAIT)
        stats = scheduler.stats()
    finally:
        scheduler.stop(timeout=WAIT)

    assert expected == [c.text for c in clients]
    assert 2 == stats["largest_batch"]


def test_a_bad_row_fails_alone_and_the_others_run(engine, scheduler):
    """A row the model cannot run (prompt longer than the context) gets its own error; its batch-mates answer."""
    too_long = GenerationRequest(list(range(300)), {}, 4)
    good = request(engine, PROMPTS[1], "alpha", n=4)
    bad_client = Client(engine, GenerationRequest([1], {}, 4))
    bad_client.job.request = too_long
    good_client = Client(engine, good)
    scheduler.submit(bad_client.job)
    scheduler.submit(good_client.job)
    assert bad_client.finished.wait(WAIT)
    assert good_client.finished.wait(WAIT)

    assert [GenerationError] == [type(e) for e in bad_client.errors]
    assert alone_text(engine, good) == good_client.text


def test_stop_runs_what_is_queued_and_fails_later_rows(engine):
    """Rows queued before stop() still run; a row submitted to a stopped scheduler gets a GenerationError at once."""
    scheduler = BatchScheduler(engine.decoder, window_s=0.0)
    scheduler.start()
    queued = Client(engine, request(engine, PROMPTS[1], "alpha", n=4))
    scheduler.submit(queued.job)
    scheduler.stop(timeout=WAIT)
    late = Client(engine, request(engine, PROMPTS[1], "alpha", n=4))
    scheduler.submit(late.job)

    assert queued.finished.is_set() and queued.pieces[-1].finish_reason is not None
    assert [GenerationError] == [type(e) for e in late.errors]
    assert late.finished.is_set()
    assert 0 == engine.cache.in_use("alpha")


def test_row_mixes_reuse_one_bank_whose_bytes_the_cache_counts(engine):
    """
    Mixed batches of several adapters share each wrapper's bank: later row mixes of the same adapters reuse it
    (no stacks rebuilt); its bytes show in the cache's resident bytes and are freed by drop_plans.
    """
    reqs = [request(engine, PROMPTS[0], s, n=2) for s in ("alpha", "beta", None, "gamma")]
    held = engine.lease(reqs)

    def banks():
        return [id(w._bank.A) for w in engine.am._wrappers.values() if len(w.loras) >= 2]

    try:
        engine.am.drop_plans()
        list(engine.decoder.stream(reqs))
        first = banks()
        for mix in (reqs[:3], [reqs[3], reqs[0]], [reqs[1], reqs[2], reqs[3]]):
            list(engine.decoder.stream(mix))
        later = banks()
        plan_bytes = engine.am.plan_bytes()
        stats = engine.cache.stats()
    finally:
        engine.cache.release(held)
    engine.am.drop_plans()

    assert first and first == later
    assert 0 < plan_bytes == stats["plan_bytes"]
    assert stats["adapter_bytes"] + stats["plan_bytes"] == stats["resident_bytes"]
    assert 0 == engine.am.plan_bytes()


# prompt prefixes ------------------------------------------------------------------------------------------------

HEADER = "You are a careful assistant. Answer briefly, in plain words, and never make anything up. Question: "
"""A shared start long enough (over 16 GPT-2 tokens) to be reused."""
QUESTIONS = ("Why is the sky blue?", "Name three rivers.", "What is two and two?", "Hi")


def decode_from_cache(decoder, rows, cache, columns=None):
    """
    Look *rows* up in *cache* (if any), prefill them together (*columns* at a time, or whole), decode to the
    end: each row's reused length and tokens.
    """
    if cache is not None:
        decoder.find_prefixes(rows, cache)
    reused = [row.reuse.length if row.reuse is not None else 0 for row in rows]
    filling = decoder.begin_prefill(rows)
    while (done := decoder.fill(filling, columns)) is None:
        pass
    decode_rest(decoder, done[0])
    return reused, [row.tokens for row in rows]


def test_rows_reusing_a_cached_prefix_give_the_tokens_of_a_full_prefill(engine):
    """
    Prompts that share a header with one prefilled before skip it (their cache starts from the kept keys and
    values): every row's greedy tokens equal a full prefill's, in a group mixing rows with and without a hit
    and different adapters, and the reused rows computed fewer prompt tokens.
    """
    from adaptrix_core.prefixcache import PrefixCache

    decoder = engine.decoder
    cache = PrefixCache(min_tokens=8)
    selections = ("alpha", None, {"alpha": 0.6, "beta": 0.4}, "beta")
    warm = [request(engine, HEADER + "Say something.", s, n=1) for s in selections[:3]]
    reqs = [request(engine, HEADER + q, s, n=10, ignore_eos=True) for q, s in zip(QUESTIONS, selections)]
    reqs.append(request(engine, "A prompt with no cached start at all, long enough to be one.", "alpha", n=10,
                        ignore_eos=True))
    expected = [alone_tokens(engine, r) for r in reqs]
    held = engine.lease(warm + reqs)
    try:
        batch, _ = decoder.prefill([decoder.new_row(i, r) for i, r in enumerate(warm)])
        decoder.remember_prompts(batch, cache)
        reused, tokens = decode_from_cache(decoder, [decoder.new_row(i, r) for i, r in enumerate(reqs)], cache)
    finally:
        engine.cache.release(held)

    header_tokens = len(engine.encode(HEADER))
    assert all(n >= header_tokens - 1 for n in reused[:3])  # the header (up to a merged last token) was reused
    assert [0, 0] == reused[3:]  # "beta" alone was never cached; the last prompt starts differently
    assert expected == tokens


def test_a_reused_prefix_gives_the_logits_of_a_full_prefill(engine):
    """The first-token logits of a prompt prefilled from a cached prefix equal a full prefill's (float tolerance)."""
    import torch

    from adaptrix_core.prefixcache import PrefixCache

    decoder = engine.decoder
    cache = PrefixCache(min_tokens=8)
    first, second = (request(engine, HEADER + q, "gamma", n=1) for q in QUESTIONS[:2])
    logits = {}
    original = decoder._pick

    def capture(name):
        def pick(batch, last_logits):
            logits[name] = last_logits.clone()
            return original(batch, last_logits)
        return pick

    held = engine.lease([first, second])
    try:
        batch, _ = decoder.prefill([decoder.new_row(0, first)])
        decoder.remember_prompts(batch, cache)
        decoder._pick = capture("full")
        decoder.prefill([decoder.new_row(1, second)])
        row = decoder.new_row(2, second)
        decoder.find_prefixes([row], cache)
        decoder._pick = capture("reused")
        decoder.prefill([row])
    finally:
        del decoder._pick
        engine.cache.release(held)

    assert row.reuse is not None and row.prefill_tokens < len(second.input_ids)
    torch.testing.assert_close(logits["reused"], logits["full"], rtol=1e-5, atol=1e-5)


def test_weights_keys_tell_apart_adapters_weights_reloads_and_merges(engine):
    """A cached prefix is only as good as its weights: any change of adapter, weight, load or merge changes the key."""
    am = engine.am
    engine.load_adapter("alpha")
    engine.load_adapter("beta")
    base, alpha = am.weights_key({}), am.weights_key({"alpha": 1.0})

    assert am.weights_key({"alpha": 1.0}) == alpha
    assert len({base, alpha, am.weights_key({"beta": 1.0}), am.weights_key({"alpha": 0.5}),
                am.weights_key({"alpha": 0.5, "beta": 0.5})}) == 5
    am.merge("beta")
    try:
        assert am.weights_key({}) != base
    finally:
        am.unmerge()
    assert am.weights_key({}) == base
    assert 0 == engine.cache.in_use("alpha")
    engine.unload_adapter("alpha")
    engine.load_adapter("alpha")
    assert am.weights_key({"alpha": 1.0}) != alpha


def test_the_scheduler_reuses_prompt_prefixes_across_requests(engine):
    """
    A second wave of requests that start like the first prefills only the rest (the stats count the hits and
    reused tokens), and every answer equals its lone run; exact mode keeps no prefix cache at all.
    """
    scheduler = BatchScheduler(engine.decoder, window_s=0.05)
    scheduler.start()
    try:
        waves = [[request(engine, HEADER + q + ending, s, n=6, ignore_eos=True) for q, s in zip(QUESTIONS, SELECTIONS)]
                 for ending in ("", " Please.")]
        expected = [[alone_text(engine, r) for r in wave] for wave in waves]
        texts = []
        for wave in waves:
            clients = [Client(engine, r) for r in wave]
            for client in clients:
                scheduler.submit(client.job)
            for client in clients:
                assert client.finished.wait(WAIT)
            texts.append([c.text for c in clients])
        stats = scheduler.stats()["prefix_cache"]
    finally:
        scheduler.stop(timeout=WAIT)

    assert expected == texts
    assert stats["hits"] >= len(QUESTIONS)
    assert stats["reused_tokens"] >= len(QUESTIONS) * 16
    assert 0 < stats["tokens"] <= stats["max_tokens"]
    assert BatchScheduler(engine.decoder, exact=True).prefix_cache is None
    assert BatchScheduler(engine.decoder, prefix_cache_tokens=0).stats()["prefix_cache"] is None


def test_a_model_that_cannot_prefill_from_a_cached_prefix_falls_back_to_full_prefills(engine, monkeypatch):
    """Should prefilling from a cached prefix fail, reuse is turned off and the rows are prefilled in full."""
    scheduler = BatchScheduler(engine.decoder, window_s=0.05)
    original = engine.decoder.fill

    def fill(filling, columns=None):
        if any(row.reuse is not None for row in filling.rows):
            raise RuntimeError("this model's cache cannot start from outside keys and values")
        return original(filling, columns)

    monkeypatch.setattr(engine.decoder, "fill", fill)
    scheduler.start()
    try:
        reqs = [request(engine, HEADER + q, "alpha", n=4, ignore_eos=True) for q in QUESTIONS[:2]]
        clients = []
        for req in reqs:  # one after the other, so the second can find the first's prompt
            clients.append(Client(engine, req))
            scheduler.submit(clients[-1].job)
            assert clients[-1].finished.wait(WAIT)
    finally:
        scheduler.stop(timeout=WAIT)

    assert [[], []] == [c.errors for c in clients]
    assert [alone_text(engine, r) for r in reqs] == [c.text for c in clients]
    assert scheduler.prefix_cache is None


@pytest.mark.parametrize("family", ["llama", "phi"])
def test_prefix_reuse_keeps_rotary_positions_right(family, tiny_lm_dir):
    """On rotary-position models (LLaMA, Phi), rows prefilled from a cached prefix decode the tokens of full prefills."""
    import torch

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PhiConfig, PhiForCausalLM

    from adaptrix_core import attach
    from adaptrix_core.generation import Decoder
    from adaptrix_core.prefixcache import PrefixCache
    from adaptrix_core.runtime import LoraSpec

    torch.manual_seed(0)
    shape = {"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "max_position_embeddings": 128}
    model = (LlamaForCausalLM(LlamaConfig(**shape, num_key_value_heads=2)) if family == "llama"
             else PhiForCausalLM(PhiConfig(**shape))).eval()
    am = attach(model)
    am.add_adapter("x", LoraSpec(r=4, alpha=8), seed=1)
    with torch.no_grad():
        for tensor in am.adapter_parameters("x"):
            tensor.normal_(0, 0.3)
    decoder = Decoder(am, AutoTokenizer.from_pretrained(tiny_lm_dir), eos_token_ids=[], pad_token_id=0)
    header = [int(t) for t in torch.randint(1, 128, (20,))]
    prompts = [[*header, 5, 6, 7], [*header, 9], [*header, 11, 12], list(range(30, 60))]
    selections = [{"x": 1.0}, {}, {"x": 1.0}, {"x": 1.0}]
    reqs = [GenerationRequest(p, s, 8, ignore_eos=True) for p, s in zip(prompts, selections)]

    expected = [decode_from_cache(decoder, [decoder.new_row(0, r)], PrefixCache())[1][0] for r in reqs]
    cache = PrefixCache(min_tokens=8)
    warm, _ = decoder.prefill([decoder.new_row(i, reqs[i]) for i in (0, 1)])
    decoder.remember_prompts(warm, cache)
    reused, tokens = decode_from_cache(decoder, [decoder.new_row(i, r) for i, r in enumerate(reqs)], cache)
    chunked = decode_from_cache(decoder, [decoder.new_row(i, r) for i, r in enumerate(reqs)], cache, columns=3)[1]
    plain = decode_from_cache(decoder, [decoder.new_row(i, r) for i, r in enumerate(reqs)], None, columns=4)

    assert [len(prompts[0]) - 1, len(prompts[1]) - 1, len(header), 0] == reused
    assert expected == tokens
    assert expected == chunked  # a prefix reused, then the rest in chunks of 3 columns
    assert ([0, 0, 0, 0], expected) == plain  # no prefix, chunks of 4 columns from the first


def test_requests_admitted_together_compute_their_shared_start_once(engine):
    """
    With nothing cached, rows of one adapter that start alike get their common start computed once and
    reused by each; their tokens equal full prefills'. Rows of another adapter share nothing with them.
    """
    from adaptrix_core.prefixcache import PrefixCache

    decoder = engine.decoder
    cache = PrefixCache(min_tokens=8)
    reqs = [request(engine, HEADER + q, "delta", n=6, ignore_eos=True) for q in QUESTIONS[:3]]
    reqs.append(request(engine, HEADER + QUESTIONS[3], "alpha", n=6, ignore_eos=True))
    expected = [alone_tokens(engine, r) for r in reqs]
    held = engine.lease(reqs)
    try:
        reused, tokens = decode_from_cache(decoder, [decoder.new_row(i, r) for i, r in enumerate(reqs)], cache)
    finally:
        engine.cache.release(held)

    header_tokens = len(engine.encode(HEADER))
    assert all(n >= header_tokens - 1 for n in reused[:3])
    assert 0 == reused[3]
    assert (1, 3) == (len(cache), cache.hits)
    assert expected == tokens


@pytest.mark.parametrize(("lengths", "overhead", "expected"), [
    ([10, 12, 11], 32, [[0, 2, 1]]),  # little padding: one forward
    ([8, 60, 9, 61], 32, [[0, 2], [1, 3]]),  # two clusters: padding 8-token rows to 61 costs more than a forward
    ([8, 60, 9, 61], 1000, [[0, 2, 1, 3]]),  # a forward's fixed cost dwarfs tokens (a GPU): one forward
    ([8, 60, 9, 61], 0, [[0], [2], [1], [3]]),  # no fixed cost: never pad
    ([], 32, []),
])
def test_prefill_groups_split_rows_at_least_cost(lengths, overhead, expected):
    from adaptrix_core.scheduler import prefill_groups

    assert expected == prefill_groups(lengths, overhead)


def test_the_prefill_cost_is_learnt_from_timings():
    """Forwards timed at 40 ms fixed + 1 ms per token give a fixed cost of 40 tokens' worth; too few samples, the default."""
    from adaptrix_core.scheduler import PrefillCost

    cost = PrefillCost(overhead_tokens=32)
    for tokens in (10, 50, 100, 200, 400, 20, 80, 300):
        assert 32 == cost.overhead_tokens
        cost.observe(1, 0, tokens, 0.040 + 0.001 * tokens)

    assert 40 == pytest.approx(cost.overhead_tokens)
    assert (0.040, 0.001) == pytest.approx(cost.parts())


def filling_of(rows, width, past=0):
    """A Filling with only the shape the cost model reads: *rows* rows, *width* columns to do after *past*."""
    import torch

    from adaptrix_core.generation import Filling

    return Filling(rows=[object()] * rows, ids=torch.zeros((rows, width)), mask=torch.zeros((rows, past + width)),
                   positions=None, cache=None)


def test_a_chunk_is_sized_to_its_time_with_context_making_tokens_dearer():
    """
    With 40 ms fixed, 1 ms a token and 0.5 us more per token per column of context, a 250 ms chunk of one
    row starting at context 0 holds fewer than the 210 columns a context-free cost would give, and fewer
    still 2,000 columns deep; the predicted time of what it chose fits, one more column would not.
    """
    from adaptrix_core.scheduler import PrefillCost

    cost = PrefillCost(overhead_tokens=32)
    for tokens in (10, 50, 100, 200, 20, 80, 150, 30):
        cost.observe(1, 0, tokens, 0.040 + 0.001 * tokens)
    cost.per_context = 0.5e-6
    fresh, deep = filling_of(1, 3000), filling_of(1, 1000, past=2000)

    columns = [cost.columns_within(0.250, f) for f in (fresh, deep)]
    assert 210 > columns[0] > columns[1] > 0
    for f, c in zip((fresh, deep), columns):
        assert cost.seconds(f, c) <= 0.250 < cost.seconds(f, c + 1)
    assert 0 == cost.columns_within(0.030, fresh)  # not even the fixed part fits
    two = filling_of(2, 3000)
    assert columns[0] // 2 <= cost.columns_within(0.250, two) < columns[0]  # two rows share the time
    assert cost.seconds(two, cost.columns_within(0.250, two)) <= 0.250


def test_the_context_cost_is_learnt_from_forwards_deep_into_long_prompts():
    """Forwards at long contexts that cost more than the short-prompt fit says raise the per-context cost towards it."""
    from adaptrix_core.scheduler import PrefillCost

    cost = PrefillCost(overhead_tokens=32)
    for tokens in (10, 50, 100, 200, 20, 80, 150, 30):
        cost.observe(1, 0, tokens, 0.040 + 0.001 * tokens)
    truth = 1e-6
    for _ in range(12):
        cost.observe(1, 1000, 500, 0.040 + 500 * (0.001 + truth * 1250))
    assert truth == pytest.approx(cost.per_context, rel=0.01)
    assert 0.040 == pytest.approx(cost.parts()[0])  # the short-prompt fit is untouched


@pytest.mark.parametrize("columns", [1, 3, 7])
def test_a_prefill_in_chunks_gives_the_tokens_and_logits_of_a_whole_one(engine, columns):
    """
    Prompts of different lengths and adapters prefilled a few columns at a time (chunked prefill: the first
    chunks are mostly left padding for the short rows) decode the tokens of a whole prefill, and their
    first-token logits agree within float tolerance.
    """
    import torch

    decoder = engine.decoder
    reqs = [request(engine, p, s, n=8, ignore_eos=True) for p, s in zip(PROMPTS, SELECTIONS)]
    logits = {}
    original = decoder._pick

    def pick(batch, last_logits):
        logits[len(logits)] = last_logits.clone()
        return original(batch, last_logits)

    held = engine.lease(reqs)
    decoder._pick = pick
    try:
        whole = decode_from_cache(decoder, [decoder.new_row(i, r) for i, r in enumerate(reqs)], None)[1]
        first = len(logits)
        chunked = decode_from_cache(decoder, [decoder.new_row(i, r) for i, r in enumerate(reqs)], None,
                                    columns=columns)[1]
    finally:
        del decoder._pick
        engine.cache.release(held)

    assert [alone_tokens(engine, r) for r in reqs] == whole
    assert whole == chunked
    torch.testing.assert_close(logits[first], logits[0], rtol=1e-5, atol=1e-5)


def test_fill_reports_progress_until_its_last_chunk(engine):
    """fill() computes the asked columns and returns nothing until the last, then the batch and first pieces."""
    decoder = engine.decoder
    reqs = [request(engine, PROMPTS[2], "alpha", n=2), request(engine, PROMPTS[3], None, n=2)]
    held = engine.lease(reqs)
    try:
        filling = decoder.begin_prefill([decoder.new_row(i, r) for i, r in enumerate(reqs)])
        width = filling.width
        assert width == max(len(r.input_ids) for r in reqs)
        assert decoder.fill(filling, 5) is None
        assert (5, width - 5) == (filling.done, filling.left)
        assert 5 == filling.cache.get_seq_length()
        batch, pieces = decoder.fill(filling)
    finally:
        engine.cache.release(held)

    assert 0 == filling.left
    assert [0, 1] == [p.index for p in pieces]
    assert width == batch.kv.width


def test_a_prompt_joining_a_running_batch_is_prefilled_in_chunks_between_its_steps(engine):
    """
    With small chunks, a long prompt arriving while a row decodes is prefilled a few columns at a
    time, and the running row takes a step after every chunk but the last; both texts equal lone runs.
    """
    scheduler = BatchScheduler(engine.decoder, window_s=0.0, prefill_chunk_ms=50)
    scheduler.prefill_cost.seconds = lambda filling, columns=None: 1.0  # every prefill "long": chunked
    scheduler.prefill_cost.columns_within = lambda seconds, filling: 4  # 4 columns a step
    order = []
    scheduler.start()
    try:
        running = Client(engine, request(engine, PROMPTS[0], "alpha", n=60, ignore_eos=True))
        running.job.on_piece = lambda piece: (order.append("running"), Client._piece(running, piece))
        scheduler.submit(running.job)
        assert running.first.wait(WAIT)
        joiner_req = request(engine, PROMPTS[4], "beta", n=3, ignore_eos=True)
        joiner = Client(engine, joiner_req)
        joiner.job.on_piece = lambda piece: (order.append("joiner"), Client._piece(joiner, piece))
        order.append("submitted")
        scheduler.submit(joiner.job)
        assert joiner.finished.wait(WAIT)
        assert running.finished.wait(WAIT)
    finally:
        scheduler.stop(timeout=WAIT)

    chunks = -(-len(joiner_req.input_ids) // 4)
    between = order[order.index("submitted") : order.index("joiner")]
    assert between.count("running") >= chunks - 1
    stats = scheduler.stats()
    assert stats["prefill_chunks"] - stats["prefills"] >= chunks - 1
    assert [alone_text(engine, r) for r in (running.job.request, joiner_req)] == [running.text, joiner.text]


def test_a_prefill_whose_clients_all_left_stops_between_chunks_and_releases_leases(engine):
    """Cancelling every row of a chunked prefill under way drops it at the next chunk; its leases are released."""
    scheduler = BatchScheduler(engine.decoder, window_s=0.0, prefill_chunk_ms=50)
    scheduler.prefill_cost.seconds = lambda filling, columns=None: 1.0
    scheduler.prefill_cost.columns_within = lambda seconds, filling: 1
    scheduler.start()
    try:
        running = Client(engine, request(engine, PROMPTS[0], "alpha", n=60, ignore_eos=True))
        leaving = Client(engine, request(engine, PROMPTS[4], "gamma", n=3, ignore_eos=True))
        seen = []

        def piece(p):
            seen.append(p)
            if len(seen) == 4:  # the joiner is a few chunks in: its client goes away
                leaving.job.cancel()
            Client._piece(running, p)

        running.job.on_piece = piece
        scheduler.submit(running.job)
        assert running.first.wait(WAIT)
        scheduler.submit(leaving.job)
        assert leaving.finished.wait(WAIT)
        assert running.finished.wait(WAIT)
    finally:
        scheduler.stop(timeout=WAIT)

    assert [] == leaving.pieces
    assert 0 == engine.cache.in_use("gamma")
    assert 1 == scheduler.stats()["prefills"]  # only the running row's prefill ever finished


def test_scheduler_settings_are_checked():
    with pytest.raises(ValueError, match="prefill_chunk_ms"):
        BatchScheduler(None, prefill_chunk_ms=-1)


def test_a_much_longer_prompt_decodes_in_a_lane_of_its_own_then_the_lanes_merge(engine):
    """
    A prompt far longer than the running row's would pad it to its width at every step: with merging worth
    fewer padded slots than that, it decodes as a second lane (two forwards a step); once it leaves, one
    lane is left. Both texts equal lone runs.
    """
    scheduler = BatchScheduler(engine.decoder, window_s=0.0, prefill_chunk_ms=0)
    scheduler.lane_slots = 4
    lanes = []
    scheduler.start()
    try:
        short = Client(engine, request(engine, PROMPTS[3], "alpha", n=30, ignore_eos=True))
        short.job.on_piece = lambda p: (lanes.append(scheduler.stats()["lanes"]), Client._piece(short, p))
        scheduler.submit(short.job)
        assert short.first.wait(WAIT)
        long_req = request(engine, " ".join(PROMPTS), "beta", n=4, ignore_eos=True)
        long = Client(engine, long_req)
        scheduler.submit(long.job)
        assert long.finished.wait(WAIT)
        assert short.finished.wait(WAIT)
    finally:
        scheduler.stop(timeout=WAIT)

    assert len(long_req.input_ids) > 40  # far wider than the short row for any of its 30 steps
    assert 2 == max(lanes)
    assert 1 == lanes[-1]
    assert [alone_text(engine, r) for r in (short.job.request, long_req)] == [short.text, long.text]


def test_lanes_merge_when_the_padding_costs_less_than_a_forward(engine):
    """Two lanes of different widths merge only within lane_slots of padding; the merged lane decodes lone-run tokens."""
    from adaptrix_core.scheduler import _padding_added

    decoder = engine.decoder
    reqs = [request(engine, PROMPTS[3], "alpha", n=6, ignore_eos=True),
            request(engine, PROMPTS[4], None, n=6, ignore_eos=True),
            request(engine, PROMPTS[0], "gamma", n=6, ignore_eos=True)]
    expected = [alone_tokens(engine, r) for r in reqs]
    held = engine.lease(reqs)
    try:
        narrow, _ = decoder.prefill([decoder.new_row(0, reqs[0])])
        wide, _ = decoder.prefill([decoder.new_row(1, reqs[1]), decoder.new_row(2, reqs[2])])
        added = _padding_added(narrow, wide)
        assert added == (wide.kv.width - narrow.kv.width) * 1  # the narrow lane's one row is padded
        scheduler = BatchScheduler(decoder)
        scheduler._running = [narrow, wide]
        scheduler.lane_slots = added - 1
        scheduler._rejoin_lanes()
        assert 2 == len(scheduler._running)
        scheduler.lane_slots = added
        scheduler._rejoin_lanes()
        assert [narrow] == scheduler._running
        rows = decode_rest(decoder, narrow)
    finally:
        engine.cache.release(held)

    assert expected == [row.tokens for row in rows]


def test_a_short_request_does_not_wait_behind_a_long_prompt_s_chunks(engine):
    """While a long prompt is prefilled a chunk a step, a short request arriving after it is admitted, prefilled
    whole and answered before the long prompt's first token; every text equals its lone run."""
    scheduler = BatchScheduler(engine.decoder, window_s=0.0, prefill_chunk_ms=50)
    scheduler.prefill_cost.seconds = lambda filling, columns=None: 1.0 if filling.width > 30 else 0.001
    scheduler.prefill_cost.columns_within = lambda seconds, filling: 1
    scheduler.start()
    try:
        running = Client(engine, request(engine, PROMPTS[0], "alpha", n=80, ignore_eos=True))
        scheduler.submit(running.job)
        assert running.first.wait(WAIT)
        long = Client(engine, request(engine, " ".join(PROMPTS), "beta", n=2, ignore_eos=True))
        short = Client(engine, request(engine, PROMPTS[3], "gamma", n=2, ignore_eos=True))
        scheduler.submit(long.job)
        deadline = time.monotonic() + WAIT
        while not scheduler.stats()["filling"] and time.monotonic() < deadline:  # its chunks have begun
            time.sleep(0.001)
        scheduler.submit(short.job)
        assert short.finished.wait(WAIT)
        long_started_first = long.first.is_set()
        assert long.finished.wait(WAIT)
        assert running.finished.wait(WAIT)
    finally:
        scheduler.stop(timeout=WAIT)

    assert not long_started_first
    assert len(long.job.request.input_ids) > 30
    assert [alone_text(engine, c.job.request) for c in (running, long, short)] == [running.text, long.text, short.text]
