from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend.pool import PoolCache, PoolSnapshot, TaskArray, config_hash


def test_snapshot_round_trip_with_events(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 4)
    assert cache.load() is None
    cache.save(PoolSnapshot({1: {"text": "a"}, 2: {"text": "b"}}, synced_at=100.0, config_hash="h"))
    cache.add_tasks([{"id": 3, "data": {"text": "c"}}, {"id": 2, "data": {"text": "b2"}}])
    cache.delete_tasks([1])
    snap = PoolCache(tmp_path, 4).load()
    assert snap is not None
    assert snap.data == {2: {"text": "b2"}, 3: {"text": "c"}}
    assert (snap.synced_at, snap.config_hash) == (100.0, "h")


def test_save_folds_events_and_keeps_later_ones(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 1)
    cache.save(PoolSnapshot({1: {}}, synced_at=1.0, config_hash="h"))
    cache.add_tasks([{"id": 2, "data": {}}])
    snap = cache.load()
    assert snap is not None
    cache.add_tasks([{"id": 3, "data": {}}])  # arrives after load(), before save()
    cache.save(snap)
    assert cache.events_path.read_bytes().count(b"\n") == 1
    again = cache.load()
    assert again is not None and sorted(again.data) == [1, 2, 3]


def test_torn_last_line_is_left_for_later(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 1)
    cache.save(PoolSnapshot({}, synced_at=1.0, config_hash="h"))
    cache.add_tasks([{"id": 5, "data": {"x": 1}}])
    with open(cache.events_path, "ab") as f:
        f.write(b'{"op":"add","tasks":[{"id":6')
    snap = cache.load()
    assert snap is not None and sorted(snap.data) == [5]


def test_needs_full_read(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 1)
    xml = "<View/>"
    assert cache.needs_full_read(None, xml, 3600)
    fresh = PoolSnapshot({}, synced_at=time.time(), config_hash=config_hash(xml))
    assert not cache.needs_full_read(fresh, xml, 3600)
    assert cache.needs_full_read(fresh, "<View></View>", 3600)  # label config changed
    old = PoolSnapshot({}, synced_at=time.time() - 7200, config_hash=config_hash(xml))
    assert cache.needs_full_read(old, xml, 3600)


def test_corrupt_snapshot_means_full_read(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 1)
    cache.dir.mkdir(parents=True)
    cache.snapshot_path.write_bytes(b"not a pickle")
    assert cache.load() is None


def _append_many(root: str, start: int) -> None:
    cache = PoolCache(Path(root), 1)
    for i in range(start, start + 200):
        cache.add_tasks([{"id": i, "data": {"text": str(i)}}])


def test_concurrent_appends_while_compacting_lose_nothing(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 1)
    cache.save(PoolSnapshot({}, synced_at=1.0, config_hash="h"))
    procs = [multiprocessing.Process(target=_append_many, args=(str(tmp_path), s)) for s in (0, 1000)]
    for p in procs:
        p.start()
    for _ in range(20):  # compact repeatedly while the writers run
        snap = cache.load()
        assert snap is not None
        cache.save(snap)
    for p in procs:
        p.join(30)
    final = cache.load()
    assert final is not None
    assert sorted(final.data) == list(range(200)) + list(range(1000, 1200))


# -- no code from data at rest; durable, private files -------------------------------------------


class _Payload:
    """Unpickling this creates `marker`: proof that a load executed code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_snapshot_with_a_pickled_member_is_not_executed(tmp_path: Path) -> None:
    """Fault: a pool snapshot in MODEL_DIR replaced by one whose members are pickles that run a command
        on load (an npz with object arrays; a bare pickle under the snapshot's name)
    Done: PoolCache.load() on each, then the same payload unpickled directly as a check that it runs
    Expected: load() answers None (the next cycle reads the pool from Label Studio); the command does not
        run (numpy's allow_pickle=False refuses both)
    Observed: as expected
    """
    marker = tmp_path / "pwned"
    cache = PoolCache(tmp_path, 1)
    cache.save(PoolSnapshot({1: {"text": "a"}}, synced_at=1.0, config_hash="h"))
    evil = np.array([_Payload(marker)], dtype=object)
    with open(cache.snapshot_path, "wb") as f:
        np.savez(f, meta=evil, ids=np.array([1]), data=evil)  # np.savez pickles object arrays
    assert cache.load() is None
    assert not marker.exists()
    # A bare pickle under the snapshot's name is refused too.
    cache.snapshot_path.write_bytes(pickle.dumps(_Payload(marker)))
    assert cache.load() is None
    assert not marker.exists()
    # The sanity check that the payload does run when unpickled (so the test can fail).
    pickle.loads(cache.snapshot_path.read_bytes())
    assert marker.exists()


def test_the_pickled_snapshot_of_earlier_releases_is_removed_unread(tmp_path: Path) -> None:
    """Fault: an earlier release's pickled snapshot (snapshot.pkl) carrying a payload that runs a command
    Done: PoolCache.load() on a project directory holding it
    Expected: the file is deleted without being read; the command does not run; load() answers None
    Observed: as expected
    """
    marker = tmp_path / "pwned"
    cache = PoolCache(tmp_path, 1)
    cache.dir.mkdir(parents=True)
    legacy = cache.dir / "snapshot.pkl"
    legacy.write_bytes(pickle.dumps(_Payload(marker)))
    assert cache.load() is None
    assert not legacy.exists()
    assert not marker.exists()


def test_snapshot_is_an_npz_of_numbers_and_json(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 1)
    cache.save(PoolSnapshot({2: {"text": "b"}, 1: {"text": "a"}}, synced_at=5.0, config_hash="h"))
    with np.load(cache.snapshot_path, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["data", "ids", "meta"]
        assert npz["ids"].tolist() == [1, 2]
        assert json.loads(npz["data"].tobytes()) == [{"text": "a"}, {"text": "b"}]
        assert json.loads(npz["meta"].tobytes()) == {"format": 2, "synced_at": 5.0, "config_hash": "h"}
    assert stat.S_IMODE(cache.snapshot_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.dir.stat().st_mode) == 0o700
    cache.add_tasks([{"id": 3, "data": {}}])
    assert stat.S_IMODE(cache.events_path.stat().st_mode) == 0o600


def test_task_arrays_round_trip_by_id_and_drop_deleted_rows(tmp_path: Path) -> None:
    cache = PoolCache(tmp_path, 1)
    emb = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float16)
    snap = PoolSnapshot({10: {}, 20: {}, 30: {}}, synced_at=1.0, config_hash="h")
    snap.arrays["embedding"] = TaskArray(np.array([30, 10, 20]), emb)
    cache.save(snap)
    cache.delete_tasks([10])
    cache.add_tasks([{"id": 40, "data": {}}])
    loaded = cache.load()
    assert loaded is not None and sorted(loaded.data) == [20, 30, 40]
    cache.save(loaded)
    again = cache.load()
    assert again is not None
    arr = again.arrays["embedding"]
    assert arr.values.dtype == np.float16
    assert sorted(arr.ids.tolist()) == [20, 30]  # task 10's row went with the task
    found, rows = arr.rows([20, 40, 30])
    assert found.tolist() == [True, False, True]
    assert rows.tolist() == [[5, 6], [0, 0], [1, 2]]


def test_task_arrays_hold_numbers_only() -> None:
    with pytest.raises(TypeError, match="holds numbers"):
        TaskArray(np.array([1]), np.array([{"a": 1}], dtype=object))


_SAVER = """
import sys, time
from pathlib import Path
from backend import projectdir
from backend.pool import PoolCache, PoolSnapshot
root, ready = Path(sys.argv[1]), Path(sys.argv[2])
real = projectdir.os.replace
def stall(src, dst):
    ready.touch()
    time.sleep(120)  # SIGKILLed here: the new snapshot is written, not yet renamed
projectdir.os.replace = stall
PoolCache(root, 1).save(PoolSnapshot({i: {"text": str(i)} for i in range(1000)}, synced_at=2.0, config_hash="new"))
"""


def test_sigkill_mid_save_keeps_the_old_snapshot_and_the_next_open_removes_the_temp_file(tmp_path: Path) -> None:
    """Fault: the process saving the pool snapshot is SIGKILLed after writing the new snapshot, before the rename
    Done: a real subprocess saves a 1,000-task snapshot and is killed at the rename; then a cycle's load()
    Expected: the old snapshot is loaded intact; the killed writer's temporary file is removed by that load
    Observed: as expected
    """
    cache = PoolCache(tmp_path, 1)
    cache.save(PoolSnapshot({1: {"text": "old"}}, synced_at=1.0, config_hash="old"))
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    child = subprocess.Popen([sys.executable, "-c", _SAVER, str(tmp_path), str(ready)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline, "the saver never reached the rename"
            time.sleep(0.02)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert [n for n in os.listdir(cache.dir) if n.startswith(".tmp-")] != []
    snap = PoolCache(tmp_path, 1).load()
    assert snap is not None and (snap.data, snap.config_hash) == ({1: {"text": "old"}}, "old")
    assert sorted(os.listdir(cache.dir)) == ["snapshot.npz"]


def test_two_compacting_writers_lose_no_event(tmp_path: Path) -> None:
    """Fault: two cycles compact the same pool (one outlived its project lock): both load, one saves and
        rotates the event log, new events arrive, the other saves
    Done: two PoolCache instances on one directory, interleaved with TASKS_CREATED appends
    Expected: every event survives (the second save sees the log was rotated and keeps all of it)
    Observed: as expected
    """
    PoolCache(tmp_path, 1).save(PoolSnapshot({}, synced_at=1.0, config_hash="h"))
    webhook = PoolCache(tmp_path, 1)
    webhook.add_tasks([{"id": 1, "data": {}}])
    a, b = PoolCache(tmp_path, 1), PoolCache(tmp_path, 1)
    snap_a, snap_b = a.load(), b.load()
    assert snap_a is not None and snap_b is not None
    webhook.add_tasks([{"id": 2, "data": {}}])
    a.save(snap_a)  # rotates: the log keeps event 2 only
    webhook.add_tasks([{"id": 3, "data": {}}])
    b.save(snap_b)  # must not cut the rotated log at its own (stale) offset
    final = PoolCache(tmp_path, 1).load()
    assert final is not None and sorted(final.data) == [1, 2, 3]


def test_sync_reads_in_full_only_when_due_and_writes_only_what_changed(tmp_path: Path) -> None:
    xml = "<View/>"
    reads: list[int] = []

    def read_all() -> list[dict[str, Any]]:
        reads.append(1)
        return [{"id": 1, "data": {"text": "a"}}, {"id": 2, "data": {"text": "b"}}]

    cache = PoolCache(tmp_path, 1)
    snap = cache.sync(xml, 3600, read_all)  # no snapshot yet: a full read, saved
    assert (len(reads), sorted(snap.data)) == (1, [1, 2])
    inode = cache.snapshot_path.stat().st_ino

    snap = PoolCache(tmp_path, 1).sync(xml, 3600, read_all)  # nothing new: nothing read or written
    assert (len(reads), sorted(snap.data)) == (1, [1, 2])
    assert cache.snapshot_path.stat().st_ino == inode

    cache.add_tasks([{"id": 3, "data": {"text": "c"}}])
    snap = PoolCache(tmp_path, 1).sync(xml, 3600, read_all)  # events: folded and saved, log emptied
    assert (len(reads), sorted(snap.data)) == (1, [1, 2, 3])
    assert cache.snapshot_path.stat().st_ino != inode
    assert cache.events_path.read_bytes() == b""

    snap = PoolCache(tmp_path, 1).sync("<View></View>", 3600, read_all)  # the label config changed
    assert (len(reads), sorted(snap.data)) == (2, [1, 2])
    snap = PoolCache(tmp_path, 1).sync("<View></View>", 0, read_all)  # reconcile due
    assert len(reads) == 3


def test_snapshot_and_event_log_are_fsynced_with_their_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: a power cut after a pool save or an event append (the write reached only the page cache)
    Done: os.fsync spied (and still called) during add_tasks, the first save and a save that drops
        folded events
    Expected: the event log is fsynced on every append and the pool directory when the log is created;
        the snapshot's temp file before its rename and the directory after it; the rewritten log likewise
    Observed: as expected
    """
    from backend import projectdir

    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(projectdir.os, "fsync", spy)
    cache = PoolCache(tmp_path, 1)
    pool = str(cache.dir)
    cache.add_tasks([{"id": 1, "data": {}}])
    assert calls == [str(cache.events_path), pool]
    calls.clear()
    cache.save(PoolSnapshot({1: {}}, synced_at=1.0, config_hash="h"))
    assert [Path(c).name.startswith(".tmp-") for c in calls] == [True, False]
    assert calls[1] == pool
    calls.clear()
    loaded = cache.load()
    assert loaded is not None
    cache.add_tasks([{"id": 2, "data": {}}])
    calls.clear()
    cache.save(loaded)  # event 1 is in the snapshot now: the log is rewritten with event 2 only
    names = [Path(c).name for c in calls]
    assert names[0].startswith(".tmp-") and calls[1] == pool  # the snapshot
    assert names[2].startswith(".tmp-") and calls[3] == pool  # the rewritten event log
    assert len(calls) == 4
