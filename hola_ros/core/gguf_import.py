"""Turn a GGUF file into the ONNX Runtime engine's cache directory, keeping its quantized data.

Each weight keeps the GGUF's own codes wherever MatMulNBits (2, 4 or 8 bits) can hold them:
  Q8_0 -> 8-bit, block 32          Q5_0 -> 8-bit, block 32 (5-bit codes in 8-bit cells)
  Q4_0 -> 4-bit, block 32          Q6_K -> 8-bit, block 16 (scale = super-block d x sub-scale)
  Q4_K, Q4_1 -> 4-bit, block 32, with the block minima beside (onnx_graph)
  Q5_K, Q5_1 -> 8-bit, block 32 (5-bit codes in 8-bit cells), with the block minima beside
Float weights and other types are re-quantized to 8-bit per block of 32 (recorded as "near" in
meta.json; every other weight is "exact": code x scale - minimum gives the GGUF's dequantized
value, checked while converting).

The cache directory holds model.onnx + weights.data (the graph), embeddings.npy (the token
table's raw GGUF rows, dequantized row by row at run time), tokenizer files and meta.json.
Nothing here imports torch; the tokenizer export runs transformers in a child process.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from hola_ros.core.model_store import building
from hola_ros.core.onnx_graph import MAX_POSITIONS, ArchSpec, QuantLinear, save_graph, write_graph

FORMAT_VERSION = 2
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
SUPPORTED_ARCHS = ("llama", "qwen2")
# types whose weights are d x (integer code): block bytes and MatMulNBits bits
_SCALE_ONLY = {"Q8_0": (34, 8), "Q5_0": (22, 8), "Q4_0": (18, 4)}
# types whose weights are scale x (integer code) - minimum, per block of 32: block bytes and MatMulNBits bits
_SCALE_MIN = {"Q4_1": (20, 4), "Q5_1": (24, 8), "Q4_K": (144, 4), "Q5_K": (176, 8)}


class GGUFError(ValueError):
    """The GGUF cannot be served by this engine (the message says why)."""


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None or not f.data:
        return default
    import gguf

    if f.types and f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if f.types and f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def arch_spec(reader) -> tuple[str, ArchSpec]:
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise GGUFError(f"architecture {arch!r} is not supported by the ONNX engine (supported: "
                        f"{', '.join(SUPPORTED_ARCHS)}); load it with backend=torch")
    get = lambda key, default=None: _field(reader, f"{arch}.{key}", default)  # noqa: E731
    heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
    head_dim = int(get("attention.key_length", hidden // heads))
    rope_dims = int(get("rope.dimension_count", head_dim))
    if rope_dims != head_dim:
        raise GGUFError(f"partial rotary embeddings ({rope_dims} of {head_dim} dims) are not supported")
    scaling = get("rope.scaling.type", "none")
    inv_freq = 1.0 / (float(get("rope.freq_base", 10000.0)) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if scaling == "linear":
        inv_freq = inv_freq / float(get("rope.scaling.factor", 1.0))
    elif scaling not in ("none", None):
        raise GGUFError(f"rope scaling {scaling!r} is not supported by the ONNX engine")
    embd = _tensor(reader, "token_embd.weight")
    return arch, ArchSpec(n_layers=int(get("block_count")), hidden=hidden, heads=heads,
                          kv_heads=int(get("attention.head_count_kv", heads)), head_dim=head_dim,
                          vocab=int(embd.shape[1]), rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
                          inv_freq=inv_freq.astype(np.float32), context_length=int(get("context_length", 2048)))


def _tensor(reader, name):
    for t in reader.tensors:
        if t.name == name:
            return t
    return None


def _gguf_names(i: int) -> dict[str, str]:
    blk, hf = f"blk.{i}", f"model.layers.{i}"
    return {f"{hf}.self_attn.q_proj": f"{blk}.attn_q", f"{hf}.self_attn.k_proj": f"{blk}.attn_k",
            f"{hf}.self_attn.v_proj": f"{blk}.attn_v", f"{hf}.self_attn.o_proj": f"{blk}.attn_output",
            f"{hf}.mlp.gate_proj": f"{blk}.ffn_gate", f"{hf}.mlp.up_proj": f"{blk}.ffn_up",
            f"{hf}.mlp.down_proj": f"{blk}.ffn_down",
            f"{hf}.input_layernorm.weight": f"{blk}.attn_norm.weight",
            f"{hf}.post_attention_layernorm.weight": f"{blk}.ffn_norm.weight"}


def _unpermute_rows(n_rows: int, heads: int) -> np.ndarray:
    """llama GGUFs store q/k rows interleaved for llama.cpp's rotary layout; this index puts
    them back in the Hugging Face (rotate-half) order."""
    perm = np.arange(n_rows).reshape(heads, 2, n_rows // heads // 2).swapaxes(1, 2).reshape(n_rows)
    return np.argsort(perm)


def quant_linear(t) -> tuple[QuantLinear, str]:
    """A GGUF weight [n, k] as MatMulNBits data; the second value is 'exact' or 'near'."""
    from gguf import quants

    kind = t.tensor_type.name
    k, n = int(t.shape[0]), int(t.shape[1])
    raw = np.asarray(t.data)
    if kind in _SCALE_ONLY:
        block_bytes, bits = _SCALE_ONLY[kind]
        d = raw.reshape(n, -1, block_bytes)[:, :, :2].copy().view(np.float16)[..., 0].astype(np.float32)
        w = quants.dequantize(raw, t.tensor_type).reshape(n, -1, 32)
        return _codes(w, d, bits, 32), "exact"
    if kind in _SCALE_MIN:
        scale, minimum = _scale_and_min(raw, kind, n)
        w = quants.dequantize(raw, t.tensor_type).reshape(n, -1, 32)
        bits, code_bits = _SCALE_MIN[kind][1], 4 if kind.startswith("Q4") else 5
        return _codes(w, scale, bits, 32, minimum, code_bits), "exact"
    if kind == "Q6_K":
        blocks = raw.reshape(n, -1, 210)
        d = blocks[:, :, 208:210].copy().view(np.float16).astype(np.float32)  # [n, sb, 1]
        sub = blocks[:, :, 192:208].view(np.int8).astype(np.float32)  # [n, sb, 16]
        scale = (d * sub).reshape(n, -1)
        w = quants.dequantize(raw, t.tensor_type).reshape(n, -1, 16)
        return _codes(w, scale, 8, 16), "exact"
    w = quants.dequantize(raw, t.tensor_type) if kind not in ("F32", "F16", "BF16") else raw.astype(np.float32)
    return _requantize(np.asarray(w, np.float32).reshape(n, k)), "near"


# how a Lo-Bi engine may hold a linear: "exact" (the GGUF's codes, 4 or 8 bits), "q4" (a tensor the GGUF
# holds at more than 4 bits moved to 4 bits on the Q4_K layout: scale and minimum per block of 32, so it
# fuses with its exact 4-bit siblings), "q4_128" (every weight on 4 bits per block of 128 with an integer
# zero point: about a quarter of the bytes of the block-32 layout's scales and minima, measured 1.3-1.5x
# faster per row on this CPU, but requantized from the GGUF's own grid)
LOBI_FORMATS = ("exact", "q4", "q4_128")


def held_as(q: QuantLinear, fidelity: str, fmt: str) -> tuple[QuantLinear, str]:
    """The exact QuantLinear `q` in format `fmt` (LOBI_FORMATS), with its fidelity."""
    if fmt == "exact" or (fmt == "q4" and q.bits == 4):
        return q, fidelity
    if fmt == "q4":
        return requantize_with_minima(dequantized(q), 4), "near"
    if fmt == "q4_128":
        block = next(b for b in (128, 64, 32) if q.k % b == 0)
        return requantize_zero_point(dequantized(q), 4, block), "near"
    raise ValueError(f"unknown Lo-Bi format {fmt!r}; one of {', '.join(LOBI_FORMATS)}")


def requantize_with_minima(w: np.ndarray, bits: int = 4, block: int = 32, rows_per_chunk: int = 4096) -> QuantLinear:
    """`bits`-bit codes per block of `block` weights with a float scale and minimum each, w ~ scale x c -
    minimum (the layout of GGUF's Q4_1 / Q4_K, held like them: onnx_graph's minimum term), each block
    on the grid among a few shrunk ranges that gives it the least squared error. For a Lo-Bi engine,
    which moves an 8-bit tensor to 4 bits under a memory budget."""
    n, k = w.shape
    if k % block:
        raise GGUFError(f"a weight with {k} input features cannot be blocked by {block}")
    top = (1 << bits) - 1
    scales, minima, codes = [], [], []
    for start in range(0, n, rows_per_chunk):
        wb = np.asarray(w[start:start + rows_per_chunk], np.float32).reshape(-1, k // block, block)
        lo, hi = wb.min(-1, keepdims=True), wb.max(-1, keepdims=True)
        mid, half = (hi + lo) / 2, (hi - lo) / 2
        best = None
        for ratio in (1.0, 0.95, 0.9):
            low = mid - ratio * half
            scale = np.where(half > 0, 2 * ratio * half / top, 1.0).astype(np.float32)
            c = np.clip(np.rint((wb - low) / scale), 0, top)
            err = np.square(c * scale + low - wb).sum(-1, keepdims=True)
            if best is None:
                best = [err, scale, low, c]
            else:
                better = err < best[0]
                best = [np.where(better, new, old) for new, old in zip((err, scale, low, c), best)]
        _, scale, low, c = best
        scales.append(scale[..., 0])
        minima.append(-low[..., 0])
        codes.append(c.astype(np.uint8))
    scale, minimum = np.concatenate(scales), np.concatenate(minima)
    w_grid = np.concatenate(codes) * scale[..., None] - minimum[..., None]
    return _codes(w_grid, scale, bits, block, minimum, bits)


def dequantized(q: QuantLinear) -> np.ndarray:
    """The float weights [n, k] a MatMulNBits QuantLinear computes with."""
    codes = q.codes.reshape(q.n, -1)
    if q.bits == 4:
        codes = np.stack([codes & 15, codes >> 4], axis=-1).reshape(q.n, -1)
    blocks_per_row = q.k // q.block
    if q.zero_points is None:
        zero = np.full(q.scales.shape, 1 << (q.bits - 1), np.float32)
    elif q.bits == 4:  # two per byte, low nibble first, each row padded to a whole byte
        packed = q.zero_points.reshape(q.n, -1)
        zero = np.stack([packed & 15, packed >> 4], axis=-1).reshape(q.n, -1)[:, :blocks_per_row].astype(np.float32)
    else:
        zero = q.zero_points.astype(np.float32)
    blocks = codes.reshape(q.n, -1, q.block).astype(np.float32)
    w = (blocks - zero.reshape(q.n, -1, 1)) * q.scales.reshape(q.n, -1, 1)
    if q.mins is not None:
        w -= q.mins.reshape(q.n, -1, 1)
    return w.reshape(q.n, q.k)


def _scale_and_min(raw: np.ndarray, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each block of 32's scale and minimum [n, k / 32] (w = scale * q - minimum), from the GGUF
    block layout: Q4_1 / Q5_1 open with fp16 d and m (w = d q + m); Q4_K / Q5_K with fp16 d and dmin
    of a super-block of 256 and twelve bytes of 6-bit sub-block scales and minima."""
    from gguf.quants import Q4_K

    blocks = raw.reshape(n, -1, _SCALE_MIN[kind][0])
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)  # [n, blocks, 1]
    second = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    if kind in ("Q4_1", "Q5_1"):
        return d[..., 0], -second[..., 0]
    sub_scale, sub_min = Q4_K.get_scale_min(np.ascontiguousarray(blocks[..., 4:16]).reshape(-1, 12))
    shape = (n, -1, 8)
    scale = d * sub_scale.reshape(shape).astype(np.float32)
    minimum = second * sub_min.reshape(shape).astype(np.float32)
    return scale.reshape(n, -1), minimum.reshape(n, -1)


def _codes(w: np.ndarray, scale: np.ndarray, bits: int, block: int, minimum: np.ndarray | None = None,
           code_bits: int | None = None) -> QuantLinear:
    """Codes of weights that sit exactly on their block's grid, w = scale x (q - 2^(bits-1)) with
    MatMulNBits' default zero point. With a `minimum` per block (w = scale x c - minimum, c an
    unsigned `code_bits` integer) the codes are centred the same way (q = c - 2^(code_bits-1) +
    2^(bits-1)) and what is left, minimum - 2^(code_bits-1) x scale, is the minimum term computed
    beside the matmul (onnx_graph). Centred, the error of the kernel's int8 activations scales with
    the weights; with zero point 0 it would scale with the uncentred codes (measured 3x larger)."""
    n, nb, _ = w.shape
    safe = np.where(scale == 0, 1.0, scale)[..., None]
    zero = 1 << (bits - 1)
    mins = None
    if minimum is None:
        q = np.rint(w / safe).astype(np.int32) + zero
    else:
        mid = 1 << ((code_bits or bits) - 1)
        q = np.rint((w + minimum[..., None]) / safe).astype(np.int32) - mid + zero
        q[scale == 0] = zero  # a block of scale 0 is its minimum alone
        mins = (minimum.astype(np.float64) - mid * scale.astype(np.float64)).astype(np.float32)
    lift = 0.0 if mins is None else mins[..., None]
    off_grid = np.abs((q - zero) * scale[..., None] - lift - w).max() > 1e-6 * max(1.0, float(np.abs(w).max()))
    if off_grid or q.min() < 0 or q.max() >= 1 << bits:
        raise GGUFError("weights are not on their block scale grid: unexpected GGUF block layout")
    codes = q.astype(np.uint8)
    if bits == 4:
        codes = (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
    return QuantLinear(n=n, k=nb * block, bits=bits, block=block, codes=codes.reshape(n, nb, block * bits // 8),
                       scales=np.ascontiguousarray(scale.reshape(-1), np.float32),
                       mins=None if mins is None else np.ascontiguousarray(mins.reshape(n, nb)))


def _requantize(w: np.ndarray, block: int = 32) -> QuantLinear:
    """Asymmetric 8-bit codes per block of `block` (round to nearest), for weights without an
    exact map."""
    return requantize_zero_point(w, 8, block, ranges=(1.0,))


def requantize_zero_point(w: np.ndarray, bits: int, block: int, ranges=(1.0, 0.95, 0.9),
                          rows_per_chunk: int = 4096) -> QuantLinear:
    """Asymmetric `bits`-bit codes per block of `block` weights with a float scale and an integer zero
    point each (MatMulNBits' own asymmetric layout: no term beside the matmul), the block's range
    (always holding 0) shrunk by the ratio in `ranges` that gives it the least squared error."""
    n, k = w.shape
    if k % block:
        raise GGUFError(f"a weight with {k} input features cannot be blocked by {block}")
    top = (1 << bits) - 1
    scales, zeros, codes = [], [], []
    for start in range(0, n, rows_per_chunk):
        wb = np.asarray(w[start:start + rows_per_chunk], np.float32).reshape(-1, k // block, block)
        lo, hi = np.minimum(wb.min(-1, keepdims=True), 0.0), np.maximum(wb.max(-1, keepdims=True), 0.0)
        best = None
        for ratio in ranges:
            scale = np.where(hi > lo, (hi - lo) * ratio / top, 1.0).astype(np.float32)
            zp = np.clip(np.rint(-lo * ratio / scale), 0, top)
            c = np.clip(np.rint(wb / scale) + zp, 0, top)
            err = np.square((c - zp) * scale - wb).sum(-1, keepdims=True)
            if best is None:
                best = [err, scale, zp, c]
            else:
                better = err < best[0]
                best = [np.where(better, new, old) for new, old in zip((err, scale, zp, c), best)]
        scales.append(best[1][..., 0])
        zeros.append(best[2][..., 0].astype(np.uint8))
        codes.append(best[3].astype(np.uint8))
    c, zp = np.concatenate(codes), np.concatenate(zeros)
    if bits == 4:
        c = (c[..., 0::2] | (c[..., 1::2] << 4)).astype(np.uint8)
        zp = np.pad(zp, ((0, 0), (0, zp.shape[1] % 2)))
        zp = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    return QuantLinear(n=n, k=k, bits=bits, block=block, codes=c, scales=np.concatenate(scales).reshape(-1),
                       zero_points=zp.reshape(-1))


class GGUFWeights:
    """Serves the graph writer's Hugging Face names from the GGUF's tensors."""

    def __init__(self, reader, arch: str, spec: ArchSpec, formats: dict[str, str] | None = None):
        self.reader, self.arch, self.spec = reader, arch, spec
        self.formats = formats or {}  # Lo-Bi: linears held in another of LOBI_FORMATS than "exact"
        self.names = {"model.norm.weight": "output_norm.weight", "lm_head": "output",
                      "model.embed_tokens": "token_embd"}
        for i in range(spec.n_layers):
            self.names.update(_gguf_names(i))
        self.report: dict[str, dict[str, str]] = {}

    def norm(self, name: str) -> np.ndarray:
        return np.asarray(_tensor(self.reader, self.names[name]).data, np.float32).copy()

    def linear(self, name: str) -> QuantLinear:
        base = self.names[name]
        t = _tensor(self.reader, base + ".weight")
        if t is None and name == "lm_head":  # tied output layer
            t = _tensor(self.reader, "token_embd.weight")
        if t is None:
            raise GGUFError(f"the GGUF has no tensor {base}.weight")
        q, how = held_as(*quant_linear(t), self.formats.get(name, "exact"))
        bias = _tensor(self.reader, base + ".bias")
        if bias is not None:
            q.bias = np.asarray(bias.data, np.float32).copy()
        if self.arch == "llama" and name.endswith(("q_proj", "k_proj")):
            heads = self.spec.heads if name.endswith("q_proj") else self.spec.kv_heads
            q = _permute(q, _unpermute_rows(q.n, heads))
        held = (f"{q.bits}-bit/{q.block}" + (" + minima" if q.mins is not None else "")
                + (" + zero points" if q.zero_points is not None else ""))
        self.report[name] = {"type": t.tensor_type.name, "as": held, "fidelity": how}
        return q


def _permute(q: QuantLinear, rows: np.ndarray) -> QuantLinear:
    per_row = lambda a: None if a is None else a.reshape(q.n, -1)[rows].reshape(-1)  # noqa: E731
    return QuantLinear(n=q.n, k=q.k, bits=q.bits, block=q.block, codes=q.codes[rows], scales=per_row(q.scales),
                       zero_points=per_row(q.zero_points), bias=None if q.bias is None else q.bias[rows],
                       mins=None if q.mins is None else q.mins[rows])


def special_tokens(reader) -> dict:
    keys = ("bos_token_id", "eos_token_id", "eot_token_id", "eom_token_id", "padding_token_id")
    found = {k: _field(reader, f"tokenizer.ggml.{k}") for k in keys}
    return {k: int(v) for k, v in found.items() if v is not None}


def convert(gguf_path, out_dir, accuracy_level: int = 4, writer: str = "", formats: dict[str, str] | None = None,
            taps: bool = False, tokenizer_from: Path | None = None) -> dict:
    """Write the engine cache for `gguf_path` into `out_dir` (created atomically); returns meta.
    `writer` identifies the converter's version (recorded, so stale engines can be removed).
    Lo-Bi: `formats` holds the named linears in another of LOBI_FORMATS (requantized, 'near');
    `taps` adds its calibration outputs (onnx_graph.write_graph); `tokenizer_from`: an engine of the
    same GGUF whose tokenizer files are copied instead of exported again."""
    import gguf

    gguf_path, out_dir = Path(gguf_path).resolve(), Path(out_dir)
    with building(out_dir, "meta.json") as tmp:
        reader = gguf.GGUFReader(str(gguf_path))
        arch, spec = arch_spec(reader)
        weights = GGUFWeights(reader, arch, spec, formats)
        model = write_graph(spec, weights.linear, weights.norm, accuracy_level=accuracy_level,
                            producer=f"hola_ros.gguf_import:{gguf_path.name}", taps=taps)
        save_graph(model, tmp / "model.onnx")
        del model
        embd = _tensor(reader, "token_embd.weight")
        np.save(tmp / "embeddings.npy", np.asarray(embd.data))
        if tokenizer_from is None:
            _export_tokenizer(gguf_path, tmp)
        else:
            for name in TOKENIZER_FILES:
                if (Path(tokenizer_from) / name).is_file():
                    shutil.copy2(Path(tokenizer_from) / name, tmp / name)
        st = gguf_path.stat()
        meta = {"format": "hola-gguf-onnx", "version": FORMAT_VERSION, "architecture": arch,
                "name": _field(reader, "general.name", gguf_path.stem),
                "source": {"path": str(gguf_path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns},
                "spec": {**{k: v for k, v in spec.__dict__.items() if k != "inv_freq"},
                         "inv_freq": spec.inv_freq.tolist()},
                "max_positions": min(spec.context_length, MAX_POSITIONS),
                "embedding_type": embd.tensor_type.name, "accuracy_level": accuracy_level, "writer": writer,
                "special_tokens": special_tokens(reader), "weights": weights.report}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return json.loads((out_dir / "meta.json").read_text())


def _export_tokenizer(gguf_path: Path, out: Path) -> None:
    """transformers builds the fast tokenizer from the GGUF; it imports torch, so it runs in a
    child process and the serving process only ever reads tokenizer.json."""
    cmd = [sys.executable, "-m", "hola_ros.core.gguf_import", "tokenizer", str(gguf_path), str(out)]
    package_root = str(Path(__file__).resolve().parents[2])  # this copy of hola_ros, wherever it runs from
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error",
           "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    if done.returncode != 0 or not (out / "tokenizer.json").is_file():
        raise GGUFError(f"tokenizer export failed: {done.stderr.strip()[-800:]}")


def _tokenizer_main(gguf_path: str, out: str) -> None:
    from transformers import AutoTokenizer

    path = Path(gguf_path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.save_pretrained(out)
    template = getattr(tok, "chat_template", None)
    if template and not (Path(out) / "chat_template.jinja").is_file():
        (Path(out) / "chat_template.jinja").write_text(template)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "tokenizer":
        _tokenizer_main(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit("usage: python -m hola_ros.core.gguf_import tokenizer GGUF OUT_DIR")
