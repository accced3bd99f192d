"""Running an onnx_graph decoder on ONNX Runtime: the session, and one sequence's KV cache.

Kept apart from onnx_graph (the converter) so that changing how engines run never invalidates
the converted engines in the cache.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hola_ros.core.memory import drop_file_pages, trim_heap


def ort_session(onnx_path, threads: int | None, providers: list | None = None, provider_options=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"],
                                provider_options=provider_options)
    for data in Path(onnx_path).parent.glob("*.data"):  # repacked tensors' file pages: not read again
        drop_file_pages(data)
    trim_heap()
    return sess


@dataclass
class OrtKVSession:
    """One sequence's KV cache (numpy arrays fed back into the graph); rollback slices them."""

    # prefill chunk: 128 rows prefilled as fast as 256 on the 0.5B (304-478-token prompts) and left
    # ONNX Runtime's arena 66 MB smaller after six answers (docs/engine.md, Memory)
    MAX_ROWS = 128

    sess: object
    embed: Callable[[list[int]], np.ndarray]  # token ids -> [n, hidden] float32
    n_layers: int
    kv_heads: int
    head_dim: int
    length: int = 0
    past: list = field(default_factory=list)

    def __post_init__(self):
        self.names = [f"past_{kind}_{i}" for i in range(self.n_layers) for kind in ("key", "value")]
        self.past = [np.zeros((1, self.kv_heads, 0, self.head_dim), np.float32)] * len(self.names)

    def forward(self, tokens: list[int], last_only: bool = False) -> np.ndarray:
        """Append tokens; float32 logits [n, vocab] (or [1, vocab] with last_only). Long inputs run
        in chunks of MAX_ROWS: rows are computed independently of the call's size, so chunking
        changes no result, and ONNX Runtime's buffers stay sized for a chunk, not a whole prompt."""
        if not tokens:
            raise ValueError("forward needs at least one token")
        chunks = [tokens[i:i + self.MAX_ROWS] for i in range(0, len(tokens), self.MAX_ROWS)]
        rows = [self._run(chunk, last_only) for chunk in chunks]
        return rows[-1] if last_only else np.concatenate(rows) if len(rows) > 1 else rows[0]

    def _run(self, tokens: list[int], last_only: bool) -> np.ndarray:
        feeds = dict(zip(self.names, self.past))
        feeds.update(self._inputs(tokens, last_only))
        out = self.sess.run(None, feeds)
        self.past = out[1:]
        self.length += len(tokens)
        return self._logits(out[0][0], last_only)

    def _inputs(self, tokens: list[int], last_only: bool) -> dict:
        return {"inputs_embeds": self.embed(tokens)[None],
                "logits_from": np.asarray([len(tokens) - 1 if last_only else 0], np.int64)}

    def _logits(self, rows: np.ndarray, last_only: bool) -> np.ndarray:
        return rows

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} (cache holds {self.length})")
        if length < self.length:
            self.past = [np.ascontiguousarray(p[:, :, :length]) for p in self.past]
            self.length = length

    def close(self) -> None:
        self.past = []
        self.length = 0
