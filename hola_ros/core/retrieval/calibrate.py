"""Gate calibration on development data (question, reference answer).

For every dev question the gate's features are measured, and each level is judged by what it
does to the LM: the mean NLL of the reference answer (teacher-forced, no generation) with no
context, with the single-shot passages, and with the multi-step passages (LM-written follow-up
query). Then:
  - features are standardised, and a logistic regression on label1 (single-shot lowers the
    answer NLL by more than `margin` nats/token) gives the score weights;
  - (delta1, delta2) minimise the dev objective: answer NLL at the chosen level plus `margin`
    per retrieval step, so a level is only used where it pays for itself;
  - sim_min (the gate without an LM) minimises the same objective with levels 0/1 only.
The report gives each feature's AUC for label1 (does C(q) carry signal?), the objective of the
fixed policies (always off / single / multi) and of the gate, in-sample and leave-one-out.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from .adacomp import AdaCompRetriever, gather_context
from .prompting import chat_ids, compose_messages
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
        plain = compose_messages(item.question, [], grounded=False)
        row = {"question": item.question, **feats, "nll_none": answer_nll(model, tokenizer, plain, item.answer),
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


def _level_nll(rows_nll: np.ndarray, levels: np.ndarray, margin: float) -> float:
    """Mean answer NLL at the chosen levels, plus `margin` per retrieval step (its cost)."""
    return float(np.mean(rows_nll[np.arange(len(levels)), levels] + margin * levels))


def choose_deltas(scores: np.ndarray, nll: np.ndarray, margin: float) -> tuple[float, float]:
    """(delta1, delta2) minimising _level_nll over cuts between the dev scores; ties -> fewer retrievals.

    With the rows sorted by score, a pair of cuts is a pair of split positions i <= j (rows
    before i: level 0, i..j-1: level 1, from j: level 2), so every pair is scored at once from
    prefix sums.
    """
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    cost = nll[order] + margin * np.arange(3)
    n = len(s)
    pre = np.vstack([np.zeros(3), np.cumsum(cost, axis=0)])  # pre[k, level]: rows before k at that level
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    total = pre[i, 0] + (pre[j, 1] - pre[i, 1]) + (pre[n, 2] - pre[j, 2])
    # a split must fall between distinct scores, and level 2 cannot start before level 1
    valid = np.ones(n + 1, dtype=bool)
    valid[1:n] = s[1:] > s[:-1]
    total = np.where((j >= i) & valid[i] & valid[j], total, np.inf)
    best = total.min()
    ties = np.argwhere(total <= best + 1e-9)
    bi, bj = max(map(tuple, ties))  # the most level-0 rows, then the most level-1 rows

    def cut(k):
        return 0.0 if k == 0 else 1.0 if k == n else float((s[k - 1] + s[k]) / 2)

    return cut(bi), cut(bj)


def _plain(obj):
    """numpy scalars -> Python numbers, for YAML."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj.item() if isinstance(obj, np.generic) else obj


def fit(rows: list[dict], margin: float = 0.02) -> tuple[dict, dict]:
    """Thresholds (for gate_thresholds.yaml) and a report from measured rows.

    Weights: logistic regression of label1 on the standardised features. Thresholds: the
    (delta1, delta2) that minimise the dev answer NLL at the chosen levels plus `margin` per
    retrieval step, so a level is used only where it pays. The report gives in-sample figures
    and a leave-one-out estimate of that objective.
    """
    feats = np.array([[r[f] for f in FEATURES] for r in rows], dtype=float)
    multi = "nll_multi" in rows[0]
    nll = np.array([[r["nll_none"], r["nll_single"], r["nll_multi"] if multi else np.inf] for r in rows])
    y1 = nll[:, 0] - nll[:, 1] > margin

    def fit_once(idx):
        mean, std = feats[idx].mean(0), feats[idx].std(0) + 1e-9
        z = (feats[idx] - mean) / std
        if y1[idx].all() or not y1[idx].any():
            weights, bias = np.zeros(len(FEATURES)), (5.0 if y1[idx].all() else -5.0)
        else:
            weights, bias = fit_logistic(z, y1[idx].astype(float))
        scores = 1 / (1 + np.exp(-(z @ weights + bias)))
        d1, d2 = choose_deltas(scores, nll[idx], margin)
        return mean, std, weights, bias, d1, d2

    def score_of(params, idx):
        mean, std, weights, bias = params[:4]
        return 1 / (1 + np.exp(-(((feats[idx] - mean) / std) @ weights + bias)))

    everything = np.arange(len(rows))
    params = fit_once(everything)
    mean, std, weights, bias, delta1, delta2 = params
    scores = score_of(params, everything)
    levels = np.where(scores < delta1, 0, np.where(scores < delta2, 1, 2))

    loo_levels = np.zeros(len(rows), dtype=int)
    for i in everything:  # leave-one-out: how the fitted gate does on a question it did not see
        p_i = fit_once(np.delete(everything, i))
        s_i = score_of(p_i, np.array([i]))[0]
        loo_levels[i] = 0 if s_i < p_i[4] else (1 if s_i < p_i[5] else 2)

    sim = feats[:, FEATURES.index("top_sim")]
    sim_cuts = np.concatenate([[0.0], np.sort(sim) + 1e-9])
    sim_min = min(sim_cuts, key=lambda t: (_level_nll(nll, (sim >= t).astype(int), margin), -t))

    def objective(lv):
        return round(_level_nll(nll, lv, margin), 4)

    report = {
        "n": len(rows), "margin_nats_per_token": margin,
        "label1_positive_rate": float(y1.mean()),
        "auc_label1": {"score": auc(scores, y1), **{f: auc(feats[:, i], y1) for i, f in enumerate(FEATURES)}},
        "mean_answer_nll": {"none": float(nll[:, 0].mean()), "single": float(nll[:, 1].mean()),
                            **({"multi": float(nll[:, 2].mean())} if multi else {})},
        "objective_mean_nll_plus_cost": {
            "always_off": objective(np.zeros(len(rows), dtype=int)),
            "always_single": objective(np.ones(len(rows), dtype=int)),
            **({"always_multi": objective(np.full(len(rows), 2))} if multi else {}),
            "gate_in_sample": objective(levels), "gate_leave_one_out": objective(loo_levels),
            "similarity_only_in_sample": objective((sim >= sim_min).astype(int))},
        "dev_level_counts": {str(k): int((levels == k).sum()) for k in (0, 1, 2)},
        "balanced_accuracy_level1": round(balanced_accuracy(levels > 0, y1), 4),
        "corr_log_grad_vs_tokens": float(np.corrcoef(feats[:, 0], [r["tokens"] for r in rows])[0, 1]),
    }
    if multi:
        y2 = nll[:, 1] - nll[:, 2] > margin
        report["label2_positive_rate"] = float(y2.mean())
        report["auc_label2_score"] = auc(scores, y2)

    thresholds = {"features": list(FEATURES), "mean": [round(float(v), 6) for v in mean],
                  "std": [round(float(v), 6) for v in std], "weights": [round(float(v), 6) for v in weights],
                  "bias": round(float(bias), 6), "delta1": round(delta1, 6), "delta2": round(delta2, 6),
                  "sim_min": round(float(min(max(sim_min, 0.0), 1.0)), 6), "calibrated": True}
    return thresholds, _plain(report)


def write_yaml(path, thresholds: dict, provenance: dict) -> None:
    import yaml

    header = ("# AdaComp gate thresholds, written by `hola-ros calibrate-gate` (see docs/retrieval.md).\n"
              "# Evidence gate (default, no LM): sim_min, known_min, phrases_min, missing_min, specific_share.\n"
              "# Gradient gate (gate_model set): score = sigmoid(sum(weights * (feature - mean) / std) + bias);\n"
              "# level 0 if score < delta1, 1 if score < delta2, else 2.\n")
    body = yaml.safe_dump({"thresholds": thresholds, "calibration": provenance}, sort_keys=False, width=100)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + body)


def provenance(**kw) -> dict:
    return {"date": time.strftime("%Y-%m-%d"), **kw}
