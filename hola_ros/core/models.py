"""The torch engine: a causal LM (Hugging Face directory, or a .gguf dequantized once to float32)
behind a backend-neutral KV session. engines.load_engine is the loader every caller uses.

The HSD loop only needs `session.forward(tokens) -> logits` (a float32 numpy array) and
`session.rollback(length)`, so torch, ONNX Runtime or TensorRT sessions all serve as target or
drafter.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from hola_ros.core.model_store import DEFAULT_MODEL, building, cache_base, gguf_path, is_packaged

__all__ = ["DEFAULT_MODEL", "KVSession", "LoadedModel", "TorchKVSession", "from_module", "load_model"]

_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
           "float16": "float16", "fp16": "float16", "int8": "int8"}


class KVSession(Protocol):
    """One sequence's KV cache on some backend."""

    length: int  # tokens currently in the cache

    def forward(self, tokens: list[int], last_only: bool = False, rows_from: int = 0):
        """Append tokens; return float32 numpy logits of rows rows_from.. [n - rows_from, vocab]
        (the last row alone, [1, vocab], with last_only)."""

    def rollback(self, length: int) -> None:
        """Drop cached positions >= length."""

    def fork(self) -> "KVSession":
        """An independent copy holding the same positions (kvcache.PromptCache)."""

    def close(self) -> None:
        """Free the cache."""


class TorchKVSession:
    """Eager transformers model + DynamicCache, cropped on rollback."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.length = 0

    def forward(self, tokens: list[int], last_only: bool = False, rows_from: int = 0):
        import torch

        n = len(tokens)
        if n == 0:
            raise ValueError("forward needs at least one token")
        device = self.model.device
        pos = torch.arange(self.length, self.length + n, device=device)
        with torch.inference_mode():
            out = self.model(
                input_ids=torch.tensor([tokens], dtype=torch.long, device=device),
                position_ids=pos.unsqueeze(0),
                cache_position=pos,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1 if last_only else (n - rows_from if rows_from else 0),
            )
        self.length += n
        return out.logits[0].float().cpu().numpy()

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} (cache holds {self.length})")
        if length < self.length:
            self.cache.crop(length - self.length)
            self.length = length

    def fork(self) -> "TorchKVSession":
        import copy

        twin = TorchKVSession.__new__(TorchKVSession)
        twin.model, twin.cache, twin.length = self.model, copy.deepcopy(self.cache), self.length
        return twin

    def close(self) -> None:
        self.cache = None
        self.length = 0


class PackedLinear:
    """nn.Linear replacement backed by a oneDNN weight packed once at load time.

    Measured on the 2-core dev CPU: about 2x faster than MKL for 1-16 rows, and each row's
    result is bitwise the same whatever the number of rows (>= 2) in the call, which MKL does
    not give (it switches kernels with the row count). That row invariance is what makes a
    batched verification pass agree exactly with one-token-at-a-time decoding, so single rows
    are padded to two.
    """

    @staticmethod
    def available() -> bool:
        import torch

        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

    @staticmethod
    def make(linear):
        import torch

        class _Packed(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.in_features, self.out_features = linear.in_features, linear.out_features
                self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 8)
                self.bias = None if linear.bias is None else linear.bias.detach()

            def forward(self, x):
                shape = x.shape
                x2 = x.reshape(-1, shape[-1])
                n = x2.shape[0]
                if n == 1:
                    x2 = x2.expand(2, -1).contiguous()
                y = torch.ops.mkldnn._linear_pointwise(x2, self.packed, self.bias, "none", [], "")
                return y[:n].reshape(*shape[:-1], self.out_features)

        return _Packed()


def pack_linears(model) -> bool:
    """Swap every nn.Linear for a PackedLinear; returns whether rows came out invariant."""
    import torch

    if not PackedLinear.available() or next(model.parameters()).dtype != torch.float32:
        return False
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(parent, child_name, PackedLinear.make(child))
    return _rows_invariant(model)


_ROWWISE = "hola_rowwise"


def _rowwise_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA that treats every query row after the prefill as its own one-token step.

    A row's result then depends only on its own query and the cached keys up to its position,
    never on how many rows share the call, so verifying a block reproduces single-token
    decoding bit for bit. The prefill (no cache yet) stays one causal call.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len, kv_len = query.shape[2], key.shape[2]
    if kv_len == q_len:
        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling,
                                      is_causal=True)
    past = kv_len - q_len
    rows = [sdpa_attention_forward(module, query[:, :, i:i + 1], key[:, :, :past + i + 1],
                                   value[:, :, :past + i + 1], None, dropout=dropout, scaling=scaling,
                                   is_causal=False)[0] for i in range(q_len)]
    return (rows[0] if q_len == 1 else torch.cat(rows, dim=1)), None


def use_rowwise_attention(model) -> bool:
    """Switch a plain full-attention model to _rowwise_attention (sliding windows/softcaps excluded)."""
    from transformers import AttentionInterface

    cfg = model.config.get_text_config(decoder=True)
    if getattr(cfg, "sliding_window", None) or getattr(cfg, "attn_logit_softcapping", None):
        return False
    AttentionInterface.register(_ROWWISE, _rowwise_attention)
    model.set_attn_implementation(_ROWWISE)
    return True


def _rows_invariant(model) -> bool:
    # checks the property on each distinct weight shape rather than trusting the library
    import torch

    seen = {}
    for mod in model.modules():
        if hasattr(mod, "packed"):
            seen.setdefault((mod.in_features, mod.out_features), mod)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for (n_in, _), mod in seen.items():
            x = torch.randn(17, n_in, generator=gen)
            ref = mod(x)
            for rows in (1, 2, 3, 5, 8):
                if not torch.equal(mod(x[:rows]), ref[:rows]):
                    return False
    return True


@dataclass
class LoadedModel:
    name: str
    model: object  # the torch module (None for non-torch backends)
    tokenizer: object
    eos_token_ids: set[int]
    context_length: int
    vocab_size: int
    dtype: str = "float32"
    source: str = ""
    load_s: float = 0.0
    info: dict = field(default_factory=dict)
    session_factory: object = None  # engines other than torch: () -> KVSession

    def new_session(self) -> KVSession:
        return self.session_factory() if self.session_factory is not None else TorchKVSession(self.model)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        return chat_ids(self.tokenizer, messages, tools)


def chat_ids(tokenizer, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
    """Prompt token ids of a conversation, through the model's chat template when it has one.
    `tools`: tool descriptions the template renders (tools.Tool.as_template), where it can."""
    if getattr(tokenizer, "chat_template", None):
        extra = {"tools": tools} if tools else {}
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)
        # the template already carries BOS/role tokens; adding specials again would double them
        return list(tokenizer.encode(text, add_special_tokens=False))
    text = "\n\n".join(m["content"] for m in messages)
    return list(tokenizer.encode(text, add_special_tokens=True))


def cache_root() -> Path:
    return cache_base() / "models"


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF once into a safetensors directory (GGUF loads take many seconds)."""
    target = _gguf_cache_dir(gguf)
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with building(target, "config.json") as tmp:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        # save_pretrained refuses GGUF-quantized models; the weights are plain fp32 already
        model.config.quantization_config = None
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf.resolve()}\n")
    return target


def resolve_path(path: str | os.PathLike) -> Path:
    """A local Hugging Face directory for a packaged model name or a .gguf file (converted on
    first use), or a model directory."""
    path = gguf_path(str(path)) if is_packaged(str(path)) else Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return convert_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    raise FileNotFoundError(f"{path}: expected a Hugging Face model directory or a .gguf file")


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(int(threads))


def eos_ids(model, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (getattr(model, "generation_config", None), model.config, tokenizer):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else list(eos))
    return {int(i) for i in ids}


def from_module(model, tokenizer, name: str = "model", dtype: str = "float32", source: str = "",
                packed: bool = True) -> LoadedModel:
    """Wrap an in-memory transformers causal LM (tests, derived drafters); packs its linears."""
    model.eval()
    cfg = model.config.get_text_config(decoder=True)
    loaded = LoadedModel(
        name=name, model=model, tokenizer=tokenizer, eos_token_ids=eos_ids(model, tokenizer),
        context_length=int(getattr(cfg, "max_position_embeddings", 2048) or 2048),
        vocab_size=int(cfg.vocab_size), dtype=dtype, source=source)
    loaded.info["packed"] = bool(packed and PackedLinear.available() and dtype == "float32")
    # both halves are needed for batched verification to equal one-token decoding exactly
    loaded.info["row_invariant"] = bool(loaded.info["packed"] and pack_linears(model) and use_rowwise_attention(model))
    return loaded


def load_model(path: str | os.PathLike, dtype: str = "float32", threads: int | None = None, packed: bool = True,
               device: str = "cpu", name: str | None = None) -> LoadedModel:
    """The torch engine for a Hugging Face directory or a .gguf file (cached as safetensors);
    callers go through engines.load_engine."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}")
    set_threads(threads)
    t0 = time.perf_counter()
    local = resolve_path(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(str(local))
    dt = _DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(local), dtype="float32" if dt == "int8" else dt)
    if dt == "int8":  # dynamic int8 linears: a cheaper L1 drafter, never ground truth
        import torch

        torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
    if device != "cpu":
        model.to(_torch_device(device))
    on_cpu = model.device.type == "cpu"
    loaded = from_module(model, tokenizer, name=name or Path(path).stem, dtype=dt, source=str(local),
                         packed=packed and dt == "float32" and on_cpu)
    loaded.info["backend"] = "torch"
    loaded.load_s = time.perf_counter() - t0
    return loaded


def _torch_device(device: str) -> str:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: torch sees no CUDA device here")
    return "cuda" if device in ("cuda", "auto") and torch.cuda.is_available() else "cpu"
