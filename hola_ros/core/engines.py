"""The one loader: a model spec becomes an engine (a models.LoadedModel).

Specs: a packaged model name (model_store.PACKAGED), a .gguf file, a Hugging Face model
directory, or a Lo-Bi artifact directory. Backends:
  onnxruntime  GGUF weights kept quantized in MatMulNBits (onnx_graph); the default for GGUFs
  torch        float32 (dequantized GGUF or HF directory), row-invariant packed kernels;
               dtype int8 gives a dynamic-int8 copy (a drafter, never ground truth)
  tensorrt     the same engine graph through ONNX Runtime's TensorRT provider (TensorRT takes the
               subgraphs it supports, MatMulNBits and GroupQueryAttention stay on CUDA), and the torch
               Lo-Bi artifacts' own TensorRT engines; only where TensorRT exists (a Jetson)
Every engine says whether a verified block equals one-token steps bitwise
(info["row_invariant"], probed on the loaded model, not assumed).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from hola_ros.core.model_store import DEFAULT_MODEL, cache_base, gguf_path, is_packaged, lobi_engine_dir

BACKENDS = ("auto", "onnxruntime", "torch", "tensorrt")
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "</s>")
DEVICES = ("cpu", "cuda", "auto")
_log = logging.getLogger("hola_ros.engines")


def load_engine(spec: str | os.PathLike | None = None, *, backend: str = "auto", dtype: str = "float32",
                threads: int | None = None, device: str = "cpu", packed: bool = True, drafter: bool = False):
    """Load `spec` (None: the default served model) on `backend`; see the module doc. drafter=True:
    an ONNX Runtime engine that only drafts (level 1): its calls are not padded for row invariance
    (the target checks every token it proposes) and its threads do not spin between calls."""
    from hola_ros.core.lobi import is_artifact, load_artifact
    from hola_ros.core.models import load_model

    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    spec = str(spec or DEFAULT_MODEL)
    built = lobi_engine_dir(spec)
    if built is not None:
        if not is_artifact(built):
            name, budget = spec.rsplit("@", 1)
            raise FileNotFoundError(f"Lo-Bi engine {spec!r} is not built ({built}): run `hola-ros lobi build --model "
                                    f"{name} --budget-mb {budget.removesuffix('mb')}` (make models builds the "
                                    f"quality profile's)")
        spec = str(built)
    if is_artifact(spec):
        return load_artifact(spec, backend=backend, threads=threads, device=device, drafter=drafter)
    path = _spec_path(spec)
    is_gguf = path.suffix.lower() == ".gguf"
    if not path.exists():
        raise FileNotFoundError(f"model spec {spec!r}: expected a packaged name, a .gguf file, a Hugging Face "
                                f"model directory or a Lo-Bi artifact directory")
    if backend == "tensorrt" and not is_gguf:
        raise ValueError(f"backend tensorrt runs GGUF engines and Lo-Bi artifacts; {spec!r} is neither")
    if is_gguf and backend in ("auto", "onnxruntime", "tensorrt") and dtype in ("float32", "gguf"):
        return load_gguf(path, threads=threads, device="tensorrt" if backend == "tensorrt" else device, drafter=drafter)
    if backend == "onnxruntime":
        raise ValueError(f"backend onnxruntime needs a .gguf file or a Lo-Bi artifact, not {spec!r} "
                         f"(dtype {dtype!r} runs on torch)")
    loaded = load_model(path, dtype=dtype, threads=threads, packed=packed, device=device,
                        name=spec if is_packaged(spec) else None)
    return characterize(loaded)


def _spec_path(spec: str) -> Path:
    """The file or folder a spec names: a packaged model's GGUF, else the path itself."""
    return gguf_path(spec) if is_packaged(spec) else Path(spec).expanduser()


def load_engine_base_gguf(spec: str) -> Path:
    """The GGUF a spec's engine comes from: the GGUF itself, or a Lo-Bi engine's base."""
    from hola_ros.core.lobi import is_artifact, read_manifest

    built = lobi_engine_dir(spec)
    path = built if built is not None else Path(spec)
    if is_artifact(path) and read_manifest(path).get("kind") == "engine":
        return Path(read_manifest(path)["base"]["gguf"])
    return gguf_file(spec)


def gguf_file(spec: str) -> Path:
    """The GGUF file a spec names (a packaged model or a path)."""
    path = _spec_path(spec)
    if path.suffix.lower() != ".gguf" or not path.is_file():
        raise ValueError(f"{spec!r} is not a GGUF file or a packaged model")
    return path


def load_tokenizer(spec: str | None = None):
    """Just the tokenizer of a spec (no weights loaded): for preparing prompts."""
    spec = str(spec or DEFAULT_MODEL)
    path = lobi_engine_dir(spec) or _spec_path(spec)
    if (path / "meta.json").is_file():  # an engine directory (a Lo-Bi engine build) holds its tokenizer
        from hola_ros.core.tokenizer import ChatTokenizer

        return ChatTokenizer(path)
    if path.suffix.lower() == ".gguf":
        from hola_ros.core.tokenizer import ChatTokenizer

        return ChatTokenizer(engine_cache(path))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def load_l1(spec: str | None, target_spec: str | None = None, *, backend: str = "auto", threads: int | None = None,
            device: str = "cpu"):
    """The level-1 drafter model: a spec like load_engine's, or 'int8' for a dynamic-int8 torch
    copy of the target; None or '' for no L1."""
    if not spec:
        return None
    if spec == "int8":
        return load_engine(target_spec, backend="torch", dtype="int8", threads=threads, device=device)
    return load_engine(spec, backend=backend, threads=threads, device=device, drafter=True)


def engine_cache(gguf: Path, accuracy_level: int = 4) -> Path:
    """The ONNX engine directory of a GGUF, converted on first use (gguf_import).
    accuracy_level 4 (int8 compute, each activation row quantized on its own) is what makes
    verification row-invariant; other levels exist to show what breaks without it."""
    from hola_ros.core import gguf_import, onnx_graph

    gguf = Path(gguf).resolve()
    st = gguf.stat()
    # the converter's own source is part of the key: a changed graph writer never reuses an old engine
    writer = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (gguf_import, onnx_graph))).hexdigest()
    key = f"{gguf}|{st.st_size}|{st.st_mtime_ns}|{writer}|{accuracy_level}"
    target = cache_base() / "engines" / f"{gguf.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (target / "meta.json").is_file():
        _log.info("converting %s for the ONNX engine (once)", gguf)
        gguf_import.convert(gguf, target, accuracy_level=accuracy_level, writer=writer)
        _prune_stale(target, gguf, writer)
    return target


def _prune_stale(current: Path, gguf: Path, writer: str) -> None:
    """Engines of the same GGUF written by an older converter are never loaded again."""
    import shutil

    for folder in current.parent.glob(f"{gguf.stem}-*"):
        try:
            meta = json.loads((folder / "meta.json").read_text())
        except (OSError, ValueError):
            continue
        if folder != current and meta["source"]["path"] == str(gguf) and meta.get("writer") != writer:
            shutil.rmtree(folder, ignore_errors=True)


def _providers(device: str) -> list[str]:
    """ONNX Runtime providers for `device` (DEVICES, or "tensorrt": TensorRT first, CUDA for what it leaves)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if device == "tensorrt":
        if "TensorrtExecutionProvider" not in available or not cuda:
            raise ValueError("backend tensorrt: onnxruntime has no TensorRT and CUDA providers here (available: "
                             f"{', '.join(available)}); on a Jetson, install JetPack's onnxruntime-gpu")
        return ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    if device == "cuda" and not cuda:
        raise ValueError(f"device cuda: onnxruntime has no CUDA provider here (available: {', '.join(available)})")
    return (["CUDAExecutionProvider"] if cuda and device in ("cuda", "auto") else []) + ["CPUExecutionProvider"]


def load_gguf(gguf: Path, threads: int | None = None, device: str = "cpu", accuracy_level: int = 4,
              pad_rows: bool = True, drafter: bool = False):
    """A GGUF on the ONNX Runtime engine (weights quantized, see gguf_import). `accuracy_level` and
    `pad_rows` other than the defaults exist to show what breaks without the invariance machinery."""
    t0 = time.perf_counter()
    loaded = load_engine_dir(engine_cache(gguf, accuracy_level), threads, device, name=Path(gguf).stem,
                             pad_rows=pad_rows, drafter=drafter)
    loaded.load_s = time.perf_counter() - t0
    return loaded


def load_engine_dir(folder: Path, threads: int | None = None, device: str = "cpu", name: str | None = None,
                    extra_outputs: tuple[str, ...] = (), pad_rows: bool = True, drafter: bool = False):
    """An engine directory written by gguf_import.convert (the cache of a GGUF, or a Lo-Bi engine);
    drafter: see load_engine."""
    from gguf import GGMLQuantizationType, quants

    from hola_ros.core.models import LoadedModel
    from hola_ros.core.ort_runtime import OrtKVSession, ort_session
    from hola_ros.core.tokenizer import ChatTokenizer

    t0 = time.perf_counter()
    folder = Path(folder)
    meta = json.loads((folder / "meta.json").read_text())
    spec = meta["spec"]
    sess = ort_session(folder / "model.onnx", threads, providers=_providers(device), spinning=not drafter)
    table = np.load(folder / "embeddings.npy", mmap_mode="r")  # raw GGUF rows, paged in on use
    qtype, hidden = GGMLQuantizationType[meta["embedding_type"]], spec["hidden"]

    def embed(ids: list[int]) -> np.ndarray:
        return quants.dequantize(np.asarray(table[np.asarray(ids)]), qtype).reshape(len(ids), hidden).astype(np.float32)

    positions = int(meta["max_positions"])

    def new_session():
        return OrtKVSession(sess, embed, spec["n_layers"], spec["kv_heads"], spec["head_dim"], positions, extra_outputs,
                            row_multiple=loaded.info.get("row_multiple", 1))

    tokenizer = ChatTokenizer(folder)
    special = meta["special_tokens"]
    eos = {special[k] for k in ("eos_token_id", "eot_token_id", "eom_token_id") if k in special}
    # end-of-generation tokens llama.cpp also stops on, when the vocabulary has them
    eos |= {tokenizer.convert_tokens_to_ids(t) for t in END_TOKENS} - {None}
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    loaded = LoadedModel(name=name or folder.name, model=None, tokenizer=tokenizer, eos_token_ids=eos,
                         context_length=positions - 1, vocab_size=int(spec["vocab"]), dtype="gguf",
                         source=meta["source"]["path"], session_factory=new_session)
    fidelity = [w["fidelity"] for w in meta["weights"].values()]
    loaded.info.update(backend="onnxruntime", providers=sess.get_providers(), engine_dir=str(folder),
                       weights_bytes=(folder / "weights.data").stat().st_size,
                       embedding_bytes=(folder / "embeddings.npy").stat().st_size,
                       weights_exact=fidelity.count("exact"), weights_near=fidelity.count("near"))
    characterize(loaded, pad_rows=pad_rows, drafter=drafter)
    loaded.context_length = positions - loaded.info.get("row_multiple", 1)  # padding rows need positions too
    loaded.load_s = time.perf_counter() - t0
    return loaded


def characterize(model, rows=(1, 2, 4, 8, 16), pad_rows: bool = True, drafter: bool = False):
    """Measure what the HSD loop relies on, on the loaded model itself: whether a verified block
    gives bitwise the logits of one-token steps (info["row_invariant"]; decides whether greedy
    HSD is guaranteed to reproduce plain decoding) and what a step of B rows costs relative to one
    row (info["verify_cost"]; the draft length policy reads it). An ONNX Runtime engine whose
    kernels round a lone row differently (MatMulNBits on 4-bit blocks of 64 or more computes rows
    in pairs and a left-over row on a one-row kernel of its own) is probed again with every call
    padded to an even number of rows (info["row_multiple"], read by its sessions), and keeps the
    padding if that makes it invariant. A drafter's rows need not be invariant: it is not probed
    (info["row_invariant"] None) and never padded."""
    ids = model.encode("Row invariance probe: the quick brown fox jumps over the lazy dog. " * 3)
    if drafter:
        model.info.update(drafter=True, row_invariant=None, row_multiple=1)
        _measure_steps(model, ids, rows)
        return model
    same = _blocks_equal_steps(model, ids)
    if not same and pad_rows and model.info.get("backend") == "onnxruntime" and model.info.get("row_multiple", 1) == 1:
        model.info["row_multiple"] = 2
        same = _blocks_equal_steps(model, ids)
        if not same:
            model.info["row_multiple"] = 1
    _measure_steps(model, ids, rows)
    model.info["row_invariant"] = bool(model.info.get("row_invariant", True)) and same
    if not model.info["row_invariant"]:
        _log.warning("%s: a verified block differs from one-token steps: greedy HSD output is NOT guaranteed "
                     "to equal plain decoding (answers say exact: false)", model.name)
    return model


def _measure_steps(model, ids: list[int], rows) -> None:
    session = model.new_session()
    try:
        session.forward(ids[:16], last_only=True)
        model.info["step_s"], model.info["verify_cost"] = _step_costs(session, 16, ids[16:16 + max(rows)], rows)
    finally:
        session.close()


def _blocks_equal_steps(model, ids: list[int], blocks=(4, 5)) -> bool:
    """Whether blocks of 4 and of 5 tokens (even and odd: kernels may tile rows) verified in one call
    each give bitwise the logits of as many one-token steps."""
    session = model.new_session()
    try:
        session.forward(ids[:16], last_only=True)
        steps = [np.array(session.forward([t])[0]) for t in ids[16:16 + max(blocks)]]
        for size in blocks:
            session.rollback(16)
            if not np.array_equal(np.asarray(session.forward(ids[16:16 + size])), np.stack(steps[:size])):
                return False
        return True
    finally:
        session.close()


def _step_costs(session, start: int, tokens: list[int], rows, reps: int = 3) -> tuple[float, dict[int, float]]:
    """(seconds of a one-row step, {rows: time of a step of that many rows / a one-row step})."""
    seconds = {}
    for b in rows:
        times = []
        for _ in range(reps + 1):  # the first call of a new shape pays one-off allocations
            session.rollback(start)
            t0 = time.perf_counter()
            session.forward(tokens[:b])
            times.append(time.perf_counter() - t0)
        seconds[b] = sorted(times[1:])[reps // 2]
    costs, floor = {}, 1.0
    for b in rows:  # more rows never cost less: a dip is timing noise (other processes on the CPU)
        floor = max(floor, seconds[b] / seconds[rows[0]])
        costs[b] = round(floor, 3)
    return seconds[rows[0]], costs
