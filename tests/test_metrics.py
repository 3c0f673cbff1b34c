"""Metrics: request histogram by route template, cycle numbers recorded in Redis by (other) worker
processes, jobs by state from RQ's registries, per-project state from MODEL_DIR, all derived at
scrape time. Real Redis (conftest), real RQ worker for the job states, real subprocess for the
cross-process case.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, SimpleWorker

from backend import __version__
from backend.config import Settings
from backend.jobs import SERIALIZER
from backend.metrics import (
    UNMATCHED,
    Metrics,
    RequestMetrics,
    record_cycle,
    record_cycle_failure,
)
from backend.store import ModelStore
from tests.conftest import REPO

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
JOB_ID = "0123456789abcdef0123456789abcdef"


def scrape(metrics: Metrics) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toy_app() -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "UP"}

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> JSONResponse:
        return JSONResponse({"error": f"no job {job_id}", "field": "job_id"}, status_code=404)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("handler bug")

    return app


# -- request histogram and middleware ----------------------------------------------------------


def test_observe_request_buckets_and_registries_are_per_instance(settings: Settings) -> None:
    first, second = Metrics(settings), Metrics(settings)  # two in one process: no duplicate-metric error
    first.observe_request("/health", "GET", 200, 0.003)
    first.observe_request("/health", "GET", 200, 0.7)
    first.observe_request("/webhook", "BREW", 200, 0.002)
    s = scrape(first)
    name = "lsal_http_request_duration_seconds"
    assert value(s, f"{name}_count", method="GET", route="/health", status="200") == 2.0
    assert value(s, f"{name}_bucket", method="GET", route="/health", status="200", le="0.005") == 1.0
    assert value(s, f"{name}_bucket", method="GET", route="/health", status="200", le="0.5") == 1.0
    assert value(s, f"{name}_bucket", method="GET", route="/health", status="200", le="1.0") == 2.0
    assert value(s, f"{name}_sum", method="GET", route="/health", status="200") == pytest.approx(0.703)
    assert value(s, f"{name}_count", method="other", route="/webhook", status="200") == 1.0
    assert value(s, "lsal_build_info", version=__version__) == 1.0
    assert "lsal_redis_up" not in names(s)  # no Redis configured: nothing to report up or down
    assert f"{name}_count" not in names(scrape(second))


def test_a_request_cancelled_by_a_stopping_server_is_answered_503_without_a_traceback(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn cancels the requests still running when its grace period ends: the client gets a
    503 JSON it may retry, the cancellation does not escape to uvicorn (which logs it as a
    traceback), and the request is logged and counted as a 503."""
    import asyncio

    metrics = Metrics(settings)
    entered = asyncio.Event()
    sent: list[dict] = []

    async def slow_app(scope: dict, receive: object, send: object) -> None:
        entered.set()
        await asyncio.Event().wait()  # a large /predict still scoring

    async def send(message: dict) -> None:
        sent.append(message)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario() -> None:
        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
        task = asyncio.ensure_future(RequestMetrics(slow_app, metrics)(scope, receive, send))
        await entered.wait()
        task.cancel()
        await task  # raises CancelledError if the middleware lets it through

    with caplog.at_level(logging.INFO, logger="lsal.http"):
        asyncio.run(scenario())
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {"error": "the server is stopping; retry", "field": None}
    assert [r.getMessage().split(" ms=")[0] for r in caplog.records if r.name == "lsal.http"] == [
        f"method=POST route={UNMATCHED} status=503"
    ]
    assert value(scrape(metrics), "lsal_http_request_duration_seconds_count", method="POST", route=UNMATCHED,
                 status="503") == 1.0  # fmt: skip


def test_middleware_labels_by_route_template_and_logs_one_line(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from backend.server import Guard  # imported here: server pulls in the learner stack

    settings = replace(settings, basic_auth_user="admin", basic_auth_pass="pw-never-logged")
    metrics = Metrics(settings)
    app = toy_app()
    client = TestClient(RequestMetrics(Guard(app, settings), metrics, routes=app.routes), raise_server_exceptions=False)
    good, bad = ("admin", "pw-never-logged"), ("admin", "wrong")
    with caplog.at_level(logging.INFO, logger="lsal.http"):
        assert client.get(f"/jobs/{JOB_ID}", auth=good).status_code == 404
        assert client.get("/jobs/another-id", auth=good).status_code == 404
        assert client.get(f"/jobs/{JOB_ID}", auth=bad).status_code == 401  # rejected before routing
        assert client.get("/no/such/12345", auth=good).status_code == 404
        assert client.post("/health", auth=good).status_code == 405
        assert client.get("/boom", auth=good).status_code == 500
    s = scrape(metrics)
    count = "lsal_http_request_duration_seconds_count"
    assert value(s, count, method="GET", route="/jobs/{job_id}", status="404") == 2.0
    assert value(s, count, method="GET", route="/jobs/{job_id}", status="401") == 1.0
    assert value(s, count, method="GET", route=UNMATCHED, status="404") == 1.0
    assert value(s, count, method="POST", route="/health", status="405") == 1.0
    assert value(s, count, method="GET", route="/boom", status="500") == 1.0
    label_values = {v for _, labels in s for _, v in labels}
    assert not any(JOB_ID in v or "another-id" in v or "12345" in v for v in label_values)

    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "lsal.http"]
    pattern = re.compile(r"method=(\S+) route=(\S+) status=(\d+) ms=\d+\.\d")
    assert all(pattern.fullmatch(message) for _, message in lines), lines
    assert [(level, pattern.fullmatch(m).groups()) for level, m in lines] == [  # type: ignore[union-attr]
        ("INFO", ("GET", "/jobs/{job_id}", "404")),
        ("INFO", ("GET", "/jobs/{job_id}", "404")),
        ("INFO", ("GET", "/jobs/{job_id}", "401")),
        ("INFO", ("GET", UNMATCHED, "404")),
        ("INFO", ("POST", "/health", "405")),
        ("WARNING", ("GET", "/boom", "500")),
    ]
    assert not any("pw-never-logged" in m or "d3Jvbmc" in m for _, m in lines)


def test_build_app_serves_metrics_and_observes_every_route(settings: Settings, redis_conn: redis.Redis) -> None:
    from backend.server import build_app  # the app exactly as `lsal serve` runs it

    client = TestClient(build_app(settings))
    assert client.get("/health").status_code == 200
    assert client.get("/health").status_code == 200
    assert client.get(f"/jobs/{JOB_ID}").status_code == 404
    resp = client.get("/metrics")
    assert resp.status_code == 200
    s = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            s[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    count = "lsal_http_request_duration_seconds_count"
    assert value(s, count, method="GET", route="/health", status="200") == 2.0
    assert value(s, count, method="GET", route="/jobs/{job_id}", status="404") == 1.0
    assert value(s, "lsal_redis_up") == 1.0


# -- cycles recorded in Redis ------------------------------------------------------------------

TRAINED = {
    "project": 3,
    "status": "trained",
    "version": "v4-20250102T030405Z",
    "labels": 40,
    "pool": 1000,
    "written": 500,
    "created": 498,
    "dropped": 2,
    "timings": {"setup": 0.004, "fetch_labels": 0.3, "fit": 1.7, "write": 4.0},
}
COLD = {
    "project": 5,
    "status": "cold_start",
    "version": "seed-20250102T030405000000Z",
    "labels": 3,
    "pool": 60,
    "written": 50,
    "created": 50,
    "dropped": 0,
    "timings": {"setup": 0.002, "fetch_labels": 0.1, "read_pool": 0.05, "seed_order": 0.2, "write": 0.5},
}


def test_recorded_cycles_appear_as_histograms_counters_and_per_project_gauges(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    assert record_cycle(redis_conn, settings.queue_name, TRAINED, now=1_700_000_000.0)
    assert record_cycle(redis_conn, settings.queue_name, COLD, now=1_700_000_100.0)
    assert record_cycle_failure(redis_conn, settings.queue_name, 3, now=1_700_000_200.0)
    assert record_cycle_failure(redis_conn, settings.queue_name, 3, now=1_700_000_300.0)
    s = scrape(Metrics(settings, connection=redis_conn))

    assert value(s, "lsal_redis_up") == 1.0
    assert value(s, "lsal_cycles_total", status="trained") == 1.0
    assert value(s, "lsal_cycles_total", status="cold_start") == 1.0
    assert value(s, "lsal_cycles_total", status="failed") == 2.0
    assert value(s, "lsal_predictions_total", outcome="sent") == 550.0
    assert value(s, "lsal_predictions_total", outcome="created") == 548.0
    assert value(s, "lsal_predictions_total", outcome="dropped") == 2.0

    stage = "lsal_cycle_stage_duration_seconds"
    assert value(s, f"{stage}_count", stage="setup") == 2.0
    assert value(s, f"{stage}_bucket", stage="setup", le="0.01") == 2.0
    assert value(s, f"{stage}_count", stage="fit") == 1.0
    assert value(s, f"{stage}_bucket", stage="fit", le="1.0") == 0.0
    assert value(s, f"{stage}_bucket", stage="fit", le="2.5") == 1.0
    assert value(s, f"{stage}_bucket", stage="fit", le="+Inf") == 1.0
    assert value(s, f"{stage}_sum", stage="fit") == pytest.approx(1.7)
    assert value(s, f"{stage}_bucket", stage="write", le="0.5") == 1.0
    assert value(s, f"{stage}_bucket", stage="write", le="2.5") == 1.0
    assert value(s, f"{stage}_bucket", stage="write", le="5.0") == 2.0
    assert value(s, f"{stage}_sum", stage="write") == pytest.approx(4.5)
    cycle = "lsal_cycle_duration_seconds"
    assert value(s, f"{cycle}_bucket", status="trained", le="5.0") == 0.0
    assert value(s, f"{cycle}_bucket", status="trained", le="10.0") == 1.0
    assert value(s, f"{cycle}_sum", status="trained") == pytest.approx(6.004)
    assert value(s, f"{cycle}_bucket", status="cold_start", le="1.0") == 1.0

    assert value(s, "lsal_pool_size", project="3") == 1000.0
    assert value(s, "lsal_pool_size", project="5") == 60.0
    assert value(s, "lsal_labeled_tasks", project="3") == 40.0
    assert value(s, "lsal_labeled_tasks", project="5") == 3.0
    assert value(s, "lsal_last_cycle_predictions", project="3", outcome="sent") == 500.0
    assert value(s, "lsal_last_cycle_predictions", project="3", outcome="created") == 498.0
    assert value(s, "lsal_last_cycle_predictions", project="3", outcome="dropped") == 2.0
    assert value(s, "lsal_last_cycle_timestamp_seconds", project="3") == 1_700_000_000.0
    assert value(s, "lsal_last_cycle_duration_seconds", project="3") == pytest.approx(6.004)
    assert value(s, "lsal_last_cycle_failure_timestamp_seconds", project="3") == 1_700_000_300.0
    assert value(s, "lsal_last_cycle_failure_timestamp_seconds", project="5") is None


def test_a_cycle_recorded_by_another_process_is_visible_to_the_server(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    code = (
        "import json, sys, redis; from backend.metrics import record_cycle; "
        "ok = record_cycle(redis.Redis.from_url(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])); "
        "raise SystemExit(0 if ok else 1)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, settings.redis_url, settings.queue_name, json.dumps(TRAINED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    s = scrape(Metrics(settings, connection=redis_conn))
    assert value(s, "lsal_predictions_total", outcome="created") == 498.0
    assert value(s, "lsal_pool_size", project="3") == 1000.0


def test_malformed_reports_are_tamed_not_trusted(settings: Settings, redis_conn: redis.Redis) -> None:
    assert record_cycle(redis_conn, settings.queue_name, {"status": "trained"}) is False  # no project
    assert record_cycle(redis_conn, settings.queue_name, {"project": "x"}) is False
    weird = {
        "project": 9,
        "status": "Weird|Status",
        "timings": {"a|b": 1.0, "fit": "slow", "score": -1, "write": float("nan")},
        "written": True,
        "created": "12",
        "pool": 7,
    }
    assert record_cycle(redis_conn, settings.queue_name, weird) is True
    s = scrape(Metrics(settings, connection=redis_conn))
    assert value(s, "lsal_cycles_total", status="other") == 1.0
    stage_samples = {dict(labels).get("stage") for name, labels in s if name.startswith("lsal_cycle_stage_")}
    assert stage_samples == {"other"}
    assert value(s, "lsal_cycle_stage_duration_seconds_sum", stage="other") == 1.0
    assert value(s, "lsal_predictions_total", outcome="sent") == 0.0
    assert value(s, "lsal_predictions_total", outcome="created") == 0.0
    assert value(s, "lsal_pool_size", project="9") == 7.0


def test_redis_down_never_fails_recording_or_the_scrape(settings: Settings, tmp_path: Path) -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.3, socket_timeout=0.3)
    assert record_cycle(dead, settings.queue_name, TRAINED) is False
    assert record_cycle_failure(dead, settings.queue_name, 3) is False
    store = ModelStore(settings.model_dir)
    version = store.publish(3, lambda d: (d / "model.bin").write_bytes(b"x"), {"n_labels": 12})
    s = scrape(Metrics(settings, connection=dead, store=store))
    assert value(s, "lsal_redis_up") == 0.0
    assert "lsal_jobs" not in names(s)
    assert value(s, "lsal_model_version_info", project="3", version=version) == 1.0
    assert value(s, "lsal_labeled_tasks", project="3") == 12.0


# -- jobs by state (real RQ worker) and the model store ----------------------------------------


def test_jobs_by_state_come_from_rq_registries(settings: Settings, redis_conn: redis.Redis) -> None:
    queue = Queue(settings.queue_name, connection=redis_conn, serializer=SERIALIZER)
    queue.enqueue_call("builtins.len", args=([1, 2],))
    queue.enqueue_call("builtins.int", args=("not a number",))  # raises: ends in the failed registry
    SimpleWorker([queue], connection=redis_conn, serializer=SERIALIZER).work(burst=True)
    queue.enqueue_call("builtins.len", args=([1],))
    queue.enqueue_in(timedelta(hours=1), "builtins.len", [1])
    s = scrape(Metrics(settings, connection=redis_conn))
    states = {
        state: value(s, "lsal_jobs", state=state)
        for state in ("queued", "started", "scheduled", "deferred", "finished", "failed", "canceled")
    }
    assert states == {
        "queued": 1.0,
        "started": 0.0,
        "scheduled": 1.0,
        "deferred": 0.0,
        "finished": 1.0,
        "failed": 1.0,
        "canceled": 0.0,
    }
    assert value(s, "lsal_workers") == 0.0  # the burst worker unregistered when it finished


def test_per_project_version_and_model_quality_from_the_store(settings: Settings) -> None:
    store = ModelStore(settings.model_dir, clock=lambda: datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))

    def write(directory: Path) -> None:
        (directory / "model.bin").write_bytes(b"x")

    store.publish(7, write, {"n_labels": 30, "metrics": {"cv_accuracy": 0.8, "cv_macro_f1": None}})
    store.publish(7, write, {"n_labels": 42, "metrics": {"cv_accuracy": 0.9, "cv_macro_f1": 0.85}})
    store.publish(8, write, {"n_labels": 10})
    (settings.model_dir / "8" / "CURRENT").write_text("garbage\n")  # corrupt: skipped, not fatal
    s = scrape(Metrics(settings, store=store))
    assert value(s, "lsal_model_version_info", project="7", version="v2-20250102T030405Z") == 1.0
    assert value(s, "lsal_model_version_info", project="7", version="v1-20250102T030405Z") is None
    assert value(s, "lsal_model_version_number", project="7") == 2.0
    assert (
        value(s, "lsal_model_created_timestamp_seconds", project="7")
        == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    )
    assert value(s, "lsal_labeled_tasks", project="7") == 42.0
    assert value(s, "lsal_model_cv_accuracy", project="7") == 0.9
    assert value(s, "lsal_model_cv_macro_f1", project="7") == 0.85
    assert value(s, "lsal_model_version_number", project="8") is None
    assert value(s, "lsal_labeled_tasks", project="8") is None
