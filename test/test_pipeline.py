"""pipeline.answer's own steps: the repetition guard ends a looping answer as a success."""
from types import SimpleNamespace

import pytest

from helpers_tiny import tiny_model
from hola_ros.core import pipeline
from hola_ros.core.pipeline import RepetitionGuard
from hola_ros.core.requests import GenerationRequest


def test_repetition_guard_trips_on_the_third_copy_of_a_sentence():
    guard = RepetitionGuard()
    guard.feed("The robot shows error E-214. The code should be 1. The code ")
    guard.feed("should be 1. Clean the plates. ")
    assert not guard.tripped  # two copies, short sentences and distinct ones do not count
    guard.feed("The code should be 1. And")
    assert guard.tripped
    short = RepetitionGuard()
    short.feed("Yes. Yes. Yes. Yes. ")
    assert not short.tripped  # under min_chars: a list of short items is not a loop


def _looping_generate(target, prompt_ids, config, drafter=None, request_id="", on_block=None, should_stop=None, cache=None):
    """Stands in for hsd.generate: a model that says the same sentence until told to stop."""
    text = ""
    for _ in range(20):
        if should_stop():
            return SimpleNamespace(text=text, stop_reason="cancelled", stats={"new_tokens": len(text)})
        on_block([1], "The code should be 1. ")
        text += "The code should be 1. "
    return SimpleNamespace(text=text, stop_reason="max_new_tokens", stats={"new_tokens": len(text)})


def test_a_looping_answer_ends_as_a_success_with_stop_reason_repetition(monkeypatch):
    monkeypatch.setattr(pipeline, "generate", _looping_generate)
    target = tiny_model(seed=0)
    request = GenerationRequest(prompt="Say something.", request_id="loop", max_new_tokens=400,
                                retrieval_mode="off", decoding_mode="ar")
    streamed = []
    outcome = pipeline.answer(request, target, on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.stats["stop_reason"] == "repetition"
    assert outcome.text == "".join(streamed) == "The code should be 1. " * 3
    cancelled = pipeline.answer(request, target, should_stop=lambda: True)  # the caller's cancel stays a cancel
    assert not cancelled.success and cancelled.error == "cancelled"


# ---- what the index knows decides two things the small models cannot ---------------------------
from hola_ros.core.retrieval.adacomp import Passage, RetrievalDecision  # noqa: E402
from hola_ros.core.retrieval.prompting import FULL_RULE, NOT_IN_DOCUMENTS, REFUSAL_RULE  # noqa: E402

DOCK_ROW = Passage("| CD-5 | maintenance bay (Zone M), left bay | standard charger |", "02-charging-docks.md", 0.6)


def _retrieve(unknown_terms=(), unknown_codes=(), level=1):
    evidence = {"unknown_terms": list(unknown_terms), "unknown_codes": list(unknown_codes)}
    return lambda query, mode, budget: RetrievalDecision(level, float("nan"), [DOCK_ROW], 20, 1,
                                                         {"evidence": evidence})


class _Target:
    """Records the chat messages of every generation; `generate` below answers from them."""
    context_length = 4096

    def __init__(self):
        self.prompts = []

    def chat_ids(self, messages):
        self.prompts.append(messages)
        return [1, 2, 3]


def _model_that_refuses_when_allowed(target):
    """A generate() stand-in: the bare refusal while the system prompt allows it, else the fact."""
    def fake(tgt, prompt_ids, config, drafter=None, request_id="", on_block=None, should_stop=None, cache=None):
        system = target.prompts[-1][0]["content"]
        pieces = ["The documents", " do not say."] if REFUSAL_RULE in system else ["CD-5 is in", " the maintenance bay."]
        for piece in pieces:
            on_block([7], piece)
        return SimpleNamespace(text="".join(pieces), stop_reason="eos", stats={"new_tokens": len(pieces)})
    return fake


def _ask(monkeypatch, retrieve, question="Where is charging dock CD-5?"):
    target = _Target()
    monkeypatch.setattr(pipeline, "generate", _model_that_refuses_when_allowed(target))
    streamed = []
    request = GenerationRequest(prompt=question, request_id="q", max_new_tokens=32, decoding_mode="ar")
    outcome = pipeline.answer(request, target, retrieve=retrieve, on_block=lambda ids, text: streamed.append(text))
    return outcome, "".join(streamed), target


def test_a_bare_refusal_is_asked_again_without_the_refusal_rule_when_the_index_knows_every_term(monkeypatch):
    outcome, streamed, target = _ask(monkeypatch, _retrieve())
    assert outcome.success and outcome.text == "CD-5 is in the maintenance bay. [02-charging-docks.md]"
    assert streamed == outcome.text  # the re-checked refusal was never streamed
    assert "refusal_rechecked" in outcome.stats["flags"] and outcome.stats["recheck"]["refused_new_tokens"] == 2
    assert [REFUSAL_RULE in m[0]["content"] for m in target.prompts] == [True, False]


def test_a_refusal_stands_when_the_question_has_terms_no_document_uses(monkeypatch):
    outcome, streamed, target = _ask(monkeypatch, _retrieve(unknown_terms=["password"]),
                                     "What is the password of the dock?")
    assert outcome.text == streamed == NOT_IN_DOCUMENTS  # held back, then released as it was
    assert len(target.prompts) == 1 and "refusal_rechecked" not in outcome.stats["flags"]


def test_a_code_no_document_holds_is_answered_without_a_generation(monkeypatch):
    def no_generation(*args, **kwargs):
        raise AssertionError("the model must not be asked")
    monkeypatch.setattr(pipeline, "generate", no_generation)
    request = GenerationRequest(prompt="What does error E-999 mean?", request_id="q", max_new_tokens=32, decoding_mode="ar")
    streamed = []
    outcome = pipeline.answer(request, _Target(), retrieve=_retrieve(["e-999"], ["e-999"]),
                              on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.text == "".join(streamed) == f"{NOT_IN_DOCUMENTS} No document mentions E-999."
    assert outcome.stats["stop_reason"] == "unknown_code" and "unknown_code" in outcome.stats["flags"]


def test_a_question_the_gate_leaves_ungrounded_goes_to_the_model_under_the_general_prompt(monkeypatch):
    target = _Target()
    monkeypatch.setattr(pipeline, "generate", _model_that_refuses_when_allowed(target))
    request = GenerationRequest(prompt="What is COVID-19?", request_id="q", max_new_tokens=32, decoding_mode="ar")
    outcome = pipeline.answer(request, target, retrieve=_retrieve(["covid-19"], ["covid-19"], level=0),
                              general_prompt="Answer briefly.")
    assert outcome.success and "unknown_code" not in outcome.stats["flags"]  # level 0: no documents to refuse from
    assert target.prompts == [[{"role": "system", "content": "Answer briefly."},
                               {"role": "user", "content": "What is COVID-19?"}]]


def test_held_answer_flows_as_soon_as_it_is_neither_the_refusal_nor_the_question_again():
    out = []
    held = pipeline.HeldAnswer(lambda ids, text: out.append((ids, text)), "Where is dock CD-5?")
    held.feed([1], "The")
    held.feed([2], " documents do")
    assert out == []  # still the refusal's beginning
    held.feed([3], " list CD-5.")
    assert out == [([1, 2, 3], "The documents do list CD-5.")]
    held.feed([4], " Yes")
    assert out[-1] == ([4], " Yes")
    out.clear()
    held = pipeline.HeldAnswer(lambda ids, text: out.append((ids, text)), "Where is dock CD-5?")
    held.feed([1], "Dock CD-5 is in the main")  # only the question's words, "main" may be unfinished
    assert out == []
    held.feed([2], "tenance bay")
    assert out == [([1, 2], "Dock CD-5 is in the maintenance bay")]


def _model_that_echoes_unless_asked_in_full(target, in_full_answer, echo="CD-5"):
    def fake(tgt, prompt_ids, config, drafter=None, request_id="", on_block=None, should_stop=None, cache=None):
        text = in_full_answer if FULL_RULE in target.prompts[-1][0]["content"] else echo
        on_block([7], text)
        return SimpleNamespace(text=text, stop_reason="eos", stats={"new_tokens": 1})
    return fake


@pytest.mark.parametrize("echo, in_full, expected", [
    ("CD-5", "CD-5 is in the maintenance bay.", "CD-5 is in the maintenance bay. [02-charging-docks.md]"),
    ("CD-5", "Charging dock CD-5.", NOT_IN_DOCUMENTS),  # asked in full it still adds nothing: no answer
    ("[02-charging-docks.md]", "CD-5 is in the maintenance bay.",  # a source name alone is no answer either
     "CD-5 is in the maintenance bay. [02-charging-docks.md]")])
def test_an_answer_that_only_repeats_the_question_is_asked_again_in_full(monkeypatch, echo, in_full, expected):
    target = _Target()
    monkeypatch.setattr(pipeline, "generate", _model_that_echoes_unless_asked_in_full(target, in_full, echo))
    streamed = []
    request = GenerationRequest(prompt="Where is charging dock CD-5?", request_id="q", max_new_tokens=32,
                                decoding_mode="ar")
    outcome = pipeline.answer(request, target, retrieve=_retrieve(), on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.text == "".join(streamed) == expected  # the echo was never streamed
    assert "echo_rechecked" in outcome.stats["flags"] and outcome.stats["echo"]["answer"] == echo
    assert [FULL_RULE in m[0]["content"] for m in target.prompts] == [False, True]


def _table_retrieve(question_passages):
    return lambda query, mode, budget: RetrievalDecision(1, float("nan"), question_passages, 60, 1,
                                                         {"evidence": {"unknown_terms": [], "unknown_codes": []}})


@pytest.mark.parametrize("passage, question, expected, reason", [
    ("DOCKS", "Where is charging dock CD-5?", "CD-5 — Location: maintenance bay (Zone M), left bay. Notes: standard "
     "charger; used for battery conditioning. [02-charging-docks.md]", "table_row"),
    ("FAQ", "How do I move a robot by hand?", "Only when it is switched off: turn the yellow key to OFF and pull the "
     "brake release lever. [12-faq.md]", "faq_entry")])
def test_a_table_row_or_faq_entry_is_the_answer_with_its_source(monkeypatch, passage, question, expected, reason):
    import test_retrieval_lookup

    def no_generation(*args, **kwargs):
        raise AssertionError("the model must not be asked")
    monkeypatch.setattr(pipeline, "generate", no_generation)
    request = GenerationRequest(prompt=question, request_id="q", max_new_tokens=32, decoding_mode="ar")
    streamed = []
    outcome = pipeline.answer(request, _Target(), retrieve=_table_retrieve([getattr(test_retrieval_lookup, passage)]),
                              on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.text == "".join(streamed) == expected
    assert outcome.stats["stop_reason"] == reason and outcome.stats["new_tokens"] == 0


def test_document_lookup_off_leaves_every_answer_to_the_model(monkeypatch):
    from test_retrieval_lookup import DOCKS

    target = _Target()
    monkeypatch.setattr(pipeline, "generate", _model_that_refuses_when_allowed(target))
    request = GenerationRequest(prompt="Where is charging dock CD-5?", request_id="q", max_new_tokens=32,
                                decoding_mode="ar")
    outcome = pipeline.answer(request, target, retrieve=_table_retrieve([DOCKS]), document_lookup=False)
    assert outcome.success and "table_row" not in outcome.stats["flags"] and len(target.prompts) == 2
    assert outcome.text.startswith("CD-5 is in the maintenance bay.")


NETWORK = Passage("AP-1 in Zone A, AP-2 in Zone B.", "11-network.md", 0.5)
SPEED = Passage("| Zone B aisles | 1.2 m/s |", "03-speed-limits.md", 0.5)
ACCESS_AND_SPEED = "Which access point covers Zone B, and what is the speed limit in the Zone B aisles?"


def _parts_retrieve():
    """The whole question finds both passages; each part its own one (gather_context asks per part)."""
    def retrieve(query, mode, budget):
        found = [NETWORK, SPEED] if query == ACCESS_AND_SPEED else [NETWORK] if "access" in query else [SPEED]
        return RetrievalDecision(1, float("nan"), found, 20, 1, {"evidence": {"unknown_terms": [], "unknown_codes": []}})
    return retrieve


def _model_that_echoes_the_first_part(target, whole, part_answer="AP-2"):
    def fake(tgt, prompt_ids, config, drafter=None, request_id="", on_block=None, should_stop=None, cache=None):
        text = whole if ACCESS_AND_SPEED in target.prompts[-1][1]["content"] else part_answer
        on_block([7], text)
        return SimpleNamespace(text=text, stop_reason="eos", stats={"new_tokens": 2})
    return fake


@pytest.mark.parametrize("part_answer", ["AP-2", "Which access point covers Zone B? AP-2"])
def test_a_part_the_answer_only_repeats_is_asked_alone_from_its_own_passages(monkeypatch, part_answer):
    target = _Target()
    whole = "The access point covers Zone B, and the speed limit in the Zone B aisles is 1.2 m/s."
    monkeypatch.setattr(pipeline, "generate", _model_that_echoes_the_first_part(target, whole, part_answer))
    request = GenerationRequest(prompt=ACCESS_AND_SPEED, request_id="q", max_new_tokens=32, decoding_mode="ar")
    streamed = []
    outcome = pipeline.answer(request, target, retrieve=_parts_retrieve(), on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.text == "".join(streamed)  # the first answer is continued, not taken back
    assert outcome.text == f"{whole} [03-speed-limits.md] AP-2 [11-network.md]"
    assert "part_rechecked" in outcome.stats["flags"]
    asked_alone = target.prompts[-1][1]["content"]
    assert asked_alone.endswith("Question: Which access point covers Zone B?")
    assert "AP-2 in Zone B" in asked_alone and "1.2 m/s" not in asked_alone  # its own passages only
    monkeypatch.setattr(pipeline, "generate", _model_that_echoes_the_first_part(target, "AP-2 covers it; 1.2 m/s."))
    target.prompts.clear()
    whole_answer = pipeline.answer(request, target, retrieve=_parts_retrieve())
    assert len(target.prompts) == 1 and "part_rechecked" not in whole_answer.stats["flags"]  # both parts answered


SPECS = Passage("# Specifications\n| Feature | TurtleBot 4 |\n|---|---|\n| Maximum payload | 9 kg |\n"
                "| Battery life | 2h 30m - 4h |", "features.md", 0.6)


def _specs_retrieve(specific_terms):
    evidence = {"unknown_terms": [], "unknown_codes": [], "specific_terms": specific_terms}
    return lambda query, mode, budget: RetrievalDecision(1, float("nan"), [SPECS], 40, 1, {"evidence": evidence})


def _model_saying(pieces):
    """A generate() stand-in that streams `pieces` while not told to stop."""
    def fake(tgt, prompt_ids, config, drafter=None, request_id="", on_block=None, should_stop=None, cache=None):
        said = ""
        for piece in pieces:
            if should_stop():
                return SimpleNamespace(text=said, stop_reason="cancelled", stats={"new_tokens": len(said)})
            on_block([7], piece)
            said += piece
        return SimpleNamespace(text=said, stop_reason="eos", stats={"new_tokens": len(said)})
    return fake


def test_an_answer_whose_figure_the_documents_give_for_something_else_is_refused_unseen(monkeypatch):
    """The 0.5B's answer to an unanswerable question, a figure copied from the battery-life row."""
    monkeypatch.setattr(pipeline, "generate", _model_saying(["The maximum operating", " temperature is", " 2h",
                                                             " 30m.", " It is", " safe."]))
    streamed = []
    request = GenerationRequest(prompt="What is the maximum operating temperature of the TurtleBot 4?",
                                request_id="q", max_new_tokens=32, decoding_mode="ar")
    outcome = pipeline.answer(request, _Target(), retrieve=_specs_retrieve(["maximum", "oper", "temperatur"]),
                              on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.text == "".join(streamed) == NOT_IN_DOCUMENTS
    assert "unsupported_figure" in outcome.stats["flags"]
    assert outcome.stats["unsupported"]["answer"] == "The maximum operating temperature is 2h 30m."  # stopped there
    assert outcome.stats["stop_reason"] == "unsupported"


def test_an_answer_whose_figure_stands_beside_what_was_asked_streams_as_before(monkeypatch):
    monkeypatch.setattr(pipeline, "generate", _model_saying(["The maximum payload", " is 9", " kg.", " Yes."]))
    streamed = []
    request = GenerationRequest(prompt="What is the maximum payload of the TurtleBot 4?", request_id="q",
                                max_new_tokens=32, decoding_mode="ar")
    outcome = pipeline.answer(request, _Target(), retrieve=_specs_retrieve(["maximum", "payload"]),
                              on_block=lambda ids, text: streamed.append(text))
    assert outcome.text == "".join(streamed) == "The maximum payload is 9 kg. Yes. [features.md]"
    assert streamed[0] == "The maximum payload is 9 kg."  # released once the figure was checked, then flowing
    assert "unsupported_figure" not in outcome.stats["flags"] and outcome.stats["stop_reason"] == "eos"
    unchecked = pipeline.answer(request, _Target(), retrieve=_retrieve())  # no specific terms reported: no check
    assert "unsupported_figure" not in unchecked.stats["flags"]


def test_an_answer_naming_what_no_passage_names_is_refused_unseen(monkeypatch):
    """The 0.5B's invented GPU: no passage names NVIDIA, so the answer stops there and is never shown;
    a name the passages hold ("TurtleBot 4" in the table) streams as before."""
    monkeypatch.setattr(pipeline, "generate", _model_saying(["The GPU of the", " TurtleBot 4 is", " an NVIDIA",
                                                             " GeForce", " GTX card.", " It is", " fast."]))
    streamed = []
    request = GenerationRequest(prompt="Which GPU model does the TurtleBot 4 have?", request_id="q", max_new_tokens=32,
                                decoding_mode="ar")
    outcome = pipeline.answer(request, _Target(), retrieve=_specs_retrieve(["gpu", "model"]),
                              on_block=lambda ids, text: streamed.append(text))
    assert outcome.text == "".join(streamed) == NOT_IN_DOCUMENTS
    assert "unsupported_name" in outcome.stats["flags"] and "unsupported_figure" not in outcome.stats["flags"]
    assert outcome.stats["unsupported"]["answer"] == "The GPU of the TurtleBot 4 is an NVIDIA GeForce"  # stopped there
    assert outcome.stats["unsupported"]["not_in_documents"] == ["NVIDIA", "GeForce"]
    assert outcome.stats["stop_reason"] == "unsupported"
    monkeypatch.setattr(pipeline, "generate", _model_saying(["The robot", " is a TurtleBot 4."]))
    named = pipeline.answer(request, _Target(), retrieve=_specs_retrieve(["gpu", "model"]))
    assert named.text == "The robot is a TurtleBot 4. [features.md]" and "unsupported_name" not in named.stats["flags"]


def test_what_is_checked_does_not_depend_on_where_the_drafted_blocks_end(monkeypatch):
    """HSD's blocks end where the drafts did (timing decides their length): the answer is judged word by
    word as plain decoding streams it, so one block, a few, or a token at a time give the same answer.
    Here the answer says something new before its figure, so it flows from there (as under plain
    decoding), and a figure in the first new words is checked however they arrived."""
    def answers(said: str, question: str, specific: list[str]) -> set[str]:
        request = GenerationRequest(prompt=question, request_id="q", max_new_tokens=32, decoding_mode="ar")
        words = said.split(" ")
        seen = set()
        for pieces in ([said], [" ".join(words[:3]), " " + " ".join(words[3:])], [w + " " for w in words[:-1]] + words[-1:]):
            monkeypatch.setattr(pipeline, "generate", _model_saying(pieces))
            streamed = []
            outcome = pipeline.answer(request, _Target(), retrieve=_specs_retrieve(specific),
                                      on_block=lambda ids, text: streamed.append(text))
            assert "".join(streamed) == outcome.text
            seen.add(outcome.text)
        return seen
    temperature = "What is the maximum operating temperature of the TurtleBot 4?"
    specific = ["maximum", "oper", "temperatur"]
    assert answers("It runs hot, at 2h 30m.", temperature, specific) == {"It runs hot, at 2h 30m. [features.md]"}
    assert answers("The maximum operating temperature is 2h 30m.", temperature, specific) == {NOT_IN_DOCUMENTS}


def test_a_later_part_given_the_figure_of_an_earlier_one_is_asked_alone(monkeypatch):
    power = Passage("The Create 3 adapter makes 28.8 W available.", "power.md", 0.5)
    draw = Passage("The total power draw of the TurtleBot 4 is 15 W.", "budget.md", 0.5)
    question = "How much power does the adapter make available, and what is the total power draw of the TurtleBot 4?"
    target = _Target()

    def retrieve(query, mode, budget):
        found = [power, draw] if query == question else [power] if "adapter" in query else [draw]
        return RetrievalDecision(1, float("nan"), found, 20, 1, {"evidence": {"unknown_terms": [], "unknown_codes": []}})

    def fake(tgt, prompt_ids, config, drafter=None, request_id="", on_block=None, should_stop=None, cache=None):
        alone = question not in target.prompts[-1][1]["content"]
        text = "The total power draw is 15 W." if alone else \
            "The adapter makes 28.8 W available, and the total power draw of the TurtleBot 4 is 28.8 W."
        on_block([7], text)
        return SimpleNamespace(text=text, stop_reason="eos", stats={"new_tokens": 2})
    monkeypatch.setattr(pipeline, "generate", fake)
    request = GenerationRequest(prompt=question, request_id="q", max_new_tokens=32, decoding_mode="ar")
    outcome = pipeline.answer(request, target, retrieve=retrieve)
    assert "part_rechecked" in outcome.stats["flags"] and len(target.prompts) == 2
    assert outcome.text.endswith("28.8 W. [power.md] The total power draw is 15 W. [budget.md]")
    assert target.prompts[-1][1]["content"].endswith("Question: What is the total power draw of the TurtleBot 4?")


def test_a_prompt_cache_spares_the_shared_system_turn_and_changes_no_answer():
    from hola_ros.core.kvcache import PromptCache

    target = tiny_model()
    cache = PromptCache(target)
    retrieve = _retrieve()
    questions = ["Where is charging dock CD-5?", "Which dock is in Zone M?", "Where is charging dock CD-5?"]

    def ask(question, prompt_cache):
        request = GenerationRequest(prompt=question, request_id="q", max_new_tokens=12, decoding_mode="hsd")
        return pipeline.answer(request, target, retrieve=retrieve, prompt_cache=prompt_cache, document_lookup=False)

    plain = [ask(q, None) for q in questions]
    cached = [ask(q, cache) for q in questions]
    assert [o.text for o in cached] == [o.text for o in plain]
    reused = [o.stats["reused_prompt_tokens"] for o in cached]
    assert reused[0] == 0 and reused[1] > 0 and reused[2] > 0  # the system turn and the documents
    assert all(o.stats["reused_prompt_tokens"] == 0 for o in plain)


# ---- no answer from the model's memory when the documents cannot be consulted --------------------
def _failing_retrieve(query, mode, budget):
    raise RuntimeError("retriever did not answer within 15.0 s")


@pytest.mark.parametrize("mode", ["auto", "single", "multi"])
def test_a_failed_retrieval_is_answered_documents_unavailable_without_a_generation(monkeypatch, mode):
    def no_generation(*args, **kwargs):
        raise AssertionError("the model must not be asked")
    monkeypatch.setattr(pipeline, "generate", no_generation)
    request = GenerationRequest(prompt="What is the speed limit in the Zone C aisles?", request_id="q",
                                max_new_tokens=32, decoding_mode="ar", retrieval_mode=mode)
    streamed = []
    outcome = pipeline.answer(request, _Target(), retrieve=_failing_retrieve,
                              on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.text == "".join(streamed)
    assert outcome.text.startswith("The documents could not be consulted (retriever did not answer within 15.0 s)")
    stats = outcome.stats
    assert stats["stop_reason"] == "documents_unavailable" and stats["new_tokens"] == 0 and stats["degraded"]
    assert {"retriever_unavailable", "documents_unavailable"} <= set(stats["flags"])
    assert stats["retrieval_level"] == -1 and stats["sources"] == []


def test_ungrounded_fallback_lets_the_model_answer_flagged(monkeypatch):
    target = _Target()
    monkeypatch.setattr(pipeline, "generate", _model_that_refuses_when_allowed(target))
    request = GenerationRequest(prompt="Where is charging dock CD-5?", request_id="q", max_new_tokens=32,
                                decoding_mode="ar")
    outcome = pipeline.answer(request, target, retrieve=_failing_retrieve, ungrounded_fallback=True)
    assert outcome.success and outcome.text == "CD-5 is in the maintenance bay."  # no documents: no source note
    assert outcome.stats["degraded"] and "retriever_unavailable" in outcome.stats["flags"]
    assert "documents_unavailable" not in outcome.stats["flags"]
    assert target.prompts == [[{"role": "user", "content": "Where is charging dock CD-5?"}]]
