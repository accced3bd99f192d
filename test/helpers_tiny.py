"""Tiny random-weight causal LMs and a byte tokenizer, so HSD tests run in seconds."""
import functools

import torch

# the dev machine has 2 cores shared by several people: a second OpenMP thread that has to
# wait for a busy core makes tiny forwards ~10x slower, so tests run single-threaded
torch.set_num_threads(1)


class ByteTokenizer:
    """Token i < 256 is byte i; 256 is EOS; the rest of the vocabulary decodes to nothing."""

    chat_template = None
    eos_token_id = 256

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text, add_special_tokens=False):
        return list(text.encode("utf-8"))

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def tiny_model(seed: int = 0, vocab: int = 300, hidden: int = 64, layers: int = 2, name: str = "tiny",
               eos: int | None = 256, sharpen: float = 1.0):
    """A random llama-shaped LM; `sharpen` scales the output layer (higher = more peaked, more repetitive)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hola_ros.core.models import from_module

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      eos_token_id=eos, bos_token_id=None, pad_token_id=None, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    model.generation_config.eos_token_id = eos
    return from_module(model, ByteTokenizer(vocab), name=name)


@functools.lru_cache(maxsize=1)
def default_model():
    """The tiny packaged model the tests run (SmolLM2-135M on the ONNX Runtime engine)."""
    from hola_ros.core.engines import load_engine
    from hola_ros.core.model_store import TEST_MODEL

    return load_engine(TEST_MODEL, threads=1)
