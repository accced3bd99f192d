"""TensorRT engine built from the artifact's dense ONNX export, and a KV session that runs it.

Engines are specific to the TensorRT version and the GPU, so they are cached under the
artifact's trt/ folder keyed by the ONNX file's sha256, the precision, the TensorRT version
and the GPU's compute capability: a changed export or another device builds a new engine,
an unchanged one loads in milliseconds. Weights enter TensorRT dequantized; the engine
computes in fp16 ("fp16", the default) or fp32. TensorRT is not installable on the
development machines, so only this module's cache/key logic is tested there.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

PRECISIONS = ("fp16", "fp32")


def available() -> bool:
    if importlib.util.find_spec("tensorrt") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def engine_key(onnx_sha256: str, precision: str, trt_version: str, device: str, profile: str = "") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    tag = hashlib.sha256(f"{trt_version}|{device}|{profile}".encode()).hexdigest()[:8]
    return f"{onnx_sha256[:16]}-{precision}-{tag}"


def engine_path(path, onnx_sha256: str, precision: str, trt_version: str, device: str, profile: str = "") -> Path:
    return Path(path) / "trt" / f"{engine_key(onnx_sha256, precision, trt_version, device, profile)}.engine"


def _device() -> str:
    import torch

    major, minor = torch.cuda.get_device_capability()
    return f"sm{major}{minor}"


def build_engine(path, entry: dict, precision: str = "fp16", max_tokens: int = 64, max_context: int | None = None,
                 log=print) -> Path:
    """Build (or find in the cache) the engine for the dense export `entry` of artifact `path`."""
    import tensorrt as trt
    from transformers import AutoConfig

    from .arch import head_dim

    cfg = AutoConfig.from_pretrained(str(path)).get_text_config(decoder=True)
    kv = (cfg.num_key_value_heads, head_dim(cfg))
    # the cache may hold the whole context; prompts longer than max_tokens are fed in chunks
    max_context = int(max_context or min(getattr(cfg, "max_position_embeddings", 4096) or 4096, 8192))
    target = engine_path(path, entry["sha256"], precision, trt.__version__, _device(), f"{max_tokens}x{max_context}")
    if target.is_file():
        return target
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(Path(path) / entry["path"])):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {entry['path']}: {errors}")
    config = builder.create_builder_config()
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape("input_ids", (1, 1), (1, 8), (1, max_tokens))
    for i in range(cfg.num_hidden_layers):
        for kind in ("key", "value"):
            profile.set_shape(f"past_{kind}_{i}", (1, *kv[:1], 0, kv[1]), (1, kv[0], 256, kv[1]),
                              (1, kv[0], max_context, kv[1]))
    config.add_optimization_profile(profile)
    log(f"building TensorRT {precision} engine for {entry['path']} (minutes on a Jetson)")
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(bytes(blob))
    tmp.replace(target)
    target.with_suffix(".json").write_text(json.dumps(
        {"onnx": entry["path"], "onnx_sha256": entry["sha256"], "precision": precision, "tensorrt": trt.__version__,
         "device": _device(), "max_tokens": max_tokens, "max_context": max_context}, indent=2))
    return target


class TrtKVSession:
    """The KV cache lives in CUDA tensors (torch) bound directly to the engine's I/O. Inputs
    longer than the optimisation profile's token limit run as consecutive chunks."""

    def __init__(self, engine, n_layers: int, kv_heads: int, head_dim: int):
        import torch

        self.engine, self.ctx = engine, engine.create_execution_context()
        self.names = [f"{kind}_{i}" for i in range(n_layers) for kind in ("key", "value")]
        self.past = [torch.zeros((1, kv_heads, 0, head_dim), device="cuda") for _ in self.names]
        self.length = 0
        self.max_tokens = int(engine.get_tensor_profile_shape("input_ids", 0)[2][1])
        self.max_context = int(engine.get_tensor_profile_shape(f"past_{self.names[0]}", 0)[2][2])

    def forward(self, tokens: list[int], last_only: bool = False, rows_from: int = 0):
        import numpy as np

        n = len(tokens)
        if n == 0:
            raise ValueError("forward needs at least one token")
        if self.length + n > self.max_context + self.max_tokens:
            raise ValueError(f"{self.length + n} tokens exceed the TensorRT engine's context "
                             f"({self.max_context} cached + {self.max_tokens} new; rebuild with a larger profile)")
        chunks = [tokens[i:i + self.max_tokens] for i in range(0, n, self.max_tokens)]
        rows = [self._run(chunk) for chunk in chunks]
        return rows[-1][-1:] if last_only else np.concatenate(rows)[rows_from:]

    def _shape(self, name: str, shape: tuple) -> None:
        if not self.ctx.set_input_shape(name, shape):
            raise RuntimeError(f"TensorRT refused shape {shape} for {name} (outside the engine's optimisation profile)")

    def _run(self, tokens: list[int]):
        import torch

        ids = torch.tensor([tokens], dtype=torch.int64, device="cuda")
        ctx = self.ctx
        self._shape("input_ids", tuple(ids.shape))
        ctx.set_tensor_address("input_ids", ids.data_ptr())
        keep = [ids]
        for name, past in zip(self.names, self.past):
            if past.numel() == 0:  # engines want a valid address even for an empty tensor
                past = torch.empty((*past.shape[:2], 1, past.shape[3]), device="cuda")[:, :, :0]
            keep.append(past)
            self._shape(f"past_{name}", tuple(past.shape))
            ctx.set_tensor_address(f"past_{name}", past.data_ptr())
        outputs = {}
        for name in ["logits"] + [f"present_{n_}" for n_ in self.names]:
            out = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=torch.float32, device="cuda")
            ctx.set_tensor_address(name, out.data_ptr())
            outputs[name] = out
        stream = torch.cuda.current_stream()
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        stream.synchronize()
        self.past = [outputs[f"present_{n_}"] for n_ in self.names]
        self.length += len(tokens)
        return outputs["logits"][0].float().cpu().numpy()

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} (cache holds {self.length})")
        if length < self.length:
            self.past = [p[:, :, :length].contiguous() for p in self.past]
            self.length = length

    def close(self) -> None:
        self.past = []
        self.length = 0


def session_factory(path, manifest: dict, threads: int | None = None, precision: str = "fp16"):
    import tensorrt as trt
    from transformers import AutoConfig

    from .arch import head_dim

    entry = manifest.get("exports", {}).get("onnx_dense")
    if not entry:
        raise RuntimeError(f"{path} has no dense ONNX export for TensorRT; rebuild with --export tensorrt")
    engine_file = build_engine(path, entry, precision)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
    cfg = AutoConfig.from_pretrained(str(path)).get_text_config(decoder=True)
    dims = (cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim(cfg))

    def factory():
        return TrtKVSession(engine, *dims)

    factory.engine_path = str(engine_file)
    return factory
