"""Unit tests of the cycle's pieces: cold start rules, evaluation (selection: tests/test_selection.py).

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI, CC BY 4.0).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backend import cycle, strategies
from backend.config import ProjectConfig, Settings
from backend.cycle_log import cycle_history
from backend.labelconfig import parse_label_config
from backend.labelstudio import LabelStudioClient
from backend.learner import Learner, TrainingSet
from backend.pool import PoolCache
from backend.projectdir import ProjectDir
from backend.store import ModelStore
from tests.conftest import REPO
from tests.faultstand import FaultStand

SPAM_XML = (REPO / "label_config" / "spam.xml").read_text()
SPEC = parse_label_config(SPAM_XML)


def test_cold_start_rules() -> None:
    config = ProjectConfig(min_labels=4)
    few = TrainingSet(["a", "b", "c"], ["spam", "no_spam", "spam"], [1, 2, 3])
    assert cycle.cold_start(few, config, SPEC) == "3 usable labels < min_labels=4"
    one_class = TrainingSet(["a"] * 5, ["spam"] * 5, list(range(5)))
    assert cycle.cold_start(one_class, config, SPEC) == "only one class labeled so far (['spam'])"
    ok = TrainingSet(["a"] * 4, ["spam", "no_spam"] * 2, list(range(4)))
    assert cycle.cold_start(ok, config, SPEC) is None


def test_cross_validation_reports_both_metrics(sms: tuple[list[str], list[str]]) -> None:
    texts, y = sms
    ts = TrainingSet(texts[:200], y[:200], list(range(200)))
    metrics = cycle.cross_validate(SPEC, ts, seed=0)
    assert metrics["cv_folds"] == 5
    assert 0.8 <= metrics["cv_accuracy"] <= 1.0
    assert 0.5 <= metrics["cv_macro_f1"] <= 1.0
    tiny = TrainingSet(["a", "b", "c"], ["spam", "no_spam", "no_spam"], [1, 2, 3])
    assert cycle.cross_validate(SPEC, tiny, seed=0) == {"cv_accuracy": None, "cv_macro_f1": None, "cv_folds": None}


# -- run_cycle, score_new_tasks, cleanup_stale, stop_set_agreement, against the Label Studio stand-in
# (tests/faultstand.py answers as Label Studio 1.23.2 does; the end-to-end tests run the real one).

API_KEY = "cycle-unit-legacy-key-0123456789"
PID = 7
DEPTH = 10


@pytest.fixture
def stand() -> Iterator[FaultStand]:
    with FaultStand(API_KEY) as s:
        yield s


@pytest.fixture
def deps(stand: FaultStand, tmp_path: Path) -> cycle.CycleDeps:
    settings = replace(
        Settings(),
        model_dir=tmp_path / "models",
        label_studio_url=stand.url,
        label_studio_api_key=API_KEY,
        min_labels=6,
        queue_depth=DEPTH,
        ls_retries=0,
        ls_timeout=5.0,
        text_features="tfidf",
    )
    client = LabelStudioClient(stand.url, API_KEY, timeout=5.0, retries=0)
    return cycle.CycleDeps(settings, client, ModelStore(settings.model_dir, keep=settings.keep_versions))


def sms_project(stand: FaultStand, sms: tuple[list[str], list[str]], n: int = 60) -> tuple[list[int], list[str]]:
    """A project of n SMS texts on the stand; returns its task ids and their true labels."""
    texts, y = sms
    ids = stand.add_project(PID, SPAM_XML, texts[:n])
    return ids, y[:n]


def label(stand: FaultStand, ids: list[int], y: list[str], rows: range) -> None:
    for i in rows:
        stand.annotate(PID, ids[i], y[i])


def written(stand: FaultStand, version: str) -> list[dict[str, Any]]:
    return [p for p in stand.projects[PID].predictions if p["model_version"] == version]


def first_rows_of_both_classes(y: list[str], n: int) -> range:
    spam = [i for i, v in enumerate(y) if v == "spam"]
    assert spam, "the first rows need a spam message"
    return range(max(n, spam[0] + 1))


def test_run_cycle_seeds_a_cold_project_then_trains_and_switches_after_the_write(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]]
) -> None:
    ids, y = sms_project(stand, sms)
    label(stand, ids, y, range(3))
    cold = cycle.run_cycle(deps, PID)
    assert cold.status == "cold_start" and cold.version is not None and cold.version.startswith("seed-")
    assert cold.training_stats["cold_start_reason"] == "3 usable labels < min_labels=6"
    assert (cold.pool, cold.written, cold.created, cold.dropped) == (57, DEPTH, DEPTH, 0)
    seed = written(stand, cold.version)
    assert [p["score"] for p in seed] == [round(r / DEPTH, 6) for r in range(DEPTH)]
    assert all(p["result"] == [] for p in seed) and {p["task"] for p in seed} <= set(ids[3:])
    assert stand.project_version(PID) == cold.version
    assert stand.projects[PID].sampling == "Uncertainty sampling"

    label(stand, ids, y, first_rows_of_both_classes(y, 12))
    labeled = len(first_rows_of_both_classes(y, 12))
    report = cycle.run_cycle(deps, PID)
    assert report.status == "trained" and report.labels == labeled
    assert report.version == deps.store.current(PID)
    assert (report.pool, report.written, report.created) == (60 - labeled, DEPTH, DEPTH)
    preds = written(stand, report.version)
    assert len(preds) == DEPTH and {p["task"] for p in preds} <= set(ids[labeled:])
    assert [p["score"] for p in preds] == sorted(p["score"] for p in preds)  # most informative first
    assert all(p["result"][0]["value"]["choices"][0] in ("spam", "no_spam") for p in preds)
    assert stand.project_version(PID) == report.version
    # The switch comes after the last prediction import.
    order = [(m, path) for m, path, _ in stand.calls if m in ("POST", "PATCH")]
    assert order[-1] == ("PATCH", f"/api/projects/{PID}/") or order[-1] == ("PATCH", f"/api/projects/{PID}")
    assert order[-2][0] == "POST" and "import/predictions" in order[-2][1]
    assert report.pool_uncertainty is not None and 0.0 <= report.pool_uncertainty <= 1.0


def test_the_new_version_goes_live_before_its_evaluation_which_then_lands_in_its_metadata(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cross-validation and the stop-set comparison are off the path from labels to the switch: when
    the metrics are written the queue already serves the version, whose metadata said ``null`` till then."""
    ids, y = sms_project(stand, sms)
    label(stand, ids, y, first_rows_of_both_classes(y, 12))
    seen: list[tuple[str | None, Any, str, str | None]] = []
    real_update, real_cv = deps.store.update_metadata, cycle.cross_validate
    computed: list[dict[str, float | None]] = []

    def update(project: int, version: str, updates: Any) -> dict:
        seen.append(("update", deps.store.metadata(project, version)["metrics"], version, stand.project_version(PID)))
        return real_update(project, version, updates)

    def cross_validate(*args: Any, **kw: Any) -> dict[str, float | None]:
        seen.append(("cv", None, "", stand.project_version(PID)))
        computed.append(real_cv(*args, **kw))
        return computed[-1]

    monkeypatch.setattr(deps.store, "update_metadata", update)
    monkeypatch.setattr(cycle, "cross_validate", cross_validate)
    report = cycle.run_cycle(deps, PID)
    assert report.status == "trained" and report.version is not None
    # The queue was on the new version already when evaluation started and when its metrics were written.
    assert seen == [("cv", None, "", report.version), ("update", None, report.version, report.version)]
    [expected] = computed
    assert report.metrics == expected and expected["cv_folds"] == 5
    assert deps.store.metadata(PID)["metrics"] == expected
    assert deps.store.history(PID)[-1]["metrics"] == expected
    assert list(report.timings).index("switch") < list(report.timings).index("evaluate")
    assert list(report.timings).index("evaluate") < list(report.timings).index("stability")


def test_an_evaluation_that_raises_leaves_the_live_version_without_metrics_and_the_cycle_logged(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: cross-validation raises (e.g. a plugin model that cannot fit a fold) after the switch.
    Expected: the cycle is "trained" and logged, the version stays live with metrics null, and the
    report says why."""
    ids, y = sms_project(stand, sms)
    label(stand, ids, y, first_rows_of_both_classes(y, 12))

    def cross_validate(*args: Any, **kw: Any) -> dict[str, float | None]:
        raise ValueError("fold 3: a class with one example")

    monkeypatch.setattr(cycle, "cross_validate", cross_validate)
    report = cycle.run_cycle(deps, PID)
    assert report.status == "trained" and stand.project_version(PID) == report.version
    assert report.evaluation_error == "ValueError: fold 3: a class with one example"
    assert report.metrics == {} and deps.store.metadata(PID)["metrics"] is None
    logged = cycle_history(deps.settings.model_dir, PID)
    assert [(c["version"], c["evaluation_error"]) for c in logged] == [(report.version, report.evaluation_error)]


def test_run_cycle_keeps_the_queue_on_the_old_version_when_predictions_are_dropped(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]]
) -> None:
    ids, y = sms_project(stand, sms)
    label(stand, ids, y, range(3))
    seed = cycle.run_cycle(deps, PID).version
    label(stand, ids, y, first_rows_of_both_classes(y, 12))
    stand.inject("drop", "write", PID, times=1)
    report = cycle.run_cycle(deps, PID)
    assert report.status == "partial_write" and report.dropped > 0
    assert report.created == report.written - report.dropped
    assert stand.project_version(PID) == seed  # never switched to a half-written order


def test_score_new_tasks_writes_the_current_models_predictions_for_new_tasks(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]]
) -> None:
    ids, y = sms_project(stand, sms)
    assert cycle.score_new_tasks(deps, PID, ids[:2]) == {"status": "cold_start", "written": 0}
    label(stand, ids, y, first_rows_of_both_classes(y, 12))
    version = cycle.run_cycle(deps, PID).version
    texts = sms[0][100:103]
    new = [stand.add_task(PID, t) for t in texts]
    PoolCache(deps.settings.model_dir, PID).add_tasks(
        [{"id": i, "data": {"text": t}} for i, t in zip(new, texts, strict=True)]
    )
    out = cycle.score_new_tasks(deps, PID, [*new, 999_999])  # an id the pool does not know is skipped
    assert out == {"status": "scored", "version": version, "written": 3, "created": 3}
    preds = [p for p in written(stand, version) if p["task"] in new]
    # A store of its own: deps.store caches the loaded version as the cycle's model object.
    learner = ModelStore(deps.settings.model_dir).load(PID, Learner.load)[1]  # type: ignore[index]
    proba = learner.predict_proba(learner.transform(texts))
    margin = strategies.informativeness("margin", strategies.ScoringInput(proba=proba))  # diversity's row measure
    assert [p["score"] for p in sorted(preds, key=lambda p: p["task"])] == [float(1 - m) for m in margin]
    assert all("cluster" not in p for p in preds)
    assert cycle.score_new_tasks(deps, PID, [999_999]) == {"status": "nothing_to_score", "written": 0}


def test_score_new_tasks_waits_until_the_version_is_live(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]]
) -> None:
    ids, y = sms_project(stand, sms)
    learner = Learner(SPEC, seed=0).fit(sms[0][:20], sms[1][:20])
    deps.store.publish(PID, learner.save, {"n_labels": 20})  # published, never written to Label Studio
    assert cycle.score_new_tasks(deps, PID, ids[:2]) == {"status": "version_not_live", "written": 0}


def test_cleanup_stale_deletes_only_the_old_versions_lsal_wrote(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]]
) -> None:
    ids, y = sms_project(stand, sms)
    label(stand, ids, y, range(3))
    seed = cycle.run_cycle(deps, PID).version
    label(stand, ids, y, first_rows_of_both_classes(y, 12))
    middle = cycle.run_cycle(deps, PID).version
    current = cycle.run_cycle(deps, PID).version
    assert seed is not None and middle is not None and current is not None
    foreign = {"id": 1, "task": ids[-1], "result": [], "score": 0.5, "model_version": "someone-else"}
    stand.projects[PID].predictions.append(foreign)
    # One version per cleanup job (the worker's limit): the oldest first.
    assert cycle.cleanup_stale(deps, PID, limit=1) == {seed: DEPTH}
    assert ProjectDir(deps.settings.model_dir, PID).written_versions() == [middle, current]
    assert cycle.cleanup_stale(deps, PID) == {middle: DEPTH}
    versions = {p["model_version"] for p in stand.projects[PID].predictions}
    assert versions == {current, "someone-else"}
    assert ProjectDir(deps.settings.model_dir, PID).written_versions() == [current]
    assert cycle.cleanup_stale(deps, PID) == {}  # nothing left to delete


def test_stop_set_agreement_compares_versions_on_one_fixed_set(
    deps: cycle.CycleDeps, sms: tuple[list[str], list[str]]
) -> None:
    texts, y = sms
    ids, inputs = list(range(1, 301)), texts[200:500]
    first = Learner(SPEC, seed=0).fit(texts[:100], y[:100])
    none_yet = cycle.stop_set_agreement(deps.settings, PID, first, "v1", ids, inputs)
    assert none_yet == {"kappa": None, "changed": None, "compared": 0}
    same = cycle.stop_set_agreement(deps.settings, PID, first, "v2", ids, inputs)
    assert same == {"kappa": 1.0, "changed": 0.0, "compared": 300}
    # Tasks that left the pool stay in the stop set: the comparison still covers all 300.
    flipped = Learner(SPEC, seed=0).fit(texts[:100], ["spam" if v == "no_spam" else "no_spam" for v in y[:100]])
    out = cycle.stop_set_agreement(deps.settings, PID, flipped, "v3", ids[:10], inputs[:10])
    assert out["compared"] == 300 and out["changed"] is not None and out["changed"] > 0.5
    assert out["kappa"] is not None and out["kappa"] < 0


# -- fencing: every write of a cycle and of its jobs comes right after a check of the project lock


class WriteTrace:
    """The order of lock checks and writes: files under MODEL_DIR/<project> as they become visible
    (rename into place, append) and Label Studio calls that are not GETs. A write made inside another
    traced write (store.publish's files) counts once, as the outer one."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.events: list[str] = []
        self.depth = 0
        self.active = True

    def note(self, what: str) -> None:
        if self.active and self.depth == 0:
            self.events.append(what)

    def unit(self, what: str, fn: Any) -> Any:
        def wrapped(*args: Any, **kw: Any) -> Any:
            self.note(what)
            self.depth += 1
            try:
                return fn(*args, **kw)
            finally:
                self.depth -= 1

        return wrapped

    def install(self, monkeypatch: pytest.MonkeyPatch, deps: cycle.CycleDeps) -> None:
        import os

        real_replace, real_rename, real_write = os.replace, os.rename, os.write

        def replace_(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if str(dst).startswith(self.root):
                self.note(f"file:{Path(dst).name}")
            real_replace(src, dst, *a, **k)

        def rename_(src: Any, dst: Any, *a: Any, **k: Any) -> None:
            if str(dst).startswith(self.root):
                self.note(f"file:{Path(dst).name}")
            real_rename(src, dst, *a, **k)

        def write_(fd: int, data: Any) -> int:
            import fcntl

            if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
                target = os.readlink(f"/proc/self/fd/{fd}")
                if target.startswith(self.root):
                    self.note(f"append:{Path(target).name}")
            return real_write(fd, data)

        monkeypatch.setattr(os, "replace", replace_)
        monkeypatch.setattr(os, "rename", rename_)
        monkeypatch.setattr(os, "write", write_)
        request = deps.client.request

        def request_(method: str, path: str, **kw: Any) -> Any:
            if method == "GET":
                return request(method, path, **kw)
            return self.unit(f"ls:{method}", request)(method, path, **kw)

        monkeypatch.setattr(deps.client, "request", request_)
        monkeypatch.setattr(deps.store, "publish", self.unit("publish", deps.store.publish))
        monkeypatch.setattr(deps.store, "update_metadata", self.unit("update_metadata", deps.store.update_metadata))

    def unfenced(self) -> list[int]:
        """Positions of writes not immediately preceded by a lock check."""
        return [i for i, e in enumerate(self.events) if e != "fence" and (i == 0 or self.events[i - 1] != "fence")]


def test_every_write_of_a_cycle_and_of_its_jobs_comes_right_after_a_lock_check(
    stand: FaultStand,
    deps: cycle.CycleDeps,
    sms: tuple[list[str], list[str]],
    redis_conn: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cold-start cycle, a trained one folding logged pool events, stream scoring of new tasks and
    the cleanup, fenced by a real project lock (backend.worker.Fence on Redis): each write to MODEL_DIR
    or to Label Studio comes immediately after a check, so a job that lost its lock stops before its
    next write; once the lock is another owner's, a cycle writes nothing at all."""
    from backend.jobs import Jobs
    from backend.worker import Fence, LockLost

    jobs = Jobs(redis_conn, f"lsaltest-fence-{PID}")
    lock = jobs.project_lock(PID)
    assert lock.acquire()
    trace = WriteTrace(deps.settings.model_dir / str(PID))
    real = Fence(lock, PID)

    def check() -> None:
        real.check()
        trace.events.append("fence")

    from backend.jobs import LabelHints

    # Labels read through the label cache (a cycle's webhook hints), whose files are fenced too.
    fenced = replace(deps, fence=check, label_hints=lambda: LabelHints(tasks=frozenset(), full=True))
    trace.install(monkeypatch, fenced)
    ids, y = sms_project(stand, sms)
    label(stand, ids, y, range(3))
    assert cycle.run_cycle(fenced, PID).status == "cold_start"
    texts = sms[0][100:103]
    new = [stand.add_task(PID, t) for t in texts]
    trace.active = False  # what the task job would have logged: folded (and the log rotated) by the next cycle
    PoolCache(deps.settings.model_dir, PID).add_tasks(
        [{"id": i, "data": {"text": t}} for i, t in zip(new, texts, strict=True)]
    )
    trace.active = True
    label(stand, ids, y, first_rows_of_both_classes(y, 12))
    assert cycle.run_cycle(fenced, PID).status == "trained"
    newer = [stand.add_task(PID, t) for t in sms[0][110:112]]
    PoolCache(deps.settings.model_dir, PID, fence=check).add_tasks(
        [{"id": i, "data": {"text": t}} for i, t in zip(newer, sms[0][110:112], strict=True)]
    )
    assert cycle.score_new_tasks(fenced, PID, newer)["written"] == 2
    assert len(cycle.cleanup_stale(fenced, PID)) == 1
    kinds = {e.split(":")[0] + ":" + e.split(":")[1].split(".")[0] if ":" in e else e for e in trace.events}
    assert {"publish", "update_metadata", "ls:POST", "ls:PATCH", "ls:DELETE", "append:cycles", "append:events"} <= kinds
    assert {"file:snapshot", "file:written_versions", "file:stopset", "file:events", "file:labels"} <= kinds, kinds
    assert trace.unfenced() == [], [trace.events[max(0, i - 2) : i + 1] for i in trace.unfenced()]

    # The lock passes to another owner (its keep-alive failed and it expired): nothing more is written.
    redis_conn.set(jobs.key(PID, "lock"), "another-owner", ex=30)
    label(stand, ids, y, range(12, 16))
    before = len(trace.events)
    with pytest.raises(LockLost):
        cycle.run_cycle(fenced, PID)
    assert trace.events[before:] == []


# -- pool clusters: the cluster id Label Studio gets keeps its meaning across versions


@pytest.mark.parametrize("text_features", ["tfidf", "tfidf+embedding"])
def test_cluster_ids_are_the_pools_stable_across_versions_and_refitted_when_the_pool_changes_a_lot(
    stand: FaultStand, deps: cycle.CycleDeps, sms: tuple[list[str], list[str]], text_features: str
) -> None:
    from backend import clusters

    deps = replace(deps, settings=replace(deps.settings, text_features=text_features))
    path = ProjectDir(deps.settings.model_dir, PID).pool_clusters
    ids, y = sms_project(stand, sms)
    label(stand, ids, y, range(3))
    cold = cycle.run_cycle(deps, PID)
    assert cold.clusters == {"status": "fitted", "k": 57 // clusters.TASKS_PER_CLUSTER}
    first = clusters.load(path)
    assert first is not None and first.ids.tolist() == ids[3:]

    def written_clusters(version: str | None) -> dict[int, int]:
        assert version is not None
        return {p["task"]: p["cluster"] for p in written(stand, version)}

    def pool_ids(of: clusters.PoolClusters, tasks: list[int]) -> list[int]:
        return of.lookup(np.asarray(tasks, dtype=np.int64))[1].tolist()

    seeded = written_clusters(cold.version)
    assert len(seeded) == DEPTH and list(seeded.values()) == pool_ids(first, list(seeded))
    # Labels arrive (tasks leave the pool, none is added): the same ids, nothing refitted or written.
    label(stand, ids, y, first_rows_of_both_classes(y, 12))
    trained = cycle.run_cycle(deps, PID)
    assert trained.status == "trained" and trained.clusters["status"] == "reused"
    same = clusters.load(path)
    assert same is not None and (same.ids.tolist(), same.labels.tolist()) == (first.ids.tolist(), first.labels.tolist())
    served = written_clusters(trained.version)
    assert len(served) == DEPTH and list(served.values()) == pool_ids(first, list(served))
    label(stand, ids, y, range(12, 16))
    again = written_clusters(cycle.run_cycle(deps, PID).version)
    both = set(again) & set(served) | set(again) & set(seeded)
    assert all(again[t] == (served.get(t, seeded.get(t))) for t in both)
    # A few new tasks join the clusters of their nearest members; the others keep theirs.
    few = [stand.add_task(PID, t) for t in sms[0][200:203]]
    PoolCache(deps.settings.model_dir, PID).add_tasks(
        [{"id": i, "data": {"text": sms[0][200 + j]}} for j, i in enumerate(few)]
    )
    label(stand, ids, y, range(16, 17))
    extended = cycle.run_cycle(deps, PID)
    assert extended.clusters["status"] == "extended"
    grown = clusters.load(path)
    assert grown is not None and set(few) <= set(grown.ids.tolist())
    kept = [t for t in grown.ids.tolist() if t not in few]
    assert pool_ids(grown, kept) == pool_ids(first, kept)
    # The pool changes a lot (60 new tasks for 43 left): the clusters are fitted afresh.
    many = [stand.add_task(PID, t) for t in sms[0][300:360]]
    PoolCache(deps.settings.model_dir, PID).add_tasks(
        [{"id": i, "data": {"text": sms[0][300 + j]}} for j, i in enumerate(many)]
    )
    label(stand, ids, y, range(17, 18))
    assert cycle.run_cycle(deps, PID).clusters == {"status": "fitted", "k": (43 + 3 + 60) // clusters.TASKS_PER_CLUSTER}
