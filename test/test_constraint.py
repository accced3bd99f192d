"""Constrained decoding, tool calls and conversations in the engine and pipeline (no ROS):
constrained HSD equals constrained AR token for token, every answer parses and validates,
a conversation's KV reuse changes no token."""
import json

import numpy as np
import pytest

from helpers_tiny import default_model
from hola_ros.core.constraint import Constraint, ConstraintError
from hola_ros.core.hsd import GenerationConfig, generate
from hola_ros.core.pipeline import answer
from hola_ros.core.requests import GenerationRequest
from hola_ros.core.tools import ToolError, parse_calls, parse_tools

DOCK_SCHEMA = {"type": "object", "properties": {
    "dock": {"type": "string", "enum": ["CD-1", "CD-2", "CD-3", "CD-4", "CD-5", "CD-6"]},
    "minutes": {"type": "integer", "minimum": 0, "maximum": 600}},
    "required": ["dock", "minutes"], "additionalProperties": False}
TOOLS = [{"name": "navigate_to", "description": "Drive to a place of the site",
          "parameters": {"type": "object", "properties": {"destination": {"type": "string"}},
                         "required": ["destination"], "additionalProperties": False}},
         {"name": "lift", "description": "Raise or lower the top plate",
          "parameters": {"type": "object", "properties": {"height_mm": {"type": "integer", "minimum": 0, "maximum": 60}},
                         "required": ["height_mm"], "additionalProperties": False}}]


class RandomDrafter:
    """Proposes random tokens: under a grammar nearly all are cut before verification."""

    def __init__(self, vocab, seed=0):
        self.rng, self.vocab = np.random.default_rng(seed), vocab

    def open(self, request_id, prompt_ids, target=None):
        pass

    def propose(self, request_id, accepted_delta, max_tokens, target_row_s=None):
        from hola_ros.core.protocol import DraftProposal

        toks = [int(t) for t in self.rng.integers(0, self.vocab, max_tokens)]
        return DraftProposal(toks, [0] * len(toks), [float("nan")] * len(toks))

    def close(self, request_id):
        pass


def _prompt(m, text="Which dock should a robot with an overheating battery use, and for how many minutes? "
                    "Answer in JSON."):
    return m.chat_ids([{"role": "user", "content": text}])


def _dock_json(m, mode, drafter=None, max_new=48, **cfg):
    c = Constraint(m, "json_schema", DOCK_SCHEMA)
    r = generate(m, _prompt(m), GenerationConfig(mode=mode, max_new_tokens=max_new, **cfg), drafter=drafter,
                 constraint=c)
    return r, c


def test_constrained_hsd_equals_constrained_ar_and_the_output_validates():
    from jsonschema import validate

    m = default_model()
    ref, _ = _dock_json(m, "ar")
    assert ref.stop_reason == "eos" and ref.stats["constraint"]["complete"]
    validate(json.loads(ref.text), DOCK_SCHEMA)
    for drafter in (None, RandomDrafter(m.vocab_size)):  # the n-gram drafter, and drafts the grammar mostly refuses
        res, c = _dock_json(m, "hsd", drafter=drafter)
        assert res.token_ids == ref.token_ids and res.text == ref.text
        assert res.stats["exact"]
    assert c.cut_tokens > 0  # random drafts were cut before the target saw them


def test_sampled_constrained_answers_always_validate():
    from jsonschema import validate

    m = default_model()
    for seed in range(2):
        res, _ = _dock_json(m, "hsd", temperature=1.0, seed=seed, max_new=48)
        assert res.stop_reason == "eos", res.text
        validate(json.loads(res.text), DOCK_SCHEMA)


def test_mask_refuses_every_token_the_grammar_refuses():
    m = default_model()
    c = Constraint(m, "regex", r"CD-[1-6]")
    rows = np.zeros((1, m.vocab_size), np.float32)
    masked = c.mask(rows, [])
    allowed = np.flatnonzero(np.isfinite(masked[0]))
    assert 0 < len(allowed) < 100
    assert all(any(f"CD-{k}".startswith(m.decode([t])) for k in range(1, 7)) for t in allowed)
    ids = m.encode("CD-5")
    assert c.cut(ids) == ids and len(c.cut(m.encode("CD-9"))) < len(m.encode("CD-9"))  # 9 is no dock


def test_an_answer_cut_by_the_token_limit_is_flagged_incomplete_and_not_returned_as_valid():
    m = default_model()
    res, c = _dock_json(m, "hsd", max_new=3)
    assert not c.complete and "constraint_incomplete" in res.stats["flags"]
    request = GenerationRequest(prompt="Which dock? Answer in JSON.", request_id="j", max_new_tokens=3,
                                retrieval_mode="off", json_schema=json.dumps(DOCK_SCHEMA))
    outcome = answer(request, m)
    assert not outcome.success and "not complete" in outcome.error and not outcome.tool_calls


def test_bad_grammars_and_stop_strings_are_refused_clearly():
    m = default_model()
    with pytest.raises(ConstraintError, match="lark"):
        Constraint(m, "lark", "start: undefined_rule")
    with pytest.raises(ValueError, match="stop strings"):
        generate(m, _prompt(m), GenerationConfig(stop=("}",)), constraint=Constraint(m, "regex", "a+"))


def test_tool_descriptions_and_calls_are_checked():
    tools = parse_tools(json.dumps(TOOLS))
    assert [t.name for t in tools] == ["navigate_to", "lift"]
    openai_form = parse_tools([{"type": "function", "function": TOOLS[1]}])
    assert openai_form[0].parameters["properties"]["height_mm"]["maximum"] == 60
    for bad, why in (("[]", "non-empty"), ('[{"name": "go to"}]', "identifier"), ("{", "not valid JSON"),
                     ('[{"name": "a"}, {"name": "a"}]', "unique"),
                     ('[{"name": "a", "parameters": {"type": "object", "properties": 3}}]', "JSON Schema")):
        with pytest.raises(ToolError, match=why):
            parse_tools(bad)
    calls = parse_calls('<tool_call>\n{"name": "lift", "arguments": {"height_mm": 60}}\n</tool_call>', tools)
    assert [(c.name, c.arguments) for c in calls] == [("lift", {"height_mm": 60})]
    assert parse_calls('{"name": "navigate_to", "arguments": {"destination": "CD-5"}}', tools)[0].name == "navigate_to"
    assert parse_calls("The dock is in Zone M.", tools) == []
    with pytest.raises(ToolError, match="do not validate"):
        parse_calls('{"name": "lift", "arguments": {"height_mm": 600}}', tools)


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_a_tool_request_returns_a_validated_call_or_text(choice):
    """SmolLM2's template renders no tools and has no call-tag tokens: the tools go into the system
    prompt and the tags are text in the grammar."""
    m = default_model()
    request = GenerationRequest(prompt="Raise the lift to 40 mm.", request_id="t", max_new_tokens=64,
                                retrieval_mode="off", tools=json.dumps(TOOLS), tool_choice=choice)
    outcome = answer(request, m)
    assert outcome.success, outcome.error
    assert outcome.stats["structured"] == "tools" and outcome.stats["constraint"]["complete"]
    if choice == "required" or outcome.tool_calls:
        assert len(outcome.tool_calls) == 1 and outcome.tool_calls[0].name in ("navigate_to", "lift")
    else:
        assert outcome.text.strip() and not outcome.text.lstrip().startswith(("{", "<"))


def test_a_conversation_reuses_its_kv_state_and_answers_as_a_fresh_prefill_would():
    from hola_ros.core.kvcache import PromptCache
    from hola_ros.core.sessions import Conversations

    m = default_model()
    turns = ["My robot is called Tern-7.", "Where do robots charge?", "What is my robot called?"]

    def talk(cache):
        conversations = Conversations(4, 4096, on_evict=cache.drop if cache else None,
                                      count_tokens=lambda t: len(m.encode(t)))
        out = []
        for text in turns:
            conv = conversations.begin("s1")
            request = GenerationRequest(prompt=text, request_id="c", max_new_tokens=16, retrieval_mode="off",
                                        session_id="s1")
            out.append(answer(request, m, prompt_cache=cache, conversation=conv))
            conversations.end(conv)
        return out, conversations

    fresh, _ = talk(None)
    cached, conversations = talk(PromptCache(m, 4, 8192))
    assert [o.text for o in cached] == [o.text for o in fresh]
    assert [o.stats["new_tokens"] for o in cached] == [o.stats["new_tokens"] for o in fresh]
    prompts = [o.stats["prompt_tokens"] for o in cached]
    reused = [o.stats["reused_prompt_tokens"] for o in cached]
    assert prompts[0] < prompts[1] < prompts[2]  # each turn carries the earlier ones
    assert reused[0] == 0 and all(r >= before for r, before in zip(reused[1:], prompts[:-1]))
    assert len(conversations.get("s1").turns) == 6


def test_conversations_are_bounded_and_evicted_least_recently_used():
    from hola_ros.core.sessions import Conversations, SessionBusy

    dropped = []
    conversations = Conversations(max_sessions=2, max_tokens=10, on_evict=dropped.append, count_tokens=len)
    a = conversations.begin("a")
    with pytest.raises(SessionBusy):
        conversations.begin("a")  # one turn at a time
    a.last_turn = ("hi", "hello")
    conversations.end(a)
    assert len(a.turns) == 0  # 2 + 5 + 10 tokens of role tags exceed 10: trimmed at once
    conversations.end(conversations.begin("b"))
    conversations.end(conversations.begin("a"))  # a is now the most recent
    conversations.end(conversations.begin("c"))
    assert dropped == ["session:b"] and conversations.get("b") is None and len(conversations) == 2


@pytest.mark.slow
def test_constrained_greedy_hsd_equals_constrained_greedy_ar_on_the_served_default():
    """Bitwise on Qwen2.5-Coder-0.5B: a tool call (its template's tools, single-token call tags) and
    a JSON Schema answer; both validate."""
    from jsonschema import validate

    from hola_ros.core.engines import load_engine
    from hola_ros.core.model_store import DEFAULT_MODEL
    from hola_ros.core.tools import tool_grammar

    m = load_engine(DEFAULT_MODEL, threads=2)
    tools = parse_tools(TOOLS)
    call_prompt = m.chat_ids([{"role": "user", "content": "Take this pallet to charging dock CD-5."}],
                             [t.as_template() for t in tools])
    cases = [(call_prompt, "lark", tool_grammar(tools, "required", special_tags=True)),
             (_prompt(m), "json_schema", DOCK_SCHEMA)]
    for prompt, kind, source in cases:
        runs = [generate(m, prompt, GenerationConfig(mode=mode, max_new_tokens=48), constraint=Constraint(m, kind, source))
                for mode in ("ar", "hsd")]
        assert runs[1].token_ids == runs[0].token_ids and runs[0].stop_reason == "eos"
        if kind == "json_schema":
            validate(json.loads(runs[0].text), DOCK_SCHEMA)
        else:  # the n-gram drafter copies the tool's name and CD-5 from the prompt
            assert parse_calls(runs[0].text, tools)[0].arguments == {"destination": "CD-5"}
            assert runs[1].stats["target_forwards"] < runs[0].stats["target_forwards"]


def test_the_matching_table_row_is_named_only_when_one_row_matches_best():
    from hola_ros.core.retrieval.adacomp import Passage
    from hola_ros.core.structured import matching_rows

    table = Passage("# Charging docks\n| Dock | Location | Notes |\n|---|---|---|\n"
                    "| CD-4 | east end of aisle C8 | standard charger (20 A) |\n"
                    "| CD-5 | maintenance bay (Zone M), left bay | standard charger; used for battery conditioning |",
                    "02-charging-docks.md", 0.5)
    rows = matching_rows("Go charge at the dock used for battery conditioning.", [table])
    assert len(rows) == 1 and "| CD-5 |" in rows[0] and rows[0].startswith("| Dock |")
    assert matching_rows("Charge at a standard charger.", [table]) == []  # two rows tie: no hint
    assert matching_rows("Emergency stop now!", [table]) == []


def test_command_eval_judges_calls_by_value_and_reads_unconstrained_json_generously():
    from hola_ros.core.evaluation.commands import intended, lenient_calls

    expect = {"name": "set_speed_limit", "arguments": {"max_speed_mps": 1}}
    assert intended([{"name": "set_speed_limit", "arguments": {"max_speed_mps": 1.0}}], expect)
    assert not intended([{"name": "set_speed_limit", "arguments": {"max_speed_mps": 1.2}}], expect)
    assert not intended([{"name": "set_speed_limit", "arguments": {"max_speed_mps": 1}}] * 2, expect)
    tools = json.dumps(TOOLS)
    fenced = 'Sure:\n```json\n{"name": "lift", "arguments": {"height_mm": 20}}\n```'
    assert lenient_calls(fenced, tools) == [{"name": "lift", "arguments": {"height_mm": 20}}]
    assert lenient_calls('{"name": "lift", "arguments": {"height_mm": 200}}', tools) == []  # out of range
    assert lenient_calls('{"name": "fly", "arguments": {}}', tools) == []


@pytest.mark.parametrize("fields, error", [
    ({"json_schema": "{"}, "json_schema is not valid JSON"),
    ({"json_schema": "[1]"}, "must be a JSON object"),
    ({"json_schema": '{"type": 5}'}, "not a valid JSON Schema"),
    ({"tools": '[{"name": "lift", "parameters": {"type": "array"}}]'}, "JSON Schema of an object"),
    ({"json_schema": "{}", "grammar": "start: \"a\""}, "at most one"),
    ({"grammar": "start: \"a\"", "stop": ["x"]}, "stop strings cannot be combined"),
    ({"grammar": "a", "grammar_syntax": "ebnf"}, "unknown grammar_syntax"),
    ({"tools": json.dumps(TOOLS), "tool_choice": "always"}, "unknown tool_choice"),
    ({"session_id": "s" * 200}, "session_id"),
])
def test_structured_request_fields_are_checked_with_a_clear_error(fields, error):
    from types import SimpleNamespace

    from hola_ros.core.requests import Limits, RequestError, validate_request

    msg = dict(prompt="Go.", request_id="", max_new_tokens=-1, temperature=0.0, top_p=1.0, top_k=0, seed=-1,
               retrieval_mode="off", decoding_mode="hsd", stop=[])
    with pytest.raises(RequestError, match=error):
        validate_request(SimpleNamespace(**{**msg, **fields}), Limits())
    ok = validate_request(SimpleNamespace(**{**msg, "tools": json.dumps(TOOLS), "tool_choice": "none", "stop": ["x"]}),
                          Limits())
    assert not ok.structured and ok.stop == ("x",)  # tools ignored: a plain answer may stop on a string


@pytest.mark.parametrize("kind, source", [("gbnf", 'root ::= "CD-" [1-6]'), ("lark", 'start: "CD-" /[1-6]/'),
                                          ("regex", "CD-[1-6]")])
def test_grammars_in_each_syntax_constrain_the_answer(kind, source):
    import re

    m = default_model()
    request = GenerationRequest(prompt="Which dock conditions batteries?", request_id="g", max_new_tokens=8,
                                retrieval_mode="off", grammar=source, grammar_syntax=kind)
    outcome = answer(request, m)
    assert outcome.success, outcome.error
    assert re.fullmatch(r"CD-[1-6]", outcome.text) and outcome.stats["structured"] == "grammar"
