"""The project directory: paths, modes, atomic writes, durable appends, stray temp files after a crash."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backend import projectdir
from backend.projectdir import (
    ProjectDir,
    ProjectIdError,
    append_line,
    read_jsonl,
    remove_stray_temp_files,
    write_atomic,
    write_json,
)

REPO = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait_for(path: Path, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {seconds} s")
        time.sleep(0.02)


def test_paths_are_under_the_project_directory(tmp_path: Path) -> None:
    pdir = ProjectDir(tmp_path, "7")
    assert pdir.root == tmp_path / "7"
    assert pdir.project_json == tmp_path / "7" / "project.json"
    assert pdir.cycle_log == tmp_path / "7" / "cycles.jsonl"
    assert pdir.written_versions_file == tmp_path / "7" / "written_versions.json"
    assert pdir.pool_snapshot == tmp_path / "7" / "pool" / "snapshot.npz"
    assert pdir.pool_events == tmp_path / "7" / "pool" / "events.jsonl"


@pytest.mark.parametrize("bad", ["../1", "007x", -1, True, "1/2", ""])
def test_project_ids_are_validated(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ProjectIdError, match="plain non-negative integer"):
        ProjectDir(tmp_path, bad)


def test_model_dir_and_project_dirs_are_private(tmp_path: Path) -> None:
    """Fault: MODEL_DIR and its project files readable by every local user (created 0755/0644)
    Done: a project directory opened under a MODEL_DIR that does not exist yet; a JSON file and a log written
    Expected: MODEL_DIR, its missing parents and the project directory are created 0700, files 0600
    Observed: as expected
    """
    model_dir = tmp_path / "a" / "models"
    pdir = ProjectDir(model_dir, 3).open()
    write_json(pdir.project_json, {"x": 1})
    append_line(pdir.cycle_log, b"{}")
    assert mode(tmp_path / "a") == 0o700
    assert mode(model_dir) == 0o700
    assert mode(pdir.root) == 0o700
    assert mode(pdir.project_json) == 0o600
    assert mode(pdir.cycle_log) == 0o600


def test_open_makes_a_directory_of_an_earlier_release_private(tmp_path: Path) -> None:
    pdir = ProjectDir(tmp_path, 4)
    pdir.pool.mkdir(mode=0o755, parents=True)
    os.chmod(pdir.root, 0o755)
    pdir.open()
    assert (mode(pdir.root), mode(pdir.pool)) == (0o700, 0o700)
    os.chmod(pdir.root, 0o555)  # an admin made it read-only: it stays so, for its owner only
    try:
        ProjectDir(tmp_path, 4).open()
        assert mode(pdir.root) == 0o500
    finally:
        os.chmod(pdir.root, 0o700)


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "p" / "f.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(os.listdir(target.parent)) == ["f.json"]


def test_write_atomic_failure_keeps_the_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(projectdir.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="injected"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def _fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record what the real os.fsync is called on (by path), still calling it."""
    calls: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(projectdir.os, "fsync", spy)
    return calls


def test_write_atomic_fsyncs_the_file_then_the_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fsynced(monkeypatch)
    write_atomic(tmp_path / "f", b"data")
    assert len(calls) == 2
    assert Path(calls[0]).name.startswith(".tmp-")  # the temp file, before its rename
    assert calls[1] == str(tmp_path)


def test_append_fsyncs_the_file_and_the_directory_when_it_creates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _fsynced(monkeypatch)
    log = tmp_path / "log.jsonl"
    append_line(log, b'{"n":1}')
    assert calls == [str(log), str(tmp_path)]
    append_line(log, b'{"n":2}')
    assert calls[2:] == [str(log)]


def test_a_torn_last_line_is_ignored_and_terminated_by_the_next_append(tmp_path: Path) -> None:
    """Fault: a writer killed mid-append leaves a torn last line in a JSON-lines log
    Done: half a line appended by hand, then the log read, then a normal append
    Expected: the torn line is skipped on read; the next append starts on a new line and parses
    Observed: as expected
    """
    log = tmp_path / "log.jsonl"
    append_line(log, b'{"n":1}')
    with open(log, "ab") as f:
        f.write(b'{"n":')  # what a writer killed mid-write leaves
    assert read_jsonl(log) == [{"n": 1}]
    append_line(log, b'{"n":3}')
    assert read_jsonl(log) == [{"n": 1}, {"n": 3}]
    assert log.read_bytes() == b'{"n":1}\n{"n":\n{"n":3}\n'


def test_append_refuses_more_than_one_line(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one line"):
        append_line(tmp_path / "log", b"a\nb")


_WRITER = """
import sys, time
from pathlib import Path
from backend.projectdir import atomic_file
target, ready = Path(sys.argv[1]), Path(sys.argv[2])
with atomic_file(target) as f:
    f.write(b"half of the new content")
    f.flush()
    ready.touch()
    time.sleep(120)  # killed here, between writing and renaming
"""


def test_sigkill_mid_write_leaves_the_old_file_and_the_next_open_removes_the_temp_file(tmp_path: Path) -> None:
    """Fault: a process replacing a file in a project directory is SIGKILLed between writing and renaming
    Done: a real subprocess writes project.json through atomic_file and is killed; the directory is
        opened while it lives and after it died
    Expected: while the writer lives its temp file stays; after the kill the old content is intact and
        the next open removes the temp file
    Observed: as expected
    """
    pdir = ProjectDir(tmp_path, 1).open()
    write_json(pdir.project_json, {"v": "old"})
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(pdir.project_json), str(ready)], env=env)
    try:
        wait_for(ready)
        temps = [n for n in os.listdir(pdir.root) if n.startswith(".tmp-")]
        assert len(temps) == 1
        # While the writer lives, its temp file is not a stray: opening the directory keeps it.
        assert remove_stray_temp_files(pdir.root) == []
        ProjectDir(tmp_path, 1).open()
        assert (pdir.root / temps[0]).exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    assert (pdir.root / temps[0]).exists()
    ProjectDir(tmp_path, 1).open()
    assert sorted(os.listdir(pdir.root)) == ["project.json"]
    assert json.loads(pdir.project_json.read_text()) == {"v": "old"}


def test_open_removes_stray_temp_files_of_earlier_releases(tmp_path: Path) -> None:
    pdir = ProjectDir(tmp_path, 1)
    pdir.pool.mkdir(parents=True)
    for name in (".snapshot-abc", ".events-def", ".tmp-123"):
        (pdir.pool / name).write_bytes(b"x")
    (pdir.root / ".tmp-999").write_bytes(b"x")
    (pdir.root / ".tmp-publish").mkdir()  # a model store publish dir: the store cleans those itself
    pdir.open()
    assert os.listdir(pdir.pool) == []
    assert sorted(os.listdir(pdir.root)) == [".tmp-publish", "pool"]


def test_written_versions_are_recorded_once_and_forgotten(tmp_path: Path) -> None:
    pdir = ProjectDir(tmp_path, 2)
    assert pdir.written_versions() == []
    pdir.record_written("v1-20260101T000000Z")
    pdir.record_written("v2-20260101T000001Z")
    pdir.record_written("v1-20260101T000000Z")
    assert ProjectDir(tmp_path, 2).written_versions() == ["v1-20260101T000000Z", "v2-20260101T000001Z"]
    pdir.forget_written("v1-20260101T000000Z")
    assert pdir.written_versions() == ["v2-20260101T000001Z"]
    pdir.written_versions_file.write_text("{not json")
    assert pdir.written_versions() == []
