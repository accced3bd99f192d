"""The embedder's backends: onnxruntime + tokenizers gives sentence-transformers' vectors without
torch in the process (the export runs once, in a child process, and is cached); bad backends and
failed exports are handled clearly."""
import os
import subprocess
import sys

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
    "  Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.  ",
    "Überprüfe den Akku. 電池を確認してください。",
    "word " * 400,  # longer than the model's max_seq_length: truncated the same way
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
    # batches sorted by length and padded give each text its own vector
    singles = np.concatenate([ort_embedder.encode([t]) for t in TEXTS])
    assert np.abs(singles - b).max() < 1e-5
    assert ort_embedder.encode([]).shape == (0, ort_embedder.dim)
    assert ort_embedder.count_tokens("E-214 docking") == torch_embedder.count_tokens("E-214 docking") > 2


def test_serving_process_imports_no_torch(both):
    code = ("import sys; from hola_ros.core.retrieval.embedder import Embedder; "
            "e = Embedder(backend='onnxruntime'); e.encode(['where is CD-5?']); "
            "print(e.backend, 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["onnxruntime", "False", "False"]


def test_export_is_cached_and_reused(both, monkeypatch):
    _, ort_embedder = both
    cached = embedder_module.onnx_cache_file(ort_embedder.path)
    assert cached.is_file()
    mtime = cached.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache is current")

    monkeypatch.setattr(embedder_module.subprocess, "run", no_export)
    again = Embedder(ort_embedder.path, backend="onnxruntime")
    assert again.backend == "onnxruntime" and cached.stat().st_mtime_ns == mtime


def test_a_failed_export_falls_back_with_the_reason_or_fails_clearly(both, monkeypatch, tmp_path):
    monkeypatch.setenv("HOLA_ROS_CACHE", str(tmp_path))  # no cached export: the child process runs

    def broken_child(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "Traceback ...\nRuntimeError: cannot trace this model")

    monkeypatch.setattr(embedder_module.subprocess, "run", broken_child)
    path = both[0].path
    fallback = Embedder(path, backend="auto")
    assert fallback.backend == "torch" and "cannot trace this model" in fallback.fallback_reason
    with pytest.raises(RuntimeError, match="cannot run embedder .* on onnxruntime: ONNX export .* failed"):
        Embedder(path, backend="onnxruntime")
    assert not list(tmp_path.rglob("*.onnx"))


def test_unknown_backend_and_bad_directory_are_refused(tmp_path):
    with pytest.raises(ValueError, match="embedder backend must be one of"):
        Embedder(backend="tensorflow")
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model directory"):
        Embedder(tmp_path)


def test_the_packaged_model_keeps_its_name_in_another_environment(tmp_path):
    """An index records the embedder's path; built from another checkout's venv, that path is another
    copy of the same packaged model, and loading the index must still find the names equal."""
    packaged = embedder_module.default_embedder_path().resolve()
    elsewhere = tmp_path / "other-venv" / "site-packages" / packaged.parent.name / packaged.name
    assert embedder_module.model_name(elsewhere) == embedder_module.DEFAULT_EMBEDDER
    assert embedder_module.model_name(tmp_path / "my-finetuned-model") == "my-finetuned-model"
