"""Gate calibration on development data (question, reference answer).

For every dev question the gate's features are measured, and retrieval is judged by what it
does to the LM: label1 = the single-shot passages lower the mean NLL of the reference answer
(teacher-forced, no generation) by more than `margin` nats/token; label2 = the multi-step
context (LM-written follow-up query) lowers it further than single-shot by more than `margin`.
Then:
  - features are standardised, and a logistic regression on label1 gives the score weights;
  - delta1 = the score threshold with the best balanced accuracy for label1;
  - delta2 = the threshold >= delta1 with the best balanced accuracy for label2 among the
    questions at or above delta1 (1.0, i.e. never, when no question gains from a second step);
  - sim_min (the gate without an LM) = the top-similarity threshold with the best balanced
    accuracy for label1.
The report also gives each feature's AUC for label1, so whether C(q) carries signal is measured.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .adacomp import AdaCompRetriever, chat_ids, compose_messages, gather_context
from .gate import FEATURES


@dataclass
class DevItem:
    question: str
    answer: str


def answer_nll(model, tokenizer, messages: list[dict], answer: str) -> float:
    """Mean NLL per token of `answer` as the assistant's reply to `messages`."""
    import torch

    prompt = chat_ids(tokenizer, messages)
    target = list(tokenizer.encode(answer, add_special_tokens=False))
    x = torch.tensor([prompt + target])
    with torch.inference_mode():
        logits = model(x, use_cache=False).logits[0, len(prompt) - 1:-1].float()
    return float(torch.nn.functional.cross_entropy(logits, torch.tensor(target)))


def balanced_accuracy(pred: np.ndarray, label: np.ndarray) -> float:
    pos, neg = label.sum(), (~label).sum()
    if pos == 0 or neg == 0:
        return float((pred == label).mean())
    return 0.5 * ((pred & label).sum() / pos + (~pred & ~label).sum() / neg)


def best_threshold(values: np.ndarray, label: np.ndarray, lo: float = -math.inf) -> tuple[float, float]:
    """The cut t >= lo (value >= t predicts True) with the best balanced accuracy; (t, accuracy)."""
    v = np.sort(np.unique(values[values >= lo]))
    cands = [float(lo)] if math.isfinite(lo) else []
    cands += [float(v[0]) - 1e-9] if len(v) else []
    cands += [float((a + b) / 2) for a, b in zip(v[:-1], v[1:])] + ([float(v[-1]) + 1e-9] if len(v) else [])
    best = max(cands, key=lambda t: (balanced_accuracy(values >= t, label), -abs(t)))
    return best, balanced_accuracy(values >= best, label)


def auc(values: np.ndarray, label: np.ndarray) -> float:
    """Probability that a positive outranks a negative (ties count half); nan if one class is empty."""
    pos, neg = values[label], values[~label]
    if len(pos) == 0 or len(neg) == 0:
        return math.nan
    return float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum())
                 / (len(pos) * len(neg)))


def fit_logistic(z: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 50) -> tuple[np.ndarray, float]:
    """Newton's method on the L2-regularised log-loss; returns (weights, bias).

    The L2 term keeps the score graded on separable dev data, so delta2 can sit above delta1.
    """
    X = np.hstack([z, np.ones((len(z), 1))])
    w = np.zeros(X.shape[1])
    reg = np.diag([l2] * z.shape[1] + [0.0])
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(X @ w, -50, 50)))
        grad = X.T @ (p - y) + reg @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def measure(retriever: AdaCompRetriever, model, tokenizer, items: list[DevItem], follow_up=None,
            progress: bool = False, on_row=None) -> list[dict]:
    """Per dev item: gate features, answer NLL without / with single-shot / with multi-step context.

    on_row(row) is called after each item (the CLI appends it to a file, so a run can resume).
    """
    from tqdm.auto import tqdm

    if retriever.gate is None:
        raise ValueError("calibration needs a retriever with a gate model")
    rows = []
    for item in tqdm(items, desc="calibrating", unit="question", disable=not progress):
        single = retriever.retrieve(item.question, mode="single")
        feats = retriever.gate.features(item.question, [single.detail["similarity"]["top"]])
        row = {"question": item.question, **feats, "nll_none": answer_nll(model, tokenizer, compose_messages(item.question, []), item.answer),
               "nll_single": answer_nll(model, tokenizer, compose_messages(item.question, single.passages),
                                        item.answer)}
        if follow_up is not None:
            multi = gather_context(item.question, "multi", retriever.retrieve, follow_up)
            row["nll_multi"] = answer_nll(model, tokenizer, compose_messages(item.question, multi.passages),
                                          item.answer)
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def fit(rows: list[dict], margin: float = 0.02) -> tuple[dict, dict]:
    """Thresholds (for gate_thresholds.yaml) and a report from measured rows."""
    feats = np.array([[r[f] for f in FEATURES] for r in rows], dtype=float)
    y1 = np.array([r["nll_none"] - r["nll_single"] > margin for r in rows])
    mean, std = feats.mean(0), feats.std(0) + 1e-9
    z = (feats - mean) / std
    if y1.all() or not y1.any():
        weights, bias = np.zeros(len(FEATURES)), (5.0 if y1.all() else -5.0)
    else:
        weights, bias = fit_logistic(z, y1.astype(float))
    scores = 1 / (1 + np.exp(-(z @ weights + bias)))
    delta1, acc1 = best_threshold(scores, y1)
    delta1 = float(min(max(delta1, 0.0), 1.0))

    report = {"n": len(rows), "margin_nats_per_token": margin, "label1_positive_rate": float(y1.mean()),
              "balanced_accuracy_level1": round(float(acc1), 4),
              "auc_label1": {"score": auc(scores, y1), **{f: auc(feats[:, i], y1) for i, f in enumerate(FEATURES)}},
              "mean_nll": {k: float(np.mean([r[k] for r in rows])) for k in ("nll_none", "nll_single", "nll_multi")
                           if k in rows[0]}}
    delta2 = 1.0
    if "nll_multi" in rows[0]:
        y2 = np.array([r["nll_single"] - r["nll_multi"] > margin for r in rows])
        above = scores >= delta1
        report["label2_positive_rate"] = float(y2.mean())
        report["auc_label2_score"] = auc(scores, y2)
        if above.any() and y2[above].any():
            delta2, acc2 = best_threshold(scores[above], y2[above], lo=delta1)
            delta2 = float(min(max(delta2, delta1), 1.0))
            report["balanced_accuracy_level2"] = round(float(acc2), 4)
    sim_min, acc_sim = best_threshold(feats[:, FEATURES.index("top_sim")], y1)
    report["balanced_accuracy_similarity_only"] = round(float(acc_sim), 4)
    levels = np.where(scores < delta1, 0, np.where(scores < delta2, 1, 2))
    report["dev_level_counts"] = {str(k): int((levels == k).sum()) for k in (0, 1, 2)}
    report["corr_log_grad_vs_tokens"] = float(np.corrcoef(feats[:, 0], [r["tokens"] for r in rows])[0, 1])

    thresholds = {"features": list(FEATURES), "mean": [round(float(v), 6) for v in mean],
                  "std": [round(float(v), 6) for v in std], "weights": [round(float(v), 6) for v in weights],
                  "bias": round(float(bias), 6), "delta1": round(delta1, 6), "delta2": round(delta2, 6),
                  "sim_min": round(float(min(max(sim_min, 0.0), 1.0)), 6), "calibrated": True}
    return thresholds, report


def write_yaml(path, thresholds: dict, provenance: dict) -> None:
    import yaml

    header = ("# AdaComp gate thresholds, written by `hola-ros calibrate-gate` (see docs/retrieval.md).\n"
              "# score = sigmoid(sum(weights * (feature - mean) / std) + bias); level 0 if score < delta1,\n"
              "# 1 if score < delta2, else 2. sim_min: the gate without an LM.\n")
    body = yaml.safe_dump({"thresholds": thresholds, "calibration": provenance}, sort_keys=False, width=100)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + body)


def provenance(**kw) -> dict:
    return {"date": time.strftime("%Y-%m-%d"), **kw}
