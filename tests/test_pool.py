from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from backend.pool import PoolCache, PoolSnapshot, config_hash


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
