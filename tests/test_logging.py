"""Logs: one line per request, JSON with LOG_FORMAT=json, and no secret in any line.

The end-to-end case runs a real `lsal serve` at LOG_LEVEL=DEBUG, sends requests that carry every
kind of credential lsal meets (Basic auth, a wrong Basic password, the trigger token, /setup's
access_token, a webhook's project.token and task_data_password, a token in a query string and in a
malformed body) and searches everything the process printed.
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from backend.config import Settings
from backend.logs import configure, redact
from tests.conftest import FIXTURES, REPO, settings_env

R = "[redacted]"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# -- redact ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Basic dXNlcjpwYXNz", f"Authorization: Basic {R}"),
        ("authorization=Bearer abc.def", f"authorization=Bearer {R}"),
        ("('Authorization', 'Token abc123')", f"('Authorization', 'Token {R}')"),
        (  # headers as printed from an ASGI scope
            "[(b'host', b'x'), (b'authorization', b'Basic dXNlcjpwYXNz')]",
            f"[(b'host', b'x'), (b'authorization', b'Basic {R}')]",
        ),
        ("{'access_token': 'abc123', 'n': 3}", f"{{'access_token': '{R}', 'n': 3}}"),
        ('{"token": "t0k", "x": 1}', f'{{"token": "{R}", "x": 1}}'),
        ("LABEL_STUDIO_API_KEY=ls-key-1 next", f"LABEL_STUDIO_API_KEY={R} next"),
        ("BASIC_AUTH_PASS=hunter22 next", f"BASIC_AUTH_PASS={R} next"),
        ("x-api-key: k-123", f"x-api-key: {R}"),
        ('{"refresh": "r-1"}', f'{{"refresh": "{R}"}}'),
        ("redis://:s3cret@redis:6379/0", f"redis://:{R}@redis:6379/0"),
        ("https://user:pw@ls.example.org/api", f"https://user:{R}@ls.example.org/api"),
        ("got eyJhbGciOiJIUzI1.eyJzdWIiOiIxMjM0.SflKxwRJSMeKKF2QT4 back", f"got {R} back"),
        # what lsal logs on purpose stays as it is
        ("project=3 stage=fit seconds=0.100", "project=3 stage=fit seconds=0.100"),
        ("method=POST route=/webhook status=200 ms=1.3", "method=POST route=/webhook status=200 ms=1.3"),
        ("tokens=5 passed=3", "tokens=5 passed=3"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_configured_secrets_are_masked_whatever_surrounds_them() -> None:
    from backend.logs import known_secrets

    secrets = known_secrets("ls-api-key-Zq81xK", ("admin", "pw-S3cr3t"), "trig-T0ken")
    basic = base64.b64encode(b"admin:pw-S3cr3t").decode()
    assert set(secrets) == {"ls-api-key-Zq81xK", "pw-S3cr3t", "trig-T0ken", basic}
    assert redact(f"oops ls-api-key-Zq81xK|pw-S3cr3t {basic}; trig-T0ken.", secrets) == f"oops {R}|{R} {R}; {R}."
    assert known_secrets("abc", None, "") == ()  # too short to mask safely (would hit ordinary words)


def test_text_and_json_formatters_redact_messages_and_tracebacks(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.logs import known_secrets

    secrets = known_secrets("ls-api-key-Zq81xK")
    log = logging.getLogger("lsal.test")
    configure("DEBUG", "text", secrets)
    log.info("calling with key ls-api-key-Zq81xK")
    text_line = capsys.readouterr().err.strip()
    assert text_line.endswith(f"INFO lsal.test: calling with key {R}")
    configure("DEBUG", "json", secrets)
    try:
        raise ValueError("bad token=abc123 and ls-api-key-Zq81xK")
    except ValueError:
        log.exception("failed with Authorization: Bearer xyz")
    line = capsys.readouterr().err.strip()
    entry = json.loads(line)
    assert set(entry) == {"time", "level", "logger", "message", "exception"}
    assert (entry["level"], entry["logger"]) == ("ERROR", "lsal.test")
    assert entry["message"] == f"failed with Authorization: Bearer {R}"
    assert entry["exception"].endswith(f"ValueError: bad token={R} and {R}")
    assert "abc123" not in line and "xyz" not in line and "Zq81xK" not in line


# -- a real server, every credential, every line it prints --------------------------------------

USER, PASSWORD, WRONG = "lsaladmin", "pw-S3cr3t-basic-7781", "pw-Wr0ng-guess-5512"
API_KEY, TRIGGER = "ls-api-key-Zq81xKv0", "trig-T0ken-9931aa"
ACCESS_TOKEN, PROJECT_TOKEN, TASK_DATA_PASSWORD = "setup-access-T0ken-4455", "proj-T0ken-6677", "tdp-S3cret-2288"
QUERY_SECRET, BODY_SECRET = "query-S3cret-1357", "body-S3cret-2468"
SECRETS = [
    PASSWORD,
    WRONG,
    API_KEY,
    TRIGGER,
    ACCESS_TOKEN,
    PROJECT_TOKEN,
    TASK_DATA_PASSWORD,
    QUERY_SECRET,
    BODY_SECRET,
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    base64.b64encode(f"{USER}:{WRONG}".encode()).decode(),
]
SPAM_XML = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="label" toName="text"><Choice value="spam"/><Choice value="ham"/></Choices></View>'
)
JOB_ID = "0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def exercise(base: str) -> list[tuple[str, str, int]]:
    """Send requests carrying every credential; return (method, route, status) as expected in the log."""
    auth = (USER, PASSWORD)
    fixtures = json.loads((FIXTURES / "label_studio_1.23.2_webhooks.json").read_text())
    webhook = copy.deepcopy(fixtures["ANNOTATION_CREATED"])
    webhook["project"]["token"] = PROJECT_TOKEN
    webhook["project"]["task_data_password"] = TASK_DATA_PASSWORD
    setup = {
        "project": "3.1763717060",
        "schema": SPAM_XML,
        "hostname": "http://localhost:8080",
        "access_token": ACCESS_TOKEN,
        "extra_params": None,
    }
    bad_setup = {**setup, "extra_params": {"token": ACCESS_TOKEN}}  # rejected: unknown key
    calls = [
        ("GET", "/health", 200, requests.get(f"{base}/health", auth=auth, timeout=10)),
        ("GET", "/health", 200, requests.get(f"{base}/health?token={QUERY_SECRET}", auth=auth, timeout=10)),
        ("GET", "/health", 401, requests.get(f"{base}/health", auth=(USER, WRONG), timeout=10)),
        ("POST", "/setup", 200, requests.post(f"{base}/setup", json=setup, auth=auth, timeout=10)),
        ("POST", "/setup", 400, requests.post(f"{base}/setup", json=bad_setup, auth=auth, timeout=10)),
        ("POST", "/webhook", 200, requests.post(f"{base}/webhook", json=webhook, auth=auth, timeout=10)),
        (
            "POST",
            "/webhook",
            400,
            requests.post(f"{base}/webhook", data=f'{{"action": "X", "token": "{BODY_SECRET}"', auth=auth, timeout=10),
        ),
        (
            "POST",
            "/train",
            202,
            requests.post(
                f"{base}/train", json={"project": 3}, headers={"Authorization": f"Bearer {TRIGGER}"}, timeout=10
            ),
        ),
        ("GET", "/jobs/{job_id}", 404, requests.get(f"{base}/jobs/{JOB_ID}", auth=auth, timeout=10)),
    ]
    for method, route, status, resp in calls:
        assert resp.status_code == status, (method, route, resp.text)
    return [(method, route, status) for method, route, status, _ in calls]


@pytest.mark.integration
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_debug_server_logs_each_request_once_and_never_a_secret(
    fmt: str, settings: Settings, redis_conn: object, tmp_path: Path
) -> None:
    settings = replace(
        settings,
        basic_auth_user=USER,
        basic_auth_pass=PASSWORD,
        trigger_token=TRIGGER,
        label_studio_api_key=API_KEY,
    )
    env = {**settings_env(settings), "LOG_LEVEL": "DEBUG", "LOG_FORMAT": fmt}
    port = free_port()
    out_path = tmp_path / "server.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, out_path.read_text(errors="replace")
                assert time.monotonic() < deadline, out_path.read_text(errors="replace")
                try:
                    requests.get(f"{base}/", auth=(USER, PASSWORD), timeout=1)
                    break
                except requests.RequestException:
                    time.sleep(0.2)
            expected = [("GET", "/", 200), *exercise(base)]
            # A request's line is written just after its response is sent: wait for all of them.
            deadline = time.monotonic() + 20
            while out_path.read_text(errors="replace").count("route=") < len(expected):
                assert time.monotonic() < deadline, out_path.read_text(errors="replace")
                time.sleep(0.1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    output = out_path.read_text(errors="replace")
    leaked = [s for s in SECRETS if s in output]
    assert leaked == [], f"secrets in the log: {leaked}"

    lines = [line for line in output.splitlines() if line.strip()]
    pattern = re.compile(r"method=(\S+) route=(\S+) status=(\d+) ms=\d+\.\d")
    if fmt == "json":
        entries = [json.loads(line) for line in lines]  # every line, uvicorn's included, is JSON
        assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
        requests_logged = [e["message"] for e in entries if e["logger"] == "lsal.http"]
    else:
        requests_logged = [line.split("lsal.http: ", 1)[1] for line in lines if " lsal.http: " in line]
    seen = [pattern.fullmatch(message) for message in requests_logged]
    assert all(seen), requests_logged
    # Sorted: each request has its own connection, so two lines may be written in either order.
    assert sorted((m.group(1), m.group(2), int(m.group(3))) for m in seen if m) == sorted(expected)
