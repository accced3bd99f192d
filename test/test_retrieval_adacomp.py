"""Retrieval, step 2: hybrid search, gates (evidence and gradient), AdaComp decisions, budget
fitting by whole units, the level-2 loop, grounded prompts."""
import json
import math
import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hola_ros.core.retrieval.adacomp import (  # noqa: E402
    AdaCompRetriever, Passage, RetrievalDecision, fit_budget, gather_context, lm_follow_up)
from hola_ros.core.retrieval.gate import query_gradient  # noqa: E402
from hola_ros.core.retrieval.prompting import (  # noqa: E402
    NOT_IN_DOCUMENTS, adds_nothing, compose_messages, context_block, new_terms, source_note)

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


def test_evidence_gate_without_lm(index_dir):
    r = AdaCompRetriever(index_dir, gate_model=None, thresholds={"sim_min": 0.3, "known_min": 1.01,
                                                                 "phrases_min": 1, "missing_min": 99})
    kb = r.retrieve(KB_QUERY)
    assert kb.detail["gate"] == "evidence" and kb.level == 1 and math.isnan(kb.score)
    assert kb.detail["evidence"]["phrases"] >= 1  # "charging dock" is a phrase of the documents
    far = r.retrieve("Who painted the Mona Lisa?")
    assert far.detail["evidence"]["top_sim"] < 0.3 and far.level == 0 and far.passages == []
    code = r.retrieve("E-517?")  # an identifier the index holds grounds the query whatever the similarity
    assert code.detail["evidence"]["identifiers"] == 1 and code.level == 1
    unknown = r.retrieve("E-999?")
    assert unknown.detail["evidence"]["identifiers"] == 0


def test_evidence_names_the_terms_and_codes_no_document_holds(index_dir):
    r = AdaCompRetriever(index_dir)
    known = r.retrieve("What does error E-517 mean?").detail["evidence"]
    assert known["unknown_codes"] == [] and known["unknown_terms"] == []
    e999 = r.retrieve("What does error E-999 mean, and where is CD-5?").detail["evidence"]
    assert e999["unknown_codes"] == ["e-999"] and e999["unknown_terms"] == ["e-999"]
    speed = r.retrieve("Can a robot drive at 1.7m/s past the canteen password desk?").detail["evidence"]
    assert speed["unknown_codes"] == []  # a measurement is no code
    assert "password" in speed["unknown_terms"] and "1.7m/s" in speed["unknown_terms"]
    often = r.retrieve("How often are the safety scanner fields recertified?").detail["evidence"]
    assert often["unknown_terms"] == []  # "how often" asks for a figure no document words that way


def test_evidence_gate_goes_multi_step_on_missing_specific_terms(index_dir):
    r = AdaCompRetriever(index_dir, thresholds={"missing_min": 1, "specific_share": 0.2})
    q = "How long does a Tern T2 take to boot after it is switched on?"
    d = r.retrieve(q)
    missing = d.detail["evidence"]["missing"]
    assert d.level == 2 and missing and d.detail["follow_up_query"] == " ".join(missing)
    assert d.context_tokens <= r.budget_tokens // 2  # the first step leaves room for the second
    both = gather_context(q, "auto", r.retrieve, follow_up=lambda q, ps: pytest.fail("the retriever has one"))
    assert both.retrievals == 2 and both.detail["follow_up"]["by"] == "retriever"
    assert both.context_tokens <= r.budget_tokens


@pytest.mark.parametrize("budget", [200, 384])
def test_identifier_question_retrieves_the_row_that_holds_it(index_dir, budget):
    r = AdaCompRetriever(index_dir, thresholds={})
    for code, meaning in (("E-214", "docking failed three times"), ("E-408", "lift not fully lowered"),
                          ("E-104", "wheel encoder mismatch")):
        d = r.retrieve(f"The robot shows error {code}. What should I do?", "single", budget)
        context = context_block(d.passages)
        assert f"| {code} | {meaning} |" in context, (budget, code, context)
        assert "| Code | Meaning | What to do |" in context  # the row comes with its table header
        assert d.context_tokens <= budget


def test_budget_fitting_trims_by_whole_units_and_says_what_it_dropped(index_dir):
    r = AdaCompRetriever(index_dir, thresholds={})
    table = next(p for p in r.store.passages if "| E-214 |" in p["text"])
    whole = Passage(table["text"], "04-error-codes.md", 0.5)
    other = Passage("# FAQ\nCD-1 and CD-2 are the fast chargers.", "12-faq.md", 0.4)
    n = r.count_tokens(f"[{whole.source}]\n{whole.text}\n\n")
    kept, dropped = fit_budget([whole, other], n - 20, r.count_tokens, "What does error E-311 mean?")
    cut = kept[0]
    assert cut.trimmed and cut.tokens <= n - 20 and "| E-311 |" in cut.text
    rows = [line for line in cut.text.split("\n") if line.startswith("| E-")]
    assert rows and all(line in table["text"].split("\n") for line in rows)  # whole rows only
    assert dropped[0]["source"] == "04-error-codes.md" and dropped[0]["units_dropped"] >= 1
    assert [d["reason"] for d in dropped] == ["trimmed to the budget", "budget"]  # no room left for the FAQ
    assert fit_budget([whole], 10, r.count_tokens) == ([], [{"source": "04-error-codes.md", "reason": "budget",
                                                             "tokens": n}])


@pytest.mark.parametrize("budget", [30, 120, 384])
def test_passages_fit_the_token_budget(retriever, tiny_lm, budget):
    d = retriever.retrieve(KB_QUERY, mode="single", budget_tokens=budget)
    count = lambda s: len(tiny_lm.tokenizer.encode(s, add_special_tokens=False))  # noqa: E731
    assert d.passages and d.context_tokens == sum(p.tokens for p in d.passages)
    assert d.context_tokens <= budget
    assert count(context_block(d.passages)) <= budget + 2 * len(d.passages)  # + the joins between entries
    if budget == 30:
        assert d.passages[0].trimmed and not d.passages[0].text.endswith("...")  # whole units, no ellipsis
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
    second = retriever.retrieve("battery storage charge level", "single", calls[1][2])
    assert d.passages[0].text == second.passages[0].text  # the follow-up found what was missing: it leads
    json.dumps(d.to_dict())  # the decision travels as JSON

    one = gather_context(KB_QUERY, "single", retrieve, follow_up=lambda q, ps: pytest.fail("not level 2"))
    assert one.retrievals == 1


def test_a_question_that_joins_two_is_retrieved_part_by_part(index_dir):
    r = AdaCompRetriever(index_dir)
    calls = []

    def retrieve(query, mode, budget):
        calls.append((query, mode, budget))
        return r.retrieve(query, mode, budget)

    q = "Which access point covers Zone B, and what is the speed limit in the Zone B aisles?"
    d = gather_context(q, "auto", retrieve, follow_up=lambda q, ps: pytest.fail("the parts are the follow-ups"))
    assert d.level == 2 and d.retrievals == 3 == len(calls)
    assert calls[1:] == [("Which access point covers Zone B?", "single", r.budget_tokens // 2),
                         ("what is the speed limit in the Zone B aisles?", "single", r.budget_tokens // 2)]
    context = context_block(d.passages)
    assert "AP-2 in Zone B" in context and "| Zone B aisles | 1.2 m/s |" in context  # one document each
    own = [context_block([d.passages[i] for i in part["passages"]]) for part in d.detail["parts"]]
    assert "AP-2 in Zone B" in own[0] and "| Zone B aisles | 1.2 m/s |" in own[1]  # each part's own passages
    assert d.detail["parts"][1]["question"] == "what is the speed limit in the Zone B aisles?"
    assert [p["query"] for p in d.detail["parts"]] == [c[0] for c in calls[1:]]
    assert d.context_tokens == sum(p.tokens for p in d.passages) <= r.budget_tokens
    assert len({p.text for p in d.passages}) == len(d.passages)
    calls.clear()
    single = gather_context(q, "single", retrieve, follow_up=None)  # single-shot means one retrieval
    assert single.level == 1 and len(calls) == 1


def test_a_part_that_points_back_is_searched_with_the_first_part(index_dir):
    r = AdaCompRetriever(index_dir)
    calls = []

    def retrieve(query, mode, budget):
        calls.append(query)
        return r.retrieve(query, mode, budget)

    q = "How wide are the Zone C aisles and what is the speed limit in them?"
    d = gather_context(q, "auto", retrieve, follow_up=None)
    assert calls[1:] == ["How wide are the Zone C aisles?",
                         "what is the speed limit in them? How wide are the Zone C aisles?"]
    context = context_block(d.passages)
    assert "2.1 m" in context and "| Zone C aisles (narrow) | 0.8 m/s |" in context
    alone = r.retrieve("what is the speed limit in them?", "single", r.budget_tokens // 2)
    assert "| Zone C aisles (narrow) | 0.8 m/s |" not in context_block(alone.passages)  # why the first part goes along


def test_part_queries_carry_the_first_part_only_where_a_pronoun_points_back():
    from hola_ros.core.retrieval.lexical import part_queries

    assert part_queries(["When is a battery replaced?", "how much does it weigh?"]) == [
        "When is a battery replaced?", "how much does it weigh? When is a battery replaced?"]
    independent = ["How often are the scanner fields recertified?", "how long are mission logs kept?"]
    assert part_queries(independent) == independent


def test_question_parts_split_joined_questions_only():
    from hola_ros.core.retrieval.lexical import question_parts

    assert question_parts("When is a battery replaced, and how much does it weigh?") == [
        "When is a battery replaced?", "how much does it weigh?"]
    assert question_parts("What does E-201 mean and at what temperatures does the battery work?")[1] == \
        "at what temperatures does the battery work?"
    for one in ("What colour do you get when you mix blue and yellow paint?", "Where are the docks CD-1 and CD-3?"):
        assert question_parts(one) == [one]


def test_level_two_with_an_lm_written_follow_up(retriever, tiny_lm):
    write = lm_follow_up(tiny_lm.model, tiny_lm.tokenizer, max_new_tokens=6)
    d = gather_context(KB_QUERY, "multi", retriever.retrieve, follow_up=write)
    assert d.level == 2 and d.detail["follow_up"]["query"]  # random weights: some text, but text
    assert d.retrievals in (1, 2) and d.context_tokens <= 384


def test_compose_messages_grounds_and_says_when_documents_are_silent():
    ps = [Passage("CD-1 and CD-2 are fast chargers.", "faq.md", 0.7)]
    msgs = compose_messages("Which dock is fastest?", ps)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert NOT_IN_DOCUMENTS in msgs[0]["content"] and "using the documents" in msgs[0]["content"]
    assert "[faq.md]\nCD-1 and CD-2 are fast chargers." in msgs[1]["content"]
    assert msgs[1]["content"].endswith("Question: Which dock is fastest?")
    assert compose_messages("Hi", [], grounded=False) == [{"role": "user", "content": "Hi"}]
    assert compose_messages("Hi", [], grounded=False, general_prompt="Be brief.")[0] == {
        "role": "system", "content": "Be brief."}
    recheck = compose_messages("Which dock is fastest?", ps, refusal=False)
    assert NOT_IN_DOCUMENTS not in recheck[0]["content"] and recheck[1] == msgs[1]
    nothing = compose_messages("Where is CD-7?", [])  # grounded, but nothing matched: the model is told so
    assert "no document matched" in nothing[1]["content"]
    d = RetrievalDecision(0, float("nan"))
    assert json.loads(json.dumps(d.to_dict()))["score"] is None


def test_source_note_names_the_passage_the_answer_draws_on():
    ps = [Passage("# Charging docks\nA robot that fails to dock three times raises E-214.", "02-charging-docks.md", 0.6),
          Passage("| E-214 | docking failed three times | clean the dock contact plates |", "04-error-codes.md", 0.5)]
    assert source_note("Clean the dock contact plates.", ps) == " [04-error-codes.md]"
    assert source_note(NOT_IN_DOCUMENTS, ps) == ""  # a refusal cites nothing
    assert source_note("See [02-charging-docks.md].", ps) == ""  # already named
    assert source_note("Bonjour !", ps) == "" and source_note("Clean it.", []) == ""


def test_the_default_retriever_serves_without_torch(tmp_path):
    """What the retriever node runs with its default parameters: no LM, no torch in the process."""
    import subprocess
    import sys

    code = ("import sys\n"
            "import hola_ros.nodes.retriever\n"
            "from hola_ros.core.retrieval.adacomp import AdaCompRetriever, default_index_dir\n"
            "from hola_ros.core.retrieval.embedder import Embedder\n"
            "e = Embedder.shared(backend='auto')\n"
            "d = AdaCompRetriever(default_index_dir(e), embedder=e).retrieve('The robot shows error E-214.')\n"
            "print(e.backend, d.detail['gate'], 'torch' in sys.modules, '| E-214 |' in str(d.passages))\n")
    env = dict(os.environ, HOLA_ROS_CACHE=str(tmp_path))  # the demo index is built in this process too
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["onnxruntime", "evidence", "False", "True"]


def test_an_answer_echoes_a_part_when_one_of_its_clauses_restates_that_part_and_nothing_more():
    from hola_ros.core.retrieval.prompting import echoes

    answer = "The access point covers Zone B, and the speed limit in the Zone B aisles is 1.2 m/s."
    assert echoes(answer, "Which access point covers Zone B?")
    assert not echoes(answer, "what is the speed limit in the Zone B aisles?")
    assert not echoes("AP-2 covers Zone B, and the limit is 1.2 m/s.", "Which access point covers Zone B?")
    # a comma ends a clause too, but a short lead-in that holds a few of the part's words restates nothing
    assert echoes("When a battery is replaced, it weighs 31 kg.", "When is a battery replaced?")
    assert not echoes("In Zone B, the access point is AP-2.", "Which access point covers Zone B?")


def test_an_answer_adds_nothing_when_it_holds_only_the_questions_words_or_a_source_name():
    q = "Where is charging dock CD-5?"
    assert adds_nothing("CD-5", q) and adds_nothing("Charging dock CD-5.", q)
    assert adds_nothing("[02-charging-docks.md]", q) and adds_nothing(" . ", q)
    assert not adds_nothing("In the maintenance bay [02-charging-docks.md]", q)
    assert not adds_nothing("Yes.", "Is CD-5 in the maintenance bay?")  # no term, yet an answer
    assert new_terms("CD-5 [02-charging-docks.md]", q) == set()


# ---- what a real manual needed (the manuals dev set's tune half) --------------------------------
SPEC_TABLE = ("# Features > Hardware Specifications\n| Feature | TurtleBot 4 Lite | TurtleBot 4 |\n|---|---|---|\n"
              "| Weight | 3270 g | 3945 g |\n| Camera | OAK-D-Lite | OAK-D-Pro |")


def test_a_table_with_a_column_per_model_keeps_the_column_the_question_names():
    from hola_ros.core.retrieval.adacomp import focus_columns

    table = Passage(SPEC_TABLE, "features.md", 0.5, section="Features > Hardware Specifications")
    [standard], dropped = focus_columns([table], "How much does the TurtleBot 4 weigh?")
    assert standard.text.split("\n")[1:4] == ["| Feature | TurtleBot 4 |", "|---|---|", "| Weight | 3945 g |"]
    assert standard.section == table.section and dropped[0]["kept"] == ["Feature", "TurtleBot 4"]
    [lite], _ = focus_columns([table], "Which camera does the TurtleBot 4 Lite have?")  # the most specific name
    assert "| Camera | OAK-D-Lite |" in lite.text and "OAK-D-Pro" not in lite.text
    for question in ("What do the robots weigh?", "Compare the TurtleBot 4 and the TurtleBot 4 Lite"):
        assert focus_columns([table], question) == ([table], [])  # no column, or every column, named


def test_a_query_word_finds_the_words_that_extend_it_by_a_suffix_only():
    from hola_ros.core.retrieval.lexical import LexicalIndex, terms

    index = LexicalIndex.build(["Weight 3945 g", "standard charger", "stand the robot upright"])
    assert set(index.expand(terms("How much does it weigh?"))) == {"weigh", "weight"}
    assert "standard" not in index.expand(terms("Where does it stand?"))
    assert [i for i, _ in index.search("weigh", 3)] == [0]


def test_the_context_budget_grows_with_the_passages_of_the_index():
    from hola_ros.core.retrieval.adacomp import adapted_budget

    assert adapted_budget(384, 3, 123) == 384  # the demo KB's passages: three fit the floor
    assert adapted_budget(384, 3, 213) == 639  # a manual's: room for three of its typical size
    assert adapted_budget(384, 3, 900) == 768  # at most twice the floor
