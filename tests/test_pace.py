"""backend/pace.py: the slice depth follows the team's labeling rate and lsal's cycle time."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backend.config import ProjectConfig, Settings
from backend.cycle import CycleDeps, CycleReport, slice_depth
from backend.cycle_log import record_cycle
from backend.pace import Pace, observed_pace
from backend.pace import slice_depth as depth_for
from backend.store import ModelStore

T0 = 1_800_000_000.0  # an epoch second; the log's finish times are T0 + offsets


def entry(at: float, labels: int, seconds: float = 2.0, **extra: Any) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(T0 + at, UTC).isoformat()
    return {"finished_at": stamp, "labels": labels, "timings": {"fit": seconds / 2, "write": seconds / 2}, **extra}


def test_rate_is_labels_gained_since_the_oldest_cycle_in_the_window() -> None:
    history = [entry(-1000, 0), entry(-200, 100, 3.0), entry(-100, 150, 1.0), entry(-10, 290, 2.0)]
    pace = observed_pace(history, labels_now=300, now=T0)
    # The -1000 s cycle is outside the 300 s window: (300 - 100) / 200 s.
    assert pace == Pace(labels_per_s=1.0, cycle_s=2.0)


def test_an_idle_project_measures_from_its_last_cycle() -> None:
    history = [entry(-4000, 10), entry(-1000, 20, 4.0)]
    pace = observed_pace(history, labels_now=25, now=T0)
    assert pace == Pace(labels_per_s=5 / 1000, cycle_s=3.0)  # median of 2.0 and 4.0


def test_cycle_time_is_the_median_of_the_last_five() -> None:
    history = [entry(-60 + i, 10 * i, s) for i, s in enumerate([100.0, 1.0, 2.0, 9.0, 3.0, 4.0])]
    pace = observed_pace(history, labels_now=60, now=T0)
    assert pace is not None
    assert pace.cycle_s == 3.0  # median of [1, 2, 9, 3, 4]: the 100 s cycle is older than five


def test_no_usable_log_means_no_pace() -> None:
    assert observed_pace([], labels_now=5, now=T0) is None
    assert observed_pace([{"labels": 3, "timings": {"fit": 1.0}}], labels_now=5, now=T0) is None
    assert observed_pace([entry(0, 3)], labels_now=5, now=T0) is None  # finished "now": no age
    assert observed_pace([{**entry(-5, 3), "finished_at": "yesterday"}], labels_now=5, now=T0) is None


def test_deleted_labels_give_a_zero_rate_not_a_negative_one() -> None:
    assert observed_pace([entry(-10, 50)], labels_now=40, now=T0) == Pace(labels_per_s=0.0, cycle_s=2.0)


@pytest.mark.parametrize(
    ("pace", "expected"),
    [
        (None, 500),  # no cycle log yet: the upper bound
        (Pace(labels_per_s=0.0, cycle_s=2.0), 50),  # nobody labeling: the floor
        (Pace(labels_per_s=2.0, cycle_s=3.0), 50),  # five people, 2 s think time: 24 -> the floor
        (Pace(labels_per_s=2.0, cycle_s=10.0), 80),  # 2 x 2/s x 2 x 10 s
        (Pace(labels_per_s=2.5, cycle_s=10.1), 101),  # ceil(101.0)
        (Pace(labels_per_s=2.5, cycle_s=10.11), 102),  # ceil(101.1)
        (Pace(labels_per_s=20.0, cycle_s=30.0), 500),  # 2,400 capped by AL_QUEUE_DEPTH
    ],
)
def test_depth_covers_two_cycles_of_labeling_twice_over(pace: Pace | None, expected: int) -> None:
    assert depth_for(500, 50, pace) == expected


def test_a_floor_above_the_depth_gives_the_depth_and_bad_bounds_are_refused() -> None:
    assert depth_for(30, 50, Pace(labels_per_s=0.0, cycle_s=1.0)) == 30
    with pytest.raises(ValueError, match="upper=0"):
        depth_for(0, 50, None)


def test_the_cycle_reads_its_pace_from_the_project_cycle_log(tmp_path: Path) -> None:
    settings = replace(Settings(), model_dir=tmp_path)
    deps = CycleDeps(settings=settings, client=None, store=ModelStore(tmp_path))  # type: ignore[arg-type]
    config = replace(ProjectConfig(), queue_depth=500, queue_floor=50)
    assert slice_depth(deps, 3, config, labels=0) == (500, None)  # no log yet

    report = CycleReport(project=3, labels=10, timings={"fit": 4.0, "write": 6.0})
    record_cycle(tmp_path, report)  # finished now, took 10 s
    stamp = datetime.fromisoformat(str(report.finished_at)).timestamp()
    depth, pace = slice_depth(deps, 3, config, labels=50, now=stamp + 20.0)  # 40 labels in 20 s: 2/s
    assert pace == {"labels_per_s": 2.0, "cycle_s": 10.0}
    assert depth == 80
    assert slice_depth(deps, 3, replace(config, queue_floor=500), labels=50, now=stamp + 20.0)[0] == 500  # off
