"""The ONNX Runtime engine on the real packaged models: exactness is a tested contract.

A verified block must give bitwise the logits of one-token steps, so that greedy HSD equals
plain decoding token for token. The control builds the same model without the machinery that
guarantees it (MatMulNBits computing in float, whose one-row kernel differs from its multi-row
one) and checks that the comparison catches it.
"""
import numpy as np
import pytest

from hola_ros.core.drafters import LocalDrafter
from hola_ros.core.hsd import GenerationConfig, generate

pytestmark = pytest.mark.slow
PASSAGE = ("Charging dock CD-5 is on the north wall next to aisle 4. Robots dock there when the battery "
           "falls below 20 percent. Error E-214 means the left wheel encoder reports no signal: stop the robot, "
           "check the encoder cable and restart the drive controller.")


def block_vs_steps(model, prompt: list[int], n: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Logits of n greedy one-token steps, and of the same n tokens verified as one block."""
    session = model.new_session()
    session.forward(prompt[:-1], last_only=True)
    start, last, steps, tokens = session.length, prompt[-1], [], []
    for _ in range(n):
        row = np.array(session.forward([last])[0])
        steps.append(row)
        last = int(row.argmax())
        tokens.append(last)
    session.rollback(start)
    block = np.array(session.forward([prompt[-1]] + tokens[:-1]))
    session.close()
    return np.stack(steps), block


@pytest.fixture(scope="module")
def served():
    from hola_ros.core.engines import load_engine
    from hola_ros.core.model_store import DEFAULT_MODEL

    return load_engine(DEFAULT_MODEL, threads=2)


def test_the_served_default_runs_quantized_and_row_invariant(served):
    assert served.info["backend"] == "onnxruntime" and served.info["row_invariant"] is True
    assert served.info["weights_exact"] > 0 and served.vocab_size > 150_000
    steps, block = block_vs_steps(served, served.chat_ids([{"role": "user", "content": PASSAGE + " Where is CD-5?"}]))
    assert np.array_equal(steps, block)  # bitwise, not allclose


def test_greedy_hsd_equals_plain_decoding_on_the_served_default(served):
    for question in ("Where is charging dock CD-5 and when should a robot go there?",
                     "What does error E-214 mean?"):
        ids = served.chat_ids([{"role": "user", "content": PASSAGE + "\n\n" + question}])
        ar = generate(served, ids, GenerationConfig(max_new_tokens=40, mode="ar"))
        hsd = generate(served, ids, GenerationConfig(max_new_tokens=40), drafter=LocalDrafter(ngram=True))
        assert hsd.token_ids == ar.token_ids and len(ar.token_ids) > 5
        assert hsd.stats["exact"] and hsd.stats["acceptance_rate"] > 0
        assert hsd.stats["target_forwards"] < ar.stats["target_forwards"]


def test_the_comparison_catches_an_engine_without_the_invariance_machinery():
    from hola_ros.core.engines import load_gguf
    from hola_ros.core.model_store import TEST_MODEL, gguf_path

    loose = load_gguf(gguf_path(TEST_MODEL), threads=2, accuracy_level=0)
    steps, block = block_vs_steps(loose, loose.chat_ids([{"role": "user", "content": PASSAGE}]))
    assert not np.array_equal(steps, block)
    assert np.allclose(steps, block, atol=1e-2)  # the same model, only rounded differently
    assert loose.info["row_invariant"] is False
    ids = loose.chat_ids([{"role": "user", "content": PASSAGE + " Where is CD-5?"}])
    res = generate(loose, ids, GenerationConfig(max_new_tokens=16), drafter=LocalDrafter(ngram=True))
    assert res.stats["exact"] is False and "not_row_invariant" in res.stats["flags"]


def test_dropping_the_weight_files_pages_changes_no_logit(monkeypatch):
    """ONNX Runtime maps the weight file copy-on-write; the loader drops the pages of tensors it has
    repacked (memory.drop_file_pages). Were any page written through the mapping, dropping it would
    bring back the file's bytes and change a result: computed here with and without the drop."""
    from pathlib import Path

    from hola_ros.core import engines, memory, ort_runtime
    from hola_ros.core.model_store import TEST_MODEL

    monkeypatch.setattr(ort_runtime, "drop_file_pages", lambda path: 0)
    model = engines.load_engine(TEST_MODEL, threads=2)
    ids = model.chat_ids([{"role": "user", "content": PASSAGE + " What does E-214 mean?"}])
    session = model.new_session()
    kept = np.array(session.forward(ids))
    assert memory.drop_file_pages(Path(model.info["engine_dir"]) / "weights.data") > 0
    session.rollback(0)
    dropped = np.array(session.forward(ids))
    session.close()
    assert np.array_equal(kept, dropped)


def test_a_reused_prompt_prefix_gives_bitwise_the_fresh_prefills_logits_and_answer(served):
    """kvcache.PromptCache: the second request shares the system turn (and the document) with the
    first; it prefills only the rest, and its answer and every logit equal a cold start's."""
    from hola_ros.core.kvcache import PromptCache

    cache = PromptCache(served)
    system = {"role": "system", "content": "Answer from the passage. " * 4}
    first = served.chat_ids([system, {"role": "user", "content": PASSAGE + "\n\nWhere is CD-5?"}])
    second = served.chat_ids([system, {"role": "user", "content": PASSAGE + "\n\nWhat does E-214 mean?"}])
    generate(served, first, GenerationConfig(max_new_tokens=8), cache=cache)
    warm = generate(served, second, GenerationConfig(max_new_tokens=24), cache=cache)
    cold = generate(served, second, GenerationConfig(max_new_tokens=24))
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert warm.stats["reused_prompt_tokens"] == shared > 40 and cold.stats["reused_prompt_tokens"] == 0
    assert warm.token_ids == cold.token_ids and len(cold.token_ids) > 5
    session, reused = cache.session_for(second)
    assert reused == shared
    tail = np.array(session.forward(second[reused:]))
    fresh = served.new_session()
    full = np.array(fresh.forward(second))
    session.close(), fresh.close()
    assert np.array_equal(tail, full[reused:])
