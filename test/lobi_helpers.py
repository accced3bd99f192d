"""Tiny llama models saved as Hugging Face directories (with a real byte-level tokenizer) for Lo-Bi tests."""
import json
from pathlib import Path

import torch

TEXTS = [
    "The robot moves to the kitchen and picks up 3 red cups. Then it returns 2 cups to the shelf.",
    "How many wheels do 4 robots have if each robot has 6 wheels? Each has 6, so 4 * 6 = 24 wheels.",
    "A battery lasts 5 hours. The robot works 2 shifts of 2 hours each. It has 1 hour left.",
    "Sensors report the door is open; the planner chooses the left corridor to reach the charger.",
] * 6


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab["<eos>"] = 256
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")


def save_tiny(path: Path, seed: int = 0, hidden: int = 64, layers: int = 2, vocab: int = 300,
              low_rank_mlp: bool = False) -> Path:
    """A random llama saved to `path`; `low_rank_mlp` makes MLP weights nearly rank 8 (compressible)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, eos_token_id=256,
                      bos_token_id=None, pad_token_id=None, tie_word_embeddings=True, rope_theta=10000.0)
    model = LlamaForCausalLM(cfg)
    if low_rank_mlp:
        with torch.no_grad():
            for layer in model.model.layers:
                for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                    out_f, in_f = lin.weight.shape
                    lin.weight.copy_(torch.randn(out_f, 8) @ torch.randn(8, in_f) * 0.02
                                     + 1e-4 * torch.randn(out_f, in_f))
    model.generation_config.eos_token_id = 256
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


def write_calib(path: Path) -> Path:
    path.write_text("".join(json.dumps({"question": t, "answer": "ok"}) + "\n" for t in TEXTS))
    return path
