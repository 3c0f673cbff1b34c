"""Learning-curve PNGs: one point per version; versions without a metric or a label count are skipped."""

from __future__ import annotations

from typing import Any
from unittest import mock

from backend import plots


def test_learning_curve_plots_each_version_with_a_metric() -> None:
    history: list[dict[str, Any]] = [
        {"version": "v2", "n_labels": 20, "metrics": {"cv_accuracy": 0.8, "cv_macro_f1": None}},
        {"version": "v1", "n_labels": 10, "metrics": {"cv_accuracy": 0.6, "cv_macro_f1": 0.5}},
        {"version": "v0", "metrics": {"cv_accuracy": 0.1}},  # no label count: not a point
    ]
    real_plot = plots.plt.Axes.plot
    with mock.patch.object(plots.plt.Axes, "plot", autospec=True, side_effect=real_plot) as plot:
        png = plots.learning_curve_png(3, history)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    drawn = {call.kwargs["label"]: (list(call.args[1]), list(call.args[2])) for call in plot.call_args_list}
    assert drawn == {
        "accuracy (cross-validated)": ([10, 20], [0.6, 0.8]),
        "macro-F1 (cross-validated)": ([10], [0.5]),
    }
