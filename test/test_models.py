import numpy as np
import pytest
import torch

from helpers_tiny import default_model, tiny_model


def test_session_matches_full_forward_and_rolls_back():
    m = tiny_model()
    ids = list(range(10, 42))
    with torch.inference_mode():
        full = m.model(input_ids=torch.tensor([ids])).logits[0].numpy()
    s = m.new_session()
    s.forward(ids[:20])
    step = s.forward(ids[20:25])
    assert s.length == 25
    assert np.allclose(step, full[20:25], atol=1e-5)
    # overwrite positions 22.. with other tokens, then roll back and redo the original ones
    s.rollback(22)
    s.forward([1, 2, 3, 4])
    s.rollback(22)
    assert s.length == 22
    again = s.forward(ids[22:30])
    assert np.allclose(again, full[22:30], atol=1e-5)
    assert s.forward([ids[30]], last_only=True).shape == (1, m.vocab_size)
    with pytest.raises(ValueError):
        s.rollback(s.length + 1)


def test_bad_spec_is_a_clear_error(tmp_path):
    from hola_ros.core.engines import load_engine

    with pytest.raises(FileNotFoundError, match="model spec"):
        load_engine(str(tmp_path / "nothing-here"))
    with pytest.raises(ValueError, match="backend must be one of"):
        load_engine(str(tmp_path), backend="tflite")
    with pytest.raises(ValueError, match="onnxruntime needs a .gguf"):
        load_engine(str(tmp_path), backend="onnxruntime")


@pytest.mark.slow
def test_test_model_runs_on_onnxruntime_with_its_chat_template():
    from hola_ros.core.engines import load_engine
    from hola_ros.core.model_store import TEST_MODEL

    m = default_model()
    assert m.info["backend"] == "onnxruntime" and m.model is None and "SmolLM2" in m.source
    assert m.vocab_size == 49152 and m.context_length >= 2048
    assert m.tokenizer.convert_tokens_to_ids("<|im_end|>") in m.eos_token_ids
    ids = m.chat_ids([{"role": "user", "content": "Name a colour."}])
    text = m.tokenizer.decode(ids, skip_special_tokens=False)
    assert text.count("<|im_start|>user") == 1 and text.endswith("<|im_start|>assistant\n")
    assert m.decode(m.encode("Hello robot")) == "Hello robot"
    # weights stay quantized: the engine holds far fewer bytes than float32 parameters would
    assert m.info["weights_bytes"] < 0.35 * 4 * 135e6
    # the second load reads the converted engine, not the GGUF
    again = load_engine(TEST_MODEL, threads=1)
    assert again.info["engine_dir"] == m.info["engine_dir"] and again.load_s < 30


def test_engines_of_an_older_converter_are_pruned(tmp_path):
    import json

    from hola_ros.core.engines import _prune_stale

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")

    def engine(name, source, writer):
        folder = tmp_path / "engines" / name
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text(json.dumps({"source": {"path": str(source)}, "writer": writer}))
        return folder

    current = engine("m-new", gguf, "w2")
    old, other_level = engine("m-old", gguf, "w1"), engine("m-acc0", gguf, "w2")
    other_model = engine("m-x", tmp_path / "other" / "m.gguf", "w1")
    _prune_stale(current, gguf, "w2")
    assert current.is_dir() and other_level.is_dir() and other_model.is_dir() and not old.exists()
