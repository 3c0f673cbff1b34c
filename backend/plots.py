"""PNG plots: a project's learning curve (one point per model version)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and workers
import matplotlib.pyplot as plt  # noqa: E402


def learning_curve_png(project: int, history: Sequence[Mapping[str, Any]]) -> bytes:
    """Cross-validated accuracy and macro-F1 against the number of labels, one point per version."""
    points: list[tuple[int, float | None, float | None, str]] = []
    for meta in history:
        metrics = meta.get("metrics") or {}
        n = meta.get("n_labels")
        if n is None:
            continue
        points.append((int(n), metrics.get("cv_accuracy"), metrics.get("cv_macro_f1"), meta.get("version", "")))
    points.sort(key=lambda p: p[0])
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    try:
        for idx, name, marker in ((1, "accuracy (cross-validated)", "o"), (2, "macro-F1 (cross-validated)", "s")):
            pairs = [(p[0], value) for p in points if (value := p[idx]) is not None and not isinstance(value, str)]
            ax.plot([x for x, _ in pairs], [y for _, y in pairs], marker=marker, label=name)
        ax.set_xlabel("labeled tasks")
        ax.set_ylabel("score")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"Project {project}: learning curve ({len(points)} versions)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)
