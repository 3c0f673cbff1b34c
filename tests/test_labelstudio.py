"""backend.labelstudio: against a real Label Studio 1.23.2 (e2e) and a stand-in server for faults."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from backend.labelstudio import (
    LabelStudioClient,
    LabelStudioError,
    LabelStudioUnavailable,
    is_jwt,
    jwt_claims,
)
from tests.lsharness import LabelStudio, choice_result, create_annotation, create_project, free_port, import_tasks

# ---------------------------------------------------------------------- a scripted stand-in server


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    hold: threading.Event | None = None  # wait for this event before answering (timeouts)


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any


Responder = Callable[[Seen], Reply]


class StandIn:
    """A local HTTP server that answers from a script and records every request."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply] | Responder] = {}
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                seen = Seen(self.command, parts.path, parts.query, dict(self.headers.items()),
                            json.loads(raw) if raw else None)  # fmt: skip
                outer.seen.append(seen)
                route = outer.routes.get((self.command, parts.path))
                if route is None:
                    reply = Reply(404, {"detail": "Not found."})
                elif callable(route):
                    reply = route(seen)
                else:
                    reply = route.pop(0) if len(route) > 1 else route[0]
                if reply.hold is not None:
                    reply.hold.wait(10)
                data = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json" if reply.raw is None else "text/html")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def route(self, method: str, path: str, *replies: Reply) -> None:
        self.routes[(method, path)] = list(replies)

    def calls(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    s = StandIn()
    yield s
    s.close()


LEGACY_KEY = "0123456789abcdef0123456789abcdef01234567"


def make_jwt(token_type: str, exp: float, jti: str = "j1") -> str:
    def b64(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    payload = {"token_type": token_type, "exp": int(exp), "iat": int(time.time()), "jti": jti, "user_id": "1"}
    return f"{b64({'alg': 'HS256', 'typ': 'JWT'})}.{b64(payload)}.c2lnbmF0dXJl{jti}"


PAT = make_jwt("refresh", time.time() + 10 * 365 * 86400, jti="patpatpat")


def ls_error(status: int, detail: str, **extra: Any) -> Reply:
    """An error body exactly as Label Studio 1.23.2 shapes it."""
    body = {"id": "5f10e62b-f84b-4dce-9585-d995ed0575a0", "status_code": status, "version": "1.23.2",
            "detail": detail, "exc_info": None, **extra}  # fmt: skip
    return Reply(status, body)


def client_for(url: str, key: str = LEGACY_KEY, **kw: Any) -> LabelStudioClient:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5.0)
    return LabelStudioClient(url, key, **kw)


# ---------------------------------------------------------------------- pure helpers


def test_is_jwt_and_claims() -> None:
    assert is_jwt(PAT)
    assert not is_jwt(LEGACY_KEY)
    assert not is_jwt("a.b")
    assert jwt_claims(PAT)["token_type"] == "refresh"
    assert jwt_claims("x.!!!.y") == {}
    assert jwt_claims(LEGACY_KEY) == {}


def test_auth_kind_from_key_shape() -> None:
    assert LabelStudioClient("http://x", LEGACY_KEY).auth_kind == "legacy"
    assert LabelStudioClient("http://x", PAT).auth_kind == "pat"
    assert LabelStudioClient("http://x", make_jwt("access", time.time() + 300)).auth_kind == "access"
    assert LEGACY_KEY not in repr(LabelStudioClient("http://x", LEGACY_KEY))


def test_constructor_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="http"):
        LabelStudioClient("localhost:8080", LEGACY_KEY)
    with pytest.raises(ValueError, match="empty"):
        LabelStudioClient("http://x", "  ")


# ---------------------------------------------------------------------- faults (stand-in server)


def test_5xx_then_success_is_retried(standin: StandIn) -> None:
    standin.route("GET", "/api/projects/1", ls_error(503, "busy"), ls_error(502, "bad gateway"),
                  Reply(200, {"id": 1, "title": "p"}))  # fmt: skip
    assert client_for(standin.url).get_project(1) == {"id": 1, "title": "p"}
    calls = standin.calls("GET", "/api/projects/1")
    assert len(calls) == 3
    assert all(c.headers["Authorization"] == f"Token {LEGACY_KEY}" for c in calls)


def test_5xx_on_prediction_import_is_retried(standin: StandIn) -> None:
    standin.route("POST", "/api/projects/3/import/predictions", ls_error(500, "Server error"),
                  Reply(201, {"created": 2}))  # fmt: skip
    preds = [{"task": t, "result": [], "score": 0.5, "model_version": "v"} for t in (1, 2)]
    assert client_for(standin.url).import_predictions(3, preds) == 2
    assert [c.body for c in standin.calls("POST", "/api/projects/3/import/predictions")] == [preds, preds]


def test_5xx_after_all_retries_raises_unavailable(standin: StandIn) -> None:
    standin.route("GET", "/api/projects/1", ls_error(500, "Server error"))
    with pytest.raises(LabelStudioUnavailable) as info:
        client_for(standin.url, retries=2).get_project(1)
    assert info.value.status == 500
    assert len(standin.calls("GET", "/api/projects/1")) == 3
    assert str(info.value) == "GET /api/projects/1 -> 500: Server error"


def test_5xx_on_non_idempotent_post_is_not_retried(standin: StandIn) -> None:
    standin.route("POST", "/api/ml", ls_error(500, "Server error"))
    with pytest.raises(LabelStudioUnavailable) as info:
        client_for(standin.url).create_ml_backend(4, "http://backend:9090")
    assert info.value.status == 500
    assert len(standin.calls("POST", "/api/ml")) == 1


def test_4xx_is_not_retried_and_names_call_and_reason(standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    standin.route("PATCH", "/api/projects/7", ls_error(400, "Validation error", validation_errors={
        "model_version": ["Model version doesn't exist either as live model or as static predictions."]}))  # fmt: skip
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabelStudioError) as info:
        client_for(standin.url).update_project(7, model_version="v9")
    err = info.value
    assert not isinstance(err, LabelStudioUnavailable)
    assert err.status == 400
    assert (err.method, err.path) == ("PATCH", "/api/projects/7")
    assert str(err) == (
        'PATCH /api/projects/7 -> 400: Validation error {"model_version": ["Model version doesn\'t exist '
        'either as live model or as static predictions."]}'
    )
    assert len(standin.calls("PATCH", "/api/projects/7")) == 1
    assert LEGACY_KEY not in str(err)
    assert LEGACY_KEY not in caplog.text


def test_non_json_error_body_is_summarised(standin: StandIn) -> None:
    standin.route("GET", "/api/projects/1/next", Reply(404, raw=b"<!doctype html><html>nope</html>"))
    with pytest.raises(LabelStudioError) as info:
        client_for(standin.url).next_task(1)
    assert info.value.status == 404
    assert str(info.value) == "GET /api/projects/1/next -> 404: non-JSON answer (text/html, 32 bytes)"


def test_connection_refused_raises_unavailable_after_retries(caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[str] = []

    class CountingSession(requests.Session):
        def request(self, method: str | bytes, url: str | bytes, *a: Any, **kw: Any) -> requests.Response:
            attempts.append(str(method))
            return super().request(method, url, *a, **kw)

    caplog.set_level(logging.DEBUG)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = client_for(url, retries=2, session=CountingSession())
    with pytest.raises(LabelStudioUnavailable) as info:
        client.get_project(1)
    assert info.value.status is None
    assert attempts == ["GET"] * 3
    assert str(info.value).startswith(f"GET /api/projects/1 -> no answer from Label Studio at {url}: ")
    # a POST that never left is retried too: it cannot have been applied
    attempts.clear()
    with pytest.raises(LabelStudioUnavailable):
        client.create_ml_backend(1, "http://backend:9090")
    assert attempts == ["POST"] * 3
    assert not client.health()
    assert LEGACY_KEY not in caplog.text


def test_read_timeout_retries_get_but_not_a_non_idempotent_post(standin: StandIn) -> None:
    release = threading.Event()
    standin.route("GET", "/api/projects/1", Reply(200, {"id": 1}, hold=release), Reply(200, {"id": 1}))
    standin.route("POST", "/api/ml", Reply(201, {"id": 5}, hold=release))
    client = client_for(standin.url, timeout=0.5, retries=1)
    try:
        assert client.get_project(1) == {"id": 1}
        with pytest.raises(LabelStudioUnavailable) as info:
            client.create_ml_backend(1, "http://backend:9090")
    finally:
        release.set()
    assert len(standin.calls("GET", "/api/projects/1")) == 2
    assert len(standin.calls("POST", "/api/ml")) == 1
    assert "not retried: the request may have been applied" in str(info.value)


def _token_server(standin: StandIn, accesses: list[str]) -> None:
    """/api/token/refresh/ hands out ``accesses`` in order; the API accepts only the latest one."""
    issued: list[str] = []

    def refresh(seen: Seen) -> Reply:
        if seen.body != {"refresh": PAT}:
            return ls_error(401, "Token is invalid")
        issued.append(accesses[len(issued)])
        return Reply(200, {"access": issued[-1]})

    def project(seen: Seen) -> Reply:
        if issued and seen.headers.get("Authorization") == f"Bearer {issued[-1]}":
            return Reply(200, {"id": 1})
        return ls_error(401, "Given token not valid for any token type", code="token_not_valid")

    standin.routes[("POST", "/api/token/refresh/")] = refresh
    standin.routes[("GET", "/api/projects/1")] = project


def test_pat_is_refreshed_to_a_bearer_access_token(standin: StandIn) -> None:
    a1 = make_jwt("access", time.time() + 300, "a1")
    _token_server(standin, [a1])
    client = client_for(standin.url, PAT)
    assert client.get_project(1) == {"id": 1}
    assert client.get_project(1) == {"id": 1}
    assert len(standin.calls("POST", "/api/token/refresh/")) == 1  # the access token is reused
    assert "Authorization" not in standin.calls("POST", "/api/token/refresh/")[0].headers
    assert [c.headers["Authorization"] for c in standin.calls("GET", "/api/projects/1")] == [f"Bearer {a1}"] * 2


def test_access_token_is_refreshed_before_it_expires(standin: StandIn) -> None:
    a1 = make_jwt("access", time.time() + 5, "a1")  # inside the refresh margin
    a2 = make_jwt("access", time.time() + 300, "a2")
    _token_server(standin, [a1, a2])
    client = client_for(standin.url, PAT)
    assert client.get_project(1) == {"id": 1}
    assert client.get_project(1) == {"id": 1}
    assert len(standin.calls("POST", "/api/token/refresh/")) == 2
    assert [c.headers["Authorization"] for c in standin.calls("GET", "/api/projects/1")] == [
        f"Bearer {a1}",
        f"Bearer {a2}",
    ]


def test_401_on_an_access_token_refreshes_once_and_retries(standin: StandIn) -> None:
    a1 = make_jwt("access", time.time() + 300, "a1")
    a2 = make_jwt("access", time.time() + 300, "a2")
    _token_server(standin, [a1, a2])
    client = client_for(standin.url, PAT)
    assert client.get_project(1) == {"id": 1}
    standin.routes[("GET", "/api/projects/1")] = lambda seen: (
        Reply(200, {"id": 1}) if seen.headers["Authorization"] == f"Bearer {a2}" else ls_error(401, "expired")
    )
    assert client.get_project(1) == {"id": 1}  # a1 "expired" server-side: one refresh, same call again
    assert len(standin.calls("POST", "/api/token/refresh/")) == 2
    assert [c.headers["Authorization"] for c in standin.calls("GET", "/api/projects/1")] == [
        f"Bearer {a1}",
        f"Bearer {a1}",
        f"Bearer {a2}",
    ]


def test_persistent_401_refreshes_only_once(standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    _token_server(standin, [make_jwt("access", time.time() + 300, f"a{i}") for i in range(5)])
    standin.route("GET", "/api/projects/1", ls_error(401, "Authentication credentials were not provided."))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabelStudioError) as info:
        client_for(standin.url, PAT).get_project(1)
    assert info.value.status == 401
    assert len(standin.calls("POST", "/api/token/refresh/")) == 2
    assert len(standin.calls("GET", "/api/projects/1")) == 2
    assert PAT not in str(info.value)
    assert PAT not in caplog.text


def test_rejected_pat_raises_401_without_the_key(standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    standin.route("POST", "/api/token/refresh/", ls_error(401, "Token is invalid"))
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabelStudioError) as info:
        client_for(standin.url, PAT).get_project(1)
    assert info.value.status == 401
    assert str(info.value) == (
        "POST /api/token/refresh/ -> 401: Token is invalid (Label Studio rejected the personal access token; "
        "create a new one in Account settings)"
    )
    assert standin.calls("GET", "/api/projects/1") == []
    assert PAT not in caplog.text


def test_secret_echoed_by_the_server_is_redacted(standin: StandIn) -> None:
    standin.route("GET", "/api/projects/1", ls_error(403, f"token {LEGACY_KEY} may not do this"))
    with pytest.raises(LabelStudioError) as info:
        client_for(standin.url).get_project(1)
    assert str(info.value) == "GET /api/projects/1 -> 403: token *** may not do this"
    assert info.value.detail == "token *** may not do this"


def test_iter_tasks_stops_at_total_and_survives_a_404_page(standin: StandIn) -> None:
    pages = {1: [{"id": 1}, {"id": 2}], 2: [{"id": 3}, {"id": 4}]}

    def tasks(seen: Seen) -> Reply:
        q = dict(p.split("=", 1) for p in seen.query.split("&"))
        page = int(q["page"])
        if page in pages:
            return Reply(200, {"total": 5, "total_annotations": 0, "total_predictions": 0, "tasks": pages[page]})
        return ls_error(404, "Invalid page.")

    standin.routes[("GET", "/api/tasks")] = tasks
    # total says 5 but the third page is gone (deleted meanwhile): iteration ends, no error
    assert [t["id"] for t in client_for(standin.url).iter_tasks(1, page_size=2)] == [1, 2, 3, 4]
    assert len(standin.calls("GET", "/api/tasks")) == 3


def test_import_predictions_warns_when_items_are_dropped(standin: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    standin.route("POST", "/api/projects/2/import/predictions", Reply(201, {"created": 2}))
    preds = [{"task": t, "result": [], "score": 0.1, "model_version": "v"} for t in range(5)]
    with caplog.at_level(logging.WARNING, logger="backend.labelstudio"):
        assert client_for(standin.url).import_predictions(2, preds, chunk_size=2) == 6
    bodies = [c.body for c in standin.calls("POST", "/api/projects/2/import/predictions")]
    assert bodies == [preds[0:2], preds[2:4], preds[4:5]]
    assert "created 6 of 5 predictions in project 2" in caplog.text
    assert client_for(standin.url).import_predictions(2, []) == 0
    assert len(standin.calls("POST", "/api/projects/2/import/predictions")) == 3


# ---------------------------------------------------------------------- real Label Studio 1.23.2

e2e = pytest.mark.e2e


@pytest.fixture(scope="module")
def ls(label_studio: LabelStudio) -> LabelStudio:  # module-scoped fixture from tests/lsharness.py
    return label_studio


@pytest.fixture(scope="module")
def client(ls: LabelStudio) -> Iterator[LabelStudioClient]:
    with LabelStudioClient(ls.url, ls.legacy_token, backoff=0.1) as c:
        yield c


@pytest.fixture(scope="module")
def pat_client(ls: LabelStudio) -> Iterator[LabelStudioClient]:
    assert ls.pat is not None
    with LabelStudioClient(ls.url, ls.pat, backoff=0.1) as c:
        yield c


_counter = iter(range(1, 10_000))


@pytest.fixture
def project(client: LabelStudioClient) -> tuple[int, list[int]]:
    """A fresh Choices/Text project with 30 tasks: (project id, task ids)."""
    pid = create_project(client, f"lsal test {next(_counter)}")
    ids = import_tasks(client, pid, [{"text": f"task number {i}"} for i in range(30)])
    return pid, ids


def predictions(tasks: list[int], version: str, scores: list[float], label: str = "pos") -> list[dict[str, Any]]:
    return [
        {"task": t, "result": choice_result(label), "score": s, "model_version": version}
        for t, s in zip(tasks, scores, strict=True)
    ]


@e2e
def test_health_and_both_auth_kinds(ls: LabelStudio, client: LabelStudioClient, pat_client: LabelStudioClient) -> None:
    assert client.health()
    assert client.auth_kind == "legacy"
    assert client.current_user()["email"] == ls.email
    assert pat_client.auth_kind == "pat"
    assert pat_client.current_user()["email"] == ls.email
    assert ls.pat is not None
    # what the client must avoid: LS refuses the PAT itself, as Token and as Bearer
    for scheme in ("Token", "Bearer"):
        r = requests.get(ls.url + "/api/current-user/whoami", headers={"Authorization": f"{scheme} {ls.pat}"})
        assert r.status_code == 401


@e2e
def test_pat_refresh_against_real_label_studio(ls: LabelStudio) -> None:
    assert ls.pat is not None
    c = LabelStudioClient(ls.url, ls.pat, backoff=0.1)
    assert c.current_user()["email"] == ls.email
    first = c._access
    assert first is not None and first != ls.pat
    assert jwt_claims(first)["token_type"] == "access"
    # an access token LS no longer accepts (bad signature): 401 -> one refresh -> success
    header, payload, _sig = first.split(".")
    c._access = f"{header}.{payload}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    assert c.current_user()["email"] == ls.email
    assert c._access not in (first, None) and c._access.split(".")[2] != "A" * 43
    # due for refresh: refreshed before the call
    second = c._access
    c._access_exp = time.time()
    assert c.current_user()["email"] == ls.email
    assert c._access != second


@e2e
def test_wrong_keys_give_401_without_leaking(ls: LabelStudio, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    bad_legacy = "f" * 40
    with pytest.raises(LabelStudioError) as info:
        LabelStudioClient(ls.url, bad_legacy).current_user()
    assert info.value.status == 401
    assert str(info.value).startswith("GET /api/current-user/whoami -> 401: Invalid token.")
    assert bad_legacy not in str(info.value)
    assert ls.pat is not None
    header, payload, _sig = ls.pat.split(".")
    forged = f"{header}.{payload}.{'B' * 43}"
    with pytest.raises(LabelStudioError) as info:
        LabelStudioClient(ls.url, forged).current_user()
    assert info.value.status == 401
    assert info.value.path == "/api/token/refresh/"
    assert forged not in str(info.value) and ls.pat not in str(info.value)
    assert forged not in caplog.text and ls.legacy_token not in caplog.text


@e2e
def test_iter_tasks_pages_stop_at_total(client: LabelStudioClient, project: tuple[int, list[int]]) -> None:
    pid, ids = project
    assert len(ids) == 30
    pages: list[int] = []

    class Recording(requests.Session):
        def request(self, method: str | bytes, url: str | bytes, *a: Any, **kw: Any) -> requests.Response:
            if str(url).endswith("/api/tasks"):
                pages.append(int(kw["params"]["page"]))
            return super().request(method, url, *a, **kw)

    c = LabelStudioClient(client.url, client._key, session=Recording())
    tasks = list(c.iter_tasks(pid, page_size=7))
    assert [t["id"] for t in tasks] == ids
    assert tasks[0] == {"id": ids[0], "data": {"text": "task number 0"}}
    assert pages == [1, 2, 3, 4, 5]
    pages.clear()
    assert [t["id"] for t in c.iter_tasks(pid, page_size=10)] == ids
    assert pages == [1, 2, 3]  # stops at total: no request for a 4th page
    full = next(c.iter_tasks(pid, page_size=1, include=None))
    assert full["id"] == ids[0] and full["total_annotations"] == 0 and full["is_labeled"] is False


@e2e
def test_only_unlabeled_and_labeled_tasks(client: LabelStudioClient, project: tuple[int, list[int]]) -> None:
    pid, ids = project
    a0 = create_annotation(client, ids[0], choice_result("pos"))
    a1 = create_annotation(client, ids[1], choice_result("neg"))
    a2 = create_annotation(client, ids[2], [], was_cancelled=True)
    # a skipped task is still unlabeled: it has no submitted annotation
    assert [t["id"] for t in client.iter_tasks(pid, page_size=4, only_unlabeled=True)] == ids[2:]
    labeled = client.labeled_tasks(pid)
    assert [t["id"] for t in labeled] == ids[:3]
    assert [t["data"]["text"] for t in labeled] == ["task number 0", "task number 1", "task number 2"]
    assert [[a["id"] for a in t["annotations"]] for t in labeled] == [[a0["id"]], [a1["id"]], [a2["id"]]]
    assert [t["annotations"][0]["was_cancelled"] for t in labeled] == [False, False, True]
    assert [t["annotations"][0]["result"] for t in labeled] == [choice_result("pos"), choice_result("neg"), []]
    assert set(labeled[0]["annotations"][0]) == {
        "id", "result", "was_cancelled", "ground_truth", "created_at", "updated_at", "completed_by", "lead_time"
    }  # fmt: skip
    assert labeled[0]["annotations"][0]["ground_truth"] is False
    # By id (ids[] of the export, in chunks): only labeled tasks among those asked, none of another id.
    by_id = client.labeled_tasks(pid, [ids[2], ids[5], ids[0], 99_999_999], chunk_size=2)
    assert by_id == [labeled[0], labeled[2]]
    assert client.labeled_tasks(pid, []) == []


@e2e
def test_import_predictions_counts_and_rejections(
    client: LabelStudioClient, project: tuple[int, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    pid, ids = project
    assert client.import_predictions(pid, predictions(ids[:10], "v1", [0.5] * 10)) == 10
    assert client.model_versions(pid) == {"v1": 10}
    # an item whose result does not fit the label config is dropped silently by LS: detected by the count
    bad = predictions(ids[10:14], "v2", [0.3] * 4) + predictions([ids[14]], "v2", [0.3], label="maybe")
    with caplog.at_level(logging.WARNING, logger="backend.labelstudio"):
        assert client.import_predictions(pid, bad) == 4
    assert f"created 4 of 5 predictions in project {pid}" in caplog.text
    # a task id that is not in the project: LS rejects the whole call (400), creates nothing
    with pytest.raises(LabelStudioError) as info:
        client.import_predictions(pid, predictions([ids[20], 99_999_999], "v3", [0.1, 0.2]))
    assert info.value.status == 400
    assert 'contains invalid \\"task\\" field' in str(info.value)
    assert client.model_versions(pid) == {"v1": 10, "v2": 4}


@e2e
def test_delete_model_version_deletes_exactly_that_version(
    client: LabelStudioClient, project: tuple[int, list[int]]
) -> None:
    pid, ids = project
    client.import_predictions(pid, predictions(ids[:12], "old", [0.5] * 12))
    client.import_predictions(pid, predictions(ids[5:10], "new", [0.2] * 5))
    assert client.model_versions(pid) == {"old": 12, "new": 5}
    assert client.delete_model_version(pid, "old") == 12
    assert client.model_versions(pid) == {"new": 5}
    assert client.delete_model_version(pid, "old") == 0
    assert client.get_project(pid)["total_predictions_number"] == 5


@e2e
def test_uncertainty_sampling_serves_lowest_score_of_current_version(
    client: LabelStudioClient, pat_client: LabelStudioClient, project: tuple[int, list[int]]
) -> None:
    pid, ids = project
    create_annotation(client, ids[3], choice_result("pos"))  # labeled: never served again
    client.import_predictions(pid, predictions(ids[:10], "v7", [0.9, 0.8, 0.7, 0.01, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]))
    client.import_predictions(pid, predictions([ids[20]], "v6", [0.0]))  # another version: ignored
    updated = client.update_project(pid, sampling="Uncertainty sampling", model_version="v7")
    # The answer is trimmed to the fields sent (Label Studio's include: no per-project counts computed).
    assert updated == {"id": pid, "sampling": "Uncertainty sampling", "model_version": "v7"}
    assert client.get_project(pid, fields=("model_version",)) == {"id": pid, "model_version": "v7"}
    assert client.get_project(pid)["total_predictions_number"] == 11
    assert client.next_task(pid)["id"] == ids[9]
    assert pat_client.next_task(pid)["id"] == ids[9]
    with pytest.raises(LabelStudioError) as info:
        client.update_project(pid, model_version="no-such-version")
    assert info.value.status == 400
    assert "Model version doesn't exist" in str(info.value)


@e2e
def test_next_task_without_tasks_is_404_and_missing_project_too(client: LabelStudioClient) -> None:
    pid = create_project(client, "empty project")
    with pytest.raises(LabelStudioError) as info:
        client.next_task(pid)
    assert info.value.status == 404
    with pytest.raises(LabelStudioError) as info:
        client.get_project(99_999_999)
    assert info.value.status == 404
    assert str(info.value) == "GET /api/projects/99999999 -> 404: No Project matches the given query."


@pytest.fixture
def fake_backend(standin: StandIn) -> StandIn:
    standin.route("GET", "/health", Reply(200, {"status": "UP"}))
    standin.route("POST", "/setup", Reply(200, {"model_version": "x"}))
    return standin


@e2e
def test_create_and_list_ml_backends(client: LabelStudioClient, fake_backend: StandIn) -> None:
    pid = create_project(client, "ml backend project")
    created = client.create_ml_backend(pid, fake_backend.url, title="lsal-test", extra_params={"strategy": "margin"},
                                       basic_auth=("lsal", "s3cret-pass"))  # fmt: skip
    assert (created["url"], created["title"], created["project"]) == (fake_backend.url, "lsal-test", pid)
    assert created["auth_method"] == "BASIC_AUTH" and created["basic_auth_user"] == "lsal"
    assert "basic_auth_pass" not in created
    listed = client.list_ml_backends(pid)
    assert [(b["id"], b["url"], b["extra_params"]) for b in listed] == [
        (created["id"], fake_backend.url, {"strategy": "margin"})
    ]
    setup = fake_backend.calls("POST", "/setup")
    assert setup and setup[0].body["extra_params"] == {"strategy": "margin"}
    expected_auth = "Basic " + base64.b64encode(b"lsal:s3cret-pass").decode()
    assert fake_backend.calls("GET", "/health")[0].headers["Authorization"] == expected_auth
    client.delete_ml_backend(created["id"])
    assert client.list_ml_backends(pid) == []


@e2e
def test_create_ml_backend_that_does_not_answer_is_rejected(client: LabelStudioClient) -> None:
    pid = create_project(client, "ml backend down")
    with pytest.raises(LabelStudioError) as info:
        client.create_ml_backend(pid, f"http://127.0.0.1:{free_port()}", basic_auth=("u", "pw-not-shown"))
    assert info.value.status == 400
    assert "health check failed" in str(info.value)
    assert "pw-not-shown" not in str(info.value)
    assert client.list_ml_backends(pid) == []


@e2e
def test_legacy_token_disabled_gives_a_helpful_401(
    ls: LabelStudio, client: LabelStudioClient, pat_client: LabelStudioClient
) -> None:
    pat_client.request("POST", "/api/jwt/settings", json={"api_tokens_enabled": True,
                                                          "legacy_api_tokens_enabled": False})  # fmt: skip
    try:
        with pytest.raises(LabelStudioError) as info:
            client.current_user()
        assert info.value.status == 401
        assert "legacy token authentication has been disabled" in str(info.value)
        assert "use a personal access token" in str(info.value)
        assert ls.legacy_token not in str(info.value)
        assert pat_client.current_user()["email"] == ls.email
    finally:
        pat_client.request("POST", "/api/jwt/settings", json={"api_tokens_enabled": True,
                                                              "legacy_api_tokens_enabled": True})  # fmt: skip
    assert client.current_user()["email"] == ls.email


@e2e
def test_ensure_label_studio_is_safe_to_call_concurrently() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from tests.lsharness import LS_VERSION, ensure_label_studio, ls_venv

    with ThreadPoolExecutor(2) as pool:
        paths = list(pool.map(lambda _: ensure_label_studio(), range(2)))
    assert paths == [ls_venv() / "bin" / "label-studio"] * 2
    assert (ls_venv() / ".lsal-installed").read_text().strip() == LS_VERSION


@e2e
def test_instance_answers_on_its_own_port_only(ls: LabelStudio) -> None:
    assert ls.url == f"http://127.0.0.1:{ls.port}"
    assert ls.running
    assert f"Starting development server at {ls.url}/" in ls.log_path.read_text()
    assert ls.legacy_token not in ls.log_path.read_text()


@e2e
def test_tasks_by_id_reads_exactly_the_named_tasks_of_the_project(
    client: LabelStudioClient, project: tuple[int, list[int]]
) -> None:
    pid, ids = project
    other, other_ids = project_with_tasks(client)
    client.request("DELETE", f"/api/tasks/{ids[3]}/")
    wanted = [ids[0], ids[3], ids[17], ids[29], other_ids[0], 987_654_321]
    got = client.tasks_by_id(pid, wanted, chunk_size=2)  # three requests
    assert got == {ids[0]: {"text": "task number 0"}, ids[17]: {"text": "task number 17"},
                   ids[29]: {"text": "task number 29"}}  # fmt: skip
    assert client.tasks_by_id(other, [other_ids[0], ids[0]]) == {other_ids[0]: {"text": "another project's task"}}
    assert client.tasks_by_id(pid, []) == {}


def project_with_tasks(client: LabelStudioClient) -> tuple[int, list[int]]:
    pid = create_project(client, f"lsal test {next(_counter)}")
    return pid, import_tasks(client, pid, [{"text": "another project's task"}])
