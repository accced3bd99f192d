import math
from types import SimpleNamespace

import pytest

from hola_ros.core.requests import Limits, RequestError, validate_request


def msg(**overrides):
    fields = dict(prompt="Where is the dock?", request_id="", max_new_tokens=-1, temperature=0.0, top_p=1.0,
                  top_k=0, seed=-1, retrieval_mode="auto", decoding_mode="hsd", stop=[])
    fields.update(overrides)
    return SimpleNamespace(**fields)


def test_defaults_filled_and_id_generated():
    a, b = validate_request(msg(), Limits()), validate_request(msg(), Limits())
    assert a.max_new_tokens == Limits().max_new_tokens_default
    assert a.request_id and a.request_id != b.request_id
    assert a.seed is None and a.retrieval_mode == "auto" and a.decoding_mode == "hsd"


def test_fields_kept():
    r = validate_request(msg(request_id=" r1 ", max_new_tokens=7, temperature=0.7, top_p=0.9, seed=3,
                             retrieval_mode="MULTI", decoding_mode="ar", stop=["\n\n", ""]), Limits())
    assert (r.request_id, r.max_new_tokens, r.seed, r.retrieval_mode, r.decoding_mode, r.stop) == \
        ("r1", 7, 3, "multi", "ar", ("\n\n",))


@pytest.mark.parametrize("overrides, words", [
    (dict(prompt=""), "prompt is empty"),
    (dict(prompt=" \n\t "), "prompt is empty"),
    (dict(prompt="a\x00b"), "NUL"),
    (dict(prompt="x" * 100), "bytes"),
    (dict(max_new_tokens=0), "max_new_tokens is 0"),
    (dict(max_new_tokens=5000), "above the limit"),
    (dict(temperature=math.nan), "temperature"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=1e9), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(seed=-7), "seed"),
    (dict(retrieval_mode="sometimes"), "unknown retrieval_mode"),
    (dict(decoding_mode="beam"), "unknown decoding_mode"),
    (dict(request_id="x" * 200), "request_id"),
])
def test_invalid_requests_say_why(overrides, words):
    with pytest.raises(RequestError, match=words):
        validate_request(msg(**overrides), Limits(max_prompt_bytes=64))


def test_invalid_utf8_from_a_byte_level_client_is_refused():
    """Corrupt the prompt's bytes inside a serialized Ask request (what a C/C++ client could
    send), deserialize it the way the verifier's rclpy does, and validate it."""
    from rclpy.serialization import deserialize_message, serialize_message

    from hola_ros.srv import Ask

    wire = bytearray(serialize_message(Ask.Request(prompt="go to dock Z")))
    at = wire.index(b"dock Z")
    wire[at + 5] = 0xFF  # 'Z' -> a byte that is never valid UTF-8
    request = deserialize_message(bytes(wire), Ask.Request)
    assert request.prompt.startswith("go to dock")
    with pytest.raises(RequestError, match="not valid UTF-8"):
        validate_request(request, Limits())
