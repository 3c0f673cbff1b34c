"""When to stop labeling: stabilizing predictions on a fixed stop set.

Bloodgood & Vijay-Shanker (2009), "A method for stopping active learning based on stabilizing
predictions and the need for user-adjustable stopping", CoNLL: keep a fixed set of unlabeled
examples (the stop set), predict it with every model version, and measure Cohen's kappa between
successive versions' predictions; stop when the average kappa over the last k comparisons
reaches a threshold (they use k = 3 and 0.99).

Alongside: the share of stop-set predictions whose label changed, and the pool's mean
uncertainty (margin-based informativeness, 0 = certain everywhere).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score

STOP_SET_SIZE = 1000
WINDOW = 3
KAPPA_THRESHOLD = 0.99


def agreement(before: Mapping[int, Sequence[str]], after: Mapping[int, Sequence[str]]) -> dict[str, float | None]:
    """Cohen's kappa and the share of changed labels between two versions' stop-set predictions.

    Predictions are label lists (single-label: one label). Multi-label rows are compared as
    label sets; kappa is computed over the (row, label) indicator matrix.
    """
    common = sorted(set(before) & set(after))
    if not common:
        return {"kappa": None, "changed": None, "compared": 0}
    a = [tuple(sorted(before[i])) for i in common]
    b = [tuple(sorted(after[i])) for i in common]
    changed = float(np.mean([x != y for x, y in zip(a, b, strict=True)]))
    if all(len(x) <= 1 for x in a + b):
        flat_a = [x[0] if x else "" for x in a]
        flat_b = [x[0] if x else "" for x in b]
        kappa = 1.0 if flat_a == flat_b else float(cohen_kappa_score(flat_a, flat_b))
    else:
        labels = sorted({label for row in a + b for label in row})
        ia = np.array([[label in row for label in labels] for row in a]).ravel()
        ib = np.array([[label in row for label in labels] for row in b]).ravel()
        kappa = 1.0 if np.array_equal(ia, ib) else float(cohen_kappa_score(ia, ib))
    if np.isnan(kappa):
        kappa = 0.0  # both constant but different: no agreement beyond chance
    return {"kappa": round(kappa, 6), "changed": round(changed, 6), "compared": len(common)}


def recommendation(
    cycles: Sequence[Mapping[str, Any]], window: int = WINDOW, threshold: float = KAPPA_THRESHOLD
) -> dict[str, Any]:
    """Plain-words advice from the stability of the last `window` version-to-version comparisons."""
    kappas = [c["stability"]["kappa"] for c in cycles if (c.get("stability") or {}).get("kappa") is not None]
    if not cycles:
        return {"stable_versions": 0, "mean_kappa": None, "advice": "no cycle has run yet"}
    if len(kappas) < window:
        return {
            "stable_versions": 0,
            "mean_kappa": round(float(np.mean(kappas)), 6) if kappas else None,
            "advice": f"too early to judge: {len(kappas)} of {window} version comparisons so far; keep labeling",
        }
    recent = kappas[-window:]
    mean = float(np.mean(recent))
    stable = 0
    for k in reversed(kappas):
        if k < threshold:
            break
        stable += 1
    if mean >= threshold:
        advice = (
            f"predictions have been stable for {stable} versions (mean kappa {mean:.3f} over the last {window}); "
            "more labels are unlikely to change the model"
        )
    else:
        advice = (
            f"predictions are still changing (mean kappa {mean:.3f} over the last {window} versions); keep labeling"
        )
    return {"stable_versions": stable, "mean_kappa": round(mean, 6), "advice": advice}
