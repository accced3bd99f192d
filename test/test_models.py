import pytest
import torch

from helpers_tiny import default_model, tiny_model


def test_session_matches_full_forward_and_rolls_back():
    m = tiny_model()
    ids = list(range(10, 42))
    with torch.inference_mode():
        full = m.model(input_ids=torch.tensor([ids])).logits[0]
    s = m.new_session()
    s.forward(ids[:20])
    step = s.forward(ids[20:25])
    assert s.length == 25
    assert torch.allclose(step, full[20:25], atol=1e-5)
    # overwrite positions 22.. with other tokens, then roll back and redo the original ones
    s.rollback(22)
    s.forward([1, 2, 3, 4])
    s.rollback(22)
    assert s.length == 22
    again = s.forward(ids[22:30])
    assert torch.allclose(again, full[22:30], atol=1e-5)
    assert s.forward([ids[30]], last_only=True).shape == (1, m.vocab_size)
    with pytest.raises(ValueError):
        s.rollback(s.length + 1)


def test_bad_spec_is_a_clear_error(tmp_path):
    from hola_ros.core.models import load_model

    with pytest.raises(FileNotFoundError, match="model spec"):
        load_model(str(tmp_path / "nothing-here"))


@pytest.mark.slow
def test_default_model_loads_from_cache_with_chat_template():
    from hola_ros.core.models import DEFAULT_MODEL, load_model

    m = default_model()
    assert m.name == DEFAULT_MODEL
    assert m.vocab_size == 49152 and m.context_length >= 2048
    im_end = m.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in m.eos_token_ids
    ids = m.chat_ids([{"role": "user", "content": "Name a colour."}])
    text = m.tokenizer.decode(ids)
    assert text.count("<|im_start|>user") == 1 and text.endswith("<|im_start|>assistant\n")
    assert m.decode(m.encode("Hello robot")) == "Hello robot"
    # the second load reads the safetensors cache, not the GGUF
    again = load_model(DEFAULT_MODEL)
    assert again.source == m.source and "SmolLM2" in again.source
    assert torch.equal(again.model.model.embed_tokens.weight, m.model.model.embed_tokens.weight)
