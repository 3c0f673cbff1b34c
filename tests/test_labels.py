"""The labeled-task cache (backend/labels.py): full reads, hint updates, reconcile, crash safety.

Label Studio's two reads are plain functions here that record their calls; the real export (all,
and by id) is tested against Label Studio in tests/test_labelstudio.py and end to end in
tests/test_e2e_cycle.py."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from backend.jobs import LabelHints
from backend.labels import LabelCache
from backend.projectdir import ProjectDir


def task(task_id: int, label: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "data": {"text": f"t{task_id}"},
        "meta": {},
        "annotations": [{"id": task_id, "result": label}],
    }


class FakeLS:
    """Label Studio's labeled tasks as a dict, and the reads a cycle made."""

    def __init__(self, tasks: dict[int, str]) -> None:
        self.tasks = dict(tasks)
        self.calls: list[Any] = []

    def read_all(self) -> list[dict[str, Any]]:
        self.calls.append("all")
        return [task(i, lab) for i, lab in sorted(self.tasks.items())]

    def read_ids(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        asked = sorted(ids)
        self.calls.append(asked)
        return [task(i, self.tasks[i]) for i in asked if i in self.tasks]


def hints(*ids: int, full: bool = False) -> Any:
    taken: list[LabelHints] = []

    def take() -> LabelHints:
        assert not taken, "hints are taken once per cycle"
        taken.append(LabelHints(frozenset(ids), full))
        return taken[0]

    return take


def sync(cache: LabelCache, ls: FakeLS, take: Any, now: float, reconcile: float = 300) -> tuple[list[int], str]:
    tasks, how = cache.sync(reconcile, take, ls.read_all, ls.read_ids, now=lambda: now)
    return [t["id"] for t in tasks], how


def test_hints_update_the_saved_labels_between_full_reads(tmp_path: Path) -> None:
    ls = FakeLS({1: "a", 2: "b", 5: "a"})
    cache = LabelCache(tmp_path, 3)
    assert sync(cache, ls, hints(1), now=1000) == ([1, 2, 5], "full")  # nothing saved yet
    # A new label (7), an edit (2), a deleted annotation (5): each named by a hint, read by id.
    ls.tasks.update({7: "b", 2: "a"})
    del ls.tasks[5]
    ids, how = sync(cache, ls, hints(7, 2, 5), now=1010)
    assert (ids, how) == ([1, 2, 7], "hints")
    assert ls.calls == ["all", [2, 5, 7]]
    saved = cache.load()
    assert saved is not None and saved[1] == 1000  # still the time of the last full read
    assert saved[0][2]["annotations"][0]["result"] == "a"
    # No hint: nothing read, nothing changed.
    assert sync(cache, ls, hints(), now=1020) == ([1, 2, 7], "hints")
    assert ls.calls == ["all", [2, 5, 7]]
    # An edit nobody announced (a missed webhook) is found by the next full read, when it is due.
    ls.tasks[1] = "b"
    assert sync(cache, ls, hints(), now=1299) == ([1, 2, 7], "hints")
    assert cache.load()[0][1]["annotations"][0]["result"] == "a"  # type: ignore[index]
    assert sync(cache, ls, hints(), now=1300) == ([1, 2, 7], "full")
    assert cache.load()[0][1]["annotations"][0]["result"] == "b"  # type: ignore[index]
    assert not ProjectDir(tmp_path, 3).labels_dirty.exists()


def test_a_full_hint_or_a_zero_reconcile_reads_every_label(tmp_path: Path) -> None:
    ls = FakeLS({1: "a"})
    cache = LabelCache(tmp_path, 3)
    sync(cache, ls, hints(), now=0)
    assert sync(cache, ls, hints(full=True), now=1) == ([1], "full")
    assert sync(cache, ls, hints(1), now=2, reconcile=0) == ([1], "full")
    assert ls.calls == ["all", "all", "all"]


def test_an_update_that_did_not_finish_is_followed_by_a_full_read(tmp_path: Path) -> None:
    """The hints were taken (cleared) but the read by id failed: they are lost, so the next cycle
    must read everything, which the dirty marker makes it do."""
    ls = FakeLS({1: "a"})
    cache = LabelCache(tmp_path, 3)
    sync(cache, ls, hints(), now=0)
    ls.tasks[2] = "b"

    def failing(ids: Iterable[int]) -> list[dict[str, Any]]:
        raise ConnectionError("Label Studio went away")

    with pytest.raises(ConnectionError):
        cache.sync(300, hints(2), ls.read_all, failing, now=lambda: 10)
    assert ProjectDir(tmp_path, 3).labels_dirty.exists()
    assert cache.load() is None
    assert sync(cache, ls, hints(), now=11) == ([1, 2], "full")
    assert not ProjectDir(tmp_path, 3).labels_dirty.exists()


def test_a_project_dir_that_refuses_the_marker_gets_a_full_read_and_keeps_its_hints(tmp_path: Path) -> None:
    """Without the dirty marker a taken hint could be lost silently: the hints stay in Redis."""
    ls = FakeLS({1: "a", 2: "b"})
    cache = LabelCache(tmp_path, 3)
    sync(cache, ls, hints(), now=0)
    ProjectDir(tmp_path, 3).labels_dirty.mkdir()  # the marker cannot be written (a directory is in the way)

    def never(*_: object) -> LabelHints:
        raise AssertionError("hints taken without the marker")

    tasks, how = cache.sync(300, never, ls.read_all, ls.read_ids, now=lambda: 1)
    assert ([t["id"] for t in tasks], how) == ([1, 2], "full")
