"""Lo-Bi: low-rank structured compression + budgeted per-block bit widths, shipped as a
versioned artifact with ONNX Runtime / TensorRT engines. No ROS here.

    build_artifact(out, budget_mb, model=..., calib=...) -> manifest
    load_artifact(path, backend="auto"|"torch"|"onnxruntime"|"tensorrt") -> LoadedModel
    is_artifact(path) -> bool
"""
from .artifact import ArtifactError, BaseMismatch, is_artifact, load_artifact, read_manifest


def build_artifact(*args, **kwargs):
    from .build import build_artifact as _build

    return _build(*args, **kwargs)


__all__ = ["ArtifactError", "BaseMismatch", "build_artifact", "is_artifact", "load_artifact", "read_manifest"]
