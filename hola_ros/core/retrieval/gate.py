"""Retrieval gates: the evidence gate (default, no LM) and the paper's gradient gate.

Evidence gate (`evidence_level`): from what the retrieval itself found (top cosine similarity,
share of the query's terms the index knows, identifiers the index holds, specific terms the
single-shot passages miss); no LM, so the retriever needs no second copy of the model.

Gradient gate (`ComplexityGate`): C(q) from an LM's gradient, combined with the similarity.

The paper's C(q) = ||grad_q L||_2 leaves L undefined at inference (a query has no label). Here
L is the LM's negative log-likelihood of the query's own tokens (summed), the gradient is taken
w.r.t. the query's input embeddings, and C(q) is its Frobenius norm divided by sqrt(number of
query tokens), i.e. the RMS per-token gradient norm, so long and short queries are comparable.

The score combines standardised features (log C(q), top cosine similarity) with weights fitted
on development data (`calibrate.py`): score = sigmoid(w . z + b), read as the probability that
retrieval helps. Level 0 below delta1, 1 below delta2, else 2.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

FEATURES = ("log_grad", "top_sim")

# Used when no calibrated file is found: weights 1 on roughly standardised features.
DEFAULT_THRESHOLDS = {
    "features": list(FEATURES),
    "mean": [0.0, 0.35],
    "std": [1.0, 0.15],
    "weights": [1.0, 1.0],
    "bias": 0.0,
    "delta1": 0.5,  # score >= delta1: retrieve
    "delta2": 0.85,  # score >= delta2: multi-step (0.85 is the paper's single threshold)
    # the evidence gate (no LM): retrieve when the top cosine similarity reaches sim_min, or the index
    # knows a known_min share of the query's terms, or the candidates hold phrases_min of its two-term
    # phrases, or the index holds one of its identifiers; multi-step when missing_min specific query
    # terms are still missing from the single-shot passages
    "sim_min": 0.3,
    "known_min": 0.5,
    "phrases_min": 1,
    "missing_min": 2,
    "specific_share": 0.2,  # a term in at most this share of the passages is specific to a topic
    # passage selection: drop a candidate more than sim_gap below the best cosine similarity unless
    # its BM25 score reaches bm25_ratio of the best BM25 score
    "sim_gap": 0.15,
    "bm25_ratio": 0.5,
    "calibrated": False,
}


def merge_thresholds(overrides: dict | None) -> dict:
    """Defaults updated by `overrides`: a flat dict or a whole gate_thresholds.yaml document."""
    overrides = overrides or {}
    if isinstance(overrides.get("thresholds"), dict):
        overrides = overrides["thresholds"]
    out = copy.deepcopy(DEFAULT_THRESHOLDS)
    out.update(overrides)
    if not 0.0 <= out["delta1"] <= out["delta2"] <= 1.0:
        raise ValueError(f"need 0 <= delta1 <= delta2 <= 1, got delta1={out['delta1']} delta2={out['delta2']}")
    n = len(out["features"])
    if any(len(out[k]) != n for k in ("mean", "std", "weights")) or set(out["features"]) - set(FEATURES):
        raise ValueError(f"thresholds: features must be a subset of {FEATURES} with one mean/std/weight each")
    return out


def packaged_thresholds_path() -> Path | None:
    from hola_ros.package_data import package_file

    return package_file("config/gate_thresholds.yaml")


def load_thresholds(path: str | Path | None = None) -> dict:
    """Thresholds from a YAML file (default: the packaged one; built-in defaults if none)."""
    import yaml

    path = Path(path) if path else packaged_thresholds_path()
    if path is None:
        return merge_thresholds(None)
    data = yaml.safe_load(Path(path).read_text()) or {}
    return merge_thresholds(data) | {"file": str(path)}


def query_gradient(model, tokenizer, query: str, max_tokens: int = 128) -> dict:
    """NLL of the query's tokens under the LM and the RMS per-token gradient norm w.r.t. embeddings."""
    import torch

    ids = list(tokenizer.encode(query, add_special_tokens=False))[:max_tokens]
    if not ids:
        raise ValueError("empty query")
    # a start token gives the first query token a context, so every query token is scored
    start = next((getattr(tokenizer, a, None) for a in ("bos_token_id", "cls_token_id", "eos_token_id")
                  if getattr(tokenizer, a, None) is not None), None)
    if start is not None:
        ids = [start] + ids
    if len(ids) < 2:
        raise ValueError("query too short for a likelihood (one token and no start token)")
    x = torch.tensor([ids])
    offset = 1 if start is not None else 0
    with torch.enable_grad():
        emb = model.get_input_embeddings()(x).detach().requires_grad_(True)
        logits = model(inputs_embeds=emb, use_cache=False).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        (grad,) = torch.autograd.grad(nll, emb)
    g = grad[0, offset:].float()
    n_query = g.shape[0]
    return {
        "grad_norm": float(g.norm() / math.sqrt(n_query)),
        "nll": float(nll.detach()) / (len(ids) - 1),  # mean NLL per predicted token
        "tokens": n_query,
    }


class ComplexityGate:
    def __init__(self, model, tokenizer, thresholds: dict | None = None, max_tokens: int = 128):
        self.model = model
        self.tokenizer = tokenizer
        self.thresholds = merge_thresholds(thresholds)
        self.max_tokens = max_tokens
        self._check_differentiable()

    def _check_differentiable(self) -> None:
        # inference-only kernels (e.g. the torch engine's packed linears) have no backward
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # torch warns before it raises
                query_gradient(self.model, self.tokenizer, "probe query", self.max_tokens)
        except RuntimeError as e:
            raise ValueError("the gate model must be differentiable w.r.t. its input embeddings; load it "
                             "with hola_ros.core.engines.load_engine(..., backend='torch', packed=False)") from e

    def features(self, query: str, similarities: list[float]) -> dict:
        g = query_gradient(self.model, self.tokenizer, query, self.max_tokens)
        return {"log_grad": math.log(max(g["grad_norm"], 1e-12)), "top_sim": float(similarities[0]), **g}

    def score(self, features: dict) -> float:
        return score_features(features, self.thresholds)

    def level(self, score: float) -> int:
        return level_for(score, self.thresholds)


def score_features(features: dict, th: dict) -> float:
    z = sum(w * (features[f] - m) / s for f, m, s, w in zip(th["features"], th["mean"], th["std"], th["weights"]))
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z + th["bias"]))))


def level_for(score: float, th: dict) -> int:
    return 0 if score < th["delta1"] else (1 if score < th["delta2"] else 2)


def evidence_level(evidence: dict, th: dict) -> int:
    """The evidence gate: level 0 when the documents hold nothing of the query, 2 when the
    single-shot passages miss `missing_min` of its specific terms, else 1."""
    grounded = (evidence["top_sim"] >= th["sim_min"] or evidence["known"] >= th["known_min"]
                or evidence["phrases"] >= th["phrases_min"] or evidence["identifiers"] > 0)
    if not grounded:
        return 0
    return 2 if len(evidence["missing"]) >= th["missing_min"] else 1
