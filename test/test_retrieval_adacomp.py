"""Retrieval, step 2: complexity gate, AdaComp decisions, budget fitting, the level-2 loop."""
import json
import math
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hola_ros.core.retrieval.adacomp import (  # noqa: E402
    AdaCompRetriever, Passage, RetrievalDecision, compose_messages, context_block, gather_context,
    lm_follow_up)
from hola_ros.core.retrieval.gate import query_gradient  # noqa: E402

KB_QUERY = "Which charging docks are the fast chargers?"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    from hola_ros.core.retrieval.ingest import ingest, demo_kb_dir
    d = tmp_path_factory.mktemp("idx") / "kb"
    ingest(d, [demo_kb_dir()])
    return d


@pytest.fixture(scope="module")
def tiny_lm():
    """A random-weight Llama with the embedder's WordPiece vocabulary (no download needed)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from hola_ros.core.retrieval.embedder import default_embedder_path

    tok = AutoTokenizer.from_pretrained(str(default_embedder_path()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id)
    return SimpleNamespace(model=LlamaForCausalLM(cfg).eval(), tokenizer=tok)


@pytest.fixture(scope="module")
def retriever(index_dir, tiny_lm):
    return AdaCompRetriever(index_dir, gate_model=tiny_lm, thresholds={}, budget_tokens=384, top_k=3)


def test_gradient_feature_is_the_query_nll_gradient(tiny_lm):
    import torch

    q = "How long does a fast charger take from 25 to 90 percent?"
    g = query_gradient(tiny_lm.model, tiny_lm.tokenizer, q)
    ids = [tiny_lm.tokenizer.cls_token_id] + tiny_lm.tokenizer.encode(q, add_special_tokens=False)
    with torch.no_grad():
        ref = tiny_lm.model(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert g["nll"] == pytest.approx(ref, rel=1e-4)
    assert g["tokens"] == len(ids) - 1 and g["grad_norm"] > 0
    # the gradient norm moves when the embeddings of the query move
    emb = tiny_lm.model.get_input_embeddings()
    with torch.no_grad():
        saved = emb.weight[ids[3]].clone()
        emb.weight[ids[3]] += 0.5
    try:
        assert query_gradient(tiny_lm.model, tiny_lm.tokenizer, q)["grad_norm"] != pytest.approx(g["grad_norm"])
    finally:
        with torch.no_grad():
            emb.weight[ids[3]] = saved


def test_inference_only_model_is_refused_with_a_clear_error(index_dir, tiny_lm):
    import copy

    from hola_ros.core import models

    if not models.PackedLinear.available():
        pytest.skip("no packed kernels in this torch build")
    packed = models.from_module(copy.deepcopy(tiny_lm.model), tiny_lm.tokenizer, packed=True)
    with pytest.raises(ValueError, match="packed=False"):
        AdaCompRetriever(index_dir, gate_model=packed, thresholds={})


def test_score_is_deterministic_for_a_fixed_model(index_dir, tiny_lm, retriever):
    a = retriever.retrieve(KB_QUERY)
    b = retriever.retrieve(KB_QUERY)
    c = AdaCompRetriever(index_dir, gate_model=tiny_lm, thresholds={}).retrieve(KB_QUERY)
    assert 0.0 < a.score < 1.0
    assert a.score == b.score == c.score
    assert a.detail["features"] == c.detail["features"]
    other = retriever.retrieve("Bonjour! Quelle heure est-il à Paris?")
    assert other.score != a.score


def test_forced_levels_are_obeyed(retriever):
    off = retriever.retrieve(KB_QUERY, mode="off")
    assert (off.level, off.passages, off.retrievals, off.context_tokens) == (0, [], 0, 0) and math.isnan(off.score)
    single = retriever.retrieve(KB_QUERY, mode="single")
    assert single.level == 1 and single.passages and single.detail["gate"] == "forced" and math.isnan(single.score)
    assert single.passages[0].source == "02-charging-docks.md"
    assert retriever.retrieve(KB_QUERY, mode="multi").level == 2
    with pytest.raises(ValueError, match="unknown retrieval mode 'sometimes'"):
        retriever.retrieve(KB_QUERY, mode="sometimes")


def test_auto_levels_follow_thresholds(index_dir, tiny_lm):
    def level(**th):
        return AdaCompRetriever(index_dir, gate_model=tiny_lm, thresholds=th).retrieve(KB_QUERY)

    never = level(delta1=1.0, delta2=1.0)
    assert never.level == 0 and never.passages == [] and never.retrievals == 1  # searched for evidence only
    assert level(delta1=0.0, delta2=1.0).level == 1
    assert level(delta1=0.0, delta2=0.0).level == 2
    with pytest.raises(ValueError, match="delta1 <= delta2"):
        level(delta1=0.9, delta2=0.2)


def test_similarity_only_gate_without_lm(index_dir):
    r = AdaCompRetriever(index_dir, gate_model=None, thresholds={"sim_min": 0.3})
    kb = r.retrieve(KB_QUERY)
    assert kb.detail["gate"] == "similarity-only" and kb.level == 1 and math.isnan(kb.score)
    far = r.retrieve("Who painted the Mona Lisa?")
    assert far.detail["similarity"]["top"] < 0.3 and far.level == 0 and far.passages == []


@pytest.mark.parametrize("budget", [30, 120, 384])
def test_passages_fit_the_token_budget(retriever, tiny_lm, budget):
    d = retriever.retrieve(KB_QUERY, mode="single", budget_tokens=budget)
    count = lambda s: len(tiny_lm.tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
    assert d.passages and d.context_tokens == sum(p.tokens for p in d.passages)
    assert d.context_tokens <= budget and count(context_block(d.passages)) <= budget
    if budget == 30:
        assert d.passages[0].trimmed and d.passages[0].text.endswith("...")
    assert retriever.retrieve(KB_QUERY, mode="single", budget_tokens=10).passages == []  # too small to be useful


def test_level_two_issues_a_second_retrieval(retriever):
    calls = []

    def retrieve(query, mode, budget):
        calls.append((query, mode, budget))
        return retriever.retrieve(query, mode, budget)

    d = gather_context(KB_QUERY, "multi", retrieve, follow_up=lambda q, ps: "battery storage charge level")
    assert d.level == 2 and d.retrievals == 2 == len(calls)
    assert calls[1][:2] == ("battery storage charge level", "single") and calls[1][2] < 384
    sources = [p.source for p in d.passages]
    assert "02-charging-docks.md" in sources and "07-battery.md" in sources
    assert len({p.text for p in d.passages}) == len(d.passages)
    assert d.context_tokens == sum(p.tokens for p in d.passages) <= 384
    assert d.detail["follow_up"]["query"] == "battery storage charge level"
    json.dumps(d.to_dict())  # the decision travels as JSON

    one = gather_context(KB_QUERY, "single", retrieve, follow_up=lambda q, ps: pytest.fail("not level 2"))
    assert one.retrievals == 1


def test_level_two_with_an_lm_written_follow_up(retriever, tiny_lm):
    write = lm_follow_up(tiny_lm.model, tiny_lm.tokenizer, max_new_tokens=6)
    d = gather_context(KB_QUERY, "multi", retriever.retrieve, follow_up=write)
    assert d.level == 2 and d.detail["follow_up"]["query"]  # random weights: some text, but text
    assert d.retrievals in (1, 2) and d.context_tokens <= 384


def test_compose_messages():
    ps = [Passage("CD-1 and CD-2 are fast chargers.", "faq.md", 0.7)]
    msgs = compose_messages("Which dock is fastest?", ps)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "[faq.md]\nCD-1 and CD-2 are fast chargers." in msgs[1]["content"]
    assert msgs[1]["content"].endswith("Question: Which dock is fastest?")
    assert compose_messages("Hi", []) == [{"role": "user", "content": "Hi"}]
    d = RetrievalDecision(0, float("nan"))
    assert json.loads(json.dumps(d.to_dict()))["score"] is None
