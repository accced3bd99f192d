"""Where the compressible parts of a llama-family causal LM live."""
from __future__ import annotations

ATTN = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
LINEARS = ATTN + MLP
# linears fed by the same tensor share one input Gram matrix
SAME_INPUT = {"self_attn.k_proj": "self_attn.q_proj", "self_attn.v_proj": "self_attn.q_proj",
              "mlp.up_proj": "mlp.gate_proj"}
SUPPORTED = ("llama",)


def check_supported(config) -> None:
    cfg = config.get_text_config(decoder=True)
    if cfg.model_type not in SUPPORTED or getattr(cfg, "hidden_act", "silu") != "silu":
        raise ValueError(f"Lo-Bi supports llama-architecture models (silu MLP); got {cfg.model_type!r}")
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        raise ValueError("Lo-Bi does not handle attention/MLP biases yet")


def head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def layer_linears(i: int) -> list[str]:
    return [f"model.layers.{i}.{n}" for n in LINEARS]


def block_of(linear: str) -> str:
    if linear == "lm_head":
        return "lm_head"
    if linear == "model.embed_tokens":
        return "embed"
    parts = linear.split(".")
    return f"layers.{parts[2]}"
