"""The embedder's backends: onnxruntime gives sentence-transformers' vectors from a cached export
for queries, large calls stay on torch; bad backends are refused."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hola_ros.core.retrieval import embedder as embedder_module  # noqa: E402
from hola_ros.core.retrieval.embedder import Embedder  # noqa: E402

TEXTS = [
    "Dock CD-5 is on level 2.",
    "The robot shows error E-214 after the lidar was cleaned; what should the operator check first, "
    "and when must the maintenance team be called instead of restarting the navigation stack?",
    "hi",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Überprüfe den Akku. 電池を確認してください。",
]


@pytest.fixture(scope="module")
def both():
    return Embedder.shared(backend="torch"), Embedder.shared(backend="onnxruntime")


def test_onnxruntime_vectors_equal_sentence_transformers_in_input_order(both):
    torch_embedder, ort_embedder = both
    assert (torch_embedder.backend, ort_embedder.backend) == ("torch", "onnxruntime")
    a, b = torch_embedder.encode(TEXTS), ort_embedder.encode(TEXTS)
    assert a.shape == b.shape == (len(TEXTS), torch_embedder.dim)
    assert np.abs(a - b).max() < 1e-5
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    # a padded batch gives each text its own vector
    singles = np.concatenate([ort_embedder.encode([t]) for t in TEXTS])
    assert np.abs(singles - b).max() < 1e-5
    assert ort_embedder.encode([]).shape == (0, ort_embedder.dim)


def test_large_calls_run_on_torch(both, monkeypatch):
    torch_embedder, ort_embedder = both
    texts = [f"passage number {i} about dock CD-{i}" for i in range(embedder_module.ONNX_MAX_TEXTS + 1)]

    class NoRun:
        def run(self, *args, **kwargs):
            raise AssertionError("a corpus-sized call went to onnxruntime")

    monkeypatch.setattr(ort_embedder, "_session", NoRun())
    assert np.abs(ort_embedder.encode(texts) - torch_embedder.encode(texts)).max() < 1e-6


def test_export_is_cached_and_reused(both, monkeypatch):
    _, ort_embedder = both
    cached = embedder_module._onnx_cache_file(ort_embedder.path)
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache is current")

    monkeypatch.setattr("torch.onnx.export", no_export)
    again = Embedder(ort_embedder.path, backend="onnxruntime")
    assert again.backend == "onnxruntime" and cached.stat().st_mtime_ns == mtime


def test_auto_falls_back_to_torch_with_the_reason_and_explicit_onnxruntime_fails_clearly(both, monkeypatch,
                                                                                       tmp_path):
    monkeypatch.setenv("HOLA_ROS_CACHE", str(tmp_path))  # no cached export: the broken one runs

    def broken_export(*args, **kwargs):
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr("torch.onnx.export", broken_export)
    path = both[0].path
    fallback = Embedder(path, backend="auto")
    assert fallback.backend == "torch" and "cannot trace this model" in fallback.fallback_reason
    with pytest.raises(RuntimeError, match="cannot run embedder .* on onnxruntime"):
        Embedder(path, backend="onnxruntime")
    assert not list(tmp_path.rglob("*.onnx"))  # no half-written export left behind


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="embedder backend must be one of"):
        Embedder(backend="tensorflow")
