"""How deep a cycle's slice must be for the team that is labeling now.

Label Studio serves the tasks that carry a prediction of the live version (lowest score first) and
falls back to random order when they are used up. The slice cycle N writes is served from N's switch
until N+1's switch; the annotations submitted while N ran were served from the previous slice, whose
most informative tasks are mostly N's too. So the slice must cover what the team labels in about two
cycle durations::

    depth = min(AL_QUEUE_DEPTH, max(AL_QUEUE_FLOOR, ceil(SAFETY * rate * 2 * cycle_s)))

with ``rate`` the labeled tasks gained per second over the last :data:`WINDOW_S` seconds and
``cycle_s`` the median duration of the last :data:`RECENT_CYCLES` cycles, both read from the
project's cycle log (MODEL_DIR/<project>/cycles.jsonl), and :data:`SAFETY` covering the tasks
annotators hold (Label Studio locks a served task to its annotator until they submit or skip it)
and a slower next cycle. A slice no deeper than that is cheaper to write and to delete later (Label
Studio's import and its per-prediction delete cost grow with it) and, with project members, keeps
Label Studio's random pick among current-version tasks informative. Without a cycle log yet, the
upper bound is written.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

#: seconds of cycle log the labeling rate is measured over
WINDOW_S = 300.0
#: cycles whose durations give the expected time to the next switch
RECENT_CYCLES = 5
#: headroom over rate x 2 cycle durations (locked tasks, a slower next cycle)
SAFETY = 2.0


@dataclass(frozen=True)
class Pace:
    """The team's labeling rate and lsal's recent cycle duration, as the cycle log shows them."""

    labels_per_s: float
    cycle_s: float

    def as_dict(self) -> dict[str, float]:
        """Rounded values for the cycle report."""
        return {k: round(v, 4) for k, v in asdict(self).items()}


def _finished(entry: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(entry["finished_at"])).timestamp()
    except (KeyError, TypeError, ValueError):
        return None


def observed_pace(
    history: Sequence[dict[str, Any]], labels_now: int, now: float, *, window_s: float = WINDOW_S
) -> Pace | None:
    """The pace from the cycle log ``history`` (oldest first) and this cycle's label count.

    ``labels_per_s`` = (``labels_now`` - labels of the oldest cycle within ``window_s``) / its age;
    when no cycle is that recent, the newest one's. ``cycle_s`` = the median sum of stage timings
    of the last :data:`RECENT_CYCLES` cycles. None when the log has no usable cycle (no finish time,
    label count or timings), or the reference cycle finished at or after ``now``.
    """
    points = [
        (t, int(e["labels"]))
        for e in history
        if (t := _finished(e)) is not None and isinstance(e.get("labels"), int) and e.get("timings")
    ]
    if not points:
        return None
    recent = [p for p in points if now - p[0] <= window_s]
    t_ref, labels_ref = recent[0] if recent else points[-1]
    age = now - t_ref
    if age <= 0:
        return None
    durations = [float(sum(e["timings"].values())) for e in history if e.get("timings") and _finished(e) is not None][
        -RECENT_CYCLES:
    ]
    return Pace(labels_per_s=max(0, labels_now - labels_ref) / age, cycle_s=statistics.median(durations))


def slice_depth(upper: int, floor: int, pace: Pace | None, *, safety: float = SAFETY) -> int:
    """Predictions to write this cycle: ``ceil(safety * rate * 2 * cycle_s)`` within [floor, upper].

    ``upper`` is ``AL_QUEUE_DEPTH`` (also the answer without a pace), ``floor`` is
    ``AL_QUEUE_FLOOR`` (clamped to ``upper``).

    >>> slice_depth(500, 50, Pace(labels_per_s=2.0, cycle_s=10.0))
    80
    >>> slice_depth(500, 50, None)
    500
    """
    if upper < 1 or floor < 1:
        raise ValueError(f"upper and floor must be >= 1, got upper={upper!r}, floor={floor!r}")
    if pace is None:
        return upper
    need = math.ceil(safety * pace.labels_per_s * 2.0 * pace.cycle_s)
    return min(upper, max(floor, need))
