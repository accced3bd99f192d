"""A generation request as the gateway accepts it: every field checked, with a clear error."""
import math
import uuid
from dataclasses import dataclass, field

RETRIEVAL_MODES = ("auto", "off", "single", "multi")
DECODING_MODES = ("hsd", "ar")


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
                             decoding_mode=decoding_mode, stop=stop)
