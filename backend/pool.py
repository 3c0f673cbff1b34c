"""The project's task pool, kept between cycles so a cycle need not re-read it from Label Studio.

Reading every task costs seconds per few thousand tasks on Label Studio's side, so the pool (task
id -> data) lives in `MODEL_DIR/<project>/pool/` (paths in projectdir.py):

- `snapshot.npz`: ids and data as of the last sync, with the time of the last full read, and any
  per-task arrays (`TaskArray`, e.g. embeddings). It is an npz read with `allow_pickle=False` whose
  members are numeric arrays and UTF-8 JSON stored as bytes, so loading it cannot run code;
- `events.jsonl`: appended by webhook jobs (`TASKS_CREATED` adds tasks with their data,
  `TASKS_DELETED` removes ids), one JSON line each, folded into the snapshot by the next cycle.

Both are written durably (projectdir: temp file + fsync + rename + directory fsync for the snapshot,
fsync()ed appends for the log). Every worker sharing MODEL_DIR sees the same pool. A full read from
Label Studio happens when there is no snapshot, when the label config changed, or every
`reconcile_seconds` (catching anything an event missed, e.g. tasks deleted while Redis was down).
Label Studio stays the source of truth: losing this directory costs one full read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.projectdir import (
    ProjectDir,
    append_line,
    atomic_file,
    complete_lines,
    json_member,
    make_private_dir,
    read_npz,
    write_atomic,
    write_npz,
)

SNAPSHOT_FORMAT = 2  # 1 was a pickle (snapshot.pkl), never read again
_ARRAY_PREFIX = "array."


@dataclass
class TaskArray:
    """A per-task numeric matrix kept in the snapshot: row i belongs to task `ids[i]`.

    Rows of tasks that are no longer in the pool are dropped when the snapshot is saved; tasks added
    since have no row (`rows` reports them as missing). Code that adds or replaces an array saves
    the snapshot itself (`PoolCache.save`): `PoolCache.sync` writes only when the tasks changed.
    """

    ids: np.ndarray  # int64, shape (n,)
    values: np.ndarray  # numeric, shape (n, ...)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=np.int64).reshape(-1)
        self.values = np.asarray(self.values)
        if self.values.dtype.kind not in "biuf":
            raise TypeError(f"a TaskArray holds numbers, got dtype {self.values.dtype}")
        if len(self.values) != len(self.ids):
            raise ValueError(f"{len(self.ids)} ids but {len(self.values)} rows")

    def rows(self, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
        """(found, values): whether each id has a row, and the rows (zeros where not found)."""
        wanted = np.fromiter((int(i) for i in ids), dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        pos = np.searchsorted(self.ids, wanted, sorter=order)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        found = np.zeros(len(wanted), dtype=bool)
        if len(self.ids):
            found = self.ids[order[pos]] == wanted
        out = np.zeros((len(wanted), *self.values.shape[1:]), dtype=self.values.dtype)
        if found.any():
            out[found] = self.values[order[pos[found]]]
        return found, out


@dataclass
class PoolSnapshot:
    """The pool as of the last sync: task id -> data, plus per-task arrays by name."""

    data: dict[int, Any] = field(default_factory=dict)  # task id -> task data (as Label Studio holds it)
    synced_at: float = 0.0  # time of the last full read from Label Studio
    config_hash: str = ""
    arrays: dict[str, TaskArray] = field(default_factory=dict)


def config_hash(label_config: str) -> str:
    """A short fingerprint of the label config: a changed config means a full read of the pool."""
    return hashlib.sha256(label_config.encode()).hexdigest()[:16]


def write_snapshot(file: Any, snap: PoolSnapshot) -> None:
    """Write `snap` as an npz to a binary file object (no pickled member)."""
    ids = np.fromiter(sorted(snap.data), dtype=np.int64, count=len(snap.data))
    members: dict[str, np.ndarray] = {"ids": ids, "data": json_member([snap.data[int(i)] for i in ids])}
    for name, arr in snap.arrays.items():
        keep = np.isin(arr.ids, ids)  # rows of deleted tasks go
        members[f"{_ARRAY_PREFIX}{name}.ids"] = arr.ids[keep]
        members[f"{_ARRAY_PREFIX}{name}.values"] = arr.values[keep]
    meta = {"format": SNAPSHOT_FORMAT, "synced_at": snap.synced_at, "config_hash": snap.config_hash}
    write_npz(file, meta, members)


def read_snapshot(file: Any) -> PoolSnapshot | None:
    """Read an npz written by `write_snapshot`; None if it is not one (never unpickles anything)."""

    def read(npz: Any, meta: dict[str, Any]) -> PoolSnapshot | None:
        ids = npz["ids"]
        data = json.loads(npz["data"].tobytes())
        if ids.dtype.kind not in "iu" or not isinstance(data, list) or len(data) != len(ids):
            return None
        arrays: dict[str, TaskArray] = {}
        for key in npz.files:
            if key.startswith(_ARRAY_PREFIX) and key.endswith(".ids"):
                name = key[len(_ARRAY_PREFIX) : -len(".ids")]
                arrays[name] = TaskArray(npz[key], npz[f"{_ARRAY_PREFIX}{name}.values"])
        return PoolSnapshot(
            data=dict(zip(ids.tolist(), data, strict=True)),
            synced_at=float(meta["synced_at"]),
            config_hash=str(meta["config_hash"]),
            arrays=arrays,
        )

    return read_npz(file, SNAPSHOT_FORMAT, read)


class PoolCache:
    """The pool of one project on disk: an npz snapshot plus an append-only event log."""

    def __init__(self, model_dir: Path, project: int, fence: Callable[[], None] | None = None) -> None:
        self.pdir = ProjectDir(model_dir, project)
        # Called immediately before each write (snapshot, log rotation, append): a job that lost the
        # project lock stops there (backend.worker.Fence.check). None: a reader, or a test.
        self.fence = fence
        self.dir = self.pdir.pool
        self.snapshot_path = self.pdir.pool_snapshot
        self.events_path = self.pdir.pool_events
        self._folded = 0  # bytes of the event log that the last load() applied
        self._folded_inode = 0  # ... of which file: a rotation by another writer makes a new one

    @contextlib.contextmanager
    def _events_lock(self) -> Iterator[None]:
        """Appends and the log rotation in save() exclude each other, so no event is lost."""
        make_private_dir(self.dir)
        fd = os.open(self.pdir.pool_events_lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _check_fence(self) -> None:
        if self.fence is not None:
            self.fence()

    # -- events (written by webhook jobs; O(new tasks)) -----------------------------------------

    def _append(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")).encode()
        with self._events_lock():
            self._check_fence()
            append_line(self.events_path, line)

    def add_tasks(self, tasks: Iterable[Mapping[str, Any]]) -> int:
        """Record tasks to add (or whose data changed); returns how many were recorded."""
        items = [{"id": int(t["id"]), "data": t.get("data") or {}} for t in tasks if "id" in t]
        if items:
            self._append({"op": "add", "tasks": items})
        return len(items)

    def delete_tasks(self, ids: Iterable[int]) -> int:
        """Record task ids to drop from the pool; returns how many were recorded."""
        gone = [int(i) for i in ids]
        if gone:
            self._append({"op": "del", "ids": gone})
        return len(gone)

    # -- snapshot (read and compacted by the cycle, under the project lock) ---------------------

    def load(self) -> PoolSnapshot | None:
        """The snapshot with the event log applied; None if there is none (or it is unreadable).

        Opening the project directory here removes temp files left by a writer that was killed.
        """
        self._folded = 0
        if self.pdir.root.is_dir():
            self.pdir.open()
        try:
            with open(self.snapshot_path, "rb") as f:
                snap = read_snapshot(f)
        except OSError:
            return None
        if snap is None:
            return None
        self.apply_events(snap)
        return snap

    def apply_events(self, snap: PoolSnapshot) -> None:
        """Apply the logged events to `snap`, and remember how much of the log that covered."""
        try:
            with open(self.events_path, "rb") as f:
                inode = os.fstat(f.fileno()).st_ino
                raw = f.read()
        except OSError:
            return
        # Only whole lines count as folded: a line still being written stays for the next load.
        self._folded = raw.rfind(b"\n") + 1
        self._folded_inode = inode
        for line in complete_lines(raw):
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line torn by a crashed writer (terminated by the next append)
            if event.get("op") == "add":
                for t in event.get("tasks", []):
                    snap.data[int(t["id"])] = t.get("data") or {}
            elif event.get("op") == "del":
                for i in event.get("ids", []):
                    snap.data.pop(int(i), None)

    def save(self, snap: PoolSnapshot) -> None:
        """Write the snapshot (events already folded in) durably and start a new event log."""
        self.pdir.open()
        self._check_fence()
        with atomic_file(self.snapshot_path) as f:
            write_snapshot(f, snap)
        self._drop_folded()

    def _drop_folded(self) -> None:
        """Keep only the events appended after the last load(): the snapshot holds the rest."""
        if self._folded == 0:
            return
        with self._events_lock():
            try:
                with open(self.events_path, "rb") as f:
                    if os.fstat(f.fileno()).st_ino != self._folded_inode:
                        # Another writer rotated the log since our load(): what is in it now was not
                        # folded into our snapshot, so all of it stays (replaying adds and deletes is
                        # idempotent).
                        self._folded = 0
                        return
                    f.seek(self._folded)
                    rest = f.read()
            except OSError:
                return
            self._check_fence()
            write_atomic(self.events_path, rest)
        self._folded = 0

    def sync(
        self,
        label_config: str,
        reconcile_seconds: float,
        read_all: Callable[[], Iterable[Mapping[str, Any]]],
        prepare: Callable[[PoolSnapshot], bool] | None = None,
    ) -> PoolSnapshot:
        """The current pool: the snapshot with the logged events, or a full read when one is due.

        `read_all()` yields every task (`id` and `data`) from Label Studio. `prepare(snap)` may add
        per-task arrays (the embeddings) and says whether it changed anything. The snapshot is saved
        (and the folded events dropped) only when something changed: a cycle between two full reads
        with no new events writes nothing.
        """
        snap = self.load()
        changed = False
        if snap is None or self.needs_full_read(snap, label_config, reconcile_seconds):
            fresh = PoolSnapshot(
                data={int(t["id"]): t.get("data") or {} for t in read_all()},
                synced_at=time.time(),
                config_hash=config_hash(label_config),
            )
            if snap is not None and snap.config_hash == fresh.config_hash:
                # The periodic re-read keeps the per-task arrays; their owners check each row
                # (an embedding against the text it was computed from). A new config drops them.
                fresh.arrays = snap.arrays
            self.apply_events(fresh)  # events that raced the read (adds are idempotent, deletes win)
            snap, changed = fresh, True
        elif self._folded:
            changed = True
        if prepare is not None and prepare(snap):
            changed = True
        if changed:
            self.save(snap)
        return snap

    def needs_full_read(self, snap: PoolSnapshot | None, label_config: str, reconcile_seconds: float) -> bool:
        """True when the pool must be read from Label Studio again (none, new config, or due)."""
        if snap is None or snap.config_hash != config_hash(label_config):
            return True
        return time.time() - snap.synced_at > reconcile_seconds


def snapshot_bytes(snap: PoolSnapshot) -> bytes:
    """The snapshot as npz bytes (for tests and benchmarks)."""
    buf = io.BytesIO()
    write_snapshot(buf, snap)
    return buf.getvalue()
