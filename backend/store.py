"""Versioned per-project model store on a shared directory (``MODEL_DIR``).

The store's part of the project directory (the names are defined in projectdir.py, which owns the
directory; its files are written with projectdir's atomic-write and append helpers)::

    MODEL_DIR/<project>/                 project id as a plain integer, e.g. ``3``
        v7-20261121T103800Z/             one published version: artifacts + metadata.json
        CURRENT                          name of the served version, one line
        history.jsonl                    metadata of every version ever published (pruned ones too);
                                         a version's later line (update_metadata) supersedes its earlier
        .lock                            flock()ed around number allocation, rename and pointer update
        .tmp-<random>/                   a publish in progress, or the remains of a crashed one
        .trash-<random>/                 a version being pruned (renamed first so deletion is atomic)

Version strings are ``v<n>-<YYYYMMDDTHHMMSSZ>``: ``n`` counts publishes of the project (1, 2, ...)
and the UTC timestamp keeps the string unique if MODEL_DIR is wiped and numbering restarts, so a
cached model or a prediction in Label Studio is never confused with a different model of the same
number. Sort with :func:`version_key`, not lexically (``v10`` < ``v9`` as text).

Several worker processes, possibly on several machines sharing MODEL_DIR, may publish. The
number is allocated under the project's lock file at commit time, after the artifacts exist, so a
worker killed while training or writing never consumes a number. ``flock`` is used rather than
``lockf`` because POSIX record locks do not exclude two opens within one process (two stores, or
threads); on NFS Linux emulates ``flock`` with POSIX locks, which the server arbitrates.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import secrets
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from backend import projectdir
from backend.projectdir import (
    CURRENT_FILE,
    DIR_MODE,
    FILE_MODE,
    HISTORY_FILE,
    STORE_LOCK_FILE,
    ProjectDir,
    ProjectIdError,
    append_lines,
    fsync_dir,
    write_atomic,
)

__all__ = [
    "VERSION_RE",
    "ModelStore",
    "StoreError",
    "StoreWriteError",
    "parse_version",
    "validate_project",
    "validate_version",
    "version_key",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

VERSION_RE = re.compile(r"v([1-9][0-9]{0,11})-([0-9]{8}T[0-9]{6}Z)", re.ASCII)
_SHORT_VERSION_RE = re.compile(r"v?([1-9][0-9]{0,11})", re.ASCII)

METADATA_FILE = "metadata.json"
_POINTER_TMP = ".CURRENT.tmp"  # the pointer's temp file in earlier releases: removed if found
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_PUBLISH_LOCK = ".publish.lock"
_RESERVED_KEYS = ("version", "created_at")
_POINTER_MAX_BYTES = 128


class StoreError(ValueError):
    """A project id, version or metadata the store refuses, or a version that does not exist."""


class StoreWriteError(OSError):
    """Writing to MODEL_DIR failed (read-only, full, permissions); the previous version still serves."""


def validate_project(project: object) -> int:
    """Return the project id as an int; accept only an int or a string of ASCII digits."""
    try:
        return projectdir.validate_project(project)
    except ProjectIdError as exc:
        raise StoreError(str(exc)) from None


def validate_version(version: object) -> str:
    """Return `version` if it has the form ``v7-20261121T103800Z``; StoreError otherwise."""
    if isinstance(version, str) and VERSION_RE.fullmatch(version):
        return version
    raise StoreError(f"invalid model version {version!r}: expected the form 'v7-20261121T103800Z'")


def parse_version(version: str) -> tuple[int, datetime]:
    """``"v7-20261121T103800Z"`` -> ``(7, datetime(2026, 11, 21, 10, 38, tzinfo=UTC))``."""
    match = VERSION_RE.fullmatch(validate_version(version))
    assert match is not None
    try:
        stamp = datetime.strptime(match.group(2), "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise StoreError(f"invalid model version {version!r}: bad timestamp") from None
    return int(match.group(1)), stamp


def version_key(version: str) -> tuple[int, str]:
    """Sort key: by number, then timestamp (only differs after MODEL_DIR was wiped and rebuilt)."""
    match = VERSION_RE.fullmatch(version)
    if match is None:
        raise StoreError(f"invalid model version {version!r}")
    return int(match.group(1)), match.group(2)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _json_safe(value: Any, where: str) -> Any:
    # Starlette serialises with allow_nan=False, so a NaN metric (undefined F1 on one class) would turn
    # every later /status response into a 500; null is how JSON says "undefined".
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StoreError(f"metadata keys must be strings, got {key!r} in {where}")
            out[key] = _json_safe(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_json_safe(item, f"{where}[{i}]") for i, item in enumerate(value)]
    tolist = getattr(value, "tolist", None)  # numpy scalars and arrays, without importing numpy
    if callable(tolist):
        return _json_safe(tolist(), where)
    raise StoreError(f"metadata value at {where} is not JSON-serialisable: {value!r}")


def _caller_metadata(value: Any, name: str) -> dict[str, Any]:
    """The caller's part of a version's metadata (``name`` for errors), checked and JSON-safe:
    a mapping that sets none of the keys the store owns (StoreError otherwise)."""
    if not isinstance(value, Mapping):
        raise StoreError(f"{name} must be a mapping, got {type(value).__name__}")
    clash = [k for k in _RESERVED_KEYS if k in value]
    if clash:
        raise StoreError(f"metadata must not set {clash!r}: the store sets them")
    return dict(_json_safe(value, "metadata"))


def _write_file(path: Path, data: bytes, *, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """Per-project model versions under ``root``; see the module docstring for the layout.

    One instance may be shared by threads. ``load`` caches loaded models per (project, version) in a
    small LRU, so use one loader per store.
    """

    def __init__(
        self,
        root: Path | str,
        keep: int = 10,
        *,
        cache_size: int = 4,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise StoreError(f"keep must be an integer >= 1, got {keep!r}")
        if isinstance(cache_size, bool) or not isinstance(cache_size, int) or cache_size < 1:
            raise StoreError(f"cache_size must be an integer >= 1, got {cache_size!r}")
        self.root = Path(root).expanduser().resolve()
        self.keep = keep
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[int, str], Any] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._loading: dict[tuple[int, str], threading.Lock] = {}  # one loader per version at a time

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r}, keep={self.keep})"

    # ----------------------------------------------------------------------------- reading

    def _dir(self, project: int) -> Path:
        return ProjectDir(self.root, project).root

    def current(self, project: int) -> str | None:
        """The version the project serves (its CURRENT pointer), or None before the first publish."""
        p = validate_project(project)
        pointer = self._dir(p) / CURRENT_FILE
        try:
            with open(pointer, "rb") as f:
                raw = f.read(_POINTER_MAX_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            return None
        text = raw.decode("ascii", errors="replace").strip()
        if not VERSION_RE.fullmatch(text):
            raise StoreError(f"current-version pointer {pointer} is corrupt: {text!r}")
        return text

    def _scan(self, project_dir: Path) -> list[str]:
        """Every version directory, complete or not, oldest first (symlinks never count)."""
        try:
            entries = list(os.scandir(project_dir))
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = [e.name for e in entries if VERSION_RE.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
        return sorted(names, key=version_key)

    def versions(self, project: int) -> list[str]:
        """The complete versions on disk, oldest first."""
        pdir = self._dir(validate_project(project))
        return [v for v in self._scan(pdir) if (pdir / v / METADATA_FILE).is_file()]

    def path(self, project: int, version: str) -> Path:
        """The directory of a version (which need not exist); StoreError if it would leave the root."""
        p = validate_project(project)
        v = validate_version(version)
        resolved = (self._dir(p) / v).resolve()
        if not resolved.is_relative_to(self.root):
            raise StoreError(f"model version {v!r} of project {p} resolves outside {self.root}: {resolved}")
        return resolved

    def _existing(self, project: int, version: str) -> Path:
        directory = self.path(project, version)
        if not (directory / METADATA_FILE).is_file():
            raise StoreError(f"project {project} has no model version {version!r}")
        return directory

    def metadata(self, project: int, version: str | None = None) -> dict:
        """The metadata.json of a version (default: the current one); StoreError if there is none."""
        p = validate_project(project)
        if version is None:
            version = self.current(p)
            if version is None:
                raise StoreError(f"project {p} has no published model")
        path = self._existing(p, version) / METADATA_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise StoreError(f"project {p} has no model version {version!r}") from None
        except ValueError as exc:
            raise StoreError(f"{path} is corrupt: {exc}") from None
        if not isinstance(data, dict):
            raise StoreError(f"{path} is corrupt: not a JSON object")
        return data

    def _read_history(self, project_dir: Path) -> list[dict]:
        try:
            raw = (project_dir / HISTORY_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return []
        entries = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                # A torn last line from a crash mid-append; the version's own metadata.json survives it.
                log.warning("skipping unreadable line %d of %s", number, project_dir / HISTORY_FILE)
                continue
            if (
                isinstance(entry, dict)
                and isinstance(entry.get("version"), str)
                and VERSION_RE.fullmatch(entry["version"])
            ):
                entries.append(entry)
        return entries

    def history(self, project: int) -> list[dict]:
        """Metadata of every version ever published, pruned ones included, oldest first."""
        p = validate_project(project)
        pdir = self._dir(p)
        by_version: dict[str, dict] = {}
        for entry in self._read_history(pdir):
            # A version's later line (update_metadata: its metrics, added after the switch) wins.
            by_version[entry["version"]] = entry
        # A crash between the rename and the history append leaves a version only on disk.
        for version in self.versions(p):
            if version not in by_version:
                try:
                    by_version[version] = self.metadata(p, version)
                except StoreError:
                    continue
        return [by_version[v] for v in sorted(by_version, key=version_key)]

    def projects(self) -> list[int]:
        """The project ids that have a directory in the store, ascending."""
        try:
            entries = list(os.scandir(self.root))
        except (FileNotFoundError, NotADirectoryError):
            return []
        # "007" would be a second directory for project 7; only the canonical spelling counts.
        canonical = [e for e in entries if projectdir.is_project_name(e.name)]
        return sorted(int(e.name) for e in canonical if e.is_dir(follow_symlinks=False))

    def resolve_version(self, project: int, ref: str) -> str:
        """A full version, or a short ``"v7"`` / ``"7"`` (convenient on the CLI), -> the version on disk."""
        p = validate_project(project)
        available = self.versions(p)
        if isinstance(ref, str) and VERSION_RE.fullmatch(ref):
            if ref in available:
                return ref
        elif isinstance(ref, str) and (short := _SHORT_VERSION_RE.fullmatch(ref)):
            matches = [v for v in available if version_key(v)[0] == int(short.group(1))]
            if len(matches) == 1:
                return matches[0]
        else:
            validate_version(ref)
        listed = ", ".join(available) or "none"
        raise StoreError(f"project {p} has no model version {ref!r} (available: {listed})")

    def load(self, project: int, loader: Callable[[Path], T], version: str | None = None) -> tuple[str, T] | None:
        """The current (or given) version loaded by ``loader(directory)``; None if nothing is published.

        On every call this costs one read of the small CURRENT file, so a version published by a
        worker is served on the next request without a restart; the loaded model is cached.
        """
        p = validate_project(project)
        if version is None:
            version = self.current(p)
            if version is None:
                return None
        else:
            version = validate_version(version)
        key = (p, version)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return version, self._cache[key]
            loading = self._loading.setdefault(key, threading.Lock())
        # Load outside the cache lock (a slow load must not block requests for models already
        # cached), and once: the requests that arrive meanwhile wait for this load, not start theirs.
        with loading:
            with self._cache_lock:
                if key in self._cache:
                    self._cache.move_to_end(key)
                    return version, self._cache[key]
            try:
                model = loader(self._existing(p, version))
            except BaseException:
                with self._cache_lock:
                    self._loading.pop(key, None)
                raise
            with self._cache_lock:
                self._cache[key] = model
                self._loading.pop(key, None)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return version, model

    def needs_load(self, project: int, version: str | None = None) -> bool:
        """Whether `load` would read a model from disk now: the project has a current version that
        is not cached (a request that would wait for the read can be sent off the event loop).
        ``version``: the current version, when the caller has just read it."""
        p = validate_project(project)
        version = self.current(p) if version is None else version
        with self._cache_lock:
            return version is not None and (p, version) not in self._cache

    # ----------------------------------------------------------------------------- writing

    @contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        try:
            yield
        except StoreWriteError:
            raise
        except OSError as exc:
            message = f"{doing} failed: {exc.strerror or exc}"
            if exc.errno is None:
                raise StoreWriteError(message) from exc
            raise StoreWriteError(exc.errno, message, exc.filename) from exc

    @contextmanager
    def _project_lock(self, project_dir: Path) -> Iterator[None]:
        # A fresh open per acquisition: flock excludes other open file descriptions, which makes it
        # work between threads and between stores in one process as well as between processes.
        fd = os.open(project_dir / STORE_LOCK_FILE, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock; the kernel also releases it if this process dies

    def _make_tmp(self, project_dir: Path) -> tuple[Path, int]:
        # Called under the project lock, and the temp dir's own lock is taken before that is
        # released, so a cleaner (which also holds the project lock) never sees an unlocked live one.
        tmp = project_dir / f"{_TMP_PREFIX}{secrets.token_hex(8)}"
        os.mkdir(tmp, DIR_MODE)
        try:
            fd = os.open(tmp / _PUBLISH_LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tmp, fd

    def _clean_leftovers(self, project_dir: Path) -> None:
        """Remove temp dirs of crashed publishes and half-deleted pruned versions (under the lock)."""
        for entry in os.scandir(project_dir):
            path = Path(entry.path)
            try:
                if entry.name.startswith(_TRASH_PREFIX):
                    shutil.rmtree(path)
                elif entry.name == _POINTER_TMP:
                    path.unlink()
                elif entry.name.startswith(_TMP_PREFIX) and entry.is_dir(follow_symlinks=False):
                    try:
                        fd = os.open(path / _PUBLISH_LOCK, os.O_RDWR)
                    except FileNotFoundError:
                        shutil.rmtree(path)  # its publisher died between unlinking its lock and renaming
                        continue
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # another worker is still writing its artifacts
                    try:
                        shutil.rmtree(path)
                    finally:
                        os.close(fd)
            except OSError as exc:
                log.warning("could not remove leftover %s: %s", path, exc)

    def _next_number(self, project_dir: Path) -> int:
        numbers = [version_key(v)[0] for v in self._scan(project_dir)]
        numbers += [version_key(e["version"])[0] for e in self._read_history(project_dir)]
        current = self.current(int(project_dir.name))
        if current is not None:
            numbers.append(version_key(current)[0])
        return max(numbers, default=0) + 1

    # The four commit steps are methods so that tests can interrupt each one.

    def _write_metadata(self, tmp: Path, record: dict) -> None:
        _write_file(tmp / METADATA_FILE, json.dumps(record, indent=2, allow_nan=False).encode(), sync=False)

    def _fsync_tree(self, tmp: Path) -> None:
        for dirpath, _dirnames, filenames in os.walk(tmp):
            for name in filenames:
                path = os.path.join(dirpath, name)
                if name == _PUBLISH_LOCK or os.path.islink(path):
                    continue
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fchmod(fd, FILE_MODE)  # artifact writers use the umask; a model is for lsal only
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsync_dir(Path(dirpath))

    def _rename(self, tmp: Path, final: Path) -> None:
        os.rename(tmp, final)
        fsync_dir(final.parent)

    def _write_pointer(self, project_dir: Path, version: str) -> None:
        write_atomic(project_dir / CURRENT_FILE, f"{version}\n".encode("ascii"))

    def _append_history(self, project_dir: Path, records: list[dict]) -> None:
        append_lines(project_dir / HISTORY_FILE, [json.dumps(r, allow_nan=False).encode() for r in records])

    def _record_history(self, project: int, project_dir: Path, record: dict) -> None:
        known = {e["version"] for e in self._read_history(project_dir)}
        missing = []
        for version in self.versions(project):
            if version not in known and version != record["version"]:
                try:
                    missing.append(self.metadata(project, version))
                except StoreError:
                    continue
        self._append_history(project_dir, [*missing, record])

    def _prune(self, project: int, project_dir: Path) -> None:
        versions = self._scan(project_dir)
        keep = set(versions[-self.keep :])
        current = self.current(project)
        if current is not None:
            keep.add(current)
        for version in versions:
            if version in keep:
                continue
            trash = project_dir / f"{_TRASH_PREFIX}{secrets.token_hex(8)}"
            try:
                # Rename first so a crash mid-delete never leaves a half version that looks real.
                os.rename(project_dir / version, trash)
                shutil.rmtree(trash)
            except OSError as exc:
                log.warning("could not prune %s of project %d: %s", version, project, exc)

    def publish(self, project: int, write: Callable[[Path], None], metadata: Mapping[str, Any]) -> str:
        """Publish a new version and make it current; return its version string.

        ``write(directory)`` writes the artifacts into an empty temp directory. The store adds
        ``metadata.json`` with ``version``, ``created_at`` (ISO-8601 UTC) and ``metadata``; non-finite
        floats in ``metadata`` become null. If anything fails the previous version stays current and
        the exception propagates (file-system failures as :class:`StoreWriteError`).
        """
        p = validate_project(project)
        extra = _caller_metadata(metadata, "metadata")
        pdir = self._dir(p)
        what = f"publishing a model for project {p} in {pdir}"
        with self._writing(f"{what}: creating the project directory"):
            ProjectDir(self.root, p).open()
        if not pdir.resolve().is_relative_to(self.root):
            raise StoreError(f"project directory {pdir} resolves outside {self.root}")
        with self._writing(f"{what}: creating a temporary directory"), self._project_lock(pdir):
            self._clean_leftovers(pdir)
            tmp, tmp_lock = self._make_tmp(pdir)
        committed = False
        try:
            write(tmp)
            if os.path.lexists(tmp / METADATA_FILE):
                raise StoreError(f"the artifact writer must not create {METADATA_FILE}: the store writes it")
            with self._writing(f"{what}: taking the project lock"), self._project_lock(pdir):
                number = self._next_number(pdir)
                now = self._clock().astimezone(UTC)
                version = f"v{number}-{now:%Y%m%dT%H%M%SZ}"
                record = {"version": version, "created_at": f"{now:%Y-%m-%dT%H:%M:%SZ}", **extra}
                final = pdir / version
                with self._writing(f"{what}: writing {METADATA_FILE}"):
                    self._write_metadata(tmp, record)
                with self._writing(f"{what}: syncing to disk"):
                    self._fsync_tree(tmp)
                    os.unlink(tmp / _PUBLISH_LOCK)
                with self._writing(f"{what}: renaming into place"):
                    self._rename(tmp, final)
                committed = True
                try:
                    with self._writing(f"{what}: updating the current pointer"):
                        self._write_pointer(pdir, version)
                except BaseException:
                    if self._pointer_landed(p, version):
                        log.warning("pointer of project %d updated to %s despite an error", p, version)
                    else:
                        self._discard(pdir, final)
                        raise
                self._after_commit(p, pdir, record)
            return version
        except BaseException:
            if not committed:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            os.close(tmp_lock)

    def _pointer_landed(self, project: int, version: str) -> bool:
        # The replace may have happened before a later step (the directory fsync) failed; then the
        # version is live and must not be deleted.
        try:
            return self.current(project) == version
        except (OSError, StoreError):
            return False

    def _discard(self, project_dir: Path, final: Path) -> None:
        """Undo a rename whose pointer update failed, so the caller's exception means "not published"."""
        trash = project_dir / f"{_TRASH_PREFIX}{secrets.token_hex(8)}"
        try:
            os.rename(final, trash)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError as exc:
            # It stays as a complete, non-current version; numbering skips past it, nothing is lost.
            log.warning("could not remove unpublished %s: %s", final, exc)

    def _after_commit(self, project: int, project_dir: Path, record: dict) -> None:
        # The version is live at this point: failures here are logged, not raised, and repaired by
        # the next publish (history() also reads versions still on disk).
        try:
            self._record_history(project, project_dir, record)
        except (OSError, StoreError) as exc:
            log.warning("could not append %s to project %d's history: %s", record["version"], project, exc)
            return  # pruning now could drop the only copy of a version's metrics
        try:
            self._prune(project, project_dir)
        except (OSError, StoreError) as exc:
            log.warning("could not prune project %d: %s", project, exc)

    def update_metadata(self, project: int, version: str, updates: Mapping[str, Any]) -> dict:
        """Set top-level keys of a published version's metadata (e.g. its ``metrics``, computed after
        the version went live); return the new metadata.

        The version's ``metadata.json`` is replaced atomically (a reader sees the old or the new
        record, never a mix) and the new record is appended to the history, where it supersedes the
        earlier line. Not-finite floats become null, as in :meth:`publish`. StoreError if the version
        does not exist (pruned meanwhile) or ``updates`` sets ``version`` or ``created_at``.
        """
        p = validate_project(project)
        v = validate_version(version)
        extra = _caller_metadata(updates, "metadata updates")
        pdir = self._dir(p)
        with self._writing(f"updating the metadata of {v} of project {p} in {pdir}"), self._project_lock(pdir):
            # Under the lock: a concurrent publish cannot prune the version between the read and the write.
            record = {**self.metadata(p, v), **extra}
            directory = self._existing(p, v)
            write_atomic(directory / METADATA_FILE, json.dumps(record, indent=2, allow_nan=False).encode())
            self._append_history(pdir, [record])
        return record

    def rollback(self, project: int, version: str) -> None:
        """Serve ``version`` (full, or ``"v7"`` / ``"7"``); later publishes still get higher numbers."""
        p = validate_project(project)
        pdir = self._dir(p)
        self.resolve_version(p, version)  # a clear error before touching the disk
        with self._writing(f"rolling back project {p} in {pdir}"), self._project_lock(pdir):
            # Re-resolve under the lock: a concurrent publish may have pruned it meanwhile.
            target = self.resolve_version(p, version)
            self._existing(p, target)
            self._write_pointer(pdir, target)
