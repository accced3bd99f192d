"""Calibrating the retrieval gates on KB questions (the tune half), without generating answers.

What a level is worth for a question is read from the question set and the retrieval itself:
  general       (not about the documents) level 0 is right: a grounded prompt would only make
                the model say the documents do not hold the answer;
  unanswerable  a grounded level (1 or 2) is right: the grounded prompt is what lets the model
                say plainly that the documents do not hold the answer;
  single/multi  the share of the question's facts in the context the level gives (0 at level 0).
Each retrieval step costs `LEVEL_COST`, so a level is used only where it pays. The evidence gate's
thresholds are searched on a grid; the gradient gate is fitted by `retrieval.calibrate.fit` on the
same utilities (its "NLL" cost is minus the utility), so both gates answer the same question.
"""
from __future__ import annotations

import itertools

import numpy as np

from . import kb

LEVEL_COST = 0.02
SHARES = (0.05, 0.1, 0.2)  # candidate `specific_share` values
KNOWN_CUTS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.01)  # 1.01: the known share never grounds alone
PHRASE_CUTS = (1, 2, 99)  # 99: phrases never ground alone
MISSING_CUTS = (1, 2, 3, 99)  # 99: never multi-step


def utilities(kind: str, recall1: float, recall2: float) -> list[float]:
    if kind == "general":
        return [1.0, 0.0, 0.0]
    if kind == "unanswerable":
        return [0.0, 1.0, 1.0]
    return [0.0, recall1, recall2]


def _recall(item: kb.KBItem, decision) -> float:
    if not item.facts:
        return 0.0
    return kb.facts_found(item, "\n".join(p.text for p in decision.passages)) / len(item.facts)


def measure(items: list[kb.KBItem], index_dir, gate=None, budget_tokens: int | None = None) -> list[dict]:
    """Per question: the evidence features, the missing specific terms and the multi-step recall at
    each candidate `specific_share`, the single-shot recall, and the gradient features if `gate`."""
    from hola_ros.core.retrieval.adacomp import AdaCompRetriever, gather_context

    kwargs = {} if budget_tokens is None else {"budget_tokens": budget_tokens}
    retrievers = {s: AdaCompRetriever(index_dir, thresholds={"specific_share": s}, **kwargs) for s in SHARES}
    rows = []
    for item in items:
        single = retrievers[SHARES[0]].retrieve(item.question, "single")
        ev = single.detail["evidence"]
        row = {"id": item.id, "kind": item.kind, "question": item.question, "top_sim": ev["top_sim"],
               "known": ev["known"], "phrases": ev["phrases"], "identifiers": ev["identifiers"],
               "recall1": _recall(item, single),
               "missing": {}, "recall2": {}}
        for share, r in retrievers.items():
            multi = gather_context(item.question, "multi", r.retrieve, follow_up=None)
            row["missing"][str(share)] = len(r.retrieve(item.question, "single").detail["evidence"]["missing"])
            row["recall2"][str(share)] = _recall(item, multi)
        if gate is not None:
            row.update({k: v for k, v in gate.features(item.question, [ev["top_sim"]]).items()
                        if k in ("log_grad", "grad_norm", "nll", "tokens")})
        rows.append(row)
    return rows


def _evidence_levels(rows: list[dict], th: dict) -> np.ndarray:
    from hola_ros.core.retrieval.gate import evidence_level

    return np.array([evidence_level({**r, "missing": [None] * r["missing"][str(th["specific_share"])]}, th)
                     for r in rows], dtype=int)


def _utility_matrix(rows: list[dict], share: float) -> np.ndarray:
    return np.array([utilities(r["kind"], r["recall1"], r["recall2"][str(share)]) for r in rows])


def _objective(u: np.ndarray, levels: np.ndarray) -> float:
    """Mean utility of the chosen levels minus LEVEL_COST per retrieval step."""
    return float(np.mean(u[np.arange(len(levels)), levels] - LEVEL_COST * levels))


def _grid_fit(rows: list[dict]) -> dict:
    """The evidence thresholds with the best objective (ties: the fewest retrieval steps); sim_min
    then sits in the middle of the range of cuts that score as well, away from both classes."""
    sims = sorted({0.0} | {round(r["top_sim"] + 1e-4, 4) for r in rows} | {1.01})
    names = ("specific_share", "sim_min", "known_min", "phrases_min", "missing_min")
    scored = {}
    for values in itertools.product(SHARES, sims, KNOWN_CUTS, PHRASE_CUTS, MISSING_CUTS):
        th = dict(zip(names, values))
        levels = _evidence_levels(rows, th)
        scored[values] = (round(_objective(_utility_matrix(rows, th["specific_share"]), levels), 9),
                          -int(levels.sum()))
    best = max(scored.values())
    chosen = max(k for k, v in scored.items() if v == best)
    tied = [k[1] for k, v in scored.items() if v == best and k[0] == chosen[0] and k[2:] == chosen[2:]]
    th = dict(zip(names, chosen)) | {"sim_min": round((min(tied) + max(tied)) / 2, 4)}
    if round(_objective(_utility_matrix(rows, th["specific_share"]), _evidence_levels(rows, th)), 9) < best[0]:
        th["sim_min"] = max(tied)  # the tied cuts were not contiguous
    return th


def fit_evidence(rows: list[dict]) -> tuple[dict, dict]:
    """Evidence gate thresholds and a report: fixed policies, the gate in-sample and leave-one-out."""
    th = _grid_fit(rows)
    u = _utility_matrix(rows, th["specific_share"])
    levels = _evidence_levels(rows, th)
    loo = np.zeros(len(rows), dtype=int)
    for i in range(len(rows)):
        th_i = _grid_fit(rows[:i] + rows[i + 1:])
        loo[i] = _evidence_levels([rows[i]], th_i)[0]
    n = len(rows)
    report = {"n": n, "level_cost": LEVEL_COST,
              "objective_mean_utility_minus_cost": {
                  "always_off": round(_objective(u, np.zeros(n, dtype=int)), 4),
                  "always_single": round(_objective(u, np.ones(n, dtype=int)), 4),
                  "always_multi": round(_objective(u, np.full(n, 2)), 4),
                  "gate_in_sample": round(_objective(u, levels), 4),
                  "gate_leave_one_out": round(_objective(u, loo), 4)},
              "level_counts": {str(k): int((levels == k).sum()) for k in (0, 1, 2)},
              "level_counts_leave_one_out": {str(k): int((loo == k).sum()) for k in (0, 1, 2)}}
    return th, report


def fit_gradient(rows: list[dict], share: float) -> tuple[dict, dict]:
    """The gradient gate (log C(q) and top similarity) fitted on the same utilities."""
    from hola_ros.core.retrieval.calibrate import fit

    cost_rows = [r | {"nll_none": -u[0], "nll_single": -u[1], "nll_multi": -u[2]}
                 for r, u in zip(rows, _utility_matrix(rows, share))]
    return fit(cost_rows, margin=LEVEL_COST)
