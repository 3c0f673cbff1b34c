"""backend.server.quick: `GET /health` answered at accept, exactly as the app answers it."""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from fastapi.testclient import TestClient

from backend.config import Settings
from backend.server.app import build_app
from backend.server.quick import QuickHealth
from tests.conftest import LsalServer, wait_for
from tests.serverkit import answered_at_accept, raw_health

PASSWORD = "quick-pass-not-a-secret"
HEALTH = b"GET /health HTTP/1.1\r\nHost: lsal\r\nAccept: */*\r\n\r\n"


def _quick(settings: Settings) -> tuple[QuickHealth, Any]:
    served = build_app(settings)
    quick: QuickHealth = served.app.app.state.quick_health  # RequestMetrics -> Guard -> FastAPI
    return quick, served


def _answer(quick: QuickHealth, head: bytes, *, ping_first: bool = True) -> bytes | None:
    """quick.answer(head) on a running loop, after the probe's first PING (unless told not to)."""

    async def scenario() -> bytes | None:
        if ping_first:
            probe_state = quick.app.state.redis
            from backend.server.protocol import redis_probe

            await redis_probe(quick.app, probe_state).state()
        return quick.answer(head)

    return asyncio.run(scenario())


def _split(response: bytes) -> tuple[list[bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


def test_the_answer_is_the_apps_answer(settings: Settings, redis_conn: redis.Redis) -> None:
    quick, served = _quick(settings)
    response = _answer(quick, HEALTH)
    assert response is not None
    lines, body = _split(response)
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"connection: close" in lines
    assert b"content-length: %d" % len(body) in lines
    assert body == TestClient(served).get("/health").content  # the same bytes as the route's
    assert json.loads(body)["redis"] == "ok"


def test_it_is_counted_and_logged_as_the_app_would(
    settings: Settings, redis_conn: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    quick, _ = _quick(settings)
    with caplog.at_level("INFO", logger="lsal.http"):
        assert _answer(quick, HEALTH) is not None
    assert any(r.getMessage().startswith("method=GET route=/health status=200 ms=") for r in caplog.records)
    counted = quick.app.state.metrics.requests.labels("GET", "/health", "200")._sum.get()
    assert counted > 0


@pytest.mark.parametrize(
    "head",
    [
        b"GET /health HTTP/1.1\r\nHost: lsal\r\n",  # headers not complete yet
        HEALTH + b"GET /health HTTP/1.1\r\n\r\n",  # a pipelined second request
        b"GET /health?verbose=1 HTTP/1.1\r\nHost: lsal\r\n\r\n",
        b"POST /health HTTP/1.1\r\nHost: lsal\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: lsal\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: lsal\r\nContent-Length: 0\r\n\r\n",
        b"GET /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /health HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost : lsal\r\n\r\n",
        b"GET /health HTTP/2\r\nHost: lsal\r\n\r\n",
    ],
    ids=[
        "partial",
        "pipelined",
        "query",
        "post",
        "other-path",
        "content-length",
        "chunked",
        "no-colon",
        "space-before-colon",
        "http2",
    ],  # fmt: skip
)
def test_anything_but_one_plain_get_health_goes_to_the_app(
    settings: Settings, redis_conn: redis.Redis, head: bytes
) -> None:
    quick, _ = _quick(settings)
    assert _answer(quick, head) is None


def test_with_basic_auth_only_the_right_credentials_are_answered(settings: Settings, redis_conn: redis.Redis) -> None:
    quick, _ = _quick(replace(settings, basic_auth_user="ls", basic_auth_pass=PASSWORD))
    good = base64.b64encode(f"ls:{PASSWORD}".encode())
    bad = base64.b64encode(b"ls:wrong")

    def head(*extra: bytes) -> bytes:
        return b"GET /health HTTP/1.1\r\nHost: lsal\r\n" + b"".join(extra) + b"\r\n"

    assert _answer(quick, head()) is None  # the app answers the 401 and its challenge
    assert _answer(quick, head(b"Authorization: Basic " + bad + b"\r\n")) is None
    assert (
        _answer(quick, head(b"authorization: Basic " + good + b"\r\n", b"Authorization: Basic " + good + b"\r\n"))
        is None
    )
    assert _answer(quick, head(b"Authorization: Basic " + good + b"\r\n")) is not None


def test_before_the_first_ping_answers_the_app_waits_for_it(settings: Settings, redis_conn: redis.Redis) -> None:
    quick, _ = _quick(settings)
    assert _answer(quick, HEALTH, ping_first=False) is None


def test_without_redis_it_says_not_configured(settings: Settings) -> None:
    quick, _ = _quick(replace(settings, redis_url=""))
    response = _answer(quick, HEALTH, ping_first=False)
    assert response is not None
    assert json.loads(_split(response)[1])["redis"] == "not configured"


@pytest.mark.integration
def test_lsal_serve_answers_health_at_accept_and_everything_else_through_the_app(
    settings: Settings, tmp_path: Path, redis_conn: redis.Redis
) -> None:
    """A real `lsal serve` with Basic auth: an authorized /health on a new connection is answered at
    accept (no uvicorn `server` header, `connection: close`); one without credentials gets the
    app's 401 and its challenge; other routes are untouched."""
    s = replace(settings, basic_auth_user="ls", basic_auth_pass=PASSWORD)
    auth = b"Authorization: Basic " + base64.b64encode(f"ls:{PASSWORD}".encode()) + b"\r\n"
    server = LsalServer(s, tmp_path / "server.log")
    try:
        # Each HTTP process PINGs Redis before it serves, so every /health it accepts is answered there.
        wait_for(lambda: answered_at_accept(raw_health(server.port, auth)[0]), 10, 0.1, "a /health answered at accept")
        for lines, body in [raw_health(server.port, auth) for _ in range(4)]:
            assert lines[0] == b"HTTP/1.1 200 OK"
            assert answered_at_accept(lines)
            assert json.loads(body)["status"] == "UP"
        refused = requests.get(f"{server.url}/health", timeout=10)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Basic realm="lsal"'
        root = requests.get(f"{server.url}/", auth=("ls", PASSWORD), timeout=10)
        assert root.status_code == 200 and root.json()["name"] == "lsal"
    finally:
        server.stop()
    log = server.log()
    assert log.count("route=/health status=200") >= 5  # each counted and logged
    assert "Traceback" not in log
