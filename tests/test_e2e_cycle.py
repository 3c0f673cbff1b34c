"""The active-learning cycle end to end: real Label Studio 1.23.2, real `lsal serve`, real RQ worker.

Data: the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM DOCENG'11; UCI ML
Repository, CC BY 4.0).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
import requests

from backend.config import Settings
from backend.cycle_log import cycle_history
from backend.labelstudio import LabelStudioClient
from backend.store import ModelStore
from tests.conftest import REPO, LsalServer, WorkerProcess, cycles_idle, settings_env, wait_for
from tests.lsharness import LabelStudio, choice_result, create_annotation, create_project, import_tasks
from tests.test_e2e_foundation import SPAM_XML, sms

pytestmark = [pytest.mark.e2e]


@dataclass
class Stack:
    ls: LabelStudioClient
    settings: Settings
    server: LsalServer
    store: ModelStore
    data: list[tuple[str, str]]
    project: int
    task_ids: list[int]

    def annotate(self, indices: list[int]) -> None:
        for i in indices:
            create_annotation(self.ls, self.task_ids[i], choice_result(self.data[i][1]))

    def cycles(self) -> list[dict]:
        return cycle_history(self.settings.model_dir, self.project)

    def predictions(self) -> list[dict]:
        return self.ls.request("GET", "/api/predictions/", params={"project": self.project})

    def current_predictions(self, version: str) -> dict[int, float]:
        return {p["task"]: p["score"] for p in self.predictions() if p["model_version"] == version}


@pytest.fixture
def stack(label_studio: LabelStudio, settings: Settings, tmp_path: Path, redis_conn: redis.Redis) -> Iterator[Stack]:
    settings = replace(
        settings,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.legacy_token,
        min_labels=6,
        queue_depth=12,
        ls_retries=2,
        ls_timeout=30.0,
        labels_reconcile=3600,  # no periodic full read of the labels within a test
    )
    server = LsalServer(settings, tmp_path / "server.log")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    ls = LabelStudioClient(label_studio.url, label_studio.legacy_token)
    data = sms(48)
    project = create_project(ls, f"cycle {tmp_path.name}", SPAM_XML)
    task_ids = import_tasks(ls, project, [{"text": t} for t, _ in data])
    try:
        yield Stack(ls, settings, server, ModelStore(settings.model_dir), data, project, task_ids)
    finally:
        worker.stop()
        server.stop()
        assert label_studio.legacy_token not in server.log() + worker.log(), "a secret reached a log"


def test_cold_start_then_queue_follows_the_newest_version(stack: Stack) -> None:
    ls, project = stack.ls, stack.project
    ls.create_ml_backend(project, stack.server.url, title="lsal")

    # Cold start: two labels are below min_labels=6 -> no model, a diversity seed order instead.
    stack.annotate([0, 1])
    # Both annotations' webhooks may each run a cold-start cycle; the order to check is the last one.
    seeded = wait_for(
        lambda: cycles_idle(stack.settings) and [c for c in stack.cycles() if c["status"] == "cold_start"],
        120,
        0.5,
        "a cold-start cycle and no cycle left",
    )
    seed_version = seeded[-1]["version"]
    assert seed_version.startswith("seed-")
    assert stack.store.current(project) is None
    wait_for(lambda: ls.get_project(project)["model_version"] == seed_version, 60, 0.5, "switch to the seed order")
    seed_scores = stack.current_predictions(seed_version)
    assert len(seed_scores) == stack.settings.queue_depth
    assert len(set(seed_scores.values())) == len(seed_scores), "the seed order is a strict order"
    served = ls.next_task(project)["id"]
    assert served == min(seed_scores, key=seed_scores.__getitem__)

    # Enough labels: a trained version; the queue switches to it only after all its predictions exist.
    # The annotator labels the task LS served first: LS locks a served task to its annotator and
    # serves it again, whatever the queue says, until it is submitted or skipped.
    first = stack.task_ids.index(served)
    assert first not in (0, 1), "the seed order holds unlabeled tasks only"
    more = [first, *[i for i in range(2, 10) if i != first][:7]]
    stack.annotate(more)

    def trained_and_live() -> str | None:
        version = stack.store.current(project)
        if version is None or stack.store.metadata(project)["n_labels"] != 10:
            return None
        return version if ls.get_project(project)["model_version"] == version else None

    wait_for(trained_and_live, 180, 0.5, "a 10-label version to be live")

    # Stale versions lsal wrote (the seed order, earlier models) are deleted by the cleanup job. The
    # last webhooks may have queued one follow-up cycle (coalescing allows one while one runs), so
    # the version to check is whichever is live once no cycle is left.
    def settled_and_only_current_left() -> str | None:
        if not cycles_idle(stack.settings):
            return None
        version = trained_and_live()
        present = {v for v, n in ls.model_versions(project).items() if n > 0}
        return version if version is not None and present == {version} else None

    version = wait_for(settled_and_only_current_left, 120, 1.0, "stale lsal versions to be deleted")
    info = ls.get_project(project)
    assert info["sampling"] == "Uncertainty sampling"
    scores = stack.current_predictions(version)
    assert len(scores) == stack.settings.queue_depth
    labeled = {stack.task_ids[i] for i in [0, 1, *more]}
    assert len(labeled) == 10
    assert not labeled & set(scores), "labeled tasks get no queue prediction"
    assert all(0.0 <= s <= 1.0 for s in scores.values())

    # LS 1.23.2 (projects/functions/next_task.py) first prefers the cluster in which the annotator has
    # solved the fewest tasks, counting each solved task's cluster from *any* of its predictions. Until
    # the cleanup above, seed-order predictions on now-labeled tasks still carry clusters; after it,
    # labeled tasks have no prediction and the queue is exactly lsal's order: the lowest score first.
    assert not labeled & {p["task"] for p in stack.predictions()}, "labeled tasks keep no prediction"
    nxt = ls.next_task(project)
    assert nxt["id"] == min(scores, key=lambda t: (scores[t], t))

    # The status endpoint reports the cycle with its stage timings and a learning-curve point.
    status = requests.get(f"{stack.server.url}/projects/{project}/status", timeout=10).json()
    assert status["current_version"] == version
    assert status["n_labels"] == 10
    assert status["last_cycle"]["status"] == "trained"
    for stage in ("fetch_labels", "fit", "evaluate", "publish", "score", "write", "switch"):
        assert stage in status["last_cycle"]["timings"], stage
    assert status["learning_curve"][-1]["n_labels"] == 10
    png = requests.get(f"{stack.server.url}/projects/{project}/learning-curve.png", timeout=10)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"


def test_labels_follow_an_edit_by_hint_and_a_deletion_by_a_full_read(stack: Stack) -> None:
    """Between full reads a cycle reads only the tasks webhooks named (ANNOTATION_UPDATED names its
    task); ANNOTATIONS_DELETED names none, so the cycle after it reads every label again."""
    ls, project = stack.ls, stack.project
    ls.create_ml_backend(project, stack.server.url, title="lsal")
    ham = [i for i in range(12) if stack.data[i][1] == "no_spam"][:4]
    spam = [i for i in range(12) if stack.data[i][1] == "spam"][:4]
    edited = create_annotation(ls, stack.task_ids[ham[0]], choice_result("no_spam"))
    deleted = create_annotation(ls, stack.task_ids[ham[1]], choice_result("no_spam"))
    stack.annotate(ham[2:] + spam)

    def settled_with(counts: dict[str, int]) -> dict | None:
        # Idle also holds before the annotations' webhooks have queued the first cycle.
        history = stack.cycles() if cycles_idle(stack.settings) else []
        if not history:
            return None
        last = history[-1]
        return last if last["status"] == "trained" and last["label_counts"] == counts else None

    wait_for(lambda: settled_with({"no_spam": 4, "spam": 4}), 180, 0.5, "a cycle on the 8 labels")
    reads = [c["labels_read"] for c in stack.cycles()]
    assert reads == ["full"] + ["hints"] * (len(reads) - 1)  # only the first cycle read every label

    ls.request("PATCH", f"/api/annotations/{edited['id']}", json={"result": choice_result("spam")})
    after_edit = wait_for(lambda: settled_with({"no_spam": 3, "spam": 5}), 180, 0.5, "a cycle seeing the edit")
    assert after_edit["labels_read"] == "hints"

    ls.request("DELETE", f"/api/annotations/{deleted['id']}")
    after_delete = wait_for(lambda: settled_with({"no_spam": 2, "spam": 5}), 180, 0.5, "a cycle seeing the deletion")
    assert after_delete["labels_read"] == "full"
    assert after_delete["labels"] == 7


def test_a_flood_of_webhooks_runs_at_most_two_cycles(stack: Stack) -> None:
    stack.ls.create_ml_backend(stack.project, stack.server.url, title="lsal")
    stack.annotate(list(range(8)))
    wait_for(
        lambda: stack.store.current(stack.project) and stack.store.metadata(stack.project)["n_labels"] == 8,
        180,
        0.5,
        "a trained version",
    )
    # Let every cycle the annotations started finish before the flood.
    wait_for(lambda: cycles_idle(stack.settings), 120, 1.0, "the worker to go idle")
    before = len(stack.cycles())

    event = {"action": "ANNOTATION_CREATED", "project": {"id": stack.project}, "annotation": {"id": 1}}
    errors: list[int] = []
    sessions = [requests.Session() for _ in range(20)]
    for session in sessions:  # open the keep-alive connections before the flood
        session.get(f"{stack.server.url}/health", timeout=5)
    barrier = threading.Barrier(len(sessions))

    def fire(session: requests.Session) -> None:
        barrier.wait()
        for _ in range(10):
            resp = session.post(f"{stack.server.url}/webhook", json=event, timeout=5)
            if resp.status_code != 200:
                errors.append(resp.status_code)

    threads = [threading.Thread(target=fire, args=(s,)) for s in sessions]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flood = time.monotonic() - start
    assert errors == []
    wait_for(
        lambda: len(stack.cycles()) > before and cycles_idle(stack.settings), 180, 1.0, "the flood's cycles to finish"
    )
    ran = stack.cycles()[before:]
    # Coalescing: one cycle queued at most while one runs, so the cycles a flood causes are bounded
    # by how many cycle durations it spans: two when it is shorter than a cycle (the issue's
    # "200 events in one second" on a real project); a loaded CI machine may stretch it.
    shortest = min(sum(c["timings"].values()) for c in ran)
    bound = 2 if flood <= shortest else 1 + math.ceil(flood / shortest)
    assert 1 <= len(ran) <= bound, f"200 events in {flood:.2f} s ran {len(ran)} cycles (shortest {shortest:.2f} s)"


def test_new_tasks_are_scored_without_a_retrain(stack: Stack) -> None:
    stack.ls.create_ml_backend(stack.project, stack.server.url, title="lsal")
    stack.annotate(list(range(8)))

    def live() -> str | None:
        v = stack.store.current(stack.project)
        ok = v and stack.store.metadata(stack.project)["n_labels"] == 8
        return v if ok and stack.ls.get_project(stack.project)["model_version"] == v else None

    wait_for(live, 180, 0.5, "a live trained version")
    wait_for(lambda: cycles_idle(stack.settings), 120, 1.0, "the worker to go idle")
    # After any follow-up cycle the last webhooks queued: the version that stays.
    version = wait_for(live, 60, 0.5, "the settled version to be live")
    cycles_before = len(stack.cycles())
    new_ids = import_tasks(
        stack.ls,
        stack.project,
        [{"text": "WIN a FREE prize!! call 09061701461 now"}, {"text": "are we still meeting for lunch?"}],
    )

    def scored() -> bool:
        preds = stack.current_predictions(version)
        return all(t in preds for t in new_ids)

    wait_for(scored, 120, 0.5, "predictions for the imported tasks")
    assert stack.store.current(stack.project) == version, "no retrain happened"
    assert len(stack.cycles()) == cycles_before


def test_cli_train_wait_and_status(stack: Stack) -> None:
    stack.annotate(list(range(8)))  # no backend connected: no webhook; the CLI starts the cycle
    env = {**settings_env(stack.settings), "LSAL_SERVER": stack.server.url}
    train = [sys.executable, "-m", "backend.cli", "train", "--project", str(stack.project)]
    # A project whose /setup never reached lsal is refused, saying how to fix it (the webhook's rule).
    refused = subprocess.run(train, env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and f"project {stack.project} was never set up with lsal" in refused.stderr
    # What Label Studio sends when the backend is connected or the project opened.
    setup = {"project": f"{stack.project}.1700000000", "schema": SPAM_XML}
    assert requests.post(f"{stack.server.url}/setup", json=setup, timeout=30).status_code == 200
    run = subprocess.run(
        [*train, "--wait", "--timeout", "180"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr
    final = json.loads(run.stdout[run.stdout.index("{", 1) :]) if run.stdout.count("{") > 1 else {}
    assert final.get("state") == "finished"
    assert final["result"]["status"] == "trained"
    assert final["result"]["labels"] == 8
    assert run.stderr.rstrip().splitlines()[-1].split()[:2] == ["finished", "done"]  # the progress line
    status = subprocess.run(
        [sys.executable, "-m", "backend.cli", "status", "--project", str(stack.project)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["current_version"] == stack.store.current(stack.project)
    assert body["n_labels"] == 8


def test_cli_connect_creates_the_connection_and_starts_a_cycle(stack: Stack) -> None:
    stack.annotate(list(range(8)))
    env = settings_env(stack.settings)
    run = subprocess.run(
        [sys.executable, "-m", "backend.cli", "connect", "--project", str(stack.project), "--url", stack.server.url],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    backends = stack.ls.list_ml_backends(stack.project)
    assert [b["url"] for b in backends] == [stack.server.url]
    assert stack.ls.get_project(stack.project)["sampling"] == "Uncertainty sampling"
    wait_for(lambda: stack.store.current(stack.project), 180, 0.5, "the first cycle started by connect")


def test_basic_auth_end_to_end_after_lsal_connect(
    label_studio: LabelStudio, settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> None:
    """With BASIC_AUTH_* set, `lsal connect` configures Label Studio so that /health, /setup,
    /predict *and* its webhook pass lsal's auth: annotations still start cycles."""
    settings = replace(
        settings,
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.legacy_token,
        basic_auth_user="ls",
        basic_auth_pass="b4sic-secret",
        min_labels=6,
        queue_depth=5,
    )
    server = LsalServer(settings, tmp_path / "server.log")
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        ls = LabelStudioClient(label_studio.url, label_studio.legacy_token)
        data = sms(24)
        project = create_project(ls, "basic auth", SPAM_XML)
        task_ids = import_tasks(ls, project, [{"text": t} for t, _ in data])
        for i in range(8):  # before connecting: these start no cycle
            create_annotation(ls, task_ids[i], choice_result(data[i][1]))
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 401
        run = subprocess.run(
            [sys.executable, "-m", "backend.cli", "connect", "--project", str(project), "--url", server.url],
            env=settings_env(settings),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        (backend,) = ls.list_ml_backends(project)
        assert backend["state"] == "CO"  # /health and /setup passed Basic auth
        store = ModelStore(settings.model_dir)
        wait_for(lambda: store.current(project), 180, 0.5, "the cycle started by connect")
        assert store.metadata(project)["n_labels"] == 8
        for i in range(8, 10):
            create_annotation(ls, task_ids[i], choice_result(data[i][1]))
        wait_for(
            lambda: store.metadata(project)["n_labels"] == 10, 180, 0.5, "a cycle started by the authenticated webhook"
        )
        assert "b4sic-secret" not in server.log() + worker.log() + run.stdout + run.stderr
    finally:
        worker.stop()
        server.stop()
