"""Lo-Bi on the engine's own formats: the per-block bit-width search under a memory budget runs on the
ONNX Runtime engine a GGUF converts to (gguf_import), and writes an engine that `load_engine` serves,
as the target or as the level-1 drafter. No torch.

Reference: the GGUF engine, every weight on its GGUF codes (MatMulNBits, 4 or 8 bits). A block is a
decoder layer or the output layer, and holds all its linears in one of three formats
(gguf_import.LOBI_FORMATS), cheapest last:
  exact   the GGUF's codes (Q4_K at 4 bits per block of 32 with minima; Q6_K, Q5_0, Q8_0 at 8 bits);
  q4      the block's 8-bit tensors moved to 4 bits on the Q4_K layout (requantize_with_minima), its 4-bit
          ones exact (so q, k and v still fuse into one matmul);
  q4_128  every linear on 4 bits per block of 128 with integer zero points (requantize_zero_point):
          ~4.5 bits a weight as ONNX Runtime holds it against ~7 for the block-32 layouts.
16 bits is not offered: nothing on this engine is wider than the GGUF's own codes, which are the
reference, and a float weight would run on ONNX Runtime's float MatMul with 4x the bytes of 8-bit codes
(the torch build's 16 was relative to an fp32 model).

Error of a linear in a format: sum_ij dW_ij^2 E[x_j^2] / sum_ij W_ij^2 E[x_j^2], the relative
squared output error on inputs whose features are independent, with E[x_j^2] measured by the engine
itself on calibration text (a copy of its graph with taps, onnx_graph.write_graph(taps=True)); a
block's error is the sum over its linears. Bytes: what the engine holds (weights.data and the
embedding rows). The multiple-choice knapsack (search.search_bits) picks the least summed error that
fits the budget. Quality: KL(GGUF engine || Lo-Bi engine) of the next-token distributions and their
top-1 agreement on held-out text (GSM8K-train rows from the end of the file, far from the calibration
rows at its start), written into the manifest.
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .artifact import ENGINE_VERSION, FORMAT, dir_bytes, is_artifact, write_manifest
from .calib import default_calib, file_sha256, load_texts, token_rows
from .search import search_bits

FORMATS = ("exact", "q4", "q4_128")


def _noop(*_args):
    pass


def _block_of(linear: str) -> str:
    found = re.match(r"model\.layers\.(\d+)\.", linear)
    return f"layer.{found.group(1)}" if found else linear


def engine_bytes(folder: Path) -> int:
    """The weight bytes an engine directory holds: its graph's tensors and the embedding rows."""
    return (Path(folder) / "weights.data").stat().st_size + (Path(folder) / "embeddings.npy").stat().st_size


def _calibrate(gguf: Path, reference_dir: Path, rows: np.ndarray, threads, progress) -> dict[str, np.ndarray]:
    """E[x_j^2] of every linear's input features on the calibration rows, measured by a copy of the
    engine whose graph returns them (taps)."""
    import json

    import onnx

    from hola_ros.core import gguf_import
    from hola_ros.core.engines import load_engine_dir

    with tempfile.TemporaryDirectory(prefix="lobi-taps-") as tmp:
        folder = Path(tmp) / "engine"
        gguf_import.convert(gguf, folder, taps=True, tokenizer_from=reference_dir)
        props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx"), load_external_data=False).metadata_props}
        taps = json.loads(props["taps"])
        model = load_engine_dir(folder, threads, extra_outputs=tuple(taps))
        sums = {name: 0.0 for name in taps}
        for i, row in enumerate(rows):
            session = model.new_session()
            session.forward([int(t) for t in row])  # every row: the output layer's taps too
            for name in taps:
                sums[name] = sums[name] + session.extra[name].astype(np.float64)
            session.close()
            progress("calibration", i + 1, len(rows))
        del model
    return {linear: (sums[out] / rows.size).astype(np.float32) for out, linears in taps.items() for linear in linears}


def _choices(gguf: Path, second_moments: dict[str, np.ndarray], progress) -> tuple[dict, dict, dict]:
    """Per block and format (gguf_import.LOBI_FORMATS): the summed error and the bytes of its linears,
    and each block's linears."""
    import gguf as gg

    from hola_ros.core import gguf_import

    reader = gg.GGUFReader(str(gguf))
    arch, spec = gguf_import.arch_spec(reader)
    weights = gguf_import.GGUFWeights(reader, arch, spec)
    errors: dict[str, dict[str, float]] = {}
    costs: dict[str, dict[str, int]] = {}
    linears: dict[str, list[str]] = {}
    names = list(second_moments)
    for i, name in enumerate(names):
        block = _block_of(name)
        q = weights.linear(name)
        exact = gguf_import.dequantized(q)
        m = second_moments[name][None, :]
        scale = max(float((np.square(exact) * m).sum()), 1e-30)
        bias = 0 if q.bias is None else q.bias.nbytes
        linears.setdefault(block, []).append(name)
        for fmt in FORMATS:
            held, _ = gguf_import.held_as(q, "exact", fmt)
            err = 0.0 if held is q else float((np.square(gguf_import.dequantized(held) - exact) * m).sum()) / scale
            errors.setdefault(block, dict.fromkeys(FORMATS, 0.0))[fmt] += err
            costs.setdefault(block, dict.fromkeys(FORMATS, 0))[fmt] += held.nbytes + (0 if held is q else bias)
        progress("format errors", i + 1, len(names))
    for block in errors:  # a format that changes nothing in a block is no choice there
        if costs[block]["q4"] == costs[block]["exact"]:
            del errors[block]["q4"], costs[block]["q4"]
    return errors, costs, linears


def _quality(reference, model, rows: np.ndarray) -> dict:
    """KL(reference || model) of next-token distributions and top-1 agreement, per token, on `rows`."""
    kl, agree, count = 0.0, 0, 0
    for row in rows:
        ids = [int(t) for t in row]
        logits = []
        for m in (reference, model):
            session = m.new_session()
            logits.append(np.asarray(session.forward(ids), np.float64))
            session.close()
        p_log = logits[0] - np.logaddexp.reduce(logits[0], axis=-1, keepdims=True)
        q_log = logits[1] - np.logaddexp.reduce(logits[1], axis=-1, keepdims=True)
        kl += float((np.exp(p_log) * (p_log - q_log)).sum())
        agree += int((logits[0].argmax(-1) == logits[1].argmax(-1)).sum())
        count += len(ids)
    return {"kl_per_token": kl / count, "top1_agreement": agree / count, "tokens": count, "sequences": len(rows)}


@dataclass
class _Search:
    """The search's inputs: per block and format, errors and bytes; each block's linears; the bytes no
    choice changes."""

    errors: dict[str, dict[str, float]]
    costs: dict[str, dict[str, int]]
    linears: dict[str, list[str]]
    fixed: int

    @property
    def least(self) -> int:
        return self.fixed + sum(min(c.values()) for c in self.costs.values())

    def choose(self, budget_mb: float) -> dict[str, str]:
        return search_bits(self.errors, self.costs, int(budget_mb * 1e6), fixed_bytes=self.fixed)

    def blocks(self, chosen: dict[str, str]) -> dict:
        return {block: {"format": chosen[block], "error": self.errors[block][chosen[block]], "errors": self.errors[block],
                        "bytes": self.costs[block][chosen[block]], "bytes_by_format": self.costs[block],
                        "linears": self.linears[block]} for block in self.errors}


def build_engine_artifacts(targets, model: str | None = None, calib=None, calib_size: int = 64, seq_len: int = 128,
                           heldout_seqs: int = 8, threads=None, progress=None, command: str | None = None) -> list[dict]:
    """One calibration, then one engine per (out, budget_mb) in `targets`; returns the manifests."""
    from hola_ros.core import gguf_import
    from hola_ros.core.engines import engine_cache, gguf_file, load_engine_dir
    from hola_ros.core.model_store import DEFAULT_MODEL
    from hola_ros.core.ort_runtime import OrtKVSession

    t_start = time.perf_counter()
    progress = progress or _noop
    if not 16 <= seq_len <= OrtKVSession.MAX_ROWS:
        raise ValueError(f"seq_len must be in [16, {OrtKVSession.MAX_ROWS}] (one engine call per sequence)")
    targets = [(Path(out), float(budget)) for out, budget in targets]
    for out, _ in targets:
        if out.exists() and any(out.iterdir()) and not is_artifact(out):
            raise FileExistsError(f"{out} exists and is not a Lo-Bi artifact; choose another --out")
    spec = model or DEFAULT_MODEL
    gguf = gguf_file(spec)
    reference_dir = engine_cache(gguf)
    reference = load_engine_dir(reference_dir, threads)
    calib_path = Path(calib) if calib else default_calib()
    texts = load_texts(calib_path, calib_size)
    sep = min(reference.eos_token_ids) if reference.eos_token_ids else None
    rows = token_rows(texts, reference.tokenizer, seq_len, sep)
    heldout = token_rows(_heldout_texts(calib_path, heldout_seqs * 4), reference.tokenizer, seq_len, sep)[:heldout_seqs]
    errors, costs, linears = _choices(gguf, _calibrate(gguf, reference_dir, rows, threads, progress), progress)
    reference_bytes = engine_bytes(reference_dir)
    search = _Search(errors, costs, linears, reference_bytes - sum(c["exact"] for c in costs.values()))
    for _, budget_mb in targets:  # every budget is checked before any engine is written
        search.choose(budget_mb)
    common = {"format": FORMAT, "version": ENGINE_VERSION, "kind": "engine", "build_command": command or "",
              "base": {"spec": spec, "gguf": str(gguf), "gguf_bytes": gguf.stat().st_size,
                       "gguf_sha256": file_sha256(gguf), "engine_bytes": reference_bytes, "name": reference.name},
              "calibration": {"file": str(calib_path), "sha256": file_sha256(calib_path), "samples": len(texts),
                              "sequences": int(rows.shape[0]), "seq_len": seq_len, "tokens": int(rows.size)}}
    manifests = []
    for out, budget_mb in targets:
        chosen = search.choose(budget_mb)
        formats = {name: fmt for block, fmt in chosen.items() if fmt != "exact" for name in linears[block]}
        if out.exists():
            shutil.rmtree(out)
        gguf_import.convert(gguf, out, formats=formats, tokenizer_from=reference_dir)
        served = load_engine_dir(out, threads)
        manifest = {**common, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "build_s": round(time.perf_counter() - t_start, 1),
                    "quant": {"formats": list(FORMATS), "budget_mb": budget_mb, "min_feasible_mb": search.least / 1e6,
                              "requantized": sorted(formats)},
                    "blocks": search.blocks(chosen),
                    "bytes": {"weights": engine_bytes(out), "reference_engine": reference_bytes,
                              "gguf": gguf.stat().st_size, "on_disk": dir_bytes(out)},
                    "quality": {**_quality(reference, served, heldout), "reference": "the GGUF engine (exact codes)",
                                "text": "GSM8K-train rows from the end"},
                    "row_invariant": bool(served.info.get("row_invariant"))}
        progress("quality", 1, 1)
        write_manifest(out, manifest)
        manifests.append(manifest)
        del served
    return manifests


def _heldout_texts(path: Path, n: int) -> list[str]:
    """The last n texts of the calibration file (the calibration reads from its start)."""
    texts = load_texts(path, 10 ** 9)
    return texts[-n:]
