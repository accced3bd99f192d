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

    loose = load_gguf(gguf_path(TEST_MODEL), threads=2, accuracy_level=0, pad_rows=False)
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


def test_group_query_attention_needs_the_throw_away_row():
    """Why onnx_graph appends a throw-away row to every attention call: ONNX Runtime's
    GroupQueryAttention computes a one-row call differently from the same row inside a block
    (measured: last bits differ), while blocks of two or more rows agree with each other."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    heads, kv_heads, dim, capacity = 4, 2, 64, 64
    node = helper.make_node("GroupQueryAttention", ["qkv", "", "", "pk", "pv", "seqlens_k", "total"],
                            ["out", "pk_out", "pv_out"], domain="com.microsoft", num_heads=heads,
                            kv_num_heads=kv_heads, scale=dim ** -0.5)
    io = helper.make_tensor_value_info
    kv = [1, kv_heads, capacity, dim]
    graph = helper.make_graph([node], "gqa", [io("qkv", TensorProto.FLOAT, [1, "n", (heads + 2 * kv_heads) * dim]),
                                              io("pk", TensorProto.FLOAT, kv), io("pv", TensorProto.FLOAT, kv),
                                              io("seqlens_k", TensorProto.INT32, [1]), io("total", TensorProto.INT32, [])],
                              [io("out", TensorProto.FLOAT, [1, "n", heads * dim]), io("pk_out", TensorProto.FLOAT, kv),
                               io("pv_out", TensorProto.FLOAT, kv)])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", 21),
                                                                   helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = np.random.default_rng(0).standard_normal((1, 40, (heads + 2 * kv_heads) * dim)).astype(np.float32)

    def attend(prefix: int, new: int) -> np.ndarray:
        """Attention output of rows prefix..prefix+new-1 after the first `prefix` rows were cached."""
        k, v = np.zeros(kv, np.float32), np.zeros(kv, np.float32)
        ok, ov = ort.OrtValue.ortvalue_from_numpy(k), ort.OrtValue.ortvalue_from_numpy(v)
        out = None
        for start, n in ((0, prefix), (prefix, new)):
            b = sess.io_binding()
            b.bind_output("out")
            b.bind_cpu_input("qkv", np.ascontiguousarray(rows[:, start:start + n]))
            b.bind_ortvalue_input("pk", ok), b.bind_ortvalue_input("pv", ov)
            b.bind_ortvalue_output("pk_out", ok), b.bind_ortvalue_output("pv_out", ov)
            b.bind_cpu_input("seqlens_k", np.asarray([start + n - 1], np.int32))
            b.bind_cpu_input("total", np.asarray(start + n, np.int32))
            sess.run_with_iobinding(b)
            out = b.get_outputs()[0].numpy()
        return out[0]

    block = attend(30, 4)
    assert not np.array_equal(attend(30, 1)[0], block[0])  # a one-row call: another rounding
    assert np.array_equal(attend(30, 2)[0], block[0])  # the row plus a throw-away row: the block's
    assert np.array_equal(attend(31, 2)[0], block[1])
