"""Running an onnx_graph decoder on ONNX Runtime: the session, and one sequence's KV cache.

Kept apart from onnx_graph (the converter) so that changing how engines run never invalidates
the converted engines in the cache.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hola_ros.core.memory import drop_file_pages, trim_heap


def ort_session(onnx_path, threads: int | None, providers: list | None = None, provider_options=None,
                spinning: bool = True):
    """spinning=False: the session's threads sleep as soon as a call ends instead of spinning for the
    next one; what a drafter's session needs, whose calls alternate with the target's on the same
    cores (spinning, each stole the other's cores: docs/engine.md, "Two engines on two cores")."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"],
                                provider_options=provider_options)
    for data in Path(onnx_path).parent.glob("*.data"):  # repacked tensors' file pages: not read again
        drop_file_pages(data)
    trim_heap()
    return sess


class OrtKVSession:
    """One sequence's KV cache for an onnx_graph decoder: a buffer per layer for keys and one for
    values that GroupQueryAttention writes in place (bound as both the past input and the present
    output), so a step copies nothing and a rollback only moves the length. The buffers grow
    (copying what they hold) when a call needs more positions than they have."""

    # prefill chunk: 128 rows prefilled as fast as 256 on the 0.5B (304-478-token prompts) and keep
    # ONNX Runtime's activation buffers sized for a chunk, not a whole prompt (docs/engine.md, Memory)
    MAX_ROWS = 128
    GROW = 256  # positions are added in steps of this many

    def __init__(self, sess, embed: Callable[[list[int]], np.ndarray], n_layers: int, kv_heads: int,
                 head_dim: int, max_positions: int, extra_outputs: tuple[str, ...] = (), row_multiple: int = 1):
        self.sess, self.embed = sess, embed
        # every call is padded to a multiple of this many rows with copies of its last token
        # (engines.characterize decides)
        self.row_multiple = row_multiple
        self.n_layers, self.kv_heads, self.head_dim, self.max_positions = n_layers, kv_heads, head_dim, max_positions
        self.length = 0
        self.buffers: list[np.ndarray] = []  # past_key_0, past_value_0, past_key_1, ...
        self.binding = None
        # other graph outputs fetched with every call (a Lo-Bi calibration graph's taps): their
        # values after the last call
        self.extra_outputs, self.extra = tuple(extra_outputs), {}

    def forward(self, tokens: list[int], last_only: bool = False, rows_from: int = 0) -> np.ndarray:
        """Append tokens; float32 logits of rows rows_from.. [n - rows_from, vocab] (the last row
        alone with last_only). Long inputs run in chunks of MAX_ROWS: rows are computed
        independently of the call's size, so chunking changes no result."""
        if not tokens:
            raise ValueError("forward needs at least one token")
        if self.length + len(tokens) + self.row_multiple > self.max_positions:  # room for the throw-away rows
            raise ValueError(f"{self.length + len(tokens)} positions exceed this engine's "
                             f"{self.max_positions - self.row_multiple}")
        first = len(tokens) - 1 if last_only else rows_from
        rows = []
        for start in range(0, len(tokens), self.MAX_ROWS):
            chunk = tokens[start:start + self.MAX_ROWS]
            logits = self._run(chunk, max(0, min(first - start, len(chunk) - 1)))
            if start + len(chunk) > first:
                rows.append(logits)
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def _run(self, tokens: list[int], logits_from: int) -> np.ndarray:
        n = len(tokens)
        fed = tokens + tokens[-1:] * (-n % self.row_multiple)  # padding rows come after: no real row sees them
        self._reserve(self.length + len(fed) + 1)
        b = self.binding
        b.bind_cpu_input("inputs_embeds", np.ascontiguousarray(self.embed(fed)[None], np.float32))
        b.bind_cpu_input("logits_from", np.asarray([logits_from], np.int64))
        b.bind_cpu_input("seqlens_k", np.asarray([self.length + len(fed)], np.int32))
        b.bind_cpu_input("total_sequence_length", np.asarray(self.length + len(fed) + 1, np.int32))
        b.bind_output("logits")
        self.sess.run_with_iobinding(b)
        self.length += n
        values = b.get_outputs()
        self.extra = {name: values[1 + i].numpy() for i, name in enumerate(self.extra_outputs)}
        return values[0].numpy()[0][:n - logits_from]

    def _reserve(self, positions: int) -> None:
        """Buffers for at least `positions` positions (what they hold is kept)."""
        capacity = self.buffers[0].shape[2] if self.buffers else 0
        if positions <= capacity:
            return
        capacity = min(-(-(positions + self.GROW // 2) // self.GROW) * self.GROW, self.max_positions)
        self._adopt([self._grown(old, capacity) for old in self.buffers] if self.buffers else
                    [np.zeros((1, self.kv_heads, capacity, self.head_dim), np.float32)
                     for _ in range(2 * self.n_layers)])

    def _grown(self, old: np.ndarray, capacity: int) -> np.ndarray:
        new = np.zeros((1, self.kv_heads, capacity, self.head_dim), np.float32)
        new[:, :, :self.length] = old[:, :, :self.length]
        return new

    def _adopt(self, buffers: list[np.ndarray]) -> None:
        import onnxruntime as ort

        self.buffers = buffers
        b = self.sess.io_binding()
        b.bind_output("logits")  # first, so get_outputs()[0] is the logits, then the extra outputs
        for name in self.extra_outputs:
            b.bind_output(name)
        for i, buf in enumerate(buffers):
            value = ort.OrtValue.ortvalue_from_numpy(buf)
            kind, layer = ("key", "value")[i % 2], i // 2
            b.bind_ortvalue_input(f"past_{kind}_{layer}", value)
            b.bind_ortvalue_output(f"present_{kind}_{layer}", value)
        self.binding = b

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} (cache holds {self.length})")
        self.length = length  # rows past it are overwritten by the next call, never read

    def fork(self) -> "OrtKVSession":
        """An independent copy holding the same positions, its buffers sized for them."""
        twin = OrtKVSession(self.sess, self.embed, self.n_layers, self.kv_heads, self.head_dim, self.max_positions,
                            self.extra_outputs, self.row_multiple)
        twin.length = self.length
        if self.buffers:
            capacity = min(-(-(self.length + 1 + self.GROW // 2) // self.GROW) * self.GROW, self.max_positions)
            twin._adopt([self._grown(old, capacity) for old in self.buffers])
        return twin

    def close(self) -> None:
        self.buffers, self.binding = [], None
        self.length = 0


@dataclass
class ConcatKVSession:
    """One sequence's KV cache fed back into a graph as inputs and outputs (the Lo-Bi exports'
    graphs, whose attention concatenates past and new rows); rollback slices them."""

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

    def forward(self, tokens: list[int], last_only: bool = False, rows_from: int = 0) -> np.ndarray:
        if not tokens:
            raise ValueError("forward needs at least one token")
        chunks = [tokens[i:i + self.MAX_ROWS] for i in range(0, len(tokens), self.MAX_ROWS)]
        rows = [self._run(chunk, last_only) for chunk in chunks]
        return rows[-1] if last_only else np.concatenate(rows)[rows_from:]

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

    def fork(self) -> "ConcatKVSession":
        return dataclasses.replace(self, past=[np.array(p) for p in self.past])

    def close(self) -> None:
        self.past = []
        self.length = 0
