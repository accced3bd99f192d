"""A decoder-only transformer (llama / qwen2 family) written as an ONNX graph whose linears
are ONNX Runtime `MatMulNBits` nodes and whose attention is `GroupQueryAttention` writing the KV
cache in place (`ort_runtime` runs it). This module is the converter's half: its source is part of
the engine cache key (engines.engine_cache), so it holds nothing else.

Why this engine (measured, docs/engine.md): with `accuracy_level=4` MatMulNBits quantizes each
activation row on its own and runs int8 dot products, so a row's result does not depend on how
many rows share the call (bitwise, checked at load) and a B-row verification step costs far less
than B one-row steps; the weights stay 4/8-bit at rest and in the matmul. GroupQueryAttention
takes the cache as one buffer per layer that its output shares (nothing is copied per step, a
rollback only moves the length) and runs each row's softmax over exactly that row's causal
length, so a row's attention does not depend on the call either; its one-row path rounds
differently from its multi-row one, so every call appends one throw-away row (a copy of the last)
and attention always runs on two or more rows.

A weight with a per-block minimum (GGUF Q4_K, Q4_1, Q5_K, Q5_1: w = scale * q - min) keeps its
codes exactly: MatMulNBits computes scale * (q - zero point), and the rest of the minimum term is
the block sums of x times one float per block, a small MatMul beside it (gguf_import._codes).

Graph interface (batch 1, one sequence):
  inputs  inputs_embeds float32 [1, n, hidden] (the embedding lookup runs outside, on the
          quantized table); logits_from int64 [1] (first row whose logits are returned, so a
          prefill skips the output layer on all but its last row); seqlens_k int32 [1] (= past + n,
          the throw-away row's position); total_sequence_length int32 scalar (= past + n + 1);
          past_key_{i}, past_value_{i} float32 [1, kv_heads, capacity, head_dim]
  outputs logits float32 [1, m, vocab]; present_key_{i}, present_value_{i}: bound to the same
          buffers as the past inputs (rows past .. past + n written in place)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np

OPSET = 21
IR_VERSION = 10  # onnx writes a newer IR than onnxruntime 1.3x reads
HEAD_SLICE_BYTES = 40 << 20
# rotary table rows: positions an engine serves (the table is float32 [MAX_POSITIONS, head_dim]; 8192
# positions of a 1.5B model's KV cache alone are 470 MB, more than a robot computer spends on one answer)
MAX_POSITIONS = 8192


@dataclass
class ArchSpec:
    """The shape of a llama-family decoder, enough to write its graph."""

    n_layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    rms_eps: float
    inv_freq: np.ndarray  # rotary inverse frequencies [head_dim / 2] (rope scaling applied)
    attn_scaling: float = 1.0  # rotary magnitude factor (1 without yarn-style scaling)
    context_length: int = 2048


@dataclass
class QuantLinear:
    """One linear layer y = x W^T + b as MatMulNBits data, or a dense fp32 weight."""

    n: int  # output features
    k: int  # input features
    bits: int = 8
    block: int = 32
    codes: np.ndarray | None = None  # uint8 [n, k / block, block * bits / 8]
    scales: np.ndarray | None = None  # float32 [n * k / block]
    zero_points: np.ndarray | None = None  # uint8, packed per row as MatMulNBits wants; None: 2^(bits-1)
    bias: np.ndarray | None = None  # float32 [n]
    dense: np.ndarray | None = None  # float32 [n, k] when the weight is not quantized
    mins: np.ndarray | None = None  # float32 [n, k / block]: w = scale * (q - zp) - mins of its block

    def fusable_with(self, other: "QuantLinear") -> bool:
        same = lambda attr: (getattr(self, attr) is None) == (getattr(other, attr) is None)  # noqa: E731
        return (self.dense is None and other.dense is None and self.k == other.k and self.bits == other.bits
                and self.block == other.block and all(same(a) for a in ("zero_points", "bias", "mins")))

    @staticmethod
    def concat(parts: list["QuantLinear"]) -> "QuantLinear":
        """Stack linears that read the same input into one (rows concatenated)."""
        first = parts[0]
        cat = lambda attr: None if getattr(first, attr) is None else np.concatenate(  # noqa: E731
            [getattr(p, attr) for p in parts])
        return QuantLinear(n=sum(p.n for p in parts), k=first.k, bits=first.bits, block=first.block,
                           codes=cat("codes"), scales=cat("scales"), zero_points=cat("zero_points"),
                           bias=cat("bias"), mins=cat("mins"))

    def rows(self, start: int, stop: int) -> "QuantLinear":
        """Output features start..stop-1 as a linear of their own."""
        per_row = lambda a: None if a is None else a.reshape(self.n, -1)[start:stop].reshape(-1)  # noqa: E731
        return QuantLinear(n=stop - start, k=self.k, bits=self.bits, block=self.block,
                           codes=None if self.codes is None else self.codes[start:stop],
                           scales=per_row(self.scales), zero_points=per_row(self.zero_points),
                           bias=None if self.bias is None else self.bias[start:stop],
                           dense=None if self.dense is None else self.dense[start:stop],
                           mins=None if self.mins is None else self.mins[start:stop])

    @property
    def nbytes(self) -> int:
        arrays = (self.codes, self.scales, self.zero_points, self.bias, self.dense, self.mins)
        return int(sum(a.nbytes for a in arrays if a is not None))


class _Graph:
    """Nodes and initializers of a graph being written (shared with the Lo-Bi exporter)."""

    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes, self.inits, self.count = [], [], 0
        self.consts: dict = {}

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{hint}_{self.count}"

    def init(self, arr: np.ndarray, hint: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        arr = np.asarray(value, dtype)
        key = (arr.tobytes(), arr.shape, arr.dtype.str)
        if key not in self.consts:
            self.consts[key] = self.init(arr, "k")
        return self.consts[key]

    def op(self, op_type: str, inputs, outputs: int | list = 1, domain: str | None = None, **attrs):
        outs = outputs if isinstance(outputs, list) else [self.name(op_type) for _ in range(outputs)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), outs, name=outs[0], domain=domain, **attrs))
        return outs[0] if len(outs) == 1 else outs


class _Writer:
    """Emits the ops of one decoder; `linear(name)` supplies each layer's QuantLinear."""

    def __init__(self, arch: ArchSpec, linear: Callable[[str], QuantLinear], norm: Callable[[str], np.ndarray],
                 accuracy_level: int, taps: bool = False):
        self.g, self.arch, self.linear_of, self.norm_of = _Graph(), arch, linear, norm
        self.acc = accuracy_level
        self.sums: dict[tuple[str, int], str] = {}  # (x, block) -> block sums of x, computed once per x
        # with taps, each linear input's per-feature sum of squares over the call's rows is an extra
        # output (Lo-Bi weighs a weight's error by what its inputs carry): output name -> linears
        self.taps: dict[str, list[str]] | None = {} if taps else None

    def tap(self, x: str, names: list[str]) -> None:
        if self.taps is not None:
            out = f"sumsq_{len(self.taps)}"
            self.g.op("ReduceSumSquare", [x, self.g.const([0, 1])], [out], keepdims=0)
            self.taps[out] = list(names)

    def matmul(self, x: str, q: QuantLinear) -> str:
        g = self.g
        if q.dense is not None:
            y = g.op("MatMul", [x, g.init(q.dense.T.astype(np.float32), "W")])
            return y if q.bias is None else g.op("Add", [y, g.init(q.bias.astype(np.float32), "bias")])
        inputs = [x, g.init(q.codes, "B"), g.init(q.scales.astype(np.float32), "S")]
        inputs.append("" if q.zero_points is None else g.init(q.zero_points, "Z"))
        if q.bias is not None:
            inputs += ["", g.init(q.bias.astype(np.float32), "bias")]  # g_idx unused
        while inputs[-1] == "":
            inputs.pop()
        y = g.op("MatMulNBits", inputs, domain="com.microsoft", K=q.k, N=q.n, bits=q.bits, block_size=q.block,
                 accuracy_level=self.acc)
        if q.mins is None:
            return y
        minima = g.op("MatMul", [self.block_sums(x, q.block), g.init(np.ascontiguousarray(q.mins.T, np.float32), "M")])
        return g.op("Sub", [y, minima])

    def block_sums(self, x: str, block: int) -> str:
        """x summed over each block of `block` input features: [1, n, k / block]."""
        key = (x, block)
        if key not in self.sums:
            g = self.g
            blocks = g.op("Reshape", [x, g.const([0, 0, -1, block])])
            self.sums[key] = g.op("ReduceSum", [blocks, g.const([-1])], keepdims=0)
        return self.sums[key]

    def fused(self, x: str, names: list[str]) -> list[str]:
        """Linears reading the same x: one MatMulNBits when their formats match, then Split."""
        parts = [self.linear_of(n) for n in names]
        self.tap(x, names)
        if all(parts[0].fusable_with(p) for p in parts[1:]):
            y = self.matmul(x, QuantLinear.concat(parts))
            outs = self.g.op("Split", [y, self.g.const([p.n for p in parts])], outputs=len(parts), axis=-1)
            return outs if isinstance(outs, list) else [outs]
        return [self.matmul(x, p) for p in parts]

    def packed_qkv(self, x: str, names: list[str]) -> str:
        """q, k and v side by side on the last axis (GroupQueryAttention's packed input)."""
        parts = [self.linear_of(n) for n in names]
        self.tap(x, names)
        if all(parts[0].fusable_with(p) for p in parts[1:]):
            return self.matmul(x, QuantLinear.concat(parts))
        return self.g.op("Concat", [self.matmul(x, p) for p in parts], axis=-1)

    def rms(self, x: str, weight: str) -> str:
        return self.g.op("SimplifiedLayerNormalization", [x, self.g.init(self.norm_of(weight), "N")], axis=-1,
                         epsilon=self.arch.rms_eps, stash_type=1)

    def rotary_tables(self) -> tuple[str, str]:
        """cos and sin of every served position's rotary angles, computed in float64 (as llama.cpp's
        reference rope tables are) and stored as float32 [MAX_POSITIONS, head_dim / 2]."""
        a = self.arch
        rows = min(a.context_length, MAX_POSITIONS)
        angles = np.arange(rows, dtype=np.float64)[:, None] * a.inv_freq[None, :].astype(np.float64)
        return tuple(self.g.init((fn(angles) * a.attn_scaling).astype(np.float32), name)
                     for fn, name in ((np.cos, "cos"), (np.sin, "sin")))

    def attention(self, i: int, h: str, rotary: tuple[str, str]) -> str:
        g, a = self.g, self.arch
        pre = f"model.layers.{i}.self_attn"
        qkv = self.packed_qkv(h, [f"{pre}.q_proj", f"{pre}.k_proj", f"{pre}.v_proj"])
        last = g.op("Slice", [qkv, g.const([-1]), g.const([np.iinfo(np.int64).max]), g.const([1])])
        padded = g.op("Concat", [qkv, last], axis=1)  # the throw-away row: attention never runs on one row
        out, _, _ = g.op("GroupQueryAttention", [padded, "", "", f"past_key_{i}", f"past_value_{i}", "seqlens_k",
                                           "total_sequence_length", *rotary],
                   [g.name("attn"), f"present_key_{i}", f"present_value_{i}"], domain="com.microsoft",
                   num_heads=a.heads, kv_num_heads=a.kv_heads, do_rotary=1, rotary_interleaved=0,
                   scale=a.head_dim ** -0.5)
        ctx = g.op("Slice", [out, g.const([0]), g.const([-1]), g.const([1])])
        self.tap(ctx, [f"{pre}.o_proj"])
        return self.matmul(ctx, self.linear_of(f"{pre}.o_proj"))

    def mlp(self, i: int, h: str) -> str:
        g, pre = self.g, f"model.layers.{i}.mlp"
        gate, up = self.fused(h, [f"{pre}.gate_proj", f"{pre}.up_proj"])
        act = g.op("Mul", [g.op("Mul", [gate, g.op("Sigmoid", [gate])]), up])
        self.tap(act, [f"{pre}.down_proj"])
        return self.matmul(act, self.linear_of(f"{pre}.down_proj"))

    def residual_norm(self, x: str, delta: str, weight: str) -> tuple[str, str]:
        """(norm(x + delta), x + delta) in one fused op."""
        outs = self.g.op("SkipSimplifiedLayerNormalization", [x, delta, self.g.init(self.norm_of(weight), "N")],
                         [self.g.name("normed"), "", "", self.g.name("residual")], domain="com.microsoft",
                         epsilon=self.arch.rms_eps)
        return outs[0], outs[3]

    def model(self):
        g, a = self.g, self.arch
        rotary = self.rotary_tables()
        x = "inputs_embeds"
        h = self.rms(x, "model.layers.0.input_layernorm.weight")
        for i in range(a.n_layers):
            pre = f"model.layers.{i}"
            h, x = self.residual_norm(x, self.attention(i, h, rotary), f"{pre}.post_attention_layernorm.weight")
            after = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < a.n_layers else "model.norm.weight"
            h, x = self.residual_norm(x, self.mlp(i, h), after)
        h = g.op("Slice", [h, "logits_from", g.const([np.iinfo(np.int64).max]), g.const([1])])
        self.output_layer(h)

    def output_layer(self, h: str) -> None:
        """The vocabulary-wide output layer in slices of at most HEAD_SLICE_BYTES: ONNX Runtime
        repacks each weight while the original is still held, so one slice at a time bounds the
        load-time peak (measured +120 MB for the 0.5B model's 153 MB head in one piece)."""
        head = self.linear_of("lm_head")
        self.tap(h, ["lm_head"])
        step = max(1, int(head.n * HEAD_SLICE_BYTES / max(head.nbytes, 1)))
        parts = [self.matmul(h, head.rows(i, min(i + step, head.n))) for i in range(0, head.n, step)]
        self.g.op("Concat", parts, ["logits"], axis=-1) if len(parts) > 1 else self.g.op("Identity", parts, ["logits"])


def write_graph(arch: ArchSpec, linear: Callable[[str], QuantLinear], norm: Callable[[str], np.ndarray],
                accuracy_level: int = 4, producer: str = "hola_ros", taps: bool = False):
    """The decoder as an onnx.ModelProto. `linear(name)` and `norm(name)` are asked for the
    Hugging Face parameter names (model.layers.{i}.self_attn.q_proj, ..., lm_head). With `taps`
    the graph also returns each linear input's per-feature sum of squares (`_Writer.tap`), and
    its `taps` attribute maps those outputs to the linears that read them."""
    from onnx import TensorProto, helper

    w = _Writer(arch, linear, norm, accuracy_level, taps)
    w.model()
    kv = lambda name: helper.make_tensor_value_info(  # noqa: E731
        name, TensorProto.FLOAT, [1, arch.kv_heads, "capacity", arch.head_dim])
    inputs = [helper.make_tensor_value_info("inputs_embeds", TensorProto.FLOAT, [1, "n", arch.hidden]),
              helper.make_tensor_value_info("logits_from", TensorProto.INT64, [1]),
              helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, [1]),
              helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, [])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, "m", arch.vocab])]
    for i in range(arch.n_layers):
        inputs += [kv(f"past_key_{i}"), kv(f"past_value_{i}")]
        outputs += [kv(f"present_key_{i}"), kv(f"present_value_{i}")]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["k"]) for name in w.taps or {}]
    graph = helper.make_graph(w.g.nodes, "decoder", inputs, outputs, w.g.inits)
    model = helper.make_model(graph, ir_version=IR_VERSION, producer_name=producer,
                              opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    if w.taps:
        helper.set_model_props(model, {"taps": json.dumps(w.taps)})
    return model


def save_graph(model, path, data_name: str = "weights.data") -> None:
    """Write the graph with its tensors in one external file beside it (ORT then reads them
    without holding a second copy inside the protobuf)."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)
