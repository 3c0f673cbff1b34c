"""Shared helpers of the server tests: the app as the tests mount it, request bodies, a published model.

Webhook payloads are the ones captured from a real Label Studio 1.23.2 in
../shared/fixtures/label_studio_1.23.2_webhooks.json.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from rq import Queue

from backend import projects
from backend.config import Settings
from backend.labelconfig import parse_label_config
from backend.learner import Learner
from backend.server import Guard, create_app
from backend.server.app import add_error_handlers
from backend.store import ModelStore
from tests.conftest import FIXTURES

REPO = Path(__file__).resolve().parent.parent
SPAM_XML = (REPO / "label_config" / "spam.xml").read_text()
WEBHOOKS = json.loads((FIXTURES / "label_studio_1.23.2_webhooks.json").read_text())
FIXTURE_XML = WEBHOOKS["START_TRAINING"]["project"]["label_config"]


def client_for(settings: Settings) -> TestClient:
    """The FastAPI app behind the Guard, as `lsal serve` runs it minus the request metrics."""
    return TestClient(Guard(create_app(settings), settings), raise_server_exceptions=True)


def setup_body(project: Any = "3.1763717060", schema: str = SPAM_XML, extra: dict | None = None) -> dict:
    """A /setup body as Label Studio 1.23.2 sends it (with a legacy token that must never be stored)."""
    return {
        "project": project,
        "schema": schema,
        "hostname": "http://localhost:8080",
        "access_token": "legacy-token-never-logged",
        "extra_params": extra,
    }


def set_up(settings: Settings, *project_ids: int, schema: str = FIXTURE_XML) -> None:
    """Record projects as Label Studio's /setup would: webhooks for any other project are ignored."""
    for project in project_ids:
        projects.save(settings.model_dir, project, schema, None)


def publish_spam_model(settings: Settings, project: int = 3) -> str:
    """Train a small spam model and publish it as the project's current version; returns the version."""
    spec = parse_label_config(SPAM_XML)
    texts = [
        "WINNER!! claim your free prize now, call 09061701461",
        "Free entry in 2 a wkly comp to win FA Cup final tkts, text FA to 87121",
        "URGENT! You have won a 1 week FREE membership, call now",
        "Congratulations you won cash! reply WIN to claim",
        "Are you coming to dinner tonight?",
        "I'll call you later, in a meeting",
        "Ok lar... joking wif u oni",
        "See you at the station at 6",
    ]
    y = ["spam"] * 4 + ["no_spam"] * 4
    learner = Learner(spec, seed=0).fit(texts, y)
    store = ModelStore(settings.model_dir, keep=settings.keep_versions)
    return store.publish(project, learner.save, {"n_labels": len(y)})


def assert_error(resp: Any, status: int, field: str | None) -> dict:
    """Check an error answer: the status, exactly the keys error and field, and the field named."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error", "field"}
    assert body["field"] == field
    assert body["error"]
    return body


def predict_body(texts: list[str], project: Any = "3.1763717060", config: str | None = SPAM_XML) -> dict:
    """A /predict body as Label Studio 1.23.2 sends it, one task per text."""
    return {
        "tasks": [{"id": 100 + i, "data": {"text": t}, "project": 3} for i, t in enumerate(texts)],
        "project": project,
        "label_config": config,
        "params": {"login": None, "password": None, "context": None},
    }


def basic(user: str, password: str) -> dict[str, str]:
    """An HTTP Basic Authorization header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def queued_ids(settings: Settings, conn: redis.Redis) -> list[str]:
    """The ids of the jobs waiting in the test's queue."""
    return Queue(settings.queue_name, connection=conn).job_ids


def mount(router: APIRouter, overrides: dict[Callable[..., Any], Any]) -> TestClient:
    """One router alone on a bare app, with lsal's error answers and the given dependencies.

    A dependency left out is not on `app.state` either, so an endpoint that needs it fails:
    the overrides are exactly what the router needs.
    """
    app = FastAPI()
    add_error_handlers(app)
    app.include_router(router)
    for dependency, value in overrides.items():
        app.dependency_overrides[dependency] = _provider(value)
    return TestClient(app, raise_server_exceptions=False)


def _provider(value: Any) -> Callable[[], Any]:
    # A closure without parameters: FastAPI would read a parameter as a query argument.
    return lambda: value


def raw_health(port: int, extra_headers: bytes = b"") -> tuple[list[bytes], bytes]:
    """One `GET /health` on a new connection, as Label Studio checks: (header lines, body) as sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: lsal\r\n" + extra_headers + b"\r\n")
        received = b""
        while b"\r\n\r\n" not in received:
            received += sock.recv(65536)
        head, _, body = received.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        while len(body) < length:
            body += sock.recv(65536)
    return lines, body


def answered_at_accept(lines: list[bytes]) -> bool:
    """Whether a response's header lines are backend.server.quick's (not uvicorn's: no `server`)."""
    return b"connection: close" in lines and not any(line.lower().startswith(b"server:") for line in lines)
