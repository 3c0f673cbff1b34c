"""The project directory, `MODEL_DIR/<project>/`: every path in it, and how files there are written.

Layout (every other module asks `ProjectDir` for these paths instead of joining names itself)::

    MODEL_DIR/                        created 0700
        <project>/                    the project id as a plain integer, e.g. ``3``; created 0700
            project.json              what /setup told us (projects.py)
            cycles.jsonl              one line per cycle: status, stage timings, signals (cycle_log.py)
            written_versions.json     prediction versions lsal wrote to Label Studio (cleanup deletes only these)
            stopset.json              the fixed stop set: task ids and model inputs (stopping signals)
            stop_predictions.json     the last version's labels on the stop set
            labels.json               the labeled tasks as Label Studio last exported them (labels.py)
            labels.dirty              present while a cycle updates labels.json from webhook hints
            pool/                     the task pool kept between cycles (pool.py)
                snapshot.npz          ids, data (JSON) and per-task arrays; no pickle
                events.jsonl          TASKS_CREATED / TASKS_DELETED since the snapshot
                .events.lock          flock()ed around appends and the log's rotation
                clusters.npz          each task's cluster id, kept across versions (clusters.py); no pickle
            CURRENT, history.jsonl, .lock, v<n>-<stamp>/   the model store (store.py)

Files are created 0600. Two ways of writing, both crash-safe:

- `write_atomic` / `write_json`: a temporary file in the same directory (flock()ed while it is
  written), fsync, rename over the target, fsync the directory. A reader sees the old content or the
  new, and after a crash at any point the old content is still there.
- `append_line`: one write of a whole line with O_APPEND, then fsync (and an fsync of the directory
  when the file was created). A crash mid-write leaves at most one torn last line, which
  `read_lines` ignores and the next append terminates.

Arrays (pool snapshot, pool clusters) are npz files with a JSON ``meta`` member naming their format:
`write_npz` / `read_npz`. Nothing in them is ever unpickled.

`ProjectDir.open()` (called by the writers: a cycle, /setup, a publish) creates the directory and
removes temporary files that a killed writer left behind (`.tmp-*`, and the `.snapshot-*` /
`.events-*` of earlier releases); one still locked by a live writer is left alone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import zipfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
TMP_PREFIX = ".tmp-"
#: Temporary-file prefixes that a crashed writer may leave behind (the last two from earlier releases).
STRAY_PREFIXES = (TMP_PREFIX, ".snapshot-", ".events-")

LEGACY_PICKLED_SNAPSHOT = "snapshot.pkl"

# The model store's names in the project directory (store.py implements the protocol around them).
CURRENT_FILE = "CURRENT"
HISTORY_FILE = "history.jsonl"
STORE_LOCK_FILE = ".lock"

_PROJECT_RE = re.compile(r"[0-9]{1,18}", re.ASCII)  # re.ASCII: \d and isdigit() accept other digits
#: the largest project id lsal accepts (18 digits: a path component, and below every integer limit)
MAX_PROJECT_ID = 10**18 - 1


class ProjectIdError(ValueError):
    """A project id that is not a plain non-negative integer."""


def validate_project(project: object) -> int:
    """Return the project id as an int; accept only an int or a string of ASCII digits."""
    # bool is an int subclass, and True would silently become project 1.
    if isinstance(project, int) and not isinstance(project, bool):
        if 0 <= project <= MAX_PROJECT_ID:
            return project
    elif isinstance(project, str) and _PROJECT_RE.fullmatch(project):
        return int(project)
    raise ProjectIdError(f"project id must be a plain non-negative integer, got {project!r}")


def is_project_name(name: str) -> bool:
    """True for a directory name that is a project's canonical spelling ("7", not "007")."""
    return bool(_PROJECT_RE.fullmatch(name)) and str(int(name)) == name


# -- directories ---------------------------------------------------------------------------------


def make_private_dir(path: Path) -> Path:
    """Create `path` and any missing parents with mode 0700 (existing ones are left as they are)."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process created it meanwhile
            os.mkdir(directory, DIR_MODE)
    return path


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that a rename or a file creation in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot fsync a directory; the rename is still atomic there.
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def remove_stray_temp_files(directory: Path) -> list[str]:
    """Remove temporary files left by killed writers in `directory`; return their names.

    A writer holds an flock on its temporary file until the rename, so a locked one belongs to a
    live writer and stays.
    """
    removed: list[str] = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if not entry.name.startswith(STRAY_PREFIXES) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            # Read-write: on NFS, Linux emulates flock with POSIX locks, which need it for LOCK_EX.
            fd = os.open(entry.path, os.O_RDWR)
        except OSError:
            continue  # its writer renamed it meanwhile, or it is not ours to remove
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # locked by a live writer (BlockingIOError), or not lockable here: leave it
            try:
                os.unlink(entry.path)
                removed.append(entry.name)
            except FileNotFoundError:
                pass
            except OSError as exc:  # a read-only directory: the file stays, harmless, until it is writable
                log.warning("could not remove the stray temporary file %s: %s", entry.path, exc)
        finally:
            os.close(fd)
    return removed


# -- writing -------------------------------------------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def _locked_temp_file(directory: Path) -> Iterator[tuple[int, Path]]:
    """A new temporary file in `directory`, flock()ed so that `remove_stray_temp_files` skips it."""
    while True:
        tmp = directory / f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:
            break
        # A cleaner unlinked it between our create and our lock: take another name.
        os.close(fd)
    try:
        yield fd, tmp
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = Path(path)
    make_private_dir(path.parent)
    with _locked_temp_file(path.parent) as (fd, tmp):
        _write_all(fd, data)
        os.fsync(fd)
        os.replace(tmp, path)
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Any]:
    """Write `path` atomically through a binary file object (for writers that stream, e.g. numpy)."""
    path = Path(path)
    make_private_dir(path.parent)
    with _locked_temp_file(path.parent) as (fd, tmp):
        with open(os.dup(fd), "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(path.parent)


def json_member(value: Any) -> np.ndarray:
    """`value` as compact JSON bytes in a uint8 array: an npz member that loads without pickle."""
    return np.frombuffer(json.dumps(value, separators=(",", ":")).encode(), dtype=np.uint8)


def write_npz(file: Any, meta: Mapping[str, Any], members: Mapping[str, np.ndarray]) -> None:
    """Write ``members`` and ``meta`` (JSON; name its ``format``) as an npz to a binary file object
    (`atomic_file` for a durable one). No member may need pickle: `read_npz` refuses those."""
    np.savez(file, meta=json_member(dict(meta)), **members)  # type: ignore[arg-type]


def read_npz(file: Any, fmt: int | str, read: Callable[[Any, dict[str, Any]], T | None]) -> T | None:
    """``read(npz, meta)`` of an npz written by `write_npz` whose meta's ``format`` is ``fmt``.

    None when the file is missing or unreadable, is not such an npz, or ``read`` finds it malformed
    (returns None or raises KeyError, ValueError, TypeError): derived state, rebuilt by the caller.
    Members load with ``allow_pickle=False``, so a crafted file cannot run code."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            meta = json.loads(npz["meta"].tobytes())
            if not isinstance(meta, dict) or meta.get("format") != fmt:
                return None
            return read(npz, meta)
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError):
        # ValueError includes numpy's refusal of a pickled (object) member under allow_pickle=False.
        return None


def write_json(path: Path, value: Any) -> None:
    """Write `value` as JSON to `path` atomically and durably (see `write_atomic`)."""
    write_atomic(path, json.dumps(value, separators=(",", ":")).encode())


def read_json(path: Path) -> Any:
    """The JSON value in `path`, or None when it is missing or unreadable (derived state: rebuilt)."""
    try:
        return json.loads(Path(path).read_bytes())
    except (OSError, ValueError):
        return None


def append_line(path: Path, line: bytes) -> None:
    """Append one line durably (see `append_lines`)."""
    append_lines(path, [line])


def append_lines(path: Path, lines: list[bytes]) -> None:
    """Append whole lines durably: a single O_APPEND write, then fsync (and the directory's on creation).

    A torn last line left by a crashed writer is terminated first, so these lines parse. Callers that
    append from several processes and also rewrite the file hold their own lock (see pool.py).
    """
    path = Path(path)
    if any(b"\n" in line.rstrip(b"\n") for line in lines):
        raise ValueError("each item must be exactly one line")
    data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
    if not data:
        return
    make_private_dir(path.parent)
    created = False
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND)
    except FileNotFoundError:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
        created = True
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        fsync_dir(path.parent)


def complete_lines(raw: bytes) -> list[bytes]:
    """The complete lines of `raw`: a last line without its newline (still being written, or torn
    by a crash) is left out."""
    return raw[: raw.rfind(b"\n") + 1].splitlines()


def read_jsonl(path: Path) -> list[Any]:
    """The JSON values of the complete lines of `path` (unparseable lines skipped); [] if missing."""
    try:
        raw = Path(path).read_bytes()
    except OSError:
        return []
    out = []
    for line in complete_lines(raw):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a crash and terminated by the next append
    return out


# -- the project directory ------------------------------------------------------------------------


class ProjectDir:
    """The paths of one project's directory, `MODEL_DIR/<project>/` (see the module docstring)."""

    def __init__(self, model_dir: Path | str, project: object) -> None:
        self.project = validate_project(project)
        self.model_dir = Path(model_dir)
        self.root = self.model_dir / str(self.project)

    def __repr__(self) -> str:
        return f"ProjectDir({str(self.root)!r})"

    @property
    def current_pointer(self) -> Path:
        """The name of the version the project serves (store.py)."""
        return self.root / CURRENT_FILE

    @property
    def model_history(self) -> Path:
        """Metadata of every model version ever published, one JSON line each (store.py)."""
        return self.root / HISTORY_FILE

    @property
    def store_lock(self) -> Path:
        """flock()ed around version numbering, rename and pointer update (store.py)."""
        return self.root / STORE_LOCK_FILE

    def version_dir(self, version: str) -> Path:
        """The directory of one model version (the store validates the name)."""
        return self.root / version

    @property
    def project_json(self) -> Path:
        """What /setup told us: label config and extra params (projects.py)."""
        return self.root / "project.json"

    @property
    def cycle_log(self) -> Path:
        """One JSON line per cycle (cycle_log.py)."""
        return self.root / "cycles.jsonl"

    @property
    def written_versions_file(self) -> Path:
        """The prediction versions lsal wrote to Label Studio."""
        return self.root / "written_versions.json"

    @property
    def stop_set(self) -> Path:
        """The fixed stop set: ids and model inputs."""
        return self.root / "stopset.json"

    @property
    def stop_predictions(self) -> Path:
        """The last version's labels on the stop set."""
        return self.root / "stop_predictions.json"

    @property
    def labels(self) -> Path:
        """The labeled tasks kept between cycles (labels.py): JSON."""
        return self.root / "labels.json"

    @property
    def labels_dirty(self) -> Path:
        """Exists while labels.json is being brought up to date from hints: the next cycle reads all."""
        return self.root / "labels.dirty"

    @property
    def pool(self) -> Path:
        """The task pool's directory (pool.py)."""
        return self.root / "pool"

    @property
    def pool_snapshot(self) -> Path:
        """The pool snapshot: npz without pickle."""
        return self.pool / "snapshot.npz"

    @property
    def pool_events(self) -> Path:
        """The pool's event log since the snapshot."""
        return self.pool / "events.jsonl"

    @property
    def pool_clusters(self) -> Path:
        """Each pool task's cluster id, kept across versions (clusters.py): npz without pickle."""
        return self.pool / "clusters.npz"

    @property
    def pool_events_lock(self) -> Path:
        """flock()ed around event appends and the log's rotation."""
        return self.pool / ".events.lock"

    def open(self) -> ProjectDir:
        """Create the directory (0700, or make it so) and remove temp files that killed writers left in it.

        Also removes the pickled pool snapshot of earlier releases, which nothing reads any more.
        """
        make_private_dir(self.root)
        for directory in (self.root, self.pool):
            # A directory created by an earlier release (0755) is made private on the next open.
            with contextlib.suppress(OSError):  # not ours to change (another owner): leave it
                current = stat.S_IMODE(os.stat(directory).st_mode)
                if current & 0o077:
                    os.chmod(directory, current & ~0o077)  # owner bits kept: read-only stays read-only
        remove_stray_temp_files(self.root)
        remove_stray_temp_files(self.pool)
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            os.unlink(self.pool / LEGACY_PICKLED_SNAPSHOT)
        return self

    # -- which prediction versions lsal wrote (so cleanup never touches versions it did not write)

    def written_versions(self) -> list[str]:
        """The model versions whose predictions lsal wrote to Label Studio, oldest first."""
        raw = read_json(self.written_versions_file)
        return [str(v) for v in raw] if isinstance(raw, list) else []

    def record_written(self, version: str) -> None:
        """Remember that predictions of `version` were written (before writing them)."""
        versions = self.written_versions()
        if version not in versions:
            write_json(self.written_versions_file, [*versions, version])

    def forget_written(self, version: str) -> None:
        """Forget `version` once its predictions were deleted from Label Studio."""
        write_json(self.written_versions_file, [v for v in self.written_versions() if v != version])
