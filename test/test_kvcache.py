"""kvcache.PromptCache on the tiny in-memory model: what is reused, what is kept, the bounds."""
import numpy as np
import pytest

from hola_ros.core.hsd import GenerationConfig, generate
from hola_ros.core.kvcache import MIN_SHARED, PromptCache
from helpers_tiny import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def prompt(*parts):
    return [t for part in parts for t in part]


SYSTEM = list(range(10, 10 + 2 * MIN_SHARED))


def test_a_shared_prefix_is_reused_and_the_answer_is_the_cold_one(model):
    cache = PromptCache(model)
    generate(model, prompt(SYSTEM, [40, 41, 42]), GenerationConfig(max_new_tokens=6), cache=cache)
    second = prompt(SYSTEM, [50, 51, 52, 53])
    warm = generate(model, second, GenerationConfig(max_new_tokens=12), cache=cache)
    cold = generate(model, second, GenerationConfig(max_new_tokens=12))
    assert warm.stats["reused_prompt_tokens"] == len(SYSTEM) and cold.stats["reused_prompt_tokens"] == 0
    assert warm.token_ids == cold.token_ids
    # the entry was cut to what the two prompts share: one entry of the system turn
    assert cache.cached_tokens() == len(SYSTEM) and cache.hits == 1


def test_a_keyed_entry_carries_a_conversation_on(model):
    cache = PromptCache(model)
    turn1 = prompt(SYSTEM, [40, 41])
    first = generate(model, turn1, GenerationConfig(max_new_tokens=5), cache=cache, cache_key="talk")
    turn2 = turn1 + first.token_ids + [60, 61]
    second = generate(model, turn2, GenerationConfig(max_new_tokens=5), cache=cache, cache_key="talk")
    assert second.stats["reused_prompt_tokens"] == len(turn1) + len(first.token_ids) - 1
    assert second.token_ids == generate(model, turn2, GenerationConfig(max_new_tokens=5)).token_ids
    assert cache.drop("talk") and not cache.drop("talk")


def test_short_or_unshared_prompts_reuse_nothing(model):
    cache = PromptCache(model)
    generate(model, list(range(20, 20 + MIN_SHARED - 2)), GenerationConfig(max_new_tokens=2), cache=cache)
    assert cache.cached_tokens() == 0  # too short to be worth an entry
    session, reused = cache.session_for(prompt(SYSTEM, [1]))
    assert reused == 0 and session.length == 0
    session.close()


def test_the_cache_is_bounded_by_entries_and_tokens(model):
    cache = PromptCache(model, max_entries=2, max_tokens=3 * MIN_SHARED)
    for start in (100, 150, 200):  # three unrelated prompts of MIN_SHARED + 4 tokens
        generate(model, list(range(start, start + MIN_SHARED + 4)), GenerationConfig(max_new_tokens=2), cache=cache)
    assert len(cache._entries) <= 2 and cache.cached_tokens() <= 3 * MIN_SHARED
    with pytest.raises(ValueError, match="max_entries"):
        PromptCache(model, max_entries=0)


def test_a_forked_session_is_independent(model):
    session = model.new_session()
    session.forward(SYSTEM)
    twin = session.fork()
    twin.rollback(4)
    a = np.array(session.forward([7]))
    b = np.array(twin.forward([7]))
    assert session.length == len(SYSTEM) + 1 and twin.length == 5 and not np.array_equal(a, b)
    session.close(), twin.close()
