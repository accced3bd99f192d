"""The versioned Lo-Bi artifact: a directory with manifest.json, weights.safetensors (quantized
tensors), the model config and tokenizer, and optional engine exports under onnx/ and trt/.

Loading verifies the manifest against the base model (sha256 of its config and weights) so a
drafter is never paired with a target it was not compressed from.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from hola_ros.core.models import LoadedModel

FORMAT = "hola-lobi"
VERSION = 1  # torch build: quantized tensors in safetensors, exported to its own graphs
ENGINE_VERSION = 2  # engine build (engine_build): an ONNX Runtime engine directory, served as it is
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"


class ArtifactError(RuntimeError):
    """Not a usable Lo-Bi artifact."""


class BaseMismatch(ArtifactError):
    """The artifact was built from another base model."""


def is_artifact(path) -> bool:
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text())
    except (OSError, ValueError, TypeError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def read_manifest(path) -> dict:
    path = Path(path)
    if not is_artifact(path):
        raise ArtifactError(f"{path} is not a Lo-Bi artifact (no {MANIFEST} with format {FORMAT!r})")
    manifest = json.loads((path / MANIFEST).read_text())
    if manifest.get("version") not in (VERSION, ENGINE_VERSION):
        raise ArtifactError(f"{path}: manifest version {manifest.get('version')} is not supported "
                            f"(expected {VERSION} or {ENGINE_VERSION})")
    return manifest


def write_manifest(path, manifest: dict) -> None:
    tmp = Path(path) / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(Path(path) / MANIFEST)


_HASHES: dict[tuple, str] = {}


def model_dir_sha256(path) -> str:
    """sha256 over a Hugging Face model directory's config.json and weight files."""
    path = Path(path)
    files = [path / "config.json"] + sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
    files = [f for f in files if f.is_file()]
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _HASHES:
        h = hashlib.sha256()
        for f in files:
            h.update(f.name.encode() + b"\0")
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 22), b""):
                    h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def check_base(path, manifest: dict, base=None) -> str:
    """Compare the artifact's base hash with `base` (a spec, a LoadedModel or None for the
    base recorded in the manifest); return the base directory, raise BaseMismatch otherwise."""
    from hola_ros.core.models import resolve_path

    recorded = manifest["base"]
    if isinstance(base, LoadedModel):
        spec = base.source
    else:
        spec = base or recorded.get("spec") or recorded["id"]
    try:
        base_dir = resolve_path(spec)
    except FileNotFoundError as e:
        raise ArtifactError(f"cannot check artifact {path} against its base model {spec!r}: {e}") from e
    digest = model_dir_sha256(base_dir)
    if digest != recorded["sha256"]:
        raise BaseMismatch(
            f"Lo-Bi artifact {path} was built from base model {recorded['id']!r} "
            f"(sha256 {recorded['sha256'][:12]}...), but the base model given is {spec!r} "
            f"(sha256 {digest[:12]}...); rebuild it with `hola-ros lobi build --model {spec}`")
    return str(base_dir)


def load_weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / WEIGHTS))


def dequantized_state(manifest: dict, tensors: dict) -> dict:
    """fp32 state dict of the compressed model (low-rank layers as `.a.weight` / `.b.weight`)."""
    from .quant import QTensor

    group = manifest["quant"]["group_size"]
    state = {k: tensors[k].float() for k in manifest["fp32"]}
    for name, layer in manifest["layers"].items():
        if layer["rank"]:
            for part in ("a", "b"):
                state[f"{name}.{part}.weight"] = QTensor.from_tensors(tensors, f"{name}.{part}", group).dequantize()
        elif not layer.get("tied"):
            state[f"{name}.weight"] = QTensor.from_tensors(tensors, name, group).dequantize()
    return state


def build_torch_model(path, manifest: dict, tensors: dict | None = None):
    """The compressed model as an eager transformers module with fp32 (dequantized) weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from .modules import LowRank

    path = Path(path)
    cfg = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    for name, layer in manifest["layers"].items():
        if layer["rank"]:
            out_f, in_f = layer["shape"]
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LowRank(in_f, out_f, layer["rank"], device="meta"))
    state = dequantized_state(manifest, load_weights(path) if tensors is None else tensors)
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # buffers computed at init (rotary frequencies) were left on the meta device
    rotary = model.model.rotary_emb
    model.model.rotary_emb = type(rotary)(config=cfg)
    model.generation_config.eos_token_id = cfg.eos_token_id
    gen = path / "generation_config.json"
    if gen.is_file():
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(path))
    return model.eval()


def _eos(cfg, gen, tokenizer) -> set[int]:
    ids: set[int] = set()
    for src in (gen, cfg, tokenizer):
        eos = getattr(src, "eos_token_id", None) if src is not None else None
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else list(eos))
    return {int(i) for i in ids}


def auto_backend(path, manifest: dict, trt_ok: bool | None = None) -> str:
    """tensorrt where TensorRT and a dense export exist, else onnxruntime where exported, else torch."""
    exports = manifest.get("exports", {})
    if trt_ok is None:
        from . import trt_backend

        trt_ok = trt_backend.available()
    if trt_ok and exports.get("onnx_dense") and (Path(path) / exports["onnx_dense"]["path"]).is_file():
        return "tensorrt"
    for key in ("onnx", "onnx_dense"):
        if exports.get(key) and (Path(path) / exports[key]["path"]).is_file():
            return "onnxruntime"
    return "torch"


def _load_engine_artifact(path: Path, manifest: dict, backend: str, threads: int | None, device: str,
                          drafter: bool = False) -> LoadedModel:
    """An engine build's directory is an engine: it holds every weight it computes with, so it
    needs no base model at run time (the manifest names it, with its sha256)."""
    from hola_ros.core.engines import load_engine_dir

    if backend not in ("auto", "onnxruntime", "tensorrt"):
        raise ValueError(f"{path} is a Lo-Bi engine for ONNX Runtime; backend {backend!r} cannot run it")
    loaded = load_engine_dir(path, threads, "tensorrt" if backend == "tensorrt" else device,
                             name=f"lobi:{manifest['base']['name']}@{manifest['quant']['budget_mb']:g}MB", drafter=drafter)
    loaded.info.update(artifact=str(path), manifest=manifest)
    return loaded


def load_artifact(path, backend: str = "auto", threads: int | None = None, base=None,
                  verify_base: bool = True, device: str = "cpu", drafter: bool = False) -> LoadedModel:
    """Load a Lo-Bi artifact as a LoadedModel whose new_session() runs on `backend`.

    `base` is the target model the artifact must have been built from (spec or LoadedModel);
    by default the base recorded in the manifest is checked. A mismatch raises BaseMismatch.
    drafter: an engine build loaded to draft (engines.load_engine).
    """
    import time

    from hola_ros.core.models import set_threads

    t0 = time.perf_counter()
    path = Path(path)
    manifest = read_manifest(path)
    if manifest["version"] == ENGINE_VERSION:
        return _load_engine_artifact(path, manifest, backend, threads, device, drafter)
    if verify_base:
        check_base(path, manifest, base)
    if backend == "auto":
        backend = auto_backend(path, manifest)
    if backend not in ("torch", "onnxruntime", "tensorrt"):
        raise ValueError(f"backend must be auto, torch, onnxruntime or tensorrt, not {backend!r}")
    set_threads(threads)
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    cfg = AutoConfig.from_pretrained(str(path))
    text_cfg = cfg.get_text_config(decoder=True)
    common = dict(name=f"lobi:{manifest['base']['id']}@{manifest['quant']['budget_mb']}MB", tokenizer=tokenizer,
                  context_length=int(getattr(text_cfg, "max_position_embeddings", 2048) or 2048),
                  vocab_size=int(text_cfg.vocab_size), source=str(path))
    if backend == "torch":
        from hola_ros.core.models import pack_linears, use_rowwise_attention

        model = build_torch_model(path, manifest)
        loaded = LoadedModel(model=model, eos_token_ids=_eos(cfg, model.generation_config, tokenizer), **common)
        loaded.info["packed"] = pack_linears(model)
        loaded.info["row_invariant"] = bool(loaded.info["packed"] and use_rowwise_attention(model))
    else:
        exports = manifest.get("exports", {})
        if backend == "tensorrt":
            from . import trt_backend

            factory = trt_backend.session_factory(path, manifest, threads)
        else:
            from . import onnx_backend

            entry = exports.get("onnx") or exports.get("onnx_dense")
            if not entry:
                raise ArtifactError(f"{path} has no ONNX export; build it with `--export onnx` "
                                    f"or load it with backend='torch'")
            factory = onnx_backend.session_factory(path, entry, threads)
        loaded = LoadedModel(model=None, eos_token_ids=_eos(cfg, None, tokenizer), session_factory=factory, **common)
    loaded.info.update(backend=backend, artifact=str(path), manifest=manifest)
    loaded.load_s = time.perf_counter() - t0
    return loaded
