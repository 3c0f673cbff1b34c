"""Several annotators at once on one project: real Label Studio 1.23.2 (SQLite and PostgreSQL), real
`lsal serve`, real RQ worker, real Redis.

Five Label Studio users (signed up as people join, each with their own token) ask for their next task
at the same moment and submit at the same moment, round after round, while lsal retrains. lsal must
keep at most one cycle queued and one running for the project, lose no event (the last version is
trained on every label), and never put an older version live after a newer one. On PostgreSQL Label
Studio also keeps the five apart (its next-task query locks rows with SKIP LOCKED; SQLite ignores it).

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI ML
Repository, CC BY 4.0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import redis
import requests

from backend.config import Settings
from backend.cycle_log import cycle_history
from backend.labelstudio import LabelStudioClient
from backend.store import ModelStore, version_key
from tests.conftest import LsalServer, WorkerProcess, cycles_idle, wait_for
from tests.lsharness import (
    LabelStudio,
    choice_result,
    create_annotation,
    create_project,
    import_tasks,
    sign_up_annotator,
)
from tests.test_e2e_foundation import SPAM_XML, sms

pytestmark = [pytest.mark.e2e]

ANNOTATORS = 5
ROUNDS = 4
WARM_LABELS = 8


@dataclass
class Watch:
    """What a sampler saw every few milliseconds: cycle jobs queued and running, LS's model_version."""

    max_queued: int = 0
    max_running: int = 0
    versions: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def cycle_jobs(settings: Settings) -> tuple[int, int]:
    """(cycle jobs waiting in the queue, cycle jobs a worker has taken) for the test's queue."""
    from rq import Queue
    from rq.intermediate_queue import IntermediateQueue
    from rq.job import Job

    with redis.Redis.from_url(settings.redis_url) as conn:
        queue = Queue(settings.queue_name, connection=conn)
        queued = Job.fetch_many(queue.job_ids, connection=conn)
        taken = IntermediateQueue(queue.key, conn).get_job_ids() + queue.started_job_registry.get_job_ids()
        running = Job.fetch_many(taken, connection=conn)

    def cycles(jobs: list[Any]) -> int:
        return sum(1 for j in jobs if j and (j.meta or {}).get("kind") == "cycle")

    return cycles(queued), cycles(running)


def watch(settings: Settings, ls: LabelStudioClient, project: int, seen: Watch) -> None:
    last_ls = 0.0
    while not seen.stop.is_set():
        queued, running = cycle_jobs(settings)
        seen.max_queued = max(seen.max_queued, queued)
        seen.max_running = max(seen.max_running, running)
        if time.monotonic() - last_ls > 0.3:
            version = str(ls.get_project(project)["model_version"])
            if not seen.versions or seen.versions[-1] != version:
                seen.versions.append(version)
            last_ls = time.monotonic()
        time.sleep(0.02)


@pytest.fixture
def team(
    label_studio: LabelStudio, settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> Iterator[tuple[LabelStudio, Settings, LsalServer]]:
    settings = replace(
        settings,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.legacy_token,
        min_labels=6,
        queue_depth=40,
        ls_retries=2,
        ls_timeout=30.0,
    )
    server = LsalServer(settings, tmp_path / "server.log")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        yield label_studio, settings, server
    finally:
        worker.stop()
        server.stop()
        assert label_studio.legacy_token not in server.log() + worker.log(), "a secret reached a log"


def test_a_team_labeling_at_once(team: tuple[LabelStudio, Settings, LsalServer], tmp_path: Path) -> None:
    label_studio, settings, server = team
    ls = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    store = ModelStore(settings.model_dir)
    data = sms(80)
    project = create_project(ls, f"team {tmp_path.name}", SPAM_XML)
    task_ids = import_tasks(ls, project, [{"text": t} for t, _ in data])
    label_of = {tid: lab for tid, (_, lab) in zip(task_ids, data, strict=True)}
    ls.create_ml_backend(project, server.url, title="lsal")
    for tid in task_ids[:WARM_LABELS]:
        create_annotation(ls, tid, choice_result(label_of[tid]))
    wait_for(
        lambda: cycles_idle(settings) and store.current(project) and ls.get_project(project)["model_version"],
        180,
        0.5,
        "a trained version live and the worker idle",
    )
    assert ls.get_project(project)["model_version"] == store.current(project)

    tokens = [sign_up_annotator(label_studio.url, f"a{k}-{tmp_path.name}@example.com") for k in range(ANNOTATORS)]
    sessions = []
    for token in tokens:
        s = requests.Session()
        s.headers["Authorization"] = f"Token {token}"
        sessions.append(s)
    seen = Watch()
    watcher = threading.Thread(target=watch, args=(settings, ls, project, seen), daemon=True)
    watcher.start()

    barrier = threading.Barrier(ANNOTATORS)
    served: list[list[int]] = [[] for _ in range(ROUNDS)]
    errors: list[str] = []
    lock = threading.Lock()

    def annotator(k: int) -> None:
        s = sessions[k]
        for r in range(ROUNDS):
            barrier.wait(timeout=120)  # everyone asks at once ...
            resp = s.get(f"{label_studio.url}/api/projects/{project}/next", timeout=60)
            if not resp.ok:
                errors.append(f"next {resp.status_code}")
                continue
            tid = int(resp.json()["id"])
            with lock:
                served[r].append(tid)
            barrier.wait(timeout=120)  # ... and submits at once: five webhooks while a cycle may run
            body = {"result": choice_result(label_of[tid]), "was_cancelled": False}
            resp = s.post(f"{label_studio.url}/api/tasks/{tid}/annotations/", json=body, timeout=60)
            if not resp.ok:
                errors.append(f"annotate {resp.status_code}")

    threads = [threading.Thread(target=annotator, args=(k,)) for k in range(ANNOTATORS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    labeled = set(task_ids[:WARM_LABELS]) | {tid for r in served for tid in r}
    try:
        wait_for(
            lambda: cycles_idle(settings) and store.metadata(project)["n_labels"] == len(labeled),
            240,
            0.5,
            "a version trained on every label",
        )
        time.sleep(0.5)  # one more sample of LS's model_version after the last switch
    finally:
        seen.stop.set()
        watcher.join(timeout=30)

    assert errors == []
    assert all(len(r) == ANNOTATORS for r in served)
    if label_studio.database == "postgresql":
        # Label Studio's SELECT ... FOR UPDATE SKIP LOCKED: five simultaneous asks, five tasks.
        assert [len(set(r)) for r in served] == [ANNOTATORS] * ROUNDS, served

    # Coalescing: never more than one cycle waiting and one running for the project.
    assert seen.max_queued <= 1, seen.max_queued
    assert seen.max_running <= 1, seen.max_running
    # No event lost: the live version was trained on every label the team gave.
    live = ls.get_project(project)["model_version"]
    assert live == store.current(project)
    assert store.metadata(project)["n_labels"] == len(labeled)
    # Never a stale version after a newer one: what LS served follows lsal's version order.
    trained = [v for v in seen.versions if not v.startswith("seed-")]
    assert trained == sorted(trained, key=version_key), seen.versions
    assert trained[-1] == live
    published = [c["version"] for c in cycle_history(settings.model_dir, project) if c.get("status") == "trained"]
    assert published == sorted(published, key=version_key)
