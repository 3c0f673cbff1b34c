"""Security: auth, limits, path validation, XML attacks, SSRF, secrets in logs.

Docstrings feed docs/reliability.md (scripts/reliability_table.py).
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
import requests
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.pool import PoolCache
from backend.projectdir import ProjectDir
from backend.server import build_app
from backend.store import ModelStore, StoreError
from tests.conftest import LsalServer, WorkerProcess, wait_for
from tests.faultstand import STAGE_CALLS, FaultStand
from tests.serverkit import answered_at_accept, raw_health, set_up

REPO = Path(__file__).resolve().parent.parent
SPAM_XML = (REPO / "label_config" / "spam.xml").read_text()
PASSWORD = "s3cret-basic-pass-xyz"
TRIGGER = "trigger-token-abcdef123"


def _app(settings: Settings, **kw: Any) -> TestClient:
    return TestClient(build_app(replace(settings, **kw)), raise_server_exceptions=False)


def test_basic_auth_and_trigger_token_enforced_in_constant_time(
    settings: Settings, redis_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault: requests without, or with wrong, Basic auth / trigger token
    Done: every route with no, wrong and right credentials; hmac.compare_digest spied
    Expected: 401 JSON without the right credentials on every route; comparisons through hmac.compare_digest
    Observed: as expected
    """
    import backend.server.guard as server

    calls: list[tuple[bytes, bytes]] = []
    real = server.hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server.hmac, "compare_digest", spy)
    c = _app(settings, basic_auth_user="ls", basic_auth_pass=PASSWORD, trigger_token=TRIGGER)
    good = "Basic " + base64.b64encode(f"ls:{PASSWORD}".encode()).decode()
    bad = "Basic " + base64.b64encode(b"ls:wrong").decode()
    routes = [("GET", "/health"), ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"),
              ("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/projects/1/status"),
              ("GET", "/jobs/" + "0" * 32)]  # fmt: skip
    for method, path in routes:
        for header in ({}, {"Authorization": bad}, {"Authorization": "Bearer " + TRIGGER}):
            r = c.request(method, path, headers=header, json={})
            assert r.status_code == 401 and r.json()["field"] == "authorization", (method, path, header)
        assert c.request(method, path, headers={"Authorization": good}, json={}).status_code != 401
    assert calls, "credentials are compared with hmac.compare_digest"
    # /train: the trigger token, compared in constant time too
    set_up(settings, 1)
    assert c.post("/train", json={"project": 1}, headers={"Authorization": "Bearer nope"}).status_code == 401
    n = len(calls)
    assert c.post("/train", json={"project": 1}, headers={"Authorization": f"Bearer {TRIGGER}"}).status_code == 202
    assert len(calls) > n


def test_body_and_task_count_limits(settings: Settings, redis_conn: redis.Redis) -> None:
    """Fault: oversized bodies (declared and chunked) and too many tasks
    Done: bodies over MAX_BODY_BYTES with and without Content-Length; MAX_TASKS + 1 tasks
    Expected: 413 JSON before any handler runs; the server keeps answering
    Observed: as expected
    """
    c = _app(settings, max_body_bytes=4096, max_tasks=3)
    big = b'{"tasks": [' + b'{"id": 1, "data": {"text": "' + b"x" * 5000 + b'"}}]}'
    assert c.post("/predict", content=big, headers={"content-type": "application/json"}).status_code == 413

    def chunks() -> Iterator[bytes]:
        yield big[:3000]
        yield big[3000:]

    assert c.post("/webhook", content=chunks()).status_code == 413
    tasks = [{"id": i, "data": {"text": "hi"}} for i in range(4)]
    r = c.post("/predict", json={"tasks": tasks, "project": 1, "label_config": SPAM_XML})
    assert r.status_code == 413 and r.json()["field"] == "tasks"
    assert c.get("/health").status_code == 200


@pytest.mark.parametrize("project", ["../1", "..%2F1", "1/../../etc", "%2e%2e", "1\x00", "-1", "٣", "1e3", " 1"])
def test_project_ids_cannot_leave_model_dir(settings: Settings, redis_conn: redis.Redis, project: str) -> None:
    """Fault: project ids and versions crafted to escape MODEL_DIR (../, encoded, NUL, non-ASCII digits)
    Done: the ids in /setup, /predict, /projects/{id}/status, learning-curve; versions in ModelStore
    Expected: 4xx naming the field; no file outside MODEL_DIR is read or created
    Observed: as expected
    """
    c = _app(settings)
    before = set(settings.model_dir.parent.rglob("*")) if settings.model_dir.parent.exists() else set()
    assert c.post("/setup", json={"project": project, "schema": SPAM_XML}).status_code in (400, 404, 422)
    body = {"tasks": [{"id": 1, "data": {"text": "x"}}], "project": project, "label_config": SPAM_XML}
    assert c.post("/predict", json=body).status_code == 400
    raw = quote(project, safe="./%")
    for path in (f"/projects/{raw}/status", f"/projects/{raw}/learning-curve.png"):
        assert c.get(path).status_code in (400, 404)
    after = set(settings.model_dir.parent.rglob("*")) if settings.model_dir.parent.exists() else set()
    assert all(p.is_relative_to(settings.model_dir) for p in after - before)
    store = ModelStore(settings.model_dir)
    for version in ("../v1-20250101T000000Z", "v1-20250101T000000Z/../../x", "v1", project):
        with pytest.raises(StoreError):
            store.path(1, version)


XML_ATTACKS = {
    "billion laughs": '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
    '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="&b;"/></Choices></View>',
    "external entity": '<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
    '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="&x;"/></Choices></View>',
    "external DTD": '<?xml version="1.0"?><!DOCTYPE v SYSTEM "http://127.0.0.1:9/evil.dtd">'
    '<View><Text name="t" value="$text"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>',
    "oversized": "<View>" + "<Header value='x'/>" * 80_000 + "</View>",
}


@pytest.mark.parametrize("attack", list(XML_ATTACKS))
def test_xml_attacks_rejected(settings: Settings, redis_conn: redis.Redis, attack: str) -> None:
    """Fault: hostile label configs (billion laughs, external entity, external DTD, > 1 MB)
    Done: each through /setup and /predict
    Expected: 400 naming label_config; no entity expanded, nothing fetched
    Observed: as expected
    """
    c = _app(settings)
    xml = XML_ATTACKS[attack]
    r = c.post("/setup", json={"project": 1, "schema": xml})
    assert r.status_code in (400, 413) and r.json()["field"] in ("label_config", "body"), r.text
    body = {"tasks": [{"id": 1, "data": {"text": "x"}}], "project": 1, "label_config": xml}
    r = c.post("/predict", json=body)
    assert r.status_code in (400, 413) and "root:" not in r.text


class _Recorder:
    """A listener standing for 'another host': it records every connection made to it."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        rec = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                rec.hits.append(self.path)
                self.send_response(200)
                self.end_headers()

            do_POST = do_PATCH = do_DELETE = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.mark.integration
def test_setup_naming_another_host_causes_no_request_to_it(
    settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> None:
    """Fault: /setup names another host (hostname, access_token) - an SSRF attempt
    Done: /setup with hostname = a recording listener, then START_TRAINING; a real server and worker run a cycle
    Expected: the cycle talks only to LABEL_STUDIO_URL; the named host receives no request; the token is never logged
    Observed: as expected
    """
    evil = _Recorder()
    with FaultStand("legacy-key-0123456789abcdef") as ls:
        ids = ls.add_project(7, SPAM_XML, [f"message {i} win prize" if i % 2 else f"see you at {i}" for i in range(30)])
        for i in range(12):
            ls.annotate(7, ids[i], "spam" if i % 2 else "no_spam")
        s = replace(settings, label_studio_url=ls.url, label_studio_api_key="legacy-key-0123456789abcdef",
                    min_labels=6, queue_depth=5, ls_retries=0)  # fmt: skip
        server = LsalServer(s, tmp_path / "server.log")
        worker = WorkerProcess(s, tmp_path / "worker.log")
        try:
            token = "legacy-token-of-the-attacker-98765"
            body = {"project": "7.1700000000", "schema": SPAM_XML, "hostname": evil.url, "access_token": token}
            r = requests.post(f"{server.url}/setup", timeout=10, json=body)
            assert r.status_code == 200
            r = requests.post(f"{server.url}/webhook", timeout=10,
                              json={"action": "START_TRAINING", "project": {"id": 7}})  # fmt: skip
            job = r.json()["job_id"]
            wait_for(lambda: requests.get(f"{server.url}/jobs/{job}", timeout=5).json()["state"] == "finished",
                     120, 0.3, "the cycle")  # fmt: skip
            assert ls.calls_to("GET", r"/api/projects/7/export"), "the cycle called the configured Label Studio"
            assert ls.project_version(7).startswith("v")
            assert evil.hits == [], f"lsal called the host named in /setup: {evil.hits}"
        finally:
            worker.stop()
            server.stop()
            evil.httpd.shutdown()
        for log in (server.log(), worker.log()):
            assert token not in log and "legacy-key-0123456789abcdef" not in log


@pytest.mark.integration
def test_secrets_never_logged(settings: Settings, tmp_path: Path, redis_conn: redis.Redis) -> None:
    """Fault: every configured secret and request credential passed through a DEBUG-level server
    Done: Basic auth (right and wrong), trigger token, /setup access_token, API key; server log scanned
    Expected: no secret (plain or base64) appears in the log
    Observed: as expected
    """
    s = replace(settings, basic_auth_user="ls", basic_auth_pass=PASSWORD, trigger_token=TRIGGER,
                label_studio_api_key="api-key-never-logged-777")  # fmt: skip
    server = LsalServer(s, tmp_path / "server.log", extra_env={"LOG_LEVEL": "DEBUG"})
    try:
        auth = ("ls", PASSWORD)
        requests.get(f"{server.url}/health", auth=("ls", "wrong-password-555"), timeout=5)
        requests.post(f"{server.url}/setup", auth=auth, timeout=5,
                      json={"project": 2, "schema": SPAM_XML, "access_token": "setup-token-444"})  # fmt: skip
        requests.post(f"{server.url}/train", json={"project": 2}, timeout=5,
                      headers={"Authorization": f"Bearer {TRIGGER}"})  # fmt: skip
        requests.post(f"{server.url}/predict?token=query-secret-333", auth=auth, timeout=5, json={})
    finally:
        server.stop()
    text = server.log()
    b64 = base64.b64encode(f"ls:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, TRIGGER, "api-key-never-logged-777", "setup-token-444", "wrong-password-555", b64,
                   "query-secret-333"):  # fmt: skip
        assert secret not in text, f"{secret[:4]}... reached the server log"


@pytest.mark.timeout(20)
def test_huge_choice_list_is_checked_in_linear_time_and_refusals_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a ~1 MB label config of 40,000 <Choice>s (one repeated), sent again and again
    Done: parse_label_config on it twice, counting XML parses; a 20 s deadline (the quadratic check took 27-57 s)
    Expected: the refusal names the repeated choice; the second call re-raises it without parsing again
    Observed: as expected
    """
    import backend.labelconfig as labelconfig

    choices = "".join(f'<Choice value="c{i}"/>' for i in range(40_000)) + '<Choice value="c7"/>'
    xml = f'<View><Text name="text" value="$text"/><Choices name="c" toName="text">{choices}</Choices></View>'
    assert 900_000 < len(xml) < labelconfig.MAX_CONFIG_BYTES
    parses = 0
    real = labelconfig._parse_xml

    def counting(text: str) -> Any:
        nonlocal parses
        parses += 1
        return real(text)

    monkeypatch.setattr(labelconfig, "_parse_xml", counting)
    for _ in range(2):
        with pytest.raises(labelconfig.LabelConfigError) as info:
            labelconfig.parse_label_config(xml)
        assert str(info.value) == (
            "no <Choices> bound to a Text, HyperText, Table or Image object "
            "(<Choices name='c'> repeats choice values ['c7'])"
        )
    assert parses == 1


class _Touch:
    """Unpickling this runs code: it creates the file it names (what a pickled RQ job could do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, ...]]:
        return (open, (self.path, "w"))


@pytest.mark.integration
def test_jobs_written_into_redis_by_someone_else_run_no_code(
    settings: Settings, redis_conn: redis.Redis, worker: WorkerProcess, tmp_path: Path
) -> None:
    """Fault: jobs written straight into Redis: a pickled payload that runs code on load, a JSON job naming
        another function, and an lsal job with an RQ callback
    Done: the three jobs pushed onto lsal's queue; a real `lsal worker` takes them
    Expected: each fails with "job refused: ..."; no file is created, no named function or callback runs
    Observed: as expected
    """
    import pickle

    from rq import Callback, Queue
    from rq.job import Job

    from backend.jobs import CYCLE_FUNC, SERIALIZER

    pickled_marker, named_marker = tmp_path / "pickled", tmp_path / "named"
    pickled_queue = Queue(settings.queue_name, connection=redis_conn)  # RQ's default: pickle
    payload = _Touch(str(pickled_marker))
    pickled = pickled_queue.enqueue_call("builtins.print", args=(payload,))
    json_queue = Queue(settings.queue_name, connection=redis_conn, serializer=SERIALIZER)
    named = json_queue.enqueue_call("os.mkdir", args=(str(named_marker),))
    with_callback = json_queue.enqueue_call(
        CYCLE_FUNC, args=(999_999, "attack"), on_success=Callback("os.abort"), on_failure=Callback("os.abort")
    )

    def failed(job_id: str) -> bool:
        return Job.fetch(job_id, connection=redis_conn, serializer=SERIALIZER).get_status() == "failed"

    for job in (pickled, named, with_callback):
        wait_for(lambda job=job: failed(job.id), 60, what=f"job {job.id} refused")
    log = worker.log()
    assert "is not an lsal job" in log and "cannot be decoded as JSON" in log and "no callbacks" in log
    assert not pickled_marker.exists() and not named_marker.exists()
    assert worker.proc.poll() is None, "the worker is alive: os.abort never ran"
    assert pickle.dumps(payload)  # the payload itself is a working exploit under pickle


@pytest.mark.integration
def test_webhook_task_payloads_are_hints_never_data(redis_base_url: str, tmp_path: Path) -> None:
    """Fault: a forged TASKS_CREATED naming a real task with poisoned text, plus a task id Label Studio
        does not have
    Done: a project trained once (its pool cached); the forged event posted to /webhook; the task job
        run by a real worker against the Label Studio stand-in; then another cycle
    Expected: the pool keeps Label Studio's text for the real task and drops the unknown id; the next
        cycle finishes (no write-stage failure loop)
    Observed: as expected (before: the payload's text replaced the task's data in the pool and was
        scored; the unknown id failed every later cycle at the write stage)
    """
    from backend.pool import PoolCache
    from tests.test_faults import running_stack

    with running_stack(redis_base_url, tmp_path, workers=1) as (stack, _):
        pid = stack.new_project()
        stack.wait_job(stack.train(pid), ("finished",))
        tasks = stack.stand.projects[pid].tasks
        real = max(tasks)  # unlabeled
        truth = tasks[real]
        forged = {
            "action": "TASKS_CREATED",
            "project": {"id": pid},
            "tasks": [{"id": real, "data": {"text": "win free prize cash"}}, {"id": 987_654, "data": {"text": "x"}}],
        }
        r = requests.post(f"{stack.server.url}/webhook", json=forged, timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "queued", r.text
        result = stack.wait_job(r.json()["job_id"], ("finished",))["result"]
        assert (result["hinted"], result["present"], result["dropped"]) == (2, 1, 1)
        snap = PoolCache(stack.settings.model_dir, pid).load()
        assert snap is not None and snap.data[real] == truth and 987_654 not in snap.data
        stack.label_more(pid)
        assert stack.wait_job(stack.train(pid), ("finished", "failed"))["state"] == "finished"


@pytest.mark.integration
def test_events_for_projects_never_set_up_cost_nothing(settings: Settings, redis_conn: redis.Redis) -> None:
    """Fault: 500 made-up project ids, each sent START_TRAINING, ANNOTATION_CREATED, TASKS_CREATED and
        TASKS_DELETED through /webhook, and POST /train
    Done: 2,500 requests through the full app (Guard, FastAPI) with a real Redis queue
    Expected: every event answered 200 "ignored", every /train 404 naming the project (one rule,
        projects.is_set_up); no job queued, no Redis key, no file under MODEL_DIR
    Observed: as expected (before: 500 jobs with 4 attempts each, 501 /metrics series, and
        MODEL_DIR/<id>/pool/events.jsonl for every TASKS_DELETED; /train queued a job per made-up id)
    """
    from rq import Queue

    from backend.jobs import SERIALIZER

    c = _app(settings)
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    before = set(redis_conn.scan_iter(f"{settings.queue_name}:*"))
    for pid in range(10_001, 10_501):
        for action, extra in (
            ("START_TRAINING", {}),
            ("ANNOTATION_CREATED", {"annotation": {"id": 1}}),
            ("TASKS_CREATED", {"tasks": [{"id": 5, "data": {"text": "x"}}]}),
            ("TASKS_DELETED", {"tasks": [{"id": 5}]}),
        ):
            r = c.post("/webhook", json={"action": action, "project": {"id": pid}, **extra})
            assert r.status_code == 200 and r.json() == {"status": "ignored", "action": action}, r.text
        r = c.post("/train", json={"project": pid})
        assert r.status_code == 404 and r.json()["field"] == "project" and str(pid) in r.json()["error"], r.text
    assert Queue(settings.queue_name, connection=redis_conn, serializer=SERIALIZER).count == 0
    assert set(redis_conn.scan_iter(f"{settings.queue_name}:*")) == before
    assert list(settings.model_dir.iterdir()) == []


@pytest.mark.integration
def test_a_cycle_that_lost_its_project_lock_writes_nothing(redis_base_url: str, tmp_path: Path) -> None:
    """Fault: the project lock passes to someone else while a cycle runs (its keep-alive failed, the
        lock expired and another writer took the project)
    Done: a cycle parked at fetch_labels by the stand-in; the lock key overwritten with another
        owner's token (expiring in 5 s); the cycle released
    Expected: the cycle stops with LockLost at its next stage: no version published, no prediction
        written, no pool saved; RQ's retry runs it once the lock is free and restores
    Observed: as expected (before: the cycle only logged the failed keep-alive and carried on writing)
    """
    from tests.test_faults import running_stack

    with running_stack(redis_base_url, tmp_path, workers=1) as (stack, _):
        pid = stack.new_project()
        stack.wait_job(stack.train(pid), ("finished",))
        first = stack.store.current(pid)
        predictions = len(stack.stand.projects[pid].predictions)
        stack.label_more(pid)
        exports = len(stack.stand.calls_to("GET", rf"/api/projects/{pid}/export"))
        stack.stand.inject("hold", "fetch_labels", pid)
        job = stack.train(pid)
        wait_for(lambda: len(stack.stand.calls_to("GET", rf"/api/projects/{pid}/export")) > exports, 60, 0.1,
                 "the parked cycle")  # fmt: skip
        stack.conn.set(f"{stack.settings.queue_name}:project:{pid}:lock", "another-owner", ex=5)
        stack.stand.clear(pid)
        status = wait_for(lambda: (j := stack.job(job))["error"] and j, 60, 0.1, "the cycle to stop")
        assert status["error"].startswith("LockLost: project"), status
        assert stack.store.current(pid) == first
        assert len(stack.stand.projects[pid].predictions) == predictions
        stack.wait_job(job, ("finished",), timeout=120)
        assert stack.store.current(pid) != first


def _steal_lock_while_held(stack: Any, pid: int, stage: str, start: Callable[[], str]) -> str:
    """Park the project's next `stage` call at the stand-in, start a job with `start`, give the
    project lock to another owner (for 5 s) while the call is parked, release it; the job's id."""
    method, pattern = STAGE_CALLS[stage]
    path = "^" + pattern.replace("{p}", str(pid)) + "/?$"
    before = len(stack.stand.calls_to(method, path))
    stack.stand.inject("hold", stage, pid)
    job = start()
    wait_for(lambda: len(stack.stand.calls_to(method, path)) > before, 60, 0.1, f"the job parked at {stage}")
    stack.conn.set(f"{stack.settings.queue_name}:project:{pid}:lock", "another-owner", ex=5)
    stack.stand.clear(pid)
    return job


def _lock_lost(stack: Any, job: str) -> dict[str, Any]:
    status = wait_for(lambda: (j := stack.job(job))["error"] and j, 60, 0.1, "the job to stop")
    assert status["error"].startswith("LockLost: project"), status
    return dict(status)


@pytest.mark.integration
def test_a_task_job_and_a_cleanup_that_lost_the_project_lock_write_nothing(redis_base_url: str, tmp_path: Path) -> None:
    """Fault: the project lock passes to another owner while the TASKS_CREATED job or the cleanup
        job of a project runs
    Done: each job parked by the stand-in at its first Label Studio call (reading the hinted tasks;
        reading the project); the lock key overwritten with another owner's token (expiring in 5 s);
        the call released
    Expected: the job stops with LockLost before its first write: no pool event, no prediction, no
        deleted version, written_versions.json unchanged; RQ's retry runs it once the lock is free
        (the task job's hints were given back) and it does its work
    Observed: as expected (before: the task job took no lock and the cleanup never checked it: both
        wrote while another worker held the project)
    """
    from tests.test_faults import DEPTH, running_stack

    with running_stack(redis_base_url, tmp_path, workers=1) as (stack, _):
        pid = stack.new_project()
        first = stack.wait_job(stack.train(pid), ("finished",))["result"]
        stack.wait_job(first["cleanup_job"], ("finished",))
        version = stack.store.current(pid)
        # The task job.
        new = stack.stand.add_task(pid, "URGENT you have won a prize, call now")
        hook = {"action": "TASKS_CREATED", "project": {"id": pid}, "tasks": [{"id": new}]}

        def webhook() -> str:
            r = requests.post(f"{stack.server.url}/webhook", json=hook, timeout=5)
            assert r.status_code == 200 and r.json()["status"] == "queued", r.text
            return str(r.json()["job_id"])

        job = _steal_lock_while_held(stack, pid, "read_pool", webhook)
        _lock_lost(stack, job)
        snap = PoolCache(stack.settings.model_dir, pid).load()
        assert snap is not None and new not in snap.data
        assert [p for p in stack.stand.projects[pid].predictions if p["task"] == new] == []
        result = stack.wait_job(job, ("finished",), timeout=120)["result"]
        assert (result["status"], result["present"], result["written"]) == ("scored", 1, 1)
        assert [p["model_version"] for p in stack.stand.projects[pid].predictions if p["task"] == new] == [version]
        # The cleanup job: the next cycle's version makes the first one stale.
        stack.label_more(pid)
        pdir = ProjectDir(stack.settings.model_dir, pid)
        deletes = len(stack.stand.calls_to("DELETE", rf"/api/projects/{pid}/model-versions"))
        # The cleanup job is queued when the cycle ends (a cycle does not read the project itself).
        cleanup = _steal_lock_while_held(
            stack,
            pid,
            "read_project",
            lambda: str(stack.wait_job(stack.train(pid), ("finished",))["result"]["cleanup_job"]),
        )
        _lock_lost(stack, cleanup)
        second = stack.store.current(pid)
        assert len(stack.stand.calls_to("DELETE", rf"/api/projects/{pid}/model-versions")) == deletes
        assert pdir.written_versions() == [version, second]
        assert stack.wait_job(cleanup, ("finished",), timeout=120)["result"] == {
            version: DEPTH + 1
        }  # its slice and the task scored above
        assert pdir.written_versions() == [second]


@pytest.mark.integration
def test_a_project_deleted_in_label_studio_is_forgotten_only_by_the_holder_of_its_lock(
    redis_base_url: str, tmp_path: Path
) -> None:
    """Fault: a project lsal was set up for is deleted in Label Studio, and the project lock passes
        to another owner while a cycle finds that out
    Done: a trained project removed from the stand-in (which then answers 404, as Label Studio
        does); a cycle parked at its label read; the lock key overwritten with another owner's
        token (expiring in 5 s); the call released
    Expected: the cycle stops with LockLost and removes nothing (setup record and pool stay); RQ's
        retry, holding the lock, finds the 404 again and removes them: status unknown_project
    Observed: as expected (before: the removal ran after the cycle had released the lock, with no
        check of it, so it could delete files another worker was writing)
    """
    from tests.test_faults import running_stack

    with running_stack(redis_base_url, tmp_path, workers=1) as (stack, _):
        pid = stack.new_project()
        first = stack.wait_job(stack.train(pid), ("finished",))["result"]
        stack.wait_job(first["cleanup_job"], ("finished",))
        pdir = ProjectDir(stack.settings.model_dir, pid)
        assert pdir.project_json.exists() and pdir.pool.exists()
        with stack.stand.lock:
            del stack.stand.projects[pid]
        job = _steal_lock_while_held(stack, pid, "fetch_labels", lambda: stack.train(pid))
        _lock_lost(stack, job)
        assert pdir.project_json.exists() and pdir.pool.exists()
        result = stack.wait_job(job, ("finished",), timeout=120)["result"]
        assert (result["status"], result["project"]) == ("unknown_project", pid)
        assert not pdir.project_json.exists() and not pdir.pool.exists()


@pytest.mark.integration
def test_a_cycle_that_lost_its_lock_at_the_switch_appends_no_cycle_log_line(
    redis_base_url: str, tmp_path: Path
) -> None:
    """Fault: the project lock passes to another owner while a cycle's last Label Studio call (the
        switch of the queue) is in flight
    Done: the cycle parked by the stand-in at the switch; the lock key overwritten with another
        owner's token (expiring in 5 s); the switch released
    Expected: the cycle stops with LockLost before its cycle-log line (its last write); RQ's retry
        runs a whole cycle once the lock is free, which logs its line
    Observed: as expected (before: the cycle log was appended without a check of the lock)
    """
    from tests.test_faults import running_stack

    with running_stack(redis_base_url, tmp_path, workers=1) as (stack, _):
        pid = stack.new_project()
        stack.wait_job(stack.train(pid), ("finished",))
        log = ProjectDir(stack.settings.model_dir, pid).cycle_log
        lines = log.read_bytes().count(b"\n")
        stack.label_more(pid)
        job = _steal_lock_while_held(stack, pid, "switch", lambda: stack.train(pid))
        _lock_lost(stack, job)
        assert log.read_bytes().count(b"\n") == lines
        stack.wait_job(job, ("finished",), timeout=120)
        assert log.read_bytes().count(b"\n") == lines + 1


def _half_sent(port: int, payload: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(payload)
    return sock


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


@pytest.mark.integration
def test_slow_headers_are_cut_off_and_a_client_hanging_up_mid_body_is_no_server_error(
    settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> None:
    """Fault: slowloris (300 connections that send half a request line and stop) and clients that hang
        up in the middle of a /webhook or /predict body
    Done: a real `lsal serve`; the half-sent requests held open; /health polled meanwhile; 20 requests
        that declare 100 kB, send 1 kB and close
    Expected: /health keeps answering; every half-sent connection is closed by the server within
        HEADER_TIMEOUT (10 s) + 5 s; the hung-up requests are logged as status 499, with no traceback
        and no 5xx in /metrics
    Observed: as expected (before: the connections were held open indefinitely, and a hang-up mid-body
        was a 500 with a 64-line ClientDisconnect traceback)
    """
    from backend.http_protocol import HEADER_TIMEOUT

    server = LsalServer(settings, tmp_path / "server.log")
    try:
        held = [_half_sent(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(300)]
        assert requests.get(f"{server.url}/health", timeout=5).status_code == 200
        wait_for(lambda: all(_closed_by_server(s) for s in held), HEADER_TIMEOUT + 5, 0.5, "slow requests cut off")
        for path in ("/webhook", "/predict") * 10:
            head = (
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
            )
            sock = _half_sent(server.port, head.encode() + b"{" + b" " * 1000)
            sock.close()
        wait_for(lambda: server.log().count("status=499") >= 20, 30, 0.2, "the hang-ups to be logged")
        metrics = requests.get(f"{server.url}/metrics", timeout=5).text
        assert 'status="5' not in metrics
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log and "ClientDisconnect" not in log and "status=500" not in log


@pytest.mark.integration
def test_health_on_a_new_connection_is_answered_at_once_behind_a_burst_of_connections(
    settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> None:
    """Fault: a burst of 2,000 slowloris connections (half a request line each) opened at once,
        while Label Studio checks /health on a new connection each time
    Done: a real `lsal serve` with Basic auth; the burst opened as fast as the kernel completes the
        handshakes; an authorized /health on a new connection right behind it, and again after
    Expected: every /health is 200 and answered where its connection is accepted (no uvicorn
        `server` header, `connection: close`), not after the burst's connections have each had
        their turns on the event loop; the burst's connections are all accepted, then cut off
        after HEADER_TIMEOUT
    Observed: as expected (before: libuv accepted one connection per event-loop iteration and every
        /health went through the app; in bench_load 13 of 28 polls took over 1 s, some 10 s;
        with both fixes 0 of 424 and 0 of 490)
    """
    from backend.http_protocol import HEADER_TIMEOUT

    s = replace(settings, basic_auth_user="ls", basic_auth_pass=PASSWORD)
    auth = b"Authorization: Basic " + base64.b64encode(f"ls:{PASSWORD}".encode()) + b"\r\n"
    server = LsalServer(s, tmp_path / "server.log")
    held: list[socket.socket] = []
    try:
        # Each HTTP process PINGs Redis before it serves, so every /health it accepts is answered there.
        wait_for(lambda: answered_at_accept(raw_health(server.port, auth)[0]), 10, 0.1, "a /health answered at accept")
        held = [_half_sent(server.port, b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(2000)]
        for _ in range(5):
            lines, body = raw_health(server.port, auth)
            assert lines[0] == b"HTTP/1.1 200 OK"
            assert answered_at_accept(lines)
            assert json.loads(body)["status"] == "UP"
        wait_for(lambda: all(_closed_by_server(c) for c in held), HEADER_TIMEOUT + 15, 0.5, "the burst cut off")
    finally:
        for c in held:
            c.close()
        server.stop()
    assert "Traceback" not in server.log()


def test_a_body_that_trickles_in_is_answered_408(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault: a client that sends its headers, then its body one chunk at a time, too slowly
    Done: the Guard fed a chunk, then nothing, with BODY_TIMEOUT shortened to 0.2 s
    Expected: 408 JSON naming the body, without the app running
    Observed: as expected (before: the request was held as long as the client kept the connection)
    """
    import asyncio

    from backend.server import guard

    monkeypatch.setattr(guard, "BODY_TIMEOUT", 0.2)
    ran: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        ran.append(True)

    chunks = [{"type": "http.request", "body": b"{", "more_body": True}]

    async def receive() -> dict[str, Any]:
        if chunks:
            return chunks.pop()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/webhook", "headers": []}
    asyncio.run(guard.Guard(app, settings)(scope, receive, send))
    assert ran == [] and sent[0]["status"] == 408
    assert sent[1]["body"] == b'{"error": "request body not received within 0.2 s", "field": "body"}'
