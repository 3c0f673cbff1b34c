"""Model store: versions, atomic publish, crash safety, pruning, rollback, path validation, load cache."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.store import (
    ModelStore,
    StoreError,
    StoreWriteError,
    parse_version,
    validate_project,
    validate_version,
    version_key,
)
from tests.conftest import wait_for

FORK = multiprocessing.get_context("fork")
T0 = datetime(2026, 11, 21, 10, 38, tzinfo=UTC)


def stamp(minutes: int) -> str:
    return f"{T0 + timedelta(minutes=minutes):%Y%m%dT%H%M%SZ}"


def ticking_clock() -> Callable[[], datetime]:
    """10:38, 10:39, ... one minute per publish, so every expected version string is exact."""
    calls = iter(range(10_000))
    return lambda: T0 + timedelta(minutes=next(calls))


def writer(text: str) -> Callable[[Path], None]:
    def write(directory: Path) -> None:
        (directory / "model.txt").write_text(text)
        (directory / "sub").mkdir()
        (directory / "sub" / "weights.bin").write_bytes(text.encode() * 3)

    return write


def read_model(directory: Path) -> str:
    return (directory / "model.txt").read_text()


def leftovers(project_dir: Path) -> list[str]:
    return sorted(n for n in os.listdir(project_dir) if n.startswith((".tmp-", ".trash-", ".CURRENT.tmp")))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models", clock=ticking_clock())


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("raw", "expected"), [(0, 0), (1, 1), (42, 42), ("1", 1), ("42", 42), ("007", 7)])
def test_validate_project_accepts_plain_integers(raw: object, expected: int) -> None:
    assert validate_project(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["1.5", "-1", " 1", "1 ", "1\n", "+1", "abc", "", "1e3", "\u0661", "1/../../etc", True, False, 1.0, -1, None, [1]],
)
def test_validate_project_rejects_anything_else_naming_the_value(raw: object) -> None:
    with pytest.raises(StoreError) as info:
        validate_project(raw)
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "1/../../etc",
        "/etc/passwd",
        "v1/../..",
        "v1-20261121T103800Z/../..",
        "v1-20261121T103800Z/",
        "v1-20261121T103800Z\n",
        "v0-20261121T103800Z",
        "v01-20261121T103800Z",
        "v1-20261121T1038Z",
        "v1",
        "",
        "V1-20261121T103800Z",
    ],
)
def test_path_rejects_traversal_and_malformed_versions(store: ModelStore, bad: str) -> None:
    with pytest.raises(StoreError) as info:
        store.path(1, bad)
    assert repr(bad) in str(info.value)
    with pytest.raises(StoreError):
        store.metadata(1, bad)
    with pytest.raises(StoreError):
        store.load(1, read_model, version=bad)
    with pytest.raises(StoreError):
        store.rollback(1, bad)


@pytest.mark.parametrize("bad", ["1.5", "-1", " 1", "abc", True, 1.0, "../1", "/tmp"])
def test_every_method_rejects_non_integer_projects(store: ModelStore, bad: object) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.current(bad),  # type: ignore[arg-type]
        lambda: store.versions(bad),  # type: ignore[arg-type]
        lambda: store.history(bad),  # type: ignore[arg-type]
        lambda: store.metadata(bad),  # type: ignore[arg-type]
        lambda: store.path(bad, "v1-20261121T103800Z"),  # type: ignore[arg-type]
        lambda: store.load(bad, read_model),  # type: ignore[arg-type]
        lambda: store.publish(bad, writer("x"), {}),  # type: ignore[arg-type]
        lambda: store.rollback(bad, "v1-20261121T103800Z"),  # type: ignore[arg-type]
    ]
    for call in calls:
        with pytest.raises(StoreError) as info:
            call()
        assert repr(bad) in str(info.value)
    assert not store.root.exists()


def test_version_helpers() -> None:
    assert parse_version("v7-20261121T103800Z") == (7, datetime(2026, 11, 21, 10, 38, tzinfo=UTC))
    assert validate_version("v12-20261121T103800Z") == "v12-20261121T103800Z"
    names = ["v10-20261121T103800Z", "v9-20261121T103900Z", "v1-20270101T000000Z"]
    assert sorted(names, key=version_key) == ["v1-20270101T000000Z", "v9-20261121T103900Z", "v10-20261121T103800Z"]
    with pytest.raises(StoreError, match="bad timestamp"):
        parse_version("v1-20261399T103800Z")


@pytest.mark.parametrize("keep", [0, -1, True, 1.5])
def test_keep_must_be_a_positive_integer(tmp_path: Path, keep: object) -> None:
    with pytest.raises(StoreError, match=f"keep must be an integer >= 1, got {keep!r}"):
        ModelStore(tmp_path, keep=keep)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ round trip


def test_empty_store_reads_as_empty(store: ModelStore) -> None:
    assert store.current(3) is None
    assert store.versions(3) == []
    assert store.history(3) == []
    assert store.projects() == []
    assert store.load(3, read_model) is None
    with pytest.raises(StoreError, match="project 3 has no published model"):
        store.metadata(3)


def test_publish_round_trip(store: ModelStore) -> None:
    meta = {"labels": {"spam": 4, "ham": 6}, "metrics": {"accuracy": 0.75, "f1": float("nan")}, "n": 10}
    version = store.publish(3, writer("first"), meta)

    assert version == f"v1-{stamp(0)}"
    assert store.current(3) == version
    assert store.current("3") == version
    assert store.versions(3) == [version]
    expected = {
        "version": version,
        "created_at": "2026-11-21T10:38:00Z",
        "labels": {"spam": 4, "ham": 6},
        "metrics": {"accuracy": 0.75, "f1": None},
        "n": 10,
    }
    assert store.metadata(3) == expected
    assert store.metadata(3, version) == expected
    assert json.loads((store.root / "3" / version / "metadata.json").read_text()) == expected
    assert store.history(3) == [expected]
    assert store.projects() == [3]
    assert store.path(3, version) == store.root / "3" / version
    assert (store.path(3, version) / "sub" / "weights.bin").read_bytes() == b"firstfirstfirst"
    assert store.load(3, read_model) == (version, "first")
    assert sorted(os.listdir(store.root / "3")) == [".lock", "CURRENT", "history.jsonl", version]
    assert (store.root / "3" / "CURRENT").read_text() == version + "\n"

    second = store.publish(3, writer("second"), {"metrics": {"accuracy": 0.8}})
    assert second == f"v2-{stamp(1)}"
    assert store.current(3) == second
    assert store.versions(3) == [version, second]
    assert [h["version"] for h in store.history(3)] == [version, second]
    assert store.history(3)[1]["metrics"] == {"accuracy": 0.8}
    assert store.metadata(3, version) == expected
    assert store.load(3, read_model) == (second, "second")


def test_update_metadata_adds_metrics_to_a_published_version_in_its_one_home(store: ModelStore) -> None:
    """The cycle publishes with ``metrics: null`` and adds them after the switch: metadata.json and the
    history then say the same, the history's later line superseding the first."""
    v1 = store.publish(3, writer("first"), {"n_labels": 10, "metrics": None})
    v2 = store.publish(3, writer("second"), {"n_labels": 12, "metrics": None})
    out = store.update_metadata(3, v1, {"metrics": {"cv_accuracy": 0.9, "cv_macro_f1": float("nan")}})
    expected = {
        "version": v1,
        "created_at": "2026-11-21T10:38:00Z",
        "n_labels": 10,
        "metrics": {"cv_accuracy": 0.9, "cv_macro_f1": None},
    }
    assert out == expected
    assert store.metadata(3, v1) == expected
    assert store.metadata(3)["metrics"] is None  # v2, current, untouched
    assert store.history(3) == [expected, store.metadata(3, v2)]
    lines = (store.root / "3" / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["version"] for line in lines] == [v1, v2, v1]
    assert store.current(3) == v2  # an update is not a publish: the pointer stays
    with pytest.raises(StoreError, match="must not set \\['version'\\]"):
        store.update_metadata(3, v1, {"version": "v9-20261121T103800Z"})
    with pytest.raises(StoreError, match="has no model version"):
        store.update_metadata(3, "v7-20261121T103800Z", {"metrics": {}})
    assert store.metadata(3, v1) == expected
    # The next publish (history repair, numbering) reads the doubled line as one version.
    v3 = store.publish(3, writer("third"), {})
    assert v3.startswith("v3-") and [h["version"] for h in store.history(3)] == [v1, v2, v3]


def test_numpy_like_values_are_converted(store: ModelStore) -> None:
    class Scalar:
        def tolist(self) -> int:
            return 5

    store.publish(1, writer("x"), {"count": Scalar(), "pair": (1, 2)})
    assert store.metadata(1)["count"] == 5
    assert store.metadata(1)["pair"] == [1, 2]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"version": "mine"}, "metadata must not set ['version']"),
        ({"created_at": "now"}, "metadata must not set ['created_at']"),
        ({"x": object()}, "metadata value at metadata.x is not JSON-serialisable"),
        ({"x": {1: "a"}}, "metadata keys must be strings, got 1 in metadata.x"),
    ],
)
def test_bad_metadata_is_rejected_before_touching_disk(store: ModelStore, meta: dict, message: str) -> None:
    with pytest.raises(StoreError) as info:
        store.publish(1, writer("x"), meta)
    assert message in str(info.value)
    assert not store.root.exists()


def test_writer_may_not_create_metadata_json(store: ModelStore) -> None:
    store.publish(1, writer("one"), {})

    def sneaky(directory: Path) -> None:
        (directory / "metadata.json").write_text("{}")

    with pytest.raises(StoreError, match="must not create metadata.json"):
        store.publish(1, sneaky, {})
    assert store.versions(1) == [f"v1-{stamp(0)}"]
    assert leftovers(store.root / "1") == []


def test_projects_lists_only_canonical_project_directories(store: ModelStore) -> None:
    store.publish(12, writer("a"), {})
    store.publish(2, writer("b"), {})
    for name in ("007", "abc", "-1"):
        (store.root / name).mkdir()
    (store.root / "5").write_text("a file, not a project")
    assert store.projects() == [2, 12]


# ------------------------------------------------------------------------------------ numbering


def test_numbering_is_monotonic_across_store_instances(tmp_path: Path) -> None:
    clock = ticking_clock()
    a = ModelStore(tmp_path, clock=clock)
    b = ModelStore(tmp_path, clock=clock)
    assert a.publish(1, writer("a1"), {}) == f"v1-{stamp(0)}"
    assert b.publish(1, writer("b1"), {}) == f"v2-{stamp(1)}"
    assert a.publish(1, writer("a2"), {}) == f"v3-{stamp(2)}"
    assert b.publish(2, writer("other project"), {}) == f"v1-{stamp(3)}"
    assert a.versions(1) == b.versions(1) == [f"v1-{stamp(0)}", f"v2-{stamp(1)}", f"v3-{stamp(2)}"]


def test_numbering_continues_past_pruned_versions_and_after_rollback(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep=1, clock=ticking_clock())
    for i in range(3):
        store.publish(1, writer(str(i)), {})
    assert store.versions(1) == [f"v3-{stamp(2)}"]
    assert ModelStore(tmp_path, keep=1, clock=ticking_clock()).publish(1, writer("x"), {}).startswith("v4-")


def test_wiped_model_dir_restarts_numbers_with_distinct_version_strings(tmp_path: Path) -> None:
    clock = ticking_clock()
    first = ModelStore(tmp_path / "a", clock=clock).publish(1, writer("x"), {})
    second = ModelStore(tmp_path / "b", clock=clock).publish(1, writer("x"), {})
    assert (first, second) == (f"v1-{stamp(0)}", f"v1-{stamp(1)}")


def _publish_many(root: Path, worker: int, count: int, barrier: object, results: object) -> None:
    store = ModelStore(root, keep=1000)
    barrier.wait()  # type: ignore[attr-defined]
    for i in range(count):
        version = store.publish(7, writer(f"{worker}-{i}"), {"worker": worker, "i": i})
        results.put((worker, i, version))  # type: ignore[attr-defined]


def test_concurrent_processes_never_skip_or_duplicate_a_number(tmp_path: Path) -> None:
    workers, each = 4, 6
    barrier = FORK.Barrier(workers)
    results = FORK.Queue()
    procs = [FORK.Process(target=_publish_many, args=(tmp_path, w, each, barrier, results)) for w in range(workers)]
    for proc in procs:
        proc.start()
    got = [results.get(timeout=60) for _ in range(workers * each)]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0

    store = ModelStore(tmp_path)
    numbers = sorted(version_key(v)[0] for _, _, v in got)
    assert numbers == list(range(1, workers * each + 1))
    assert [version_key(v)[0] for v in store.versions(7)] == list(range(1, workers * each + 1))
    for worker, i, version in got:
        meta = store.metadata(7, version)
        assert (meta["worker"], meta["i"]) == (worker, i)
        assert read_model(store.path(7, version)) == f"{worker}-{i}"
    history = store.history(7)
    assert [h["version"] for h in history] == store.versions(7)
    assert store.current(7) == store.versions(7)[-1]
    assert leftovers(tmp_path / "7") == []


# ------------------------------------------------------------------------------------ pruning, rollback


def test_keeps_the_last_k_versions_and_the_history_of_all(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep=3, clock=ticking_clock())
    published = [store.publish(1, writer(f"m{i}"), {"metrics": {"acc": i / 10}}) for i in range(5)]
    assert published == [f"v{i + 1}-{stamp(i)}" for i in range(5)]
    assert store.versions(1) == published[2:]
    assert not (tmp_path / "1" / published[0]).exists()
    assert [(h["version"], h["metrics"]["acc"]) for h in store.history(1)] == [
        (v, i / 10) for i, v in enumerate(published)
    ]
    with pytest.raises(StoreError, match="has no model version"):
        store.metadata(1, published[0])
    assert leftovers(tmp_path / "1") == []


def test_rollback(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep=3, clock=ticking_clock())
    v1, v2, v3 = (store.publish(1, writer(f"m{i}"), {}) for i in range(3))
    assert store.load(1, read_model) == (v3, "m2")

    store.rollback(1, v2)
    assert store.current(1) == v2
    assert store.load(1, read_model) == (v2, "m1")
    assert store.metadata(1)["version"] == v2
    store.rollback(1, "v1")
    assert store.current(1) == v1
    store.rollback(1, "3")
    assert store.current(1) == v3

    store.rollback(1, v1)
    v4 = store.publish(1, writer("m3"), {})
    assert v4 == f"v4-{stamp(3)}"
    assert store.current(1) == v4
    assert store.versions(1) == [v2, v3, v4]


@pytest.mark.parametrize("target", ["v9-20261121T103800Z", "v9", "9", "v1-20991231T000000Z"])
def test_rollback_to_a_missing_version_names_it_and_changes_nothing(store: ModelStore, target: str) -> None:
    store.publish(1, writer("a"), {})
    with pytest.raises(StoreError) as info:
        store.rollback(1, target)
    assert f"project 1 has no model version {target!r} (available: v1-{stamp(0)})" == str(info.value)
    assert store.current(1) == f"v1-{stamp(0)}"


def test_pruning_never_deletes_the_current_version(tmp_path: Path) -> None:
    # A worker killed between rename and pointer update leaves a newer, non-current version next to a
    # rolled-back current one; pruning down to keep=1 must still spare the one being served.
    clock = ticking_clock()
    roomy = ModelStore(tmp_path, keep=3, clock=clock)
    v1 = roomy.publish(1, writer("a"), {})
    v2 = roomy.publish(1, writer("b"), {})
    roomy.rollback(1, v1)
    tight = ModelStore(tmp_path, keep=1, clock=clock)
    tight._prune(1, tmp_path / "1")
    assert tight.versions(1) == [v1, v2]
    assert tight.load(1, read_model) == (v1, "a")
    tight.rollback(1, v2)
    tight._prune(1, tmp_path / "1")
    assert tight.versions(1) == [v2]


# ------------------------------------------------------------------------------------ interrupted publishes


STEPS = ["artifacts", "metadata", "fsync", "rename", "pointer"]


def break_step(store: ModelStore, step: str, fail: Callable[[], None]) -> Callable[[Path], None]:
    """Make ``step`` of the next publish call ``fail`` (after partial work); return the artifact writer."""
    if step == "artifacts":

        def write(directory: Path) -> None:
            (directory / "model.txt").write_text("half")
            fail()

        return write
    if step == "metadata":

        def write_metadata(tmp: Path, record: dict) -> None:
            (tmp / "metadata.json").write_text('{"version": "v2-')
            fail()

        store._write_metadata = write_metadata  # type: ignore[method-assign]
    elif step == "fsync":

        def fsync_tree(tmp: Path) -> None:
            fail()

        store._fsync_tree = fsync_tree  # type: ignore[method-assign]
    elif step == "rename":

        def rename(tmp: Path, final: Path) -> None:
            fail()

        store._rename = rename  # type: ignore[method-assign]
    elif step == "pointer":

        def write_pointer(project_dir: Path, version: str) -> None:
            (project_dir / ".CURRENT.tmp").write_text(version[:4])
            fail()

        store._write_pointer = write_pointer  # type: ignore[method-assign]
    return writer("new")


def raise_eio() -> None:
    raise OSError(errno.EIO, "injected I/O error")


@pytest.mark.parametrize("step", STEPS)
def test_failure_at_each_step_keeps_previous_version_and_next_publish_gets_next_number(
    tmp_path: Path, step: str
) -> None:
    clock = ticking_clock()
    store = ModelStore(tmp_path, clock=clock)
    v1 = store.publish(1, writer("old"), {"metrics": {"acc": 0.5}})
    assert store.load(1, read_model) == (v1, "old")

    broken = ModelStore(tmp_path, clock=clock)
    write = break_step(broken, step, raise_eio)
    expected_error = OSError if step == "artifacts" else StoreWriteError
    with pytest.raises(expected_error, match="injected I/O error") as info:
        broken.publish(1, write, {"metrics": {"acc": 0.9}})
    if step != "artifacts":
        assert info.value.errno == errno.EIO

    for reader in (store, ModelStore(tmp_path)):
        assert reader.current(1) == v1
        assert reader.versions(1) == [v1]
        assert reader.load(1, read_model) == (v1, "old")
        assert [h["version"] for h in reader.history(1)] == [v1]
    assert leftovers(tmp_path / "1") == ([".CURRENT.tmp"] if step == "pointer" else [])

    v2 = store.publish(1, writer("fixed"), {})
    # The clock is read only once the number is allocated, which a failing artifact writer never reaches.
    assert v2 == f"v2-{stamp(1 if step == 'artifacts' else 2)}"
    assert store.load(1, read_model) == (v2, "fixed")
    assert leftovers(tmp_path / "1") == []


def _publish_and_die(root: Path, step: str) -> None:
    store = ModelStore(root, clock=lambda: T0 + timedelta(hours=1))
    write = break_step(store, step, lambda: os._exit(3))
    if step == "pointer":
        # Die after the rename has completed, before the pointer is touched.
        store._write_pointer = lambda project_dir, version: os._exit(3)  # type: ignore[method-assign]
    store.publish(1, write, {})
    os._exit(0)


@pytest.mark.parametrize("step", STEPS)
def test_worker_killed_at_each_step_leaves_previous_version_served(tmp_path: Path, step: str) -> None:
    store = ModelStore(tmp_path, clock=ticking_clock())
    v1 = store.publish(1, writer("old"), {})

    proc = FORK.Process(target=_publish_and_die, args=(tmp_path, step))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 3

    orphan = f"v2-{T0 + timedelta(hours=1):%Y%m%dT%H%M%SZ}"
    expected_versions = [v1, orphan] if step == "pointer" else [v1]
    assert store.current(1) == v1
    assert store.versions(1) == expected_versions
    assert store.load(1, read_model) == (v1, "old")
    assert len([n for n in os.listdir(tmp_path / "1") if n.startswith(".tmp-")]) == (0 if step == "pointer" else 1)

    # The dead worker's lock is gone with it, its temp dir is cleaned up, and no number is reused.
    nxt = store.publish(1, writer("next"), {})
    assert nxt == (f"v3-{stamp(1)}" if step == "pointer" else f"v2-{stamp(1)}")
    assert store.current(1) == nxt
    assert store.versions(1) == [*expected_versions, nxt]
    assert [h["version"] for h in store.history(1)] == [*expected_versions, nxt]
    assert leftovers(tmp_path / "1") == []


def test_pointer_replaced_before_a_late_failure_counts_as_published(store: ModelStore) -> None:
    store.publish(1, writer("old"), {})
    real = store._write_pointer

    def write_then_fail(project_dir: Path, version: str) -> None:
        real(project_dir, version)
        raise_eio()

    store._write_pointer = write_then_fail  # type: ignore[method-assign]
    v2 = store.publish(1, writer("new"), {})
    assert v2 == f"v2-{stamp(1)}"
    assert store.current(1) == v2
    assert store.load(1, read_model) == (v2, "new")
    assert [h["version"] for h in store.history(1)] == [f"v1-{stamp(0)}", v2]


def test_readers_ignore_leftover_temp_dirs_and_publish_cleans_them(store: ModelStore) -> None:
    v1 = store.publish(1, writer("a"), {})
    pdir = store.root / "1"
    crashed = pdir / ".tmp-deadbeef"
    crashed.mkdir()
    (crashed / "metadata.json").write_text(json.dumps({"version": "v2-20261121T103800Z"}))
    (pdir / ".trash-0123").mkdir()
    assert store.versions(1) == [v1]
    assert [h["version"] for h in store.history(1)] == [v1]
    store.publish(1, writer("b"), {})
    assert leftovers(pdir) == []


def test_a_publish_in_progress_is_not_cleaned_up_by_another(tmp_path: Path) -> None:
    clock = ticking_clock()
    a = ModelStore(tmp_path, clock=clock)
    b = ModelStore(tmp_path, clock=clock)
    inner: list[str] = []

    def slow_write(directory: Path) -> None:
        (directory / "model.txt").write_text("from a")
        # Another worker publishes (and cleans leftovers) while this one is still writing.
        inner.append(b.publish(1, writer("from b"), {}))
        (directory / "late.txt").write_text("still here")

    outer = a.publish(1, slow_write, {})
    assert inner == [f"v1-{stamp(0)}"]
    assert outer == f"v2-{stamp(1)}"
    assert (a.path(1, outer) / "late.txt").read_text() == "still here"
    assert a.load(1, read_model) == (outer, "from a")


def test_history_survives_a_torn_line(store: ModelStore) -> None:
    v1 = store.publish(1, writer("a"), {})
    with open(store.root / "1" / "history.jsonl", "ab") as f:
        f.write(b'{"version": "v2-2026')
    assert [h["version"] for h in store.history(1)] == [v1]
    v2 = store.publish(1, writer("b"), {})
    assert v2 == f"v2-{stamp(1)}"
    assert [h["version"] for h in store.history(1)] == [v1, v2]


def test_corrupt_pointer_is_reported(store: ModelStore) -> None:
    store.publish(1, writer("a"), {})
    (store.root / "1" / "CURRENT").write_text("../../etc\n")
    with pytest.raises(StoreError, match=r"pointer .* is corrupt: '../../etc'"):
        store.current(1)


# ------------------------------------------------------------------------------------ read-only root


def make_read_only(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Every write under ``root`` fails with EROFS, as on a file system remounted read-only.

    Simulated because the suite may run as root, which ignores permission bits.
    """
    prefix = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def guard(real: Callable, is_write: Callable[..., bool]) -> Callable:
        def wrapped(*args: object, **kwargs: object) -> object:
            if str(args[0]).startswith(prefix) and is_write(*args, **kwargs):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))
            return real(*args, **kwargs)

        return wrapped

    def always(*args: object, **kwargs: object) -> bool:
        return True

    monkeypatch.setattr(os, "open", guard(os.open, lambda path, flags, *a, **k: bool(flags & write_flags)))
    for name in ("mkdir", "rename", "replace", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name), always))


def test_read_only_root_fails_publish_clearly_and_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path, clock=ticking_clock())
    v1 = store.publish(1, writer("old"), {})
    before = sorted(os.listdir(tmp_path / "1"))

    with monkeypatch.context() as m:
        make_read_only(m, tmp_path)
        with pytest.raises(StoreWriteError) as info:
            store.publish(1, writer("new"), {})
        assert info.value.errno == errno.EROFS
        assert str(info.value).startswith(f"[Errno 30] publishing a model for project 1 in {tmp_path / '1'}: ")
        assert "failed: Read-only file system" in str(info.value)
        # Not from the cache: this store has never loaded anything.
        assert store.load(1, read_model) == (v1, "old")
        with pytest.raises(StoreWriteError, match="rolling back project 1 .* Read-only file system"):
            store.rollback(1, v1)
        assert sorted(os.listdir(tmp_path / "1")) == before

    assert store.publish(1, writer("new"), {}) == f"v2-{stamp(1)}"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_permissions_fail_publish_clearly(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, clock=ticking_clock())
    v1 = store.publish(1, writer("old"), {})
    os.chmod(tmp_path / "1", 0o555)
    try:
        with pytest.raises(StoreWriteError, match="Permission denied"):
            store.publish(1, writer("new"), {})
        assert store.load(1, read_model) == (v1, "old")
    finally:
        os.chmod(tmp_path / "1", 0o755)


# ------------------------------------------------------------------------------------ load cache, escape


def test_load_caches_per_version_and_serves_a_new_version_without_restart(tmp_path: Path) -> None:
    clock = ticking_clock()
    server = ModelStore(tmp_path, clock=clock)
    worker = ModelStore(tmp_path, clock=clock)
    calls: list[Path] = []

    def loader(directory: Path) -> dict:
        calls.append(directory)
        return {"text": read_model(directory)}

    v1 = worker.publish(1, writer("one"), {})
    first = server.load(1, loader)
    again = server.load(1, loader)
    assert first is not None and again is not None
    assert first[0] == again[0] == v1
    assert first[1] is again[1]
    assert calls == [tmp_path / "1" / v1]

    v2 = worker.publish(1, writer("two"), {})
    newer = server.load(1, loader)
    assert newer is not None
    assert newer[0] == v2
    assert newer[1] == {"text": "two"}
    assert newer[1] is not first[1]
    old = server.load(1, loader, version=v1)
    assert old is not None and old[1] is first[1]
    assert len(calls) == 2

    with pytest.raises(StoreError, match=r"project 1 has no model version 'v9-20261121T103800Z'"):
        server.load(1, loader, version="v9-20261121T103800Z")


def test_requests_that_arrive_while_a_version_loads_wait_for_that_load(tmp_path: Path) -> None:
    """Eight threads ask for a version that is not cached; one reads it and all get that object.
    needs_load says whether a read is due. Broken once: without the per-version lock all 8 read it."""
    store = ModelStore(tmp_path, clock=ticking_clock())
    assert store.needs_load(1) is False  # nothing published: nothing to read
    store.publish(1, writer("one"), {})
    assert store.needs_load(1) is True
    reads: list[str] = []
    release = threading.Event()

    def loader(directory: Path) -> object:
        reads.append(directory.name)
        release.wait(10)  # hold the read until every thread has asked
        return object()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(store.load(1, loader))) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(reads) == 1 and len(store._loading) == 1, 10, 0.01, "the first read")
    release.set()
    for t in threads:
        t.join(10)
    assert len(reads) == 1 and len(got) == 8
    assert len({id(g[1]) for g in got if g is not None}) == 1
    assert store.needs_load(1) is False and store._loading == {}


def test_load_cache_is_a_bounded_lru(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, cache_size=1, clock=ticking_clock())
    v1 = store.publish(1, writer("one"), {})
    v2 = store.publish(1, writer("two"), {})
    loads: list[str] = []

    def loader(directory: Path) -> object:
        loads.append(directory.name)
        return object()

    a = store.load(1, loader, version=v1)
    b = store.load(1, loader, version=v2)
    c = store.load(1, loader, version=v1)
    assert a is not None and b is not None and c is not None
    assert loads == [v1, v2, v1]
    assert c[1] is not a[1]


def test_nothing_is_loaded_through_a_symlink_out_of_the_model_dir(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    store = ModelStore(outside, clock=ticking_clock())
    version = store.publish(1, writer("evil"), {})

    root = tmp_path / "models"
    root.mkdir()
    (root / "1").symlink_to(outside / "1")
    (root / "2").mkdir()
    (root / "2" / version).symlink_to(outside / "1" / version)
    (root / "2" / "CURRENT").write_text(version + "\n")

    victim = ModelStore(root)
    for project in (1, 2):
        with pytest.raises(StoreError, match="resolves outside"):
            victim.path(project, version)
        with pytest.raises(StoreError, match="resolves outside"):
            victim.load(project, read_model)
    assert victim.versions(2) == []
    assert victim.projects() == [2]
    with pytest.raises(StoreError, match="resolves outside"):
        victim.publish(1, writer("x"), {})
