"""Build a Lo-Bi artifact: calibrate, truncate ranks, search bits under a budget, quantize, write.

Errors: a layer's low-rank error is its relative output error on the calibration inputs (see
lowrank.py); a block's error is the relative squared error ||y' - y||^2 / ||y||^2 of the block's
output against the uncompressed block, both fed the uncompressed model's inputs, with the
block's low-rank factors and the candidate bits applied. The search minimises the sum of block
errors (a per-block MSE proxy, additive like the paper's per-block argmin) under the budget.
"""
from __future__ import annotations

import copy
import datetime as _dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from . import arch, artifact
from .calib import default_calib, file_sha256, load_texts, token_sequences
from .lowrank import choose_rank, factors, spectrum
from .quant import CHOICES, fake_quant, nbytes, quantize, search_bits


def _noop(*_args):
    pass


class _Calibration:
    """Input Gram matrices of every linear, plus one batch's block inputs/outputs for the search."""

    def __init__(self, model, seqs: torch.Tensor, search_seqs: int, head_rows: int, progress, grams: bool = True):
        self.grams: dict[str, torch.Tensor] = {}
        self.layer_io: dict[int, tuple] = {}
        self.search_ids = seqs[:search_seqs]
        hooks, capturing = [], [False]
        n_layers = model.config.num_hidden_layers

        def gram_hook(name):
            def hook(_mod, args):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                self.grams[name] = self.grams.get(name, 0) + (x.T @ x).double()
            return hook

        def io_hook(i):
            def hook(_mod, args, kwargs, out):
                if capturing[0]:
                    self.layer_io[i] = (args, kwargs, out[0] if isinstance(out, tuple) else out)
            return hook

        for i in range(n_layers):
            layer = model.model.layers[i]
            for lin in arch.LINEARS:
                if grams and lin not in arch.SAME_INPUT:
                    hooks.append(layer.get_submodule(lin).register_forward_pre_hook(gram_hook(f"model.layers.{i}.{lin}")))
            hooks.append(layer.register_forward_hook(io_hook(i), with_kwargs=True))
        # without low rank only the search batch is needed (the Grams feed rank choice and recovery)
        batches = [seqs[:search_seqs]] + (list(seqs[search_seqs:].split(8)) if grams else [])
        batches = [b for b in batches if len(b)]
        try:
            with torch.inference_mode():
                for k, batch in enumerate(batches):
                    capturing[0] = k == 0
                    hidden = model.model(input_ids=batch, use_cache=False).last_hidden_state
                    h = hidden.reshape(-1, hidden.shape[-1]).float()
                    if grams:
                        self.grams["lm_head"] = self.grams.get("lm_head", 0) + (h.T @ h).double()
                    if k == 0:
                        self.head_inputs = h[:head_rows].clone()
                    progress("calibrate", k + 1, len(batches))
        finally:
            for hk in hooks:
                hk.remove()
        self.tokens = int(seqs.numel())

    def gram(self, name: str) -> torch.Tensor:
        if name == "lm_head":
            return self.grams["lm_head"]
        prefix, lin = name.rsplit(".", 2)[0], ".".join(name.rsplit(".", 2)[1:])
        return self.grams[f"{prefix}.{arch.SAME_INPUT.get(lin, lin)}"]


def _rel(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).pow(2).sum() / ref.float().pow(2).sum().clamp(min=1e-30))


def _effective(parts: dict, bits: int, group: int) -> torch.Tensor:
    if "w" in parts:
        return fake_quant(parts["w"], bits, group)
    return fake_quant(parts["b"], bits, group) @ fake_quant(parts["a"], bits, group)


def _cost(parts: dict, bits: int, group: int) -> int:
    return sum(nbytes(tuple(t.shape), bits, group) for t in parts.values())


def build_artifact(out, budget_mb: float, **options) -> dict:
    """Compress a model into an artifact directory at `out` under `budget_mb`; returns the
    manifest. Options: see build_artifacts."""
    return build_artifacts([(out, budget_mb)], **options)[0]


def build_artifacts(targets, model: str | None = None, calib=None, calib_size: int = 64, seq_len: int = 128,
                    search_seqs: int = 8, rank_tol: float = 0.02, pay_ratio: float = 0.6, group: int = 32,
                    lowrank: bool = False, recovery_s: float = 0.0, export=(), threads=None, progress=None,
                    command: str | None = None, head_rows: int = 256) -> list[dict]:
    """One calibration (and low-rank) pass, then one artifact per (out, budget_mb) in `targets`:
    only the bit search and the quantized weights depend on the budget. Low rank is opt-in
    (`lowrank=True`): on SmolLM2-135M every tolerance tried lowered the drafter's acceptance
    at an equal budget (docs/lobi.md)."""
    from hola_ros.core.engines import load_engine
    from hola_ros.core.model_store import TEST_MODEL

    t_start = time.perf_counter()
    progress = progress or _noop
    unknown = set(export) - {"onnx", "tensorrt"}
    if unknown:
        raise ValueError(f"unknown export target(s) {sorted(unknown)}; use onnx and/or tensorrt")
    targets = [(Path(out), float(budget)) for out, budget in targets]
    for out, _ in targets:
        if out.exists() and any(out.iterdir()) and not artifact.is_artifact(out):
            raise FileExistsError(f"{out} exists and is not a Lo-Bi artifact; choose another --out")
    model = model or TEST_MODEL  # llama-architecture models only (lobi.arch)
    base = load_engine(model, backend="torch", packed=False, threads=threads)
    hf = base.model
    arch.check_supported(hf.config)
    cfg = hf.config.get_text_config(decoder=True)
    calib_path = Path(calib) if calib else default_calib()
    texts = load_texts(calib_path, calib_size)
    sep = min(base.eos_token_ids) if base.eos_token_ids else None
    seqs = token_sequences(texts, base.tokenizer, seq_len, sep)
    cal = _Calibration(hf, seqs, min(search_seqs, len(seqs)), head_rows, progress, grams=lowrank)

    # 1) ranks: every linear (and the output layer) gets a rank or stays dense
    names = [n for i in range(cfg.num_hidden_layers) for n in arch.layer_linears(i)] + ["lm_head"]
    tied = bool(cfg.tie_word_embeddings)
    layers: dict[str, dict] = {}
    parts: dict[str, dict] = {}
    for k, name in enumerate(names):
        w = hf.get_submodule(name).weight.detach()
        entry = {"shape": list(w.shape), "rank": None, "lowrank_error": 0.0}
        if lowrank:
            spec = spectrum(w, cal.gram(name))
            rank = choose_rank(spec, tuple(w.shape), rank_tol, pay_ratio, step=group)
            if rank:
                a, b = factors(w, spec, rank)
                entry.update(rank=rank, lowrank_error=spec.error(rank))
                parts[name] = {"a": a, "b": b}
        if name not in parts:
            parts[name] = {"w": w}  # the bit search swaps module data, never writes into it
        layers[name] = entry
        progress("low-rank", k + 1, len(names))
    head_lowrank = layers["lm_head"]["rank"] is not None
    tied = tied and not head_lowrank
    if tied:
        layers["lm_head"]["tied"] = True
        del parts["lm_head"]

    recovery = {"steps": 0}
    if recovery_s > 0:
        from .recovery import recover

        recovery = recover(hf, parts, seqs, cal.gram, seconds=recovery_s, progress=progress)

    # 2) per-block bits: measure every choice, then the budgeted search
    embed = hf.model.embed_tokens.weight.detach()
    blocks: dict[str, dict] = {"embed": {"model.embed_tokens": {"w": embed}}}
    for i in range(cfg.num_hidden_layers):
        blocks[f"layers.{i}"] = {n: parts[n] for n in arch.layer_linears(i)}
    if not tied:
        blocks["lm_head"] = {"lm_head": parts["lm_head"]}
    errors: dict[str, dict[int, float]] = {}
    costs: dict[str, dict[int, int]] = {}
    ids = cal.search_ids.reshape(-1)
    head_in = cal.head_inputs
    with torch.inference_mode():
        logits_ref = head_in @ hf.lm_head.weight.detach().T
        for k, (block, members) in enumerate(blocks.items()):
            errors[block], costs[block] = {}, {}
            for bits in CHOICES:
                costs[block][bits] = sum(_cost(p, bits, group) for p in members.values())
                if block == "embed":
                    eq = _effective(members["model.embed_tokens"], bits, group)
                    err = _rel(eq[ids], embed[ids])
                    if tied:
                        err += _rel(head_in @ eq.T, logits_ref)
                elif block == "lm_head":
                    err = _rel(head_in @ _effective(members["lm_head"], bits, group).T, logits_ref)
                else:
                    i = int(block.split(".")[1])
                    args, kwargs, y_ref = cal.layer_io[i]
                    saved = {}
                    for name, p in members.items():
                        mod = hf.get_submodule(name)
                        saved[name] = mod.weight.data
                        mod.weight.data = _effective(p, bits, group)
                    try:
                        y = hf.model.layers[i](*args, **kwargs)
                    finally:
                        for name, w in saved.items():
                            hf.get_submodule(name).weight.data = w
                    err = _rel(y[0] if isinstance(y, tuple) else y, y_ref)
                errors[block][bits] = err
            progress("bit search", k + 1, len(blocks))
    fp32_names = [n for n, _ in hf.named_parameters() if n.endswith("norm.weight")]
    fixed = sum(hf.get_parameter(n).numel() * 4 for n in fp32_names)
    choices = [search_bits(errors, costs, int(budget * 1e6), fixed_bytes=fixed) for _, budget in targets]
    layers["model.embed_tokens"] = {"shape": list(embed.shape), "rank": None, "lowrank_error": 0.0}
    parts["model.embed_tokens"] = blocks["embed"]["model.embed_tokens"]
    manifests = []
    for (out, budget_mb), bits_of in zip(targets, choices):  # 3) quantize and write each artifact
        tensors: dict[str, torch.Tensor] = {n: hf.get_parameter(n).detach().float().contiguous() for n in fp32_names}
        for block, members in blocks.items():
            for name, p in members.items():
                for part, w in p.items():
                    prefix = name if part == "w" else f"{name}.{part}"
                    tensors.update(quantize(w, bits_of[block], group).tensors(prefix))
        layers = copy.deepcopy(layers)
        for name, entry in layers.items():
            entry["bits"] = bits_of["embed" if entry.get("tied") else arch.block_of(name)]
            entry["bytes"] = 0 if entry.get("tied") else _cost(parts[name], entry["bits"], group)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
        try:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp / artifact.WEIGHTS))
            new_cfg = copy.deepcopy(hf.config)
            new_cfg.tie_word_embeddings = tied
            new_cfg.quantization_config = None
            new_cfg.save_pretrained(tmp)
            hf.generation_config.save_pretrained(tmp)
            base.tokenizer.save_pretrained(tmp)
            n_params = sum(p.numel() for p in hf.parameters())
            manifest = {
                "format": artifact.FORMAT, "version": artifact.VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "build_command": command or " ".join(sys.argv),
                "base": {"id": base.name, "spec": str(model), "source": base.source,
                         "sha256": artifact.model_dir_sha256(base.source),
                         "architecture": type(hf).__name__, "params": n_params},
                "calibration": {"file": str(calib_path), "sha256": file_sha256(calib_path), "samples": len(texts),
                                "sequences": int(len(seqs)), "seq_len": seq_len, "tokens": cal.tokens,
                                "search_sequences": int(len(cal.search_ids)), "head_rows": int(len(head_in))},
                "lowrank": {"enabled": lowrank, "rank_tol": rank_tol, "pay_ratio": pay_ratio,
                            "criterion": "relative calibration output error of the whitened truncated SVD",
                            "recovery_s": recovery_s, "recovery": recovery},
                "quant": {"scheme": "groupwise-affine-uint (w = (q - zp) * fp16 scale), 16 = fp16",
                          "group_size": group, "choices": list(CHOICES), "budget_mb": budget_mb,
                          "min_feasible_mb": (fixed + sum(min(c.values()) for c in costs.values())) / 1e6},
                "blocks": {b: {"bits": bits_of[b], "error": errors[b][bits_of[b]], "bytes": costs[b][bits_of[b]],
                               "errors": {str(k): v for k, v in errors[b].items()}} for b in blocks},
                "layers": layers,
                "fp32": fp32_names,
                "error": {"block_error_sum": sum(errors[b][bits_of[b]] for b in blocks)},
                "bytes": {"weights": fixed + sum(costs[b][bits_of[b]] for b in blocks), "base_fp32": n_params * 4},
                "exports": {},
            }
            manifest["error"].update(_end_to_end(hf, artifact.build_torch_model(tmp, manifest, tensors), cal.search_ids))
            manifest["bytes"]["weights_file"] = (tmp / artifact.WEIGHTS).stat().st_size
            _export(tmp, manifest, export, progress)
            manifest["bytes"]["on_disk"] = artifact.dir_bytes(tmp)
            manifest["build_s"] = round(time.perf_counter() - t_start, 1)
            artifact.write_manifest(tmp, manifest)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifests.append(manifest)
    return manifests


def export_artifact(path, export=("onnx",), progress=None) -> dict:
    """Add engine exports to an existing artifact; returns the updated manifest."""
    manifest = artifact.read_manifest(path)
    _export(Path(path), manifest, tuple(export), progress or _noop)
    manifest["bytes"]["on_disk"] = artifact.dir_bytes(path)
    artifact.write_manifest(path, manifest)
    return manifest


def _export(path, manifest: dict, export, progress) -> None:
    from . import onnx_backend, trt_backend

    unknown = set(export) - {"onnx", "tensorrt"}
    if unknown:
        raise ValueError(f"unknown export target(s) {sorted(unknown)}; use onnx and/or tensorrt")
    if "onnx" in export:
        progress("export onnx", 0, 1)
        manifest["exports"]["onnx"] = onnx_backend.export(path, manifest, "nbits")
        progress("export onnx", 1, 1)
    if "tensorrt" in export:
        progress("export tensorrt", 0, 1)
        entry = manifest["exports"]["onnx_dense"] = onnx_backend.export(path, manifest, "dense")
        if trt_backend.available():
            engine = trt_backend.build_engine(path, entry, "fp16")
            manifest["exports"]["tensorrt"] = {"engine": str(engine.relative_to(path)), "precision": "fp16"}
        progress("export tensorrt", 1, 1)


def _end_to_end(ref, comp, ids: torch.Tensor, max_seqs: int = 4) -> dict:
    """Logits error and next-token (greedy) agreement of the compressed model on calibration text."""
    ids = ids[:max_seqs]
    with torch.inference_mode():
        a = ref(input_ids=ids, use_cache=False).logits.float()
        b = comp(input_ids=ids, use_cache=False).logits.float()
    return {"logits_rel_error": _rel(b, a) ** 0.5,
            "top1_agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean())}
