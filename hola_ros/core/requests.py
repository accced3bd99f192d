"""A generation request as the gateway accepts it: every field checked, with a clear error."""
import math
import uuid
from dataclasses import dataclass, field

RETRIEVAL_MODES = ("auto", "off", "single", "multi")
DECODING_MODES = ("hsd", "ar")
GRAMMAR_SYNTAXES = ("lark", "gbnf", "regex")


class RequestError(ValueError):
    """The request is invalid; the message says which field and why."""


@dataclass(frozen=True)
class Limits:
    max_new_tokens_default: int = 128
    max_new_tokens_limit: int = 1024
    max_prompt_bytes: int = 16384
    max_temperature: float = 5.0
    max_stop_strings: int = 16


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    request_id: str
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    retrieval_mode: str = "auto"
    decoding_mode: str = "hsd"
    stop: tuple[str, ...] = field(default_factory=tuple)
    session_id: str = ""  # a conversation: earlier turns and their KV state are kept (core.sessions)
    system_prompt: str = ""  # replaces the system message (the composed rules go to the user message)
    json_schema: str = ""  # the answer is one JSON value valid against this schema
    grammar: str = ""  # the answer is a sentence of this grammar (grammar_syntax)
    grammar_syntax: str = "lark"
    tools: str = ""  # JSON list of tool descriptions: the answer is text or validated calls (core.tools)
    tool_choice: str = "auto"

    @property
    def structured(self) -> bool:
        """The answer is constrained: a schema, a grammar or tool calls."""
        return bool(self.json_schema or self.grammar or (self.tools and self.tool_choice != "none"))


def validate_request(msg, limits: Limits) -> GenerationRequest:
    """Check the fields of an Ask request / Generate goal (or any object with those attributes)."""
    prompt = msg.prompt
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt is empty")
    if "\x00" in prompt:
        raise RequestError("prompt contains a NUL character")
    if "\ufffd" in prompt:
        # ROS decodes invalid UTF-8 from byte-level clients to U+FFFD: refuse rather than guess
        raise RequestError("prompt is not valid UTF-8 (it contains U+FFFD replacement characters)")
    size = len(prompt.encode("utf-8", errors="surrogatepass"))
    if size > limits.max_prompt_bytes:
        raise RequestError(f"prompt is {size} bytes, above the limit of {limits.max_prompt_bytes} (parameter max_prompt_bytes)")
    request_id = (msg.request_id or "").strip() or uuid.uuid4().hex
    if len(request_id) > 128 or not request_id.isprintable():
        raise RequestError("request_id must be at most 128 printable characters")

    max_new = int(msg.max_new_tokens)
    if max_new < 0:
        max_new = limits.max_new_tokens_default
    if max_new == 0:
        raise RequestError("max_new_tokens is 0: ask for at least 1 token (or -1 for the default)")
    if max_new > limits.max_new_tokens_limit:
        raise RequestError(f"max_new_tokens {max_new} is above the limit of {limits.max_new_tokens_limit}")

    temperature = float(msg.temperature)
    if not math.isfinite(temperature) or temperature < 0 or temperature > limits.max_temperature:
        raise RequestError(f"temperature must be a number in [0, {limits.max_temperature}], got {temperature}")
    top_p = float(msg.top_p)
    if not math.isfinite(top_p) or not 0 < top_p <= 1:
        raise RequestError(f"top_p must be in (0, 1], got {top_p}")
    top_k = int(msg.top_k)
    if top_k < 0:
        raise RequestError(f"top_k must be >= 0 (0 = off), got {top_k}")
    seed = int(msg.seed)
    if seed < -1:
        raise RequestError(f"seed must be >= 0, or -1 for unseeded, got {seed}")

    retrieval_mode = (msg.retrieval_mode or "auto").strip().lower()
    if retrieval_mode not in RETRIEVAL_MODES:
        raise RequestError(f"unknown retrieval_mode {msg.retrieval_mode!r}: use one of {', '.join(RETRIEVAL_MODES)}")
    decoding_mode = (msg.decoding_mode or "hsd").strip().lower()
    if decoding_mode not in DECODING_MODES:
        raise RequestError(f"unknown decoding_mode {msg.decoding_mode!r}: use one of {', '.join(DECODING_MODES)}")
    stop = tuple(s for s in msg.stop if s)
    if len(stop) > limits.max_stop_strings:
        raise RequestError(f"at most {limits.max_stop_strings} stop strings")

    return GenerationRequest(prompt=prompt, request_id=request_id, max_new_tokens=max_new,
                             temperature=temperature, top_p=top_p, top_k=top_k,
                             seed=None if seed == -1 else seed, retrieval_mode=retrieval_mode,
                             decoding_mode=decoding_mode, stop=stop, **_structure_fields(msg, limits, stop))


def _structure_fields(msg, limits: Limits, stop: tuple) -> dict:
    """session_id, system_prompt, json_schema, grammar (+ syntax), tools (+ choice), checked; a
    message type without these fields (older clients) gets their defaults."""
    import json

    from hola_ros.core.tools import TOOL_CHOICES, ToolError, parse_tools

    f = {name: str(getattr(msg, name, default) or default) for name, default in
         (("session_id", ""), ("system_prompt", ""), ("json_schema", ""), ("grammar", ""),
          ("grammar_syntax", "lark"), ("tools", ""), ("tool_choice", "auto"))}
    f["session_id"] = f["session_id"].strip()
    if len(f["session_id"]) > 128 or not f["session_id"].isprintable():
        raise RequestError("session_id must be at most 128 printable characters")
    for name in ("system_prompt", "json_schema", "grammar", "tools"):
        if len(f[name].encode("utf-8", errors="surrogatepass")) > limits.max_prompt_bytes:
            raise RequestError(f"{name} is above the limit of {limits.max_prompt_bytes} bytes (parameter max_prompt_bytes)")
    f["grammar_syntax"], f["tool_choice"] = f["grammar_syntax"].strip().lower(), f["tool_choice"].strip().lower()
    if f["grammar_syntax"] not in GRAMMAR_SYNTAXES:
        raise RequestError(f"unknown grammar_syntax {f['grammar_syntax']!r}: use one of {', '.join(GRAMMAR_SYNTAXES)}")
    if f["tool_choice"] not in TOOL_CHOICES:
        raise RequestError(f"unknown tool_choice {f['tool_choice']!r}: use one of {', '.join(TOOL_CHOICES)}")
    if f["json_schema"]:
        from jsonschema import Draft202012Validator, SchemaError

        try:
            schema = json.loads(f["json_schema"])
        except json.JSONDecodeError as exc:
            raise RequestError(f"json_schema is not valid JSON: {exc}") from None
        if not isinstance(schema, dict):
            raise RequestError("json_schema must be a JSON object")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise RequestError(f"json_schema is not a valid JSON Schema: {exc.message}") from None
    if f["tools"]:
        try:
            parse_tools(f["tools"])
        except ToolError as exc:
            raise RequestError(str(exc)) from None
    given = [n for n in ("json_schema", "grammar", "tools") if f[n]]
    if len(given) > 1:
        raise RequestError(f"give at most one of json_schema, grammar and tools (got {', '.join(given)})")
    if given and stop and not (given == ["tools"] and f["tool_choice"] == "none"):
        raise RequestError(f"stop strings cannot be combined with {given[0]}: the constraint decides where the answer ends")
    return f
