"""Pipelines and admins (backend.server.pipelines): /train, /jobs/{id}, /projects/{id}/status and curve.

Through the app as served, on a real Redis; and the router mounted alone with its dependencies
overridden. The trigger token that guards /train is tested with the Guard (test_server_guard.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from backend.config import ProjectConfig, Settings
from backend.jobs import Jobs
from backend.server import pipelines
from backend.server.deps import ProjectLookup, get_jobs, get_projects, get_settings, get_store
from backend.store import ModelStore
from tests.serverkit import assert_error, client_for, mount, publish_spam_model, queued_ids, set_up


@pytest.fixture
def client(settings: Settings, redis_conn: redis.Redis) -> TestClient:
    return client_for(settings)


def test_train_and_job_status(client: TestClient, settings: Settings, redis_conn: redis.Redis) -> None:
    set_up(settings, 12)
    resp = client.post("/train", json={"project": 12})
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    assert resp.json()["created"] is True
    status = client.get(f"/jobs/{job_id}").json()
    assert status["state"] == "queued" and status["project"] == 12
    assert_error(client.get("/jobs/" + "0" * 32), 404, "job_id")
    assert_error(client.get("/jobs/not-a-job"), 400, "job_id")


def test_train_for_a_project_never_set_up_is_a_404_and_queues_nothing(
    client: TestClient, settings: Settings, redis_conn: redis.Redis
) -> None:
    """/train follows the webhook's rule (projects.is_set_up): a project whose /setup never reached
    this MODEL_DIR costs no job, no Redis key and no file."""
    before = set(redis_conn.scan_iter(f"{settings.queue_name}:*"))
    body = assert_error(client.post("/train", json={"project": 77}), 404, "project")
    assert body["error"] == (
        "project 77 was never set up with lsal (no /setup from Label Studio yet: connect the backend,"
        " or open the project in Label Studio)"
    )
    assert queued_ids(settings, redis_conn) == []
    assert set(redis_conn.scan_iter(f"{settings.queue_name}:*")) == before
    assert not (settings.model_dir / "77").exists()
    set_up(settings, 77)
    assert client.post("/train", json={"project": 77}).status_code == 202


@pytest.mark.parametrize(
    "body", [{"project": "x"}, {"project": 0}, {}, {"project": 1.5}, {"project": 10**18}, {"project": 2**64}]
)
def test_train_bad_input(client: TestClient, body: dict) -> None:
    assert_error(client.post("/train", json=body), 400, "project")


def test_the_router_alone_serves_from_the_dependencies_it_is_given(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Path
) -> None:
    other = replace(settings, model_dir=tmp_path / "elsewhere")
    version = publish_spam_model(other, project=3)
    overrides = {
        get_settings: other,
        get_store: ModelStore(other.model_dir),
        get_projects: ProjectLookup(other.model_dir, ProjectConfig.defaults(other)),
        get_jobs: Jobs(redis_conn, settings.queue_name, settings.job_timeout),
    }
    client = mount(pipelines.router, overrides)
    set_up(other, 4)
    resp = client.post("/train", json={"project": 4})
    assert resp.status_code == 202
    job_id = resp.json()["job_id"]
    assert queued_ids(settings, redis_conn) == [job_id]
    assert client.get(f"/jobs/{job_id}").json()["project"] == 4
    status = client.get("/projects/3/status").json()
    assert (status["current_version"], status["versions"]) == (version, [version])
    curve = client.get("/projects/3/learning-curve.png")
    assert curve.headers["content-type"] == "image/png" and curve.content.startswith(b"\x89PNG")
    assert_error(client.get("/projects/9/learning-curve.png"), 404, "project")

    without_queue = mount(pipelines.router, {**overrides, get_jobs: None})
    assert_error(without_queue.post("/train", json={"project": 4}), 503, None)
    assert_error(without_queue.get(f"/jobs/{job_id}"), 503, None)
