"""One entry for every place that loads a model from a parameter: a model spec (default name,
Hugging Face directory, .gguf file) or a Lo-Bi artifact directory."""
from hola_ros.core.lobi import is_artifact, load_artifact
from hola_ros.core.models import load_model

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")


def load_engine(spec: str, dtype: str = "float32", threads: int | None = None, backend: str = "auto",
                packed: bool = True):
    """LoadedModel for `spec`; a Lo-Bi artifact runs on `backend` and is checked against the base
    model its manifest names (a mismatch is refused)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if is_artifact(spec):
        return load_artifact(spec, backend=backend, threads=threads)
    return load_model(spec, dtype=dtype, threads=threads, packed=packed)
