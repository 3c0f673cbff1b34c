"""The project's task pool, kept between cycles so a cycle need not re-read it from Label Studio.

Reading every task costs seconds per few thousand tasks on Label Studio's side (label-studio.md
§5), so the pool (task id -> data) lives in `MODEL_DIR/<project>/pool/`:

- `snapshot.pkl`: ids and data as of the last sync, with the time of the last full read;
- `events.jsonl`: appended by webhook jobs (`TASKS_CREATED` adds tasks with their data,
  `TASKS_DELETED` removes ids), one JSON line each, folded into the snapshot by the next cycle.

Every worker sharing MODEL_DIR sees the same pool. A full read from Label Studio happens when
there is no snapshot, when the label config changed, or every `reconcile_seconds` (catching
anything an event missed, e.g. tasks deleted while Redis was down). Label Studio stays the source
of truth: losing this directory costs one full read.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SNAPSHOT_FORMAT = 1


@dataclass
class PoolSnapshot:
    data: dict[int, Any] = field(default_factory=dict)  # task id -> task data (as Label Studio holds it)
    synced_at: float = 0.0  # time of the last full read from Label Studio
    config_hash: str = ""


def config_hash(label_config: str) -> str:
    return hashlib.sha256(label_config.encode()).hexdigest()[:16]


class PoolCache:
    def __init__(self, model_dir: Path, project: int) -> None:
        self.dir = Path(model_dir) / str(int(project)) / "pool"
        self.snapshot_path = self.dir / "snapshot.pkl"
        self.events_path = self.dir / "events.jsonl"
        self._folded = 0  # bytes of the event log that the last load() applied

    @contextlib.contextmanager
    def _events_lock(self) -> Iterator[None]:
        """Appends and the log rotation in save() exclude each other, so no event is lost."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".events.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- events (written by webhook jobs; O(new tasks)) -----------------------------------------

    def _append(self, event: Mapping[str, Any]) -> None:
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        with self._events_lock():
            fd = os.open(self.events_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)

    def add_tasks(self, tasks: Iterable[Mapping[str, Any]]) -> int:
        items = [{"id": int(t["id"]), "data": t.get("data") or {}} for t in tasks if "id" in t]
        if items:
            self._append({"op": "add", "tasks": items})
        return len(items)

    def delete_tasks(self, ids: Iterable[int]) -> int:
        gone = [int(i) for i in ids]
        if gone:
            self._append({"op": "del", "ids": gone})
        return len(gone)

    # -- snapshot (read and compacted by the cycle, under the project lock) ---------------------

    def load(self) -> PoolSnapshot | None:
        self._folded = 0
        try:
            with open(self.snapshot_path, "rb") as f:
                raw = pickle.load(f)  # noqa: S301 - our own file inside MODEL_DIR
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ValueError):
            return None
        if not isinstance(raw, dict) or raw.get("format") != SNAPSHOT_FORMAT:
            return None
        snap = PoolSnapshot(data=raw["data"], synced_at=float(raw["synced_at"]), config_hash=str(raw["config_hash"]))
        self.apply_events(snap)
        return snap

    def apply_events(self, snap: PoolSnapshot) -> None:
        try:
            raw = self.events_path.read_bytes()
        except OSError:
            return
        # Only whole lines count as folded: a line still being written stays for the next load.
        self._folded = raw.rfind(b"\n") + 1
        for line in raw[: self._folded].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a torn last line from a crashed writer
            if event.get("op") == "add":
                for t in event.get("tasks", []):
                    snap.data[int(t["id"])] = t.get("data") or {}
            elif event.get("op") == "del":
                for i in event.get("ids", []):
                    snap.data.pop(int(i), None)

    def save(self, snap: PoolSnapshot) -> None:
        """Write the snapshot (events already folded in) and start a new event log."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".snapshot-", dir=self.dir)
        try:
            with os.fdopen(fd, "wb") as f:
                payload = {
                    "format": SNAPSHOT_FORMAT,
                    "data": snap.data,
                    "synced_at": snap.synced_at,
                    "config_hash": snap.config_hash,
                }
                pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.snapshot_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._drop_folded()

    def _drop_folded(self) -> None:
        """Keep only the events appended after the last load(): the snapshot holds the rest."""
        if self._folded == 0:
            return
        with self._events_lock():
            try:
                with open(self.events_path, "rb") as f:
                    f.seek(self._folded)
                    rest = f.read()
            except OSError:
                return
            fd, tmp = tempfile.mkstemp(prefix=".events-", dir=self.dir)
            with os.fdopen(fd, "wb") as f:
                f.write(rest)
            os.replace(tmp, self.events_path)
        self._folded = 0

    def needs_full_read(self, snap: PoolSnapshot | None, label_config: str, reconcile_seconds: float) -> bool:
        if snap is None or snap.config_hash != config_hash(label_config):
            return True
        return time.time() - snap.synced_at > reconcile_seconds
