"""Tool calls: a request names the robot's skills (name, description, JSON-Schema arguments) and
the answer is either text or calls of those skills, each validated against its schema.

The model sees the tools the way its chat template describes them (Qwen2.5's template lists them
in the system turn and asks for `<tool_call>{"name": ..., "arguments": ...}</tool_call>`; a template
without tools gets the same text from `tools_prompt`), and the grammar of `tool_grammar` admits only
calls of the given tools with valid arguments, so a call always parses. `parse_calls` still checks
every call with jsonschema (the library), since a robot must never act on an argument the grammar
compiler could not express (e.g. a `format`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

TOOL_CHOICES = ("auto", "required", "none")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
OPEN, CLOSE = "<tool_call>", "</tool_call>"
_CALL_BLOCK = re.compile(re.escape(OPEN) + r"\s*(.*?)\s*" + re.escape(CLOSE), re.S)


class ToolError(ValueError):
    """Tool descriptions that cannot be used, or an answer whose call does not validate."""


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON Schema of the arguments object

    def as_template(self) -> dict:
        """The OpenAI-style description chat templates render."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False, sort_keys=True)


def parse_tools(tools) -> list[Tool]:
    """Tools from their JSON text or list: each {name, description, parameters} or the OpenAI form
    {"type": "function", "function": {...}}; names unique, parameters a valid JSON Schema of an object."""
    from jsonschema import Draft202012Validator, SchemaError

    if isinstance(tools, str):
        try:
            tools = json.loads(tools)
        except json.JSONDecodeError as exc:
            raise ToolError(f"tools is not valid JSON: {exc}") from None
    if not isinstance(tools, list) or not tools:
        raise ToolError("tools must be a non-empty JSON list of tool descriptions")
    out: list[Tool] = []
    for i, t in enumerate(tools):
        t = t.get("function", t) if isinstance(t, dict) and t.get("type") == "function" else t
        if not isinstance(t, dict):
            raise ToolError(f"tool {i} is not a JSON object")
        name = t.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ToolError(f"tool {i}: name must be an identifier (letters, digits, _ . -), got {name!r}")
        params = t.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ToolError(f"tool {name}: parameters must be a JSON Schema of an object")
        try:
            Draft202012Validator.check_schema(params)
        except SchemaError as exc:
            raise ToolError(f"tool {name}: parameters is not a valid JSON Schema: {exc.message}") from None
        out.append(Tool(name, str(t.get("description", "")), {"type": "object", **params}))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ToolError(f"tool names must be unique: {names}")
    return out


def _call_schema(tool: Tool) -> dict:
    from hola_ros.core.constraint import JSON_LAYOUT

    return {"type": "object", "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
            "required": ["name", "arguments"], "additionalProperties": False, "x-guidance": JSON_LAYOUT}


def tool_grammar(tools: list[Tool], choice: str, special_tags: bool) -> str:
    """Lark grammar (llguidance's dialect) of an answer: one call, a tool's name with valid arguments
    between the call tags or, as small models also write it, the bare JSON object; with choice
    "auto" also plain text that begins like neither. One call per answer: after a call the 0.5B went
    on repeating calls until the token limit; a sequence of actions is a conversation, turn by turn.
    `special_tags`: the tags are single tokens of the tokenizer (Qwen2.5)."""
    if choice not in ("auto", "required"):
        raise ToolError(f"no grammar for tool_choice {choice!r}")
    open_tag, close_tag = (OPEN, CLOSE) if special_tags else (json.dumps(OPEN), json.dumps(CLOSE))
    body = " | ".join(["call", "args"] + (["TEXT"] if choice == "auto" else []))
    lines = [f"start: {body}",
             f'call: {open_tag} "\\n" args "\\n" {close_tag}',
             "args: " + " | ".join(f"args_{i}" for i in range(len(tools)))]
    lines += [f"args_{i}: %json {json.dumps(_call_schema(t))}" for i, t in enumerate(tools)]
    if choice == "auto":
        lines.append(r"TEXT: /[^<{\s][^<]*/")
    return "\n".join(lines)


def tools_prompt(tools: list[Tool]) -> str:
    """How Qwen2.5's chat template describes tools, for a template that does not render them."""
    listed = "\n".join(json.dumps(t.as_template(), ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
            f"with function signatures within <tools></tools> XML tags:\n<tools>\n{listed}\n</tools>\n\nFor each "
            "function call, return a json object with function name and arguments within <tool_call></tool_call> "
            'XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def parse_calls(text: str, tools: list[Tool]) -> list[ToolCall]:
    """The calls an answer holds (none: a text answer), each checked against its tool's schema;
    ToolError when a call block does not parse or validate."""
    from jsonschema import Draft202012Validator

    by_name = {t.name: t for t in tools}
    calls = []
    blocks = _CALL_BLOCK.findall(text) or ([text.strip()] if text.lstrip().startswith("{") else [])
    for block in blocks:
        try:
            call = json.loads(block)
        except json.JSONDecodeError as exc:
            raise ToolError(f"a tool call is not valid JSON ({exc}): {block[:200]!r}") from None
        if not isinstance(call, dict) or call.get("name") not in by_name or not isinstance(call.get("arguments"), dict):
            raise ToolError(f"a tool call names no given tool or has no arguments object: {block[:200]!r}")
        errors = sorted(Draft202012Validator(by_name[call["name"]].parameters).iter_errors(call["arguments"]),
                        key=lambda e: list(e.path))
        if errors:
            raise ToolError(f"arguments of {call['name']} do not validate: {errors[0].message}")
        calls.append(ToolCall(call["name"], call["arguments"]))
    if not calls and OPEN in text:
        raise ToolError(f"an unfinished tool call: {text[-200:]!r}")
    return calls
