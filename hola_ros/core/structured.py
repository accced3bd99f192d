"""A constrained answer: JSON valid against the request's schema, a sentence of its grammar, or
text / calls of its tools. The retrieved passages ground it as they ground a text answer (they
resolve "the dock used for battery conditioning" to CD-5) and come back as its sources.

An answer that the grammar could not close (max_new_tokens reached, cancelled) or that does not
validate is a failure with the partial text, never a result a robot could act on.
"""
from __future__ import annotations

import json
import time

from hola_ros.core.constraint import Constraint, ConstraintError
from hola_ros.core.retrieval.prompting import context_block
from hola_ros.core.scheduler import Outcome
from hola_ros.core.tools import OPEN, ToolError, parse_calls, parse_tools, tool_grammar, tools_prompt

COMMAND_RULES = ("You turn requests into actions of the robots at the site. The documents given with the request "
                 "describe the site: use them to resolve places, docks and codes, and copy names exactly. Arguments "
                 "are bare names and numbers (B7, CD-5, Zone M, E-214, 0.8), times in seconds.")
SCHEMA_RULE = "Reply with one JSON value that follows this JSON Schema:"
FORMAT_RULE = "Reply only with what the request asks for, in the format it asks for."


def _messages(request, passages: list, tools) -> list[dict]:
    if request.json_schema:
        rules = f"{COMMAND_RULES} {SCHEMA_RULE}\n{request.json_schema}"
    else:
        rules = COMMAND_RULES if tools else f"{COMMAND_RULES} {FORMAT_RULE}"
    rows = matching_rows(request.prompt, passages)
    hint = "".join(f"\n\nThe row that matches the request:\n{row}" for row in rows)
    user = f"Documents:\n{context_block(passages)}{hint}\n\nRequest: {request.prompt}" if passages else request.prompt
    return [{"role": "system", "content": rules}, {"role": "user", "content": user}]


def matching_rows(request: str, passages: list) -> list[str]:
    """The table row of the passages that shares the most terms with the request (at least two, and
    no other row as many), under its header: the 0.5B, given the charging docks' table, answered
    "Go charge at the dock used for battery conditioning" with the table's last dock (tune half)."""
    from hola_ros.core.retrieval.chunking import split_units
    from hola_ros.core.retrieval.lexical import terms

    asked = set(terms(request))
    scored = []
    for p in passages:
        parts = split_units(p.text)
        for unit in parts.units:
            if unit.table is not None:
                shared = len(asked & set(terms(unit.text)))
                scored.append((shared, f"{parts.headers[unit.table][0]}\n{unit.text}"))
    scored.sort(key=lambda s: -s[0])
    if not scored or scored[0][0] < 2 or len(scored) > 1 and scored[1][0] == scored[0][0]:
        return []
    return [scored[0][1]]


def _template_renders_tools(target) -> bool:
    probe = [{"role": "user", "content": "x"}]
    tool = [{"type": "function", "function": {"name": "probe_tool", "parameters": {"type": "object"}}}]
    return target.chat_ids(probe, tool) != target.chat_ids(probe)


def _constraint(request, target, tools) -> Constraint:
    if request.json_schema:
        return Constraint(target, "json_schema", request.json_schema)
    if request.grammar:
        return Constraint(target, request.grammar_syntax, request.grammar)
    single = target.tokenizer.convert_tokens_to_ids(OPEN) is not None
    return Constraint(target, "lark", tool_grammar(tools, request.tool_choice, special_tags=single))


def answer_structured(request, target, passages: list, stats: dict, emit, run: dict, started: float,
                      constrained: bool = True) -> Outcome:
    """The constrained answer of `request` (request.structured) after retrieval found `passages`;
    `run`: pipeline._generate's keyword arguments. constrained=False: the same prompt decoded
    freely and checked the same way (what `hola-ros eval commands` sets beside it)."""
    from hola_ros.core.pipeline import PromptTooLong, _generate

    tools = parse_tools(request.tools) if request.tools and request.tool_choice != "none" else None
    try:
        constraint = _constraint(request, target, tools) if constrained else None
    except (ConstraintError, ToolError) as exc:
        return Outcome(False, f"invalid request: {exc}", stats={**stats, "stop_reason": "error"})
    messages = _messages(request, passages, tools)
    rendered = None
    if tools:
        if _template_renders_tools(target):
            rendered = [t.as_template() for t in tools]
        else:
            messages[0]["content"] += "\n\n" + tools_prompt(tools)
    try:
        result, stop_reason = _generate(request, target, messages, bool(passages), emit=emit, constraint=constraint,
                                        tools=rendered, **run)
    except PromptTooLong as exc:
        return Outcome(False, str(exc), stats={**stats, "stop_reason": "error"})
    stats.update(result.stats)
    stats.update(stop_reason=stop_reason, decoding_mode=result.stats.get("mode", request.decoding_mode),
                 flags=list(dict.fromkeys(stats["flags"] + result.stats.get("flags", []))),
                 total_s=time.monotonic() - started, structured=_kind(request))
    text = result.text
    if stop_reason == "cancelled":
        return Outcome(False, "cancelled", text=text, stats=stats)
    if constraint is not None and not constraint.complete:
        return Outcome(False, f"the constrained answer was not complete after {len(result.token_ids)} tokens "
                              f"(stop reason {stop_reason}; raise max_new_tokens): not returned as valid",
                       text=text, stats=stats)
    try:
        calls = parse_calls(text, tools) if tools else []
        if request.json_schema:
            _validate_json(text, request.json_schema)
        if tools and request.tool_choice == "required" and not calls:
            raise ToolError("no tool call")
    except (ToolError, ValueError) as exc:
        return Outcome(False, f"the answer does not validate: {exc}", text=text, stats=stats)
    stats["tool_calls"] = len(calls)
    return Outcome(True, text=text, stats=stats, tool_calls=calls)


def _kind(request) -> str:
    return "json_schema" if request.json_schema else "grammar" if request.grammar else "tools"


def _validate_json(text: str, schema: str) -> None:
    from jsonschema import Draft202012Validator

    errors = list(Draft202012Validator(json.loads(schema)).iter_errors(json.loads(text)))
    if errors:
        raise ValueError(errors[0].message)
