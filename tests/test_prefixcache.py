"""
The prompt-prefix cache on its own: what matches, what is kept, what is evicted.

Keys and values are stand-in tensors whose entries are the token ids, so a test
can see which tokens' data a hit points at.
"""

from __future__ import annotations

import pytest
import torch

from adaptrix_core.prefixcache import PrefixCache


def kv(tokens, layers=2):
    """Per-layer (heads=1, len, dim=1) keys and values holding the token ids themselves."""
    t = torch.tensor(tokens, dtype=torch.float32).view(1, -1, 1)
    return [(t.clone(), -t.clone()) for _ in range(layers)]


HEADER = list(range(100, 120))  # 20 tokens every prompt below starts with


def test_a_prompt_that_starts_like_a_cached_one_reuses_the_shared_tokens():
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    first = [*HEADER, 1, 2, 3]
    cache.add("base", first, kv(first))
    hit = cache.find("base", [*HEADER, 1, 9, 9, 9])

    assert hit is not None
    assert 21 == hit.length
    assert first == hit.entry.layers[0][0][0, : len(first), 0].int().tolist()
    assert {"hits": 1, "misses": 0, "reused_tokens": 21} == {k: cache.stats()[k] for k in ("hits", "misses", "reused_tokens")}


def test_the_last_prompt_token_is_always_left_to_compute():
    """An identical prompt reuses all but its last token: that token's logits pick the first answer token."""
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    prompt = [*HEADER, 5]
    cache.add("base", prompt, kv(prompt))

    assert len(prompt) - 1 == cache.find("base", prompt).length
    assert len(HEADER) == cache.find("base", [*HEADER, 6, 7]).length


def test_the_longest_match_wins():
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    short, long = [*HEADER, 1, 2], [*HEADER, 1, 2, 3, 4, 5]
    cache.add("base", short, kv(short))
    cache.add("base", long, kv(long))

    assert 24 == cache.find("base", [*HEADER, 1, 2, 3, 4, 0]).length


@pytest.mark.parametrize("prompt", [HEADER[:7] + [1, 2, 3], [0, *HEADER], HEADER[:8]])
def test_short_or_different_starts_miss(prompt):
    """Fewer than min_tokens in common, a different first token, or nothing left to compute: a miss."""
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    cache.add("base", [*HEADER, 1], kv([*HEADER, 1]))

    assert cache.find("base", prompt) is None
    assert 1 == cache.stats()["misses"]


def test_other_weights_never_share():
    """Keys and values depend on the adapters in force: a prompt cached under one key is not found under another."""
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    cache.add(("alpha", 1), [*HEADER, 1], kv([*HEADER, 1]))

    assert cache.find(("beta", 2), [*HEADER, 1, 2]) is None
    assert cache.find(("alpha", 1), [*HEADER, 1, 2]) is not None


def test_a_prompt_already_covered_is_not_stored_twice():
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    long = [*HEADER, 1, 2, 3]
    cache.add("base", long, kv(long))

    assert not cache.wants("base", [*HEADER, 1])
    cache.add("base", [*HEADER, 1], kv([*HEADER, 1]))
    assert (1, len(long)) == (len(cache), cache.tokens)
    assert cache.wants("base", [*HEADER, 2])


def test_least_recently_used_prompts_go_first_to_stay_in_budget():
    cache = PrefixCache(max_tokens=50, min_tokens=8)
    a, b, c = ([*HEADER, n] for n in (1, 2, 3))  # 21 tokens each: two fit
    cache.add("base", a, kv(a))
    cache.add("base", b, kv(b))
    assert cache.find("base", [*HEADER, 1, 0]).entry.tokens == tuple(a)  # a is now the most recent
    cache.add("base", c, kv(c))

    assert 42 == cache.tokens <= cache.max_tokens
    assert {tuple(a), tuple(c)} == {cache.find("base", [*p, 0]).entry.tokens for p in (a, c)}
    assert cache.find("base", [*HEADER, 2, 0]).entry.tokens != tuple(b)  # b itself is gone; the header still hits


def test_a_prompt_over_the_whole_budget_is_not_kept():
    cache = PrefixCache(max_tokens=10, min_tokens=8)
    cache.add("base", HEADER, kv(HEADER))

    assert (0, 0) == (len(cache), cache.tokens)
    assert not cache.wants("base", HEADER)


def test_bytes_and_clear():
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    cache.add("base", HEADER, kv(HEADER, layers=3))

    assert 3 * 2 * len(HEADER) * 4 == cache.stats()["bytes"]
    cache.add("base", [9, *HEADER], kv([9, *HEADER], layers=3))
    cache.max_tokens = 25
    cache.add("base", [8, *HEADER], kv([8, *HEADER], layers=3))  # evicts the two older ones
    assert 3 * 2 * 21 * 4 == cache.stats()["bytes"]
    cache.clear()
    assert (0, 0, 0) == (len(cache), cache.tokens, cache.stats()["bytes"])
    assert cache.find("base", [*HEADER, 1]) is None


@pytest.mark.parametrize(("kwargs", "message"), [({"max_tokens": -1}, "max_tokens"), ({"min_tokens": 0}, "min_tokens")])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PrefixCache(**kwargs)


def test_prompts_admitted_together_share_their_common_start_once():
    """Two or more prompts under one key that start alike, with nothing cached: their common start, once."""
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    prompts = [("a", [*HEADER, 1, 2]), ("a", [*HEADER, 1, 3]), ("a", [*HEADER, 4]), ("b", [*HEADER, 5]),
               ("a", [7, *HEADER])]

    assert [("a", (*HEADER,), [0, 1, 2])] == cache.shared_starts(prompts)
    assert (0, 0) == (cache.hits, cache.misses)


def test_no_shared_start_when_the_cache_already_gives_most_of_it():
    cache = PrefixCache(max_tokens=1000, min_tokens=8)
    cache.add("a", HEADER[:16], kv(HEADER[:16]))
    prompts = [("a", [*HEADER, 1]), ("a", [*HEADER, 2])]

    assert [] == cache.shared_starts(prompts)  # 20 in common, 16 cached: 4 more tokens are not worth a forward
    assert [] == cache.shared_starts([("a", [*HEADER, 1])])  # one prompt alone shares nothing
    assert [] == PrefixCache(max_tokens=1000, min_tokens=8).shared_starts([("a", HEADER[:6] + [1]), ("a", HEADER[:6] + [2])])
