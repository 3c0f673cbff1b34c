"""The HTTP app: Label Studio's ML-backend protocol plus the admin and pipeline endpoints.

Label Studio calls `/health` (1 s budget), `/setup` (3 s), `/predict` (100 s) and `/webhook` (1 s,
inside the annotator's Submit, never retried). Webhooks therefore do O(1) work: validate, touch
Redis, answer. Training happens in the RQ worker (`backend.worker`).

Every client error is a 4xx JSON body `{"error": "...", "field": "..."}`; handlers never let client
input reach a 500.
"""

from __future__ import annotations

import base64
import contextlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from functools import lru_cache
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from backend import __version__, plots, projects, stopping, strategies
from backend.config import ConfigError, ProjectConfig, Settings
from backend.cycle_log import cycle_history
from backend.jobs import SCORE_NEW_FUNC, Jobs
from backend.labelconfig import LabelConfigError, TaskSpec, choices_result, parse_label_config, task_input
from backend.learner import Learner
from backend.metrics import Metrics, instrument
from backend.pool import PoolCache
from backend.store import ModelStore, StoreError, validate_project

log = logging.getLogger("lsal.server")

UNTRAINED = "lsal-untrained"
TRAINING_ACTIONS = {"START_TRAINING"}
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class ApiError(Exception):
    def __init__(self, status: int, error: str, field: str | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.field = status, error, field


# -- request and response models (they make the OpenAPI document) -----------------------------


class ErrorBody(BaseModel):
    error: str
    field: str | None = None


class SetupRequest(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")
    project: str | int = Field(description='"<project id>.<created timestamp>" as Label Studio sends it, or an id')
    label_config: str = Field(alias="schema", description="the project's label config XML")
    hostname: str | None = Field(default=None, description="ignored: lsal only calls LABEL_STUDIO_URL")
    access_token: str | None = Field(default=None, description="ignored (legacy token); never logged")
    extra_params: dict[str, Any] | None = None


class SetupResponse(BaseModel):
    model_version: str


class PredictTask(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: int
    data: dict[str, Any]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[PredictTask]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class Prediction(BaseModel):
    result: list[dict[str, Any]]
    score: float
    model_version: str


class PredictResponse(BaseModel):
    results: list[Prediction | list[Prediction]] = Field(
        description="one entry per task, same order; before the project's first model every entry is []"
    )
    model_version: str | None = None


class WebhookResponse(BaseModel):
    status: str
    action: str
    job_id: str | None = None


class TrainRequest(BaseModel):
    project: int = Field(gt=0)


class TrainResponse(BaseModel):
    job_id: str
    created: bool


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")
    status: str
    model_class: str
    redis: str
    model_store: str


# -- helpers -------------------------------------------------------------------------------------


def parse_project(value: Any, field_name: str = "project") -> int:
    """Label Studio sends '<id>.<created_ts>' in /setup and /predict; pipelines send the id."""
    if isinstance(value, str) and "." in value:
        value = value.split(".", 1)[0]
    try:
        project = validate_project(value)
    except StoreError as exc:
        raise ApiError(400, str(exc), field_name) from None
    if project <= 0:
        raise ApiError(400, f"project id must be a positive integer, got {value!r}", field_name)
    return project


def _field_from_loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body",)]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "body"


class Guard:
    """Pure-ASGI middleware: request body limit and optional HTTP Basic auth on every endpoint.

    Pure ASGI (not BaseHTTPMiddleware) because /webhook and /predict are on Label Studio's
    latency budget.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limit = settings.max_body_bytes
        auth = settings.basic_auth
        self.expected = b"Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()) if auth is not None else None
        self.trigger = settings.trigger_token.encode() if settings.trigger_token else None

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[dict]], send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and not self._authorized(scope, headers.get(b"authorization", b"")):
            await _send_json(
                send,
                401,
                {"error": "authentication required", "field": "authorization"},
                extra=[(b"www-authenticate", b'Basic realm="lsal"')],
            )
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                await _send_json(send, 400, {"error": "malformed Content-Length", "field": "content-length"})
                return
            if too_big:
                await _send_json(send, 413, _too_big(self.limit))
                return
        # Read the whole body here (bounded by the limit) and replay it to the app: an oversized
        # chunked body is refused before any handler runs, so no handler can half-answer it.
        chunks: list[bytes] = []
        received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # disconnect before the body: let the app see it
                return
            body = message.get("body", b"")
            received += len(body)
            if received > self.limit:
                await _send_json(send, 413, _too_big(self.limit))
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replay = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> dict:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)

    def _authorized(self, scope: Scope, header: bytes) -> bool:
        assert self.expected is not None
        if hmac.compare_digest(header, self.expected):
            return True
        # A pipeline calling /train holds the trigger token instead: it is checked by the endpoint.
        return bool(self.trigger and scope.get("path") == "/train" and header.startswith(b"Bearer "))


def _too_big(limit: int) -> dict[str, str]:
    return {"error": f"request body larger than MAX_BODY_BYTES={limit}", "field": "body"}


async def _send_json(send: Callable, status: int, body: dict, extra: list | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": payload})


def _redis_connection(url: str) -> redis.Redis:
    # Short timeouts: /webhook must answer inside Label Studio's 1 s even when Redis is gone.
    return redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.5, retry_on_timeout=False)


# -- the app -------------------------------------------------------------------------------------


def create_app(settings: Settings, *, redis_url: str | None = None) -> FastAPI:
    url = redis_url if redis_url is not None else settings.redis_url
    connection = _redis_connection(url) if url else None
    jobs = Jobs(connection, settings.queue_name, settings.job_timeout) if connection is not None else None
    store = ModelStore(settings.model_dir, keep=settings.keep_versions)
    defaults = ProjectConfig.defaults(settings)

    app = FastAPI(
        title="lsal",
        version=__version__,
        description="Active-learning ML backend for Label Studio",
        responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    )
    app.state.settings, app.state.store, app.state.jobs = settings, store, jobs
    app.state.metrics = Metrics(settings, connection=connection, store=store)
    app.include_router(app.state.metrics.router())

    @lru_cache(maxsize=64)
    def spec_for(xml: str) -> TaskSpec:
        return parse_label_config(xml)

    def project_spec(project: int, label_config: str | None) -> TaskSpec:
        if not label_config:
            setup = projects.load(settings.model_dir, project)
            if setup is None:
                raise ApiError(400, "no label_config given and the project has not been set up", "label_config")
            label_config = setup.label_config
        try:
            return spec_for(label_config)
        except LabelConfigError as exc:
            raise ApiError(400, str(exc), "label_config") from None

    config_cache: dict[int, tuple[float, ProjectConfig]] = {}

    def project_config(project: int) -> ProjectConfig:
        """Per-project settings, re-read only when project.json changes (one stat per request)."""
        try:
            mtime = projects.path(settings.model_dir, project).stat().st_mtime_ns
        except OSError:
            return defaults
        cached = config_cache.get(project)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        setup = projects.load(settings.model_dir, project)
        config = defaults
        if setup is not None:
            # validated at /setup; a hand-edited file must not break /predict
            with contextlib.suppress(ConfigError):
                config = defaults.with_extra_params(setup.extra_params)
        config_cache[project] = (mtime, config)
        return config

    def require_jobs() -> Jobs:
        if jobs is None:
            raise ApiError(503, "no job queue configured (REDIS_URL)", None)
        return jobs

    # -- error handlers --------------------------------------------------------------------------

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.error, "field": exc.field}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ("body",)}
        loc = tuple(first.get("loc", ("body",)))
        if first.get("type") == "json_invalid":
            return JSONResponse({"error": "malformed JSON body", "field": "body"}, status_code=400)
        field_name = _field_from_loc(loc)
        return JSONResponse({"error": f"{field_name}: {first.get('msg')}", "field": field_name}, status_code=400)

    @app.exception_handler(redis.RedisError)
    async def _redis_error(_: Request, exc: redis.RedisError) -> JSONResponse:
        log.warning("redis unavailable: %s", type(exc).__name__)
        return JSONResponse(
            {
                "error": "redis unavailable: the event was not queued; the next event after Redis returns "
                "brings the project up to date (every cycle reads all labels from Label Studio)",
                "field": None,
            },
            status_code=503,
        )

    # -- Label Studio protocol -------------------------------------------------------------------

    @app.get("/", include_in_schema=False)
    def root() -> dict[str, str]:
        return {"name": "lsal", "version": __version__, "docs": "/docs"}

    @app.get("/health", response_model=HealthResponse)
    def health() -> dict[str, Any]:
        redis_state = "not configured"
        if connection is not None:
            try:
                connection.ping()
                redis_state = "ok"
            except redis.RedisError:
                redis_state = "unavailable"
        store_state = "ok" if settings.model_dir.is_dir() or not settings.model_dir.exists() else "not a directory"
        return {
            "status": "UP",
            "model_class": "lsal",
            "version": __version__,
            "redis": redis_state,
            "model_store": store_state,
        }

    @app.post("/setup", response_model=SetupResponse)
    def setup(body: SetupRequest) -> dict[str, str]:
        project = parse_project(body.project)
        spec_for_check = project_spec(project, body.label_config)
        del spec_for_check  # parsed to reject unsupported configs now, not at the first cycle
        try:
            defaults.with_extra_params(body.extra_params)
        except ConfigError as exc:
            raise ApiError(400, str(exc), exc.field) from None
        try:
            projects.save(settings.model_dir, project, body.label_config, body.extra_params)
        except OSError as exc:
            raise ApiError(507, f"cannot write MODEL_DIR: {exc.strerror}", None) from None
        return {"model_version": store.current(project) or UNTRAINED}

    @app.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
    async def predict(body: PredictRequest) -> JSONResponse:
        # Small requests (the annotator opening a task) run on the event loop: a thread hop costs
        # more than the prediction. Large batches go to the thread pool so /health stays prompt.
        if len(body.tasks) <= 64:
            return JSONResponse(predict_sync(body))
        return JSONResponse(await run_in_threadpool(predict_sync, body))

    def predict_sync(body: PredictRequest) -> dict[str, Any]:
        if not body.tasks:
            raise ApiError(400, "tasks must not be empty", "tasks")
        if len(body.tasks) > settings.max_tasks:
            raise ApiError(413, f"{len(body.tasks)} tasks exceed MAX_TASKS={settings.max_tasks}", "tasks")
        raw_project = body.project
        if raw_project is None:
            raw_project = (body.tasks[0].model_extra or {}).get("project")
            if raw_project is None:
                raise ApiError(400, "project is required (in the body or in the tasks)", "project")
        project = parse_project(raw_project)
        spec = project_spec(project, body.label_config)
        inputs = []
        for i, task in enumerate(body.tasks):
            try:
                inputs.append(task_input(spec, task.data))
            except (KeyError, ValueError, TypeError) as exc:
                raise ApiError(400, str(exc).strip("'\""), f"tasks[{i}].data.{spec.data_key}") from None
        loaded = store.load(project, Learner.load)
        if loaded is None:
            return {"results": [[] for _ in body.tasks]}
        version, learner = loaded
        X = learner.transform(inputs)
        proba = learner.predict_proba(X)
        name = strategies.resolve(project_config(project).strategy)
        # Pool-level strategies need the whole pool; a single task gets their base measure (margin).
        measure = strategies.pointwise_measure(name)
        committee = learner.committee_proba(X) if measure in strategies.NEEDS_COMMITTEE else None
        inp = strategies.ScoringInput(proba=proba, committee=committee, multi_label=spec.multi_label)
        info = strategies.informativeness(measure, inp)
        labels = learner.predict_labels(proba)
        results = [
            {"result": choices_result(spec, labels[i]), "score": float(1.0 - info[i]), "model_version": version}
            for i in range(len(inputs))
        ]
        return {"results": results, "model_version": version}

    @app.post("/webhook", response_model=WebhookResponse, response_model_exclude_none=True)
    async def webhook(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "malformed JSON body", "body") from None
        if not isinstance(body, dict):
            raise ApiError(400, "expected a JSON object", "body")
        action = body.get("action")
        if not isinstance(action, str) or not action:
            raise ApiError(400, "action must be a non-empty string", "action")
        handled = TRAINING_ACTIONS | ANNOTATION_ACTIONS | {"ANNOTATIONS_DELETED", "TASKS_CREATED", "TASKS_DELETED"}
        if action not in handled:
            return {"status": "ignored", "action": action}
        proj = body.get("project")
        if not isinstance(proj, dict) or "id" not in proj:
            raise ApiError(400, "project.id is required", "project.id")
        project = parse_project(proj["id"], "project.id")
        if action in ("TASKS_CREATED", "TASKS_DELETED"):
            return tasks_event(project, action, body)
        queue = require_jobs()
        if action in TRAINING_ACTIONS:
            enq = queue.request_cycle(project, "start_training")
            return {"status": "queued" if enq.created else "joined", "action": action, "job_id": enq.job_id}
        if action == "ANNOTATIONS_DELETED":
            enq = queue.request_cycle(project, "annotations_deleted")
            return {"status": "queued" if enq.created else "joined", "action": action, "job_id": enq.job_id}
        count = _count_annotations(body, action)
        if count == 0:
            return {"status": "ignored", "action": action}
        every = project_config(project).retrain_every
        enq_or_none = queue.note_annotations(project, count, every)
        if enq_or_none is None:
            return {"status": "counted", "action": action}
        status = "queued" if enq_or_none.created else "joined"
        return {"status": status, "action": action, "job_id": enq_or_none.job_id}

    def tasks_event(project: int, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """Keep the pool cache current; new tasks get scored by the current model right away."""
        tasks = body.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in tasks):
            raise ApiError(400, "tasks must be a list of objects with an integer id", "tasks")
        cache = PoolCache(settings.model_dir, project)
        if action == "TASKS_DELETED":
            cache.delete_tasks(t["id"] for t in tasks)
            return {"status": "recorded", "action": action}
        if not cache.snapshot_path.exists():
            return {"status": "ignored", "action": action}  # no pool yet: the first cycle reads it whole
        cache.add_tasks(tasks)
        if store.current(project) is None:
            return {"status": "recorded", "action": action}
        ids = [t["id"] for t in tasks]
        job_id = require_jobs().enqueue(SCORE_NEW_FUNC, project, ids, project=project, kind="score_new")
        return {"status": "queued", "action": action, "job_id": job_id}

    # -- pipelines and admins -------------------------------------------------------------------

    @app.post("/train", status_code=202, response_model=TrainResponse)
    def train(body: TrainRequest, request: Request) -> dict[str, Any]:
        if settings.trigger_token:
            header = request.headers.get("authorization", "")
            expected = f"Bearer {settings.trigger_token}"
            if not hmac.compare_digest(header.encode(), expected.encode()):
                raise ApiError(401, "a valid 'Authorization: Bearer <AL_TRIGGER_TOKEN>' is required", "authorization")
        enq = require_jobs().request_cycle(body.project, "train")
        return {"job_id": enq.job_id, "created": enq.created}

    @app.get("/jobs/{job_id}")
    def job_status(job_id: str) -> dict[str, Any]:
        try:
            status = require_jobs().status(job_id)
        except ValueError as exc:
            raise ApiError(400, str(exc), "job_id") from None
        if status is None:
            raise ApiError(404, f"no job {job_id}", "job_id")
        return status

    @app.get("/projects/{project}/status")
    def project_status(project: str) -> dict[str, Any]:
        pid = parse_project(project)
        current = store.current(pid)
        meta = store.metadata(pid) if current else None
        cycles = cycle_history(settings.model_dir, pid)
        last = cycles[-1] if cycles else None
        return {
            "project": pid,
            "current_version": current,
            "versions": store.versions(pid),
            "label_counts": (meta or {}).get("label_counts") or (last or {}).get("label_counts"),
            "n_labels": (meta or {}).get("n_labels"),
            "metrics": (meta or {}).get("metrics"),
            "last_cycle": last,
            "learning_curve": [
                {"version": h.get("version"), "n_labels": h.get("n_labels"), **(h.get("metrics") or {})}
                for h in store.history(pid)
            ],
            "stopping": {
                "stop_set_kappa": [(c.get("stability") or {}).get("kappa") for c in cycles if c.get("version")],
                "changed_share": (last or {}).get("stability", {}).get("changed") if last else None,
                "pool_uncertainty": (last or {}).get("pool_uncertainty") if last else None,
                **stopping.recommendation([c for c in cycles if c.get("status") == "trained"]),
            },
            "config": project_config(pid).as_dict(),
        }

    @app.get(
        "/projects/{project}/learning-curve.png",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorBody}},
    )
    def learning_curve(project: str) -> Response:
        pid = parse_project(project)
        history = store.history(pid)
        if not history:
            raise ApiError(404, f"project {pid} has no model version yet", "project")
        return Response(plots.learning_curve_png(pid, history), media_type="image/png")

    app.state.started = time.time()
    return app


def _count_annotations(body: dict[str, Any], action: str) -> int:
    """How many new labels an event brings; skips (was_cancelled) bring none."""
    if action == "ANNOTATIONS_CREATED":
        items = body.get("annotations")
        if not isinstance(items, list):
            raise ApiError(400, "annotations must be a list", "annotations")
        return sum(1 for a in items if not (isinstance(a, dict) and a.get("was_cancelled")))
    annotation = body.get("annotation")
    if annotation is not None and not isinstance(annotation, dict):
        raise ApiError(400, "annotation must be an object", "annotation")
    if annotation and annotation.get("was_cancelled") and action == "ANNOTATION_CREATED":
        return 0
    return 1


def build_app(settings: Settings | None = None) -> Any:
    """The ASGI app as served: the FastAPI app behind the auth/size guard, measured and logged."""
    settings = settings or Settings.from_env()
    app = create_app(settings)
    return instrument(Guard(app, settings), app)
