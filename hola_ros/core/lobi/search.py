"""The budgeted per-block bit-width search (a multiple-choice knapsack), shared by both Lo-Bi builds.
numpy only: the engine build runs without torch."""
from __future__ import annotations

import numpy as np


class BudgetError(ValueError):
    """No configuration fits the requested memory budget."""


def search_bits(errors: dict[str, dict], costs: dict[str, dict], budget_bytes: int, fixed_bytes: int = 0,
                unit: int = 4096) -> dict:
    """Per-block choice (a bit width, or any key of the block's `errors` / `costs`) minimising the
    summed calibration error with total bytes <= budget.

    A multiple-choice knapsack solved exactly by dynamic programming over bytes rounded UP to
    `unit` (so the chosen configuration always fits). Raises BudgetError when even the
    smallest configuration does not fit.
    """
    names = list(errors)
    cheapest = fixed_bytes + sum(min(costs[n].values()) for n in names)
    if cheapest > budget_bytes:
        raise BudgetError(
            f"budget {budget_bytes / 1e6:.2f} MB is below the smallest possible model "
            f"({cheapest / 1e6:.2f} MB with every block at its fewest bits); raise --budget-mb")
    cap = (budget_bytes - fixed_bytes) // unit
    inf = float("inf")
    best = np.full(cap + 1, inf)
    best[0] = 0.0
    picks = []
    for n in names:
        options = list(costs[n])
        nxt = np.full(cap + 1, inf)
        arg = np.zeros(cap + 1, dtype=np.int16)
        for index, choice in enumerate(options):
            c = -(-costs[n][choice] // unit)
            if c > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[c:] = best[:cap + 1 - c] + errors[n][choice]
            take = cand < nxt
            nxt[take], arg[take] = cand[take], index
        best = nxt
        picks.append((options, arg))
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):  # rounding up to units can make a just-fitting budget infeasible
        raise BudgetError(f"budget {budget_bytes / 1e6:.2f} MB is too tight to fit (minimum ~{cheapest / 1e6:.2f} MB)")
    chosen = {}
    for n, (options, arg) in zip(reversed(names), reversed(picks)):
        choice = options[int(arg[end])]
        chosen[n] = choice
        end -= -(-costs[n][choice] // unit)
    return {n: chosen[n] for n in names}
