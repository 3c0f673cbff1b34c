"""The Label Studio protocol (backend.server.protocol): /health, /setup, /predict and /webhook.

Replayed Label Studio 1.23.2 payloads and every bad-input case, through the app as served (behind
the Guard), on a real Redis; and the router mounted alone with its dependencies overridden.
"""

from __future__ import annotations

import asyncio
import copy
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from backend import strategies
from backend.config import ProjectConfig, Settings
from backend.jobs import Jobs, LabelHints
from backend.learner import Learner
from backend.models import ModelRegistry
from backend.server import UNTRAINED, protocol
from backend.server.deps import ProjectLookup, get_jobs, get_models, get_projects, get_redis, get_settings, get_store
from backend.store import ModelStore
from tests.serverkit import (
    FIXTURE_XML,
    REPO,
    SPAM_XML,
    WEBHOOKS,
    assert_error,
    client_for,
    mount,
    predict_body,
    publish_spam_model,
    queued_ids,
    set_up,
    setup_body,
)


@pytest.fixture(autouse=True)
def _webhook_project_set_up(settings: Settings) -> None:
    set_up(settings, WEBHOOKS["START_TRAINING"]["project"]["id"], 5, 6)


@pytest.fixture
def client(settings: Settings, redis_conn: redis.Redis) -> TestClient:
    return client_for(settings)


def test_health(client: TestClient) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "UP"
    assert body["redis"] == "ok"
    assert body["model_store"] == "ok"


def test_health_reports_redis_down_but_stays_up(settings: Settings) -> None:
    down = replace(settings, redis_url="redis://127.0.0.1:1/0")
    body = client_for(down).get("/health").json()
    assert body["status"] == "UP"
    assert body["redis"] == "unavailable"


def test_setup_returns_untrained_then_the_current_version(client: TestClient, settings: Settings) -> None:
    resp = client.post("/setup", json=setup_body())
    assert resp.status_code == 200
    assert resp.json() == {"model_version": UNTRAINED}
    version = publish_spam_model(settings)
    assert client.post("/setup", json=setup_body()).json() == {"model_version": version}
    saved = json.loads((settings.model_dir / "3" / "project.json").read_text())
    assert saved["label_config"] == SPAM_XML
    assert "legacy-token-never-logged" not in json.dumps(saved)


def test_setup_accepts_the_fixture_config_and_extra_params(client: TestClient, settings: Settings) -> None:
    resp = client.post(
        "/setup", json=setup_body(project="1.1763717060", schema=FIXTURE_XML, extra={"strategy": "entropy"})
    )
    assert resp.status_code == 200
    saved = json.loads((settings.model_dir / "1" / "project.json").read_text())
    assert saved["extra_params"] == {"strategy": "entropy"}


def test_setup_rejects_unsupported_config(client: TestClient) -> None:
    xml = '<View><Audio name="snd" value="$audio"/><Choices name="c" toName="snd"><Choice value="a"/></Choices></View>'
    body = assert_error(client.post("/setup", json=setup_body(schema=xml)), 400, "label_config")
    assert "Choices" in body["error"]


def test_setup_rejects_unknown_strategy_listing_valid_names(client: TestClient) -> None:
    body = assert_error(
        client.post("/setup", json=setup_body(extra={"strategy": "magic"})), 400, "extra_params.strategy"
    )
    assert "least_confidence" in body["error"] and "random" in body["error"]


def test_setup_refuses_an_unknown_embedding_model_or_unreadable_path_naming_the_choices(
    client: TestClient, tmp_path: Path
) -> None:
    for value in ("glove-300", str(tmp_path / "no-such-model")):
        body = assert_error(
            client.post("/setup", json=setup_body(extra={"embedding_model": value})),
            400,
            "extra_params.embedding_model",
        )
        assert repr(value) in body["error"] and "'wordllama'" in body["error"] and "hub id" in body["error"]
    body = assert_error(
        client.post("/setup", json=setup_body(extra={"text_features": "bert"})), 400, "extra_params.text_features"
    )
    assert "tfidf, embedding, tfidf+embedding" in body["error"]


def test_setup_checks_strategy_params_against_the_registry(client: TestClient) -> None:
    extra = {"strategy": "density", "strategy_params": {"beta": 500}}
    body = assert_error(client.post("/setup", json=setup_body(extra=extra)), 400, "extra_params.strategy_params.beta")
    assert body["error"].endswith("parameter 'beta' of strategy 'density' must be in [0, 100], got 500")
    ok = {"strategy": "density", "strategy_params": {"beta": 2.5, "base": "margin"}}
    assert client.post("/setup", json=setup_body(extra=ok)).status_code == 200


@pytest.mark.parametrize("project", ["abc", "-1.5", "1/../../etc", "", "0"])
def test_setup_rejects_bad_project_ids(client: TestClient, project: str) -> None:
    assert_error(client.post("/setup", json=setup_body(project=project)), 400, "project")


def test_setup_missing_schema(client: TestClient) -> None:
    body = setup_body()
    del body["schema"]
    assert_error(client.post("/setup", json=body), 400, "schema")


def test_predict_before_any_model_answers_one_empty_entry_per_task(client: TestClient) -> None:
    resp = client.post("/predict", json=predict_body(["a", "b", "c"]))
    assert resp.status_code == 200
    assert resp.json() == {"results": [[], [], []]}


def test_predict_with_a_model(client: TestClient, settings: Settings) -> None:
    version = publish_spam_model(settings)
    texts = ["FREE prize! call now to claim your cash", "see you at dinner tonight", "ok"]
    resp = client.post("/predict", json=predict_body(texts))
    assert resp.status_code == 200
    results = resp.json()["results"]
    assert len(results) == 3
    for r in results:
        assert r["model_version"] == version
        assert 0.0 <= r["score"] <= 1.0
        (item,) = r["result"]
        assert (item["from_name"], item["to_name"]) == ("label", "text")  # spam.xml's control and object
        assert item["type"] == "choices"
        assert len(item["value"]["choices"]) == 1
    assert results[0]["result"][0]["value"]["choices"] == ["spam"]
    assert results[1]["result"][0]["value"]["choices"] == ["no_spam"]


@pytest.mark.parametrize(("extra", "measure"), [({}, "margin"), ({"strategy": "entropy"}, "entropy")])
def test_predict_scores_with_the_strategys_row_measure(
    client: TestClient, settings: Settings, extra: dict[str, str], measure: str
) -> None:
    """score = 1 - informativeness by the project's strategy; pool-level ones (the default) use margin."""
    assert client.post("/setup", json=setup_body(extra=extra)).status_code == 200
    publish_spam_model(settings)
    texts = ["FREE prize! call now to claim your cash", "see you at dinner tonight", "ok"]
    results = client.post("/predict", json=predict_body(texts)).json()["results"]
    _, learner = ModelStore(settings.model_dir).load(3, Learner.load)  # type: ignore[misc]
    proba = learner.predict_proba(learner.transform(texts))
    info = strategies.informativeness(measure, strategies.ScoringInput(proba=proba))
    assert [r["score"] for r in results] == [float(1.0 - v) for v in info]
    assert [list(r) for r in results] == [["result", "score", "model_version"]] * 3  # no task, no cluster


def test_predict_serves_a_newly_published_version_without_restart(client: TestClient, settings: Settings) -> None:
    first = publish_spam_model(settings)
    assert client.post("/predict", json=predict_body(["x"])).json()["results"][0]["model_version"] == first
    second = publish_spam_model(settings)
    assert second != first
    assert client.post("/predict", json=predict_body(["x"])).json()["results"][0]["model_version"] == second


def test_predict_uses_the_setup_config_when_the_request_has_none(client: TestClient, settings: Settings) -> None:
    client.post("/setup", json=setup_body())
    publish_spam_model(settings)
    resp = client.post("/predict", json=predict_body(["win cash now"], config=None))
    assert resp.status_code == 200
    assert len(resp.json()["results"]) == 1


@pytest.mark.parametrize(
    ("mutate", "status", "field"),
    [
        (lambda b: b.update(tasks=[]), 400, "tasks"),
        (lambda b: b.pop("tasks"), 400, "tasks"),
        (lambda b: b.update(tasks="nope"), 400, "tasks"),
        (lambda b: b["tasks"][0].pop("id"), 400, "tasks[0].id"),
        (lambda b: b["tasks"][1].update(id="x"), 400, "tasks[1].id"),
        (lambda b: b["tasks"][0].update(data=None), 400, "tasks[0].data"),
        (lambda b: b["tasks"][1].update(data={"other": "key"}), 400, "tasks[1].data.text"),
        (lambda b: b.update(project="banana"), 400, "project"),
        (lambda b: b.update(project=None, tasks=[{"id": 1, "data": {"text": "a"}}]), 400, "project"),
        (lambda b: b.update(label_config="<View><Text"), 400, "label_config"),
        (lambda b: b.update(label_config=None, project="99"), 400, "label_config"),
    ],
)
def test_predict_bad_input(client: TestClient, mutate: Any, status: int, field: str) -> None:
    body = copy.deepcopy(predict_body(["a", "b"]))
    mutate(body)
    assert_error(client.post("/predict", json=body), status, field)


def test_predict_task_count_limit(settings: Settings, redis_conn: redis.Redis) -> None:
    client = client_for(replace(settings, max_tasks=2))
    assert_error(client.post("/predict", json=predict_body(["a", "b", "c"])), 413, "tasks")


def label_hints(settings: Settings, conn: redis.Redis, project: int) -> LabelHints:
    return Jobs(conn, settings.queue_name).take_label_hints(project)


def test_webhook_replayed_annotation_created_queues_a_cycle(
    client: TestClient, settings: Settings, redis_conn: redis.Redis
) -> None:
    resp = client.post("/webhook", json=WEBHOOKS["ANNOTATION_CREATED"])
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "queued"
    assert body["action"] == "ANNOTATION_CREATED"
    assert queued_ids(settings, redis_conn) == [body["job_id"]]
    # a second event joins the queued cycle
    again = client.post("/webhook", json=WEBHOOKS["ANNOTATION_CREATED"]).json()
    assert again == {"status": "joined", "action": "ANNOTATION_CREATED", "job_id": body["job_id"]}
    assert queued_ids(settings, redis_conn) == [body["job_id"]]
    # the cycle reads the named task from Label Studio (a hint), not every label
    project = WEBHOOKS["ANNOTATION_CREATED"]["project"]["id"]
    task = WEBHOOKS["ANNOTATION_CREATED"]["task"]["id"]
    assert label_hints(settings, redis_conn, project) == LabelHints(frozenset({task}), full=False)


def test_webhook_replayed_start_training(client: TestClient, settings: Settings, redis_conn: redis.Redis) -> None:
    body = client.post("/webhook", json=WEBHOOKS["START_TRAINING"]).json()
    assert body["status"] == "queued"
    assert queued_ids(settings, redis_conn) == [body["job_id"]]
    project = WEBHOOKS["START_TRAINING"]["project"]["id"]
    assert label_hints(settings, redis_conn, project) == LabelHints(frozenset(), full=True)  # reads every label


def test_webhook_skip_is_ignored(client: TestClient, settings: Settings, redis_conn: redis.Redis) -> None:
    skip = copy.deepcopy(WEBHOOKS["ANNOTATION_CREATED"])
    skip["annotation"]["was_cancelled"] = True
    assert client.post("/webhook", json=skip).json() == {"status": "ignored", "action": "ANNOTATION_CREATED"}
    assert queued_ids(settings, redis_conn) == []
    # no cycle for a skip, but the next one takes the skipped task out of the pool
    assert label_hints(settings, redis_conn, skip["project"]["id"]).tasks == {skip["task"]["id"]}


@pytest.mark.parametrize("action", ["PROJECT_UPDATED", "LABEL_LINK_CREATED", "SOMETHING_NEW"])
def test_webhook_ignored_actions(client: TestClient, settings: Settings, redis_conn: redis.Redis, action: str) -> None:
    payload = copy.deepcopy(WEBHOOKS["START_TRAINING"])
    payload["action"] = action
    assert client.post("/webhook", json=payload).json() == {"status": "ignored", "action": action}
    assert queued_ids(settings, redis_conn) == []


def test_webhook_annotations_deleted_and_bulk_created(
    client: TestClient, settings: Settings, redis_conn: redis.Redis
) -> None:
    deleted = {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 4}], "project": {"id": 5}}
    body = client.post("/webhook", json=deleted).json()
    assert body["status"] == "queued"
    bulk = {"action": "ANNOTATIONS_CREATED", "annotations": [{"id": 1}, {"id": 2}], "project": {"id": 6}}
    assert client.post("/webhook", json=bulk).json()["status"] == "queued"
    assert len(queued_ids(settings, redis_conn)) == 2
    # Neither names its tasks: both cycles read every label. A bulk event that does is a hint.
    assert label_hints(settings, redis_conn, 5) == LabelHints(frozenset(), full=True)
    assert label_hints(settings, redis_conn, 6) == LabelHints(frozenset(), full=True)
    bulk["annotations"] = [{"id": 1, "task": 11}, {"id": 2, "task": 12}]
    assert client.post("/webhook", json=bulk).json()["status"] == "joined"
    assert label_hints(settings, redis_conn, 6) == LabelHints(frozenset({11, 12}), full=False)


def test_webhook_retrain_every(settings: Settings, redis_conn: redis.Redis) -> None:
    client = client_for(replace(settings, retrain_every=3))
    statuses = [client.post("/webhook", json=WEBHOOKS["ANNOTATION_CREATED"]).json()["status"] for _ in range(4)]
    assert statuses == ["counted", "counted", "queued", "counted"]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "action"),
        ({"action": 3}, "action"),
        ({"action": "START_TRAINING"}, "project.id"),
        ({"action": "START_TRAINING", "project": {"id": "abc"}}, "project.id"),
        ({"action": "START_TRAINING", "project": 5}, "project.id"),
        ({"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": "x"}, "annotation"),
        ({"action": "ANNOTATIONS_CREATED", "project": {"id": 1}, "annotations": 5}, "annotations"),
    ],
)
def test_webhook_bad_input(client: TestClient, payload: dict, field: str) -> None:
    assert_error(client.post("/webhook", json=payload), 400, field)


def test_webhook_when_redis_is_down_answers_fast_with_a_reason(settings: Settings) -> None:
    client = client_for(replace(settings, redis_url="redis://127.0.0.1:1/0"))
    resp = client.post("/webhook", json=WEBHOOKS["ANNOTATION_CREATED"])
    body = assert_error(resp, 503, None)
    assert "redis unavailable" in body["error"]
    assert client.get("/health").json()["redis"] == "unavailable"


# -- the router alone ----------------------------------------------------------------------------


def test_the_router_alone_serves_from_the_dependencies_it_is_given(
    settings: Settings, redis_conn: redis.Redis, tmp_path: Any
) -> None:
    other = replace(settings, model_dir=tmp_path / "elsewhere")
    version = publish_spam_model(other)
    jobs = Jobs(redis_conn, settings.queue_name, settings.job_timeout)
    client = mount(
        protocol.router,
        {
            get_settings: other,
            get_redis: redis_conn,
            get_jobs: jobs,
            get_store: ModelStore(other.model_dir),
            get_projects: ProjectLookup(other.model_dir, ProjectConfig.defaults(other)),
            get_models: ModelRegistry(),
        },
    )
    assert client.get("/health").json()["redis"] == "ok"
    assert client.post("/setup", json=setup_body()).json() == {"model_version": version}
    assert (other.model_dir / "3" / "project.json").exists()
    results = client.post("/predict", json=predict_body(["win cash now", "see you at dinner"])).json()["results"]
    assert [r["model_version"] for r in results] == [version, version]
    set_up(other, WEBHOOKS["START_TRAINING"]["project"]["id"])
    body = client.post("/webhook", json=WEBHOOKS["START_TRAINING"]).json()
    assert body["status"] == "queued"
    assert queued_ids(settings, redis_conn) == [body["job_id"]]


def test_the_router_alone_without_a_queue(settings: Settings) -> None:
    client = mount(
        protocol.router,
        {
            get_settings: settings,
            get_store: ModelStore(settings.model_dir),
            get_projects: ProjectLookup(settings.model_dir, ProjectConfig.defaults(settings)),
            get_jobs: None,
        },
    )
    assert_error(client.post("/webhook", json=WEBHOOKS["START_TRAINING"]), 503, None)
    # an event that needs no queue is still answered
    ignored = {**WEBHOOKS["START_TRAINING"], "action": "PROJECT_UPDATED"}
    assert client.post("/webhook", json=ignored).json() == {"status": "ignored", "action": "PROJECT_UPDATED"}


# -- models: registered names only, what the strategy needs, image projects --------------------------

IMAGE_XML = (REPO / "label_config" / "image.xml").read_text()


def test_setup_refuses_an_unregistered_model_listing_the_registered_ones(client: TestClient) -> None:
    body = assert_error(client.post("/setup", json=setup_body(extra={"model": "os.system"})), 400, "extra_params.model")
    assert body["error"] == "unknown model 'os.system'; registered models: builtin"
    assert_error(client.post("/setup", json=setup_body(extra={"model": "a:b"})), 400, "extra_params.model")


def test_setup_accepts_an_image_project_on_the_builtin_model_and_its_strategies(client: TestClient) -> None:
    for strategy in ("diversity", "vote_entropy", "coreset", "margin"):
        extra = {"model": "builtin", "strategy": strategy}
        assert client.post("/setup", json=setup_body(schema=IMAGE_XML, extra=extra)).status_code == 200
    # expected error reduction refits the text/table learner's estimator: the image model has none
    body = assert_error(
        client.post("/setup", json=setup_body(schema=IMAGE_XML, extra={"strategy": "expected_error"})),
        400,
        "extra_params.strategy",
    )
    assert body["error"].startswith("strategy 'expected_error' needs estimator, which model 'builtin' does not give")


def test_predict_on_an_image_project_before_its_first_model(client: TestClient) -> None:
    assert client.post("/setup", json=setup_body(schema=IMAGE_XML)).status_code == 200
    body = {
        "tasks": [{"id": 1, "data": {"image": "/data/upload/3/a.png"}}, {"id": 2, "data": {"image": "s3://b/k.png"}}],
        "project": "3.1763717060",
        "label_config": IMAGE_XML,
    }
    assert client.post("/predict", json=body).json() == {"results": [[], []]}
    bad = {**body, "tasks": [{"id": 1, "data": {"image": 5}}]}
    assert_error(client.post("/predict", json=bad), 400, "tasks[0].data.image")


def _record_model_reads(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Each model read from now on appends whether it ran on an event loop's thread."""
    loads: list[bool] = []
    original = ModelRegistry.load_version

    def recording(self: ModelRegistry, path: Path, spec: Any) -> Any:
        try:
            asyncio.get_running_loop()
            loads.append(True)
        except RuntimeError:
            loads.append(False)
        return original(self, path, spec)

    monkeypatch.setattr(ModelRegistry, "load_version", recording)
    return loads


def test_a_predict_that_must_read_a_new_model_reads_it_off_the_event_loop(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cycle publishes a version that each HTTP process must read (skops, ~0.1-0.3 s); on the
    event loop that stalls /health once per cycle. Broken once: with one-task predictions always
    inline, the read ran on the loop's thread."""
    loads = _record_model_reads(monkeypatch)
    version = publish_spam_model(settings)
    for _ in range(2):
        resp = client.post("/predict", json=predict_body(["win cash now"]))
        assert resp.json()["results"][0]["model_version"] == version
    assert loads == [False]  # read once, in a worker thread; the second request used the cache


def test_a_version_published_while_an_inline_predict_runs_is_not_read_on_the_event_loop(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker publishes a version between the warm check of an inline /predict and its
    prediction (every ~1.2 s in bench_load): the prediction uses the version found warm, and the
    new one is read by a later request, off the event loop. Broken once: the prediction read
    CURRENT again and loaded the new model on the loop (skops, ~0.1-0.3 s of stalled /health)."""
    loads = _record_model_reads(monkeypatch)
    first = publish_spam_model(settings)
    assert client.post("/predict", json=predict_body(["win cash now"])).json()["results"][0]["model_version"] == first
    published: list[str] = []
    needs_load = ModelStore.needs_load

    def publishing_meanwhile(self: ModelStore, project: int, version: str | None = None) -> bool:
        answer = needs_load(self, project, version)
        if not published:  # the worker's publish lands right after the warm check
            published.append(publish_spam_model(settings))
        return answer

    monkeypatch.setattr(ModelStore, "needs_load", publishing_meanwhile)
    raced = client.post("/predict", json=predict_body(["win cash now"])).json()["results"][0]
    assert raced["model_version"] == first
    later = client.post("/predict", json=predict_body(["win cash now"])).json()["results"][0]
    assert later["model_version"] == published[0] != first
    assert loads == [False, False]  # both versions read in a worker thread, none on the loop


def test_a_first_version_published_while_a_predict_runs_is_not_read_on_the_event_loop(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race before the project's first model: the request finds no version, the worker
    publishes the first one, and the prediction reads it. Broken once: "no model" ran inline, so
    that read, one per project per HTTP process, ran on the event loop."""
    loads = _record_model_reads(monkeypatch)
    published: list[str] = []
    current = ModelStore.current

    def publishing_meanwhile(self: ModelStore, project: int) -> str | None:
        answer = current(self, project)
        if not published:  # the worker's first publish lands right after the request read CURRENT
            published.append("publishing")  # publishing reads CURRENT too
            published[0] = publish_spam_model(settings)
        return answer

    monkeypatch.setattr(ModelStore, "current", publishing_meanwhile)
    result = client.post("/predict", json=predict_body(["win cash now"])).json()["results"][0]
    assert result["model_version"] == published[0]
    assert loads == [False]


def test_the_first_predict_with_a_cached_version_runs_off_the_event_loop(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store caches a version's model before its first prediction has loaded what the model
    loads on first use (the text embedder: 0.8 s of stalled event loop per HTTP process in
    bench_load, when a request arrived while the first one was still predicting). Until a
    prediction with the version has completed, /predict runs in a thread; then inline.
    Broken once: the store's cache alone decided, and the embedder loaded on the event loop."""
    from backend.features import embeddings
    from backend.labelconfig import parse_label_config
    from backend.server.app import create_app
    from backend.server.guard import Guard

    version = publish_spam_model(settings)
    app = create_app(settings)
    spec = parse_label_config(SPAM_XML)
    assert app.state.store.load(3, lambda path: ModelRegistry().load_version(path, spec))[0] == version
    embeddings.forget_loaded()  # as in a fresh HTTP process: the model cached, the embedder not yet
    original = embeddings._load_wordllama
    on_loop: list[bool] = []

    def recording() -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return original()

    monkeypatch.setattr(embeddings, "_load_wordllama", recording)
    client = TestClient(Guard(app, settings))
    try:
        for _ in range(2):
            resp = client.post("/predict", json=predict_body(["win cash now"]))
            assert resp.json()["results"][0]["model_version"] == version
    finally:
        embeddings.forget_loaded()  # the recording loader's result must not serve later tests
    assert on_loop == [False]


def test_health_pings_redis_while_the_shared_thread_pool_is_full(settings: Settings, redis_conn: redis.Redis) -> None:
    """Every token of the shared thread pool (where /webhook and sync endpoints run) is held by a
    blocked call: /health still gets its Redis PING answered ("ok"), from the probe's own thread."""
    import threading

    import anyio.to_thread
    import httpx

    from backend.server.app import create_app

    release = threading.Event()

    async def scenario() -> dict[str, Any]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 2
        blocked = [asyncio.ensure_future(anyio.to_thread.run_sync(release.wait)) for _ in range(2)]
        try:
            while limiter.borrowed_tokens < 2:
                await asyncio.sleep(0.01)
            transport = httpx.ASGITransport(app=create_app(settings))
            async with httpx.AsyncClient(transport=transport, base_url="http://lsal") as client:
                # A deadline only so that a PING queued behind the pool fails instead of hanging.
                body: dict[str, Any] = (await asyncio.wait_for(client.get("/health"), 10)).json()
            return body
        finally:
            release.set()
            await asyncio.gather(*blocked)

    body = asyncio.run(scenario())
    assert body["status"] == "UP"
    assert body["redis"] == "ok"


def test_health_never_waits_for_a_ping_once_redis_has_answered(redis_conn: redis.Redis) -> None:
    """A process's first /health waits for the first PING; after that a stale answer starts a new
    PING in the background and /health reports the latest answer without suspending, however long
    that PING takes (each suspension is a trip through a busy event loop's queue)."""
    import threading

    release = threading.Event()
    pings: list[str] = []

    class SlowPing:
        def ping(self) -> bool:
            pings.append("ping")
            release.wait(10)
            return True

    async def scenario() -> tuple[str, bool, str]:
        probe = protocol.RedisProbe(SlowPing())  # type: ignore[arg-type]
        release.set()
        first = await probe.state()  # no answer yet: waits for the first PING
        release.clear()
        probe._checked -= protocol.PROBE_INTERVAL  # the answer is now stale
        stale = probe.state()
        try:
            stale.send(None)  # runs the coroutine up to its first suspension, if it has one
            suspended = True
        except StopIteration as done:
            suspended, second = False, done.value
        release.set()
        if suspended:
            second = await stale
        while probe._task is not None:  # the background PING finishes
            await asyncio.sleep(0.01)
        return first, suspended, second

    first, suspended, second = asyncio.run(scenario())
    assert first == "ok"
    assert not suspended
    assert second == "ok"
    assert pings == ["ping", "ping"]
