"""The Guard (backend.server.guard): Basic auth, the /train trigger token and the body-size limit.

Through the app as served, and around a bare ASGI app that records what reaches it: a refused
request must never reach the app, an accepted one must reach it with its whole body.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.server import Guard
from tests.serverkit import WEBHOOKS, assert_error, basic, client_for, predict_body, set_up, setup_body


@pytest.fixture
def client(settings: Settings, redis_conn: redis.Redis) -> TestClient:
    return client_for(settings)


def test_body_over_the_limit(settings: Settings, redis_conn: redis.Redis) -> None:
    client = client_for(replace(settings, max_body_bytes=2048))
    resp = client.post("/predict", json=predict_body(["x" * 5000]))
    assert_error(resp, 413, "body")
    # chunked upload without Content-Length is counted too
    resp = client.post("/webhook", content=iter([b"{" + b" " * 3000 + b"}"]))
    assert_error(resp, 413, "body")
    assert client.get("/health").status_code == 200


def test_trigger_token(settings: Settings, redis_conn: redis.Redis) -> None:
    client = client_for(replace(settings, trigger_token="t0ken"))
    set_up(settings, 1)
    assert_error(client.post("/train", json={"project": 1}), 401, "authorization")
    resp = client.post("/train", json={"project": 1}, headers={"Authorization": "Bearer wrong"})
    body = assert_error(resp, 401, "authorization")
    assert "t0ken" not in body["error"]
    assert client.post("/train", json={"project": 1}, headers={"Authorization": "Bearer t0ken"}).status_code == 202


def test_basic_auth_on_every_endpoint(settings: Settings, redis_conn: redis.Redis) -> None:
    client = client_for(replace(settings, basic_auth_user="ls", basic_auth_pass="s3cret"))
    set_up(settings, 1)
    calls = [
        ("get", "/health", None),
        ("post", "/setup", setup_body()),
        ("post", "/predict", predict_body(["a"])),
        ("post", "/webhook", WEBHOOKS["START_TRAINING"]),
        ("post", "/train", {"project": 1}),
        ("get", "/openapi.json", None),
    ]
    for method, path, body in calls:
        resp = getattr(client, method)(path, json=body) if body is not None else getattr(client, method)(path)
        assert_error(resp, 401, "authorization")
        assert resp.headers["www-authenticate"] == 'Basic realm="lsal"'
        wrong = getattr(client, method)(path, headers=basic("ls", "nope"), **({"json": body} if body else {}))
        assert wrong.status_code == 401
        ok = getattr(client, method)(path, headers=basic("ls", "s3cret"), **({"json": body} if body else {}))
        assert ok.status_code in (200, 202), (path, ok.text)


def call(guard: Guard, path: str, chunks: list[bytes], headers: list[tuple[bytes, bytes]] | None = None) -> int:
    """Send one request straight through the ASGI interface, its body in these chunks; the status."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": headers or []}
    asyncio.run(guard(scope, receive, send))
    return int(sent[0]["status"])


def test_the_guard_alone_refuses_before_the_app_and_replays_the_whole_body(settings: Settings) -> None:
    reached: list[tuple[str, bytes]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        reached.append((scope["path"], message["body"]))
        assert not message.get("more_body"), "the app gets the body in one message"
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guard = Guard(app, replace(settings, trigger_token="t0ken", max_body_bytes=100))
    bearer = [(b"authorization", b"Bearer t0ken")]
    assert call(guard, "/train", [b"{}"]) == 401
    assert call(guard, "/train", [b"{}"], [(b"authorization", b"Bearer t0ke")]) == 401
    assert call(guard, "/webhook", [b"a" * 60, b"b" * 60]) == 413  # chunked, no Content-Length
    assert call(guard, "/webhook", [b"{}"], [(b"content-length", b"101")]) == 413
    assert call(guard, "/webhook", [b"{}"], [(b"content-length", b"ten")]) == 400
    assert reached == []
    assert call(guard, "/train", [b"a" * 60, b"b" * 40], bearer) == 204
    assert call(guard, "/webhook", [b"{}"]) == 204  # no Basic auth configured
    assert reached == [("/train", b"a" * 60 + b"b" * 40), ("/webhook", b"{}")]
