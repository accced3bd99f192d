"""ONNX export of a Lo-Bi artifact (llama graph written op by op, with KV-cache inputs/outputs)
and an ONNX Runtime KV session with rollback.

The graph is emitted directly from the artifact's quantized tensors rather than traced from
torch: the exporter then never sees transformers' cache classes, and 4/8-bit layers become
ORT MatMulNBits nodes carrying exactly the artifact's codes, scales and zero points
("nbits" flavour). The "dense" flavour stores dequantized fp32 weights with plain MatMul for
runtimes without MatMulNBits (TensorRT builds its fp16 engine from it).

Graph interface (batch 1, one sequence):
  inputs  input_ids int64 [1, n]; past_key_{i}, past_value_{i} float32 [1, kv_heads, past, head_dim];
          nbits flavour only: logits_from int64 [1] (first row to return logits for, so a
          prefill does not pay for the 49k-wide output layer on every row; the dense flavour
          leaves it out because TensorRT handles value-dependent output shapes poorly)
  outputs logits float32 [1, m, vocab]; present_key_{i}, present_value_{i}
          float32 [1, kv_heads, past + n, head_dim]
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from hola_ros.core import ort_runtime
from hola_ros.core.onnx_graph import IR_VERSION, OPSET, _Graph
from hola_ros.core.ort_runtime import ort_session

from . import arch

FLAVOURS = ("nbits", "dense")


def _pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """MatMulNBits zero points: per row, 4-bit values packed two per byte (low first)."""
    if bits == 8:
        return zp.reshape(-1)
    if zp.shape[1] % 2:
        zp = np.concatenate([zp, np.zeros((zp.shape[0], 1), np.uint8)], axis=1)
    return (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def _nbits_ok(qt) -> bool:
    g = qt.group
    return qt.bits in (4, 8) and g >= 16 and g & (g - 1) == 0


class _Emitter:
    def __init__(self, g: _Graph, tensors: dict, manifest: dict, flavour: str, accuracy_level: int):
        self.g, self.tensors, self.manifest = g, tensors, manifest
        self.flavour, self.acc = flavour, accuracy_level
        self.group = manifest["quant"]["group_size"]
        self.b_tables: dict[str, str] = {}

    def qtensor(self, prefix: str):
        from .quant import QTensor

        return QTensor.from_tensors(self.tensors, prefix, self.group)

    def _b_table(self, prefix: str, qt) -> str:
        """The [N, k_blocks, blob] code table, shared by the embedding Gather and a tied head."""
        if prefix not in self.b_tables:
            n, k = qt.shape
            blob = qt.group * qt.bits // 8
            self.b_tables[prefix] = self.g.init(qt.data.numpy().reshape(n, k // qt.group, blob), "B")
        return self.b_tables[prefix]

    def matmul(self, x: str, prefix: str) -> str:
        g, qt = self.g, self.qtensor(prefix)
        n, k = qt.shape
        if self.flavour == "nbits" and _nbits_ok(qt):
            scales = g.init(qt.scale.float().numpy().reshape(-1), "S")
            zps = g.init(_pack_zero_points(qt.zp.numpy(), qt.bits), "Z")
            return g.op("MatMulNBits", [x, self._b_table(prefix, qt), scales, zps], domain="com.microsoft",
                        K=k, N=n, bits=qt.bits, block_size=qt.group, accuracy_level=self.acc)
        if qt.bits == 16 and self.flavour == "nbits":
            # kept fp16 on disk; ORT folds the Cast into an fp32 weight when the session starts
            w = g.op("Cast", [g.init(qt.data.numpy().T.copy(), "W16")], to=1)
        else:
            w = g.init(qt.dequantize().numpy().T.copy(), "W")
        return g.op("MatMul", [x, w])

    def linear(self, x: str, name: str) -> str:
        layer = self.manifest["layers"][name]
        if layer["rank"]:
            return self.matmul(self.matmul(x, f"{name}.a"), f"{name}.b")
        if layer.get("tied"):
            return self.matmul(x, "model.embed_tokens")
        return self.matmul(x, name)

    def embed(self, ids: str, hidden: int) -> str:
        g, qt = self.g, self.qtensor("model.embed_tokens")
        if qt.bits == 16 or self.flavour == "dense" or not _nbits_ok(qt):
            table = qt.data.numpy() if qt.bits == 16 else qt.dequantize().numpy()
            out = g.op("Gather", [g.init(table, "E"), ids])
            return g.op("Cast", [out], to=1) if table.dtype != np.float32 else out
        v, k = qt.shape
        rows = g.op("Gather", [self._b_table("model.embed_tokens", qt), ids])  # [1, n, nb, blob]
        if qt.bits == 4:
            lo = g.op("BitwiseAnd", [rows, g.const(15, np.uint8)])
            hi = g.op("BitShift", [rows, g.const(4, np.uint8)], direction="RIGHT")
            pair = g.op("Concat", [g.op("Unsqueeze", [lo, g.const([-1])]), g.op("Unsqueeze", [hi, g.const([-1])])],
                        axis=-1)
            rows = g.op("Reshape", [pair, g.const([0, 0, k // qt.group, qt.group])])
        codes = g.op("Cast", [rows], to=1)
        zp = g.op("Cast", [g.op("Gather", [g.init(qt.zp.numpy(), "EZ"), ids])], to=1)
        scale = g.op("Gather", [g.init(qt.scale.float().numpy(), "ES"), ids])
        deq = g.op("Mul", [g.op("Sub", [codes, g.op("Unsqueeze", [zp, g.const([-1])])]),
                           g.op("Unsqueeze", [scale, g.const([-1])])])
        return g.op("Reshape", [deq, g.const([0, 0, hidden])])

    def rms(self, x: str, weight: str, eps: float) -> str:
        g = self.g
        var = g.op("ReduceMean", [g.op("Pow", [x, g.const(2.0, np.float32)]), g.const([-1])], keepdims=1)
        normed = g.op("Div", [x, g.op("Sqrt", [g.op("Add", [var, g.const(eps, np.float32)])])])
        return g.op("Mul", [normed, g.init(self.tensors[weight].float().numpy(), "N")])


def build_graph(path, manifest: dict, flavour: str = "nbits", accuracy_level: int = 4):
    """The artifact as an onnx.ModelProto."""
    import torch
    from onnx import TensorProto, helper
    from transformers import AutoConfig

    from .artifact import load_weights

    if flavour not in FLAVOURS:
        raise ValueError(f"flavour must be one of {FLAVOURS}")
    cfg = AutoConfig.from_pretrained(str(path))
    arch.check_supported(cfg)
    cfg = cfg.get_text_config(decoder=True)
    tensors = load_weights(path)
    hd, nh, kvh, hidden = arch.head_dim(cfg), cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size
    groups, n_layers = nh // kvh, cfg.num_hidden_layers
    g = _Graph()
    em = _Emitter(g, tensors, manifest, flavour, accuracy_level)
    F = np.float32

    # rotary frequencies exactly as transformers computes them (includes any rope scaling)
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rot = LlamaRotaryEmbedding(config=cfg)
    inv_freq = rot.inv_freq.detach().to(torch.float32).numpy()
    attn_scaling = float(getattr(rot, "attention_scaling", 1.0))

    past_len = g.op("Shape", ["past_key_0"], start=2, end=3)
    new_len = g.op("Shape", ["input_ids"], start=1, end=2)
    total = g.op("Add", [past_len, new_len])
    p0, t0 = g.op("Squeeze", [past_len]), g.op("Squeeze", [total])
    pos = g.op("Cast", [g.op("Range", [p0, t0, g.const(1)])], to=1)
    freqs = g.op("Mul", [g.op("Unsqueeze", [pos, g.const([1])]), g.init(inv_freq[None, :], "invf")])
    emb = g.op("Concat", [freqs, freqs], axis=1)
    cos = g.op("Reshape", [g.op("Mul", [g.op("Cos", [emb]), g.const(attn_scaling, F)]), g.const([1, 1, -1, hd])])
    sin = g.op("Reshape", [g.op("Mul", [g.op("Sin", [emb]), g.const(attn_scaling, F)]), g.const([1, 1, -1, hd])])
    cols = g.op("Range", [g.const(0), t0, g.const(1)])
    rows = g.op("Range", [p0, t0, g.const(1)])
    allowed = g.op("LessOrEqual", [g.op("Unsqueeze", [cols, g.const([0])]), g.op("Unsqueeze", [rows, g.const([1])])])
    mask = g.op("Where", [allowed, g.const(0.0, F), g.const(float(np.finfo(np.float32).min) / 2, F)])
    mask = g.op("Tile", [mask, g.const([groups, 1])])  # rows of all query heads sharing one kv head

    def rope(x):
        x1, x2 = g.op("Split", [x], outputs=2, axis=-1, num_outputs=2)
        rotated = g.op("Concat", [g.op("Neg", [x2]), x1], axis=-1)
        return g.op("Add", [g.op("Mul", [x, cos]), g.op("Mul", [rotated, sin])])

    def heads(x, n):
        return g.op("Transpose", [g.op("Reshape", [x, g.const([0, 0, n, hd])])], perm=[0, 2, 1, 3])

    x = em.embed("input_ids", hidden)
    eps = float(cfg.rms_norm_eps)
    scale = float(getattr(cfg, "attention_multiplier", None) or hd ** -0.5)
    for i in range(n_layers):
        pre = f"model.layers.{i}"
        h = em.rms(x, f"{pre}.input_layernorm.weight", eps)
        q = rope(heads(em.linear(h, f"{pre}.self_attn.q_proj"), nh))
        k = rope(heads(em.linear(h, f"{pre}.self_attn.k_proj"), kvh))
        v = heads(em.linear(h, f"{pre}.self_attn.v_proj"), kvh)
        key = g.op("Concat", [f"past_key_{i}", k], [f"present_key_{i}"], axis=2)
        val = g.op("Concat", [f"past_value_{i}", v], [f"present_value_{i}"], axis=2)
        qg = g.op("Reshape", [g.op("Mul", [q, g.const(scale, F)]), g.const([1, kvh, -1, hd])])
        scores = g.op("Add", [g.op("MatMul", [qg, g.op("Transpose", [key], perm=[0, 1, 3, 2])]), mask])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), val])
        ctx = g.op("Transpose", [g.op("Reshape", [ctx, g.const([1, nh, -1, hd])])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, g.const([0, 0, nh * hd])])
        x = g.op("Add", [x, em.linear(ctx, f"{pre}.self_attn.o_proj")])
        h = em.rms(x, f"{pre}.post_attention_layernorm.weight", eps)
        gate = em.linear(h, f"{pre}.mlp.gate_proj")
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), em.linear(h, f"{pre}.mlp.up_proj")])
        x = g.op("Add", [x, em.linear(act, f"{pre}.mlp.down_proj")])
    h = em.rms(x, "model.norm.weight", eps)
    if flavour == "nbits":
        h = g.op("Slice", [h, "logits_from", g.const([np.iinfo(np.int64).max]), g.const([1])])
    g.op("Identity", [em.linear(h, "lm_head")], ["logits"])

    kv = lambda name, length: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, kvh, length, hd])  # noqa: E731
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "n"])]
    if flavour == "nbits":
        inputs.append(helper.make_tensor_value_info("logits_from", TensorProto.INT64, [1]))
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "m", cfg.vocab_size])]
    for i in range(n_layers):
        inputs += [kv(f"past_key_{i}", "past"), kv(f"past_value_{i}", "past")]
        outputs += [kv(f"present_key_{i}", "total"), kv(f"present_value_{i}", "total")]
    graph = helper.make_graph(g.nodes, "lobi", inputs, outputs, g.inits)
    return helper.make_model(graph, ir_version=IR_VERSION, producer_name="hola_ros.lobi",
                             opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])


def export(path, manifest: dict, flavour: str = "nbits", accuracy_level: int = 4) -> dict:
    """Write onnx/model.onnx (nbits) or onnx/model-dense.onnx into the artifact; returns its
    manifest entry (stored under exports["onnx"] / exports["onnx_dense"])."""
    import onnx

    path = Path(path)
    model = build_graph(path, manifest, flavour, accuracy_level)
    rel = Path("onnx") / ("model.onnx" if flavour == "nbits" else "model-dense.onnx")
    (path / rel).parent.mkdir(parents=True, exist_ok=True)
    data = model.SerializeToString()
    (path / rel).write_bytes(data)
    onnx.checker.check_model(str(path / rel))
    return {"path": str(rel), "flavour": flavour, "opset": OPSET, "accuracy_level": accuracy_level,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def select_providers(available: list[str], flavour: str, prefer: str | None = None) -> list[str]:
    """Execution providers in order of preference for a graph flavour.

    TensorRT cannot run ORT's MatMulNBits contrib op, so only the dense flavour goes to the
    TensorRT EP; CUDA has MatMulNBits kernels; CPU is always last.
    """
    order = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if flavour == "dense" else ["CUDAExecutionProvider"]
    if prefer:
        if prefer not in available:
            raise ValueError(f"execution provider {prefer} is not available (have {available})")
        order = [prefer]
    return [p for p in order if p in available and p != "CPUExecutionProvider"] + ["CPUExecutionProvider"]


class OrtKVSession(ort_runtime.ConcatKVSession):
    """The artifact's graph takes token ids (its embedding lookup runs inside) and, in the dense
    flavour, has no logits_from input."""

    def __post_init__(self):
        super().__post_init__()
        self.sliced = any(i.name == "logits_from" for i in self.sess.get_inputs())

    def _inputs(self, tokens: list[int], last_only: bool) -> dict:
        feeds = {"input_ids": np.asarray([tokens], np.int64)}
        if self.sliced:
            feeds["logits_from"] = np.asarray([len(tokens) - 1 if last_only else 0], np.int64)
        return feeds

    def _logits(self, rows: np.ndarray, last_only: bool) -> np.ndarray:
        return rows[-1:] if last_only and not self.sliced else rows


def session_factory(path, entry: dict, threads: int | None = None, providers: list | None = None,
                    provider_options: list | None = None):
    """A zero-argument callable returning new OrtKVSessions that share one ORT session.

    `path` is the artifact directory and `entry` its manifest's export entry (path, flavour).
    """
    import onnxruntime as ort
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path)).get_text_config(decoder=True)
    providers = providers or select_providers(ort.get_available_providers(), entry["flavour"])
    sess = ort_session(Path(path) / entry["path"], threads, providers, provider_options)
    dims = (cfg.num_hidden_layers, cfg.num_key_value_heads, arch.head_dim(cfg))

    def factory():
        return OrtKVSession(sess, None, *dims)

    factory.providers = sess.get_providers()
    return factory
