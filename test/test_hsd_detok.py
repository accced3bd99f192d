import pytest

from helpers_tiny import ByteTokenizer, default_model
from hola_ros.core.detok import TextStream

TEXT = "Grüße 日本語 🤖 done."


def feed(tokenizer, ids, stop=(), step=1):
    ts, deltas = TextStream(tokenizer, stop), []
    for i in range(0, len(ids), step):
        delta, n = ts.push(ids[i:i + step])
        deltas.append(delta)
        if n is not None:
            break
    deltas.append(ts.flush())
    return ts, deltas


@pytest.mark.parametrize("step", [1, 2, 3])
def test_bytes_split_across_tokens_never_leak_half_characters(step):
    tok = ByteTokenizer(300)
    ts, deltas = feed(tok, list(TEXT.encode()), step=step)
    assert "".join(deltas) == TEXT == ts.text
    assert all("\ufffd" not in d for d in deltas)
    assert sum(1 for d in deltas if d) > 5  # it really streamed


def test_stop_string_is_cut_and_its_prefix_never_streamed():
    tok = ByteTokenizer(300)
    ids = list("answer: 42\nQuestion: next".encode())
    ts, deltas = feed(tok, ids, stop=("\nQuestion:",))
    assert ts.stopped and ts.text == "answer: 42"
    assert "".join(deltas) == "answer: 42"
    # a partial match that does not complete is released later
    ts, deltas = feed(tok, list("a\nQuest b".encode()), stop=("\nQuestion:",))
    assert not ts.stopped and "".join(deltas) == "a\nQuest b"


@pytest.mark.slow
def test_real_tokenizer_multibyte_stream():
    m = default_model()
    ids = m.encode(TEXT)
    ts, deltas = feed(m.tokenizer, ids)
    assert "".join(deltas) == m.decode(ids) == TEXT
    assert all("\ufffd" not in d for d in deltas)
