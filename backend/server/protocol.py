"""Label Studio's ML-backend protocol: `/health`, `/setup`, `/predict` and `/webhook`.

Label Studio calls `/health` (1 s budget), `/setup` (3 s), `/predict` (100 s) and `/webhook` (1 s,
inside the annotator's Submit, never retried). Webhooks therefore do O(1) work: validate, touch
Redis, answer. Training happens in the RQ worker (`backend.worker`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis
import requests
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from backend import __version__, projects, selection, strategies
from backend.config import ConfigError, Settings
from backend.images import feature_cache
from backend.jobs import Enqueued, Jobs
from backend.labelconfig import task_input
from backend.labelstudio import LabelStudioClient
from backend.models import ModelError, ModelRegistry, scorer_for_strategy
from backend.pool import PoolCache
from backend.server.deps import (
    JobsDep,
    ModelsDep,
    ProjectLookup,
    ProjectsDep,
    RedisDep,
    SettingsDep,
    StoreDep,
    require_jobs,
)
from backend.server.predict_pool import PredictPool
from backend.server.schemas import (
    ApiError,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    WebhookResponse,
    inline_refs,
    parse_project,
)
from backend.store import ModelStore, StoreError

log = logging.getLogger("lsal.server")

UNTRAINED = "lsal-untrained"
# The events that start a cycle at once, with the reason the cycle records.
CYCLE_ACTIONS = {"START_TRAINING": "start_training", "ANNOTATIONS_DELETED": "annotations_deleted"}
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
TASK_ACTIONS = {"TASKS_CREATED", "TASKS_DELETED"}
HANDLED_ACTIONS = set(CYCLE_ACTIONS) | ANNOTATION_ACTIONS | TASK_ACTIONS
# Small requests (the annotator opening a task) run on the event loop: a thread hop costs more
# than the prediction. A body larger than INLINE_PREDICT_BYTES is parsed and scored in another
# process (backend.server.predict_pool): chosen by size, since 60 tasks of 1 MB each are as slow as
# 60,000 short ones, and parsing alone holds the GIL for ~0.4 s per 60 MB. Small bodies with many
# tasks, and image tasks (a download each), run in a thread.
INLINE_PREDICT_TASKS = 64
#: seconds after which /health starts a fresh Redis PING in the background
PROBE_INTERVAL = 1.0
#: how long the first /health of a process waits for its first PING (then: "unavailable" until one answers)
FIRST_WAIT = 0.5
INLINE_PREDICT_BYTES = 64 * 1024
# The body is parsed by the handler (FastAPI would parse a 60 MB body on the event loop), so the
# OpenAPI document gets its schema here.
PREDICT_BODY_DOC = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": inline_refs(PredictRequest)}}}
}

router = APIRouter()


@router.get("/", include_in_schema=False)
def root() -> dict[str, str]:
    """Name and version, so a browser pointed at the backend sees what it is."""
    return {"name": "lsal", "version": __version__, "docs": "/docs"}


@router.get("/health", response_model=HealthResponse)
async def health(request: Request, settings: SettingsDep, connection: RedisDep) -> dict[str, Any]:
    """Always UP while the process serves; Redis and the model store are reported for operators."""
    redis_state = "not configured" if connection is None else await redis_probe(request.app, connection).state()
    return health_body(settings, redis_state)


def health_body(settings: Settings, redis_state: str) -> dict[str, Any]:
    """The body of `/health`'s answer, given Redis's state (also answered at accept: backend.server.quick)."""
    store_state = "ok" if settings.model_dir.is_dir() or not settings.model_dir.exists() else "not a directory"
    return {
        "status": "UP",
        "model_class": "lsal",
        "version": __version__,
        "redis": redis_state,
        "model_store": store_state,
    }


class RedisProbe:
    """Redis's state as /health reports it, without /health ever waiting for Redis.

    Under load a PING in a thread waits for the GIL behind the event loop's work (p50 0.42 s, p99
    1.7 s inside the app in bench_load), and an asyncio client's round trips wait for the busy
    loop (p50 1.2 s), while Label Studio allows /health 1 s. So a PING runs in the background when
    the last answer is older than PROBE_INTERVAL, and /health reports the latest answer without
    waiting for it: even a short wait is a trip through a busy event loop's queue, and it made
    the /health that met each fresh PING the slow one (server-side p99 0.6-0.8 s in bench_load,
    against 0.12 s without). Only a process's first /health, with no answer yet, waits for one
    (at most FIRST_WAIT). The PING has a thread of its own: in the shared thread pool it queued
    behind up to 40 webhook handlers (the first /health of an HTTP process took 0.93 s in
    bench_load). A stopped Redis refuses a PING at once, so /health reports it about
    PROBE_INTERVAL later at most; a request that meets a Redis error marks it unavailable at once
    (app.redis_error).
    """

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._state: str | None = None
        self._checked = 0.0
        self._task: asyncio.Task[None] | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="lsal-redis-probe")

    async def state(self) -> str:
        """ "ok" or "unavailable": the latest PING's answer (about PROBE_INTERVAL s old at most)."""
        if self.latest() is None and self._task is not None:
            await asyncio.wait({self._task}, timeout=FIRST_WAIT)
        return self._state or "unavailable"

    def latest(self) -> str | None:
        """The latest PING's answer, None before the first; starts a PING when it is stale.
        Never waits: call it on the event loop."""
        loop = asyncio.get_running_loop()
        if self._task is not None and self._task.get_loop() is not loop:
            self._task = None  # started on an event loop that has ended (a test client's)
        if self._task is None and (self._state is None or time.monotonic() - self._checked >= PROBE_INTERVAL):
            self._task = loop.create_task(self._refresh())
        return self._state

    def mark_unavailable(self) -> None:
        """A request just failed on Redis: report it until a PING succeeds again."""
        self._state = "unavailable"

    def _ping(self) -> str:
        try:
            self.connection.ping()
        except redis.RedisError:
            return "unavailable"
        return "ok"

    async def _refresh(self) -> None:
        try:
            state = await asyncio.get_running_loop().run_in_executor(self._thread, self._ping)
            self._state, self._checked = state, time.monotonic()
        finally:
            self._task = None


def redis_probe(app: Any, connection: redis.Redis) -> RedisProbe:
    """The app's probe of `connection` (a new one when a test overrides the connection)."""
    probe: RedisProbe | None = getattr(app.state, "redis_probe", None)
    if probe is None or probe.connection is not connection:
        probe = app.state.redis_probe = RedisProbe(connection)
    return probe


@router.post("/setup", response_model=SetupResponse)
def setup(
    body: SetupRequest, settings: SettingsDep, store: StoreDep, lookup: ProjectsDep, models: ModelsDep
) -> dict[str, str]:
    """Validate and save the project's label config and extra_params; answer its model version.

    The project's model must be registered and accept the label config, and give what its strategy
    needs (backend/models/registry.py): refused here with a 400 rather than at the first cycle."""
    project = parse_project(body.project)
    spec = lookup.spec(project, body.label_config)  # parsed to reject unsupported configs now
    try:
        config = lookup.defaults.with_extra_params(body.extra_params)
    except ConfigError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    entry = strategies.get(config.strategy)
    # A committee base (e.g. density over vote_entropy) makes the committee a need too.
    needs = entry.needs | (entry.requires(dict(config.strategy_params)) & {"committee"})
    refused = models.refusal(config.model, spec, entry.name, needs)
    if refused is not None:
        raise ApiError(400, *refused)
    try:
        projects.save(settings.model_dir, project, body.label_config, body.extra_params)
    except OSError as exc:
        raise ApiError(507, f"cannot write MODEL_DIR: {exc.strerror}", None) from None
    return {"model_version": store.current(project) or UNTRAINED}


@router.post(
    "/predict", response_model=PredictResponse, response_model_exclude_none=True, openapi_extra=PREDICT_BODY_DOC
)
async def predict(
    request: Request, settings: SettingsDep, store: StoreDep, lookup: ProjectsDep, models: ModelsDep
) -> Response:
    """Pre-annotations from the project's current model, one entry per task, in order."""
    raw = await request.body()  # already read (and bounded) by the Guard: no I/O here
    if len(raw) > INLINE_PREDICT_BYTES:
        status, content = await predict_pool(request.app, settings).score(raw)
        return Response(content, status_code=status, media_type="application/json")
    try:
        body = PredictRequest.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None
    if len(body.tasks) <= INLINE_PREDICT_TASKS and not _is_image(body, lookup):
        warm, version = _warm(request.app, body, store)
        if warm:  # pinned to the version found warm: one published since must not load on the loop
            return JSONResponse(predict_tasks(body, settings, store, lookup, models, version=version))
    result = await run_in_threadpool(predict_tasks, body, settings, store, lookup, models)
    if "model_version" in result:
        _warm_versions(request.app)[request_project(body)] = result["model_version"]
    return JSONResponse(result)


def predict_pool(app: Any, settings: Settings) -> PredictPool:
    """The app's pool for large /predict bodies, started with the first one (closed by the app's lifespan)."""
    pool: PredictPool | None = getattr(app.state, "predict_pool", None)
    if pool is None:
        pool = app.state.predict_pool = PredictPool(settings)
    return pool


def _warm(app: Any, body: PredictRequest, store: ModelStore) -> tuple[bool, str | None]:
    """(whether the prediction may run on the event loop, the version it must use).

    Only once this process has answered a prediction with the project's current version: the
    first one reads the version's model (skops, ~0.1-0.3 s) and whatever the model loads on first
    use (the text embedder's weights: 0.8 s of event loop in bench_load), so it runs in a thread.
    Every cycle publishes a version: inline, each would stall /health once per cycle per HTTP
    process. The caller predicts with the version returned, not with CURRENT read again: in
    bench_load a version was published every ~1.2 s, and a request that read CURRENT between
    this check and its prediction loaded the new model on the event loop."""
    try:
        project = request_project(body)
        version = store.current(project)
        if version is None:
            # In a thread: a first version published after this read would be loaded there.
            return False, None
        return not store.needs_load(project, version) and _warm_versions(app).get(project) == version, version
    except (ApiError, StoreError):
        return True, None  # predict_tasks answers the same error


def _warm_versions(app: Any) -> dict[int, str]:
    # project -> the version last answered off the event loop (one entry per project)
    warm: dict[int, str] | None = getattr(app.state, "warm_versions", None)
    if warm is None:
        warm = app.state.warm_versions = {}
    return warm


def _is_image(body: PredictRequest, lookup: ProjectLookup) -> bool:
    # A cheap look at the XML (parsed properly later); Label Studio always sends the config.
    return "<image" in (body.label_config or "").lower()


def predict_tasks(
    body: PredictRequest,
    settings: Settings,
    store: ModelStore,
    lookup: ProjectLookup,
    models: ModelRegistry | None = None,
    version: str | None = None,
) -> dict[str, Any]:
    """The body of `/predict`'s answer; every entry is [] before the project's first model.

    ``version``: predict with this version of the project's model instead of its current one."""
    if not body.tasks:
        raise ApiError(400, "tasks must not be empty", "tasks")
    if len(body.tasks) > settings.max_tasks:
        raise ApiError(413, f"{len(body.tasks)} tasks exceed MAX_TASKS={settings.max_tasks}", "tasks")
    project = request_project(body)
    spec = lookup.spec(project, body.label_config)
    inputs = []
    for i, task in enumerate(body.tasks):
        try:
            inputs.append(task_input(spec, task.data))
        except (KeyError, ValueError, TypeError) as exc:
            raise ApiError(400, str(exc).strip("'\""), f"tasks[{i}].data.{spec.data_key}") from None
    registry = models or ModelRegistry()
    try:
        loaded = store.load(project, lambda path: registry.load_version(path, spec), version)
    except ModelError as exc:
        # The current version's model cannot be read (a plugin no longer registered, an artifact of
        # an earlier release): no pre-annotation, as before the first model; the next cycle retrains.
        log.warning("project=%s: current model not loadable: %s", project, exc)
        loaded = None
    if loaded is None:
        return {"results": [[] for _ in body.tasks]}
    version, model = loaded
    config = lookup.config(project)
    rows = list(range(len(inputs)))
    if spec.kind == "image":
        rows, inputs = _image_vectors(settings, project, body, inputs)
    results: list[Any] = [[] for _ in body.tasks]  # an image that cannot be read gets no prediction
    if rows:
        scorer = scorer_for_strategy(model, config.strategy, config.strategy_params)
        try:
            scored = selection.predict(scorer, spec, inputs, config.strategy, version, params=config.strategy_params)
        except ModelError as exc:
            raise ApiError(422, f"the project's model failed: {exc}", "tasks") from None
        for row, p in zip(rows, scored, strict=True):
            results[row] = p.to_json()
    return {"results": results, "model_version": version}


def request_project(body: PredictRequest) -> int:
    """The project a /predict request is for: its `project`, else its first task's."""
    raw_project = body.project
    if raw_project is None:
        raw_project = (body.tasks[0].model_extra or {}).get("project") if body.tasks else None
        if raw_project is None:
            raise ApiError(400, "project is required (in the body or in the tasks)", "project")
    return parse_project(raw_project)


def _image_vectors(
    settings: Settings, project: int, body: PredictRequest, refs: list[Any]
) -> tuple[list[int], list[Any]]:
    """(positions, feature vectors) of the tasks whose image lsal can read: cached in the pool
    snapshot when a cycle already computed them (read-only here), else fetched now."""
    ids = [task.id for task in body.tasks]
    snap = PoolCache(settings.model_dir, project).load()
    arrays = dict(snap.arrays) if snap is not None else {}
    with requests.Session() as session:
        headers = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key).auth_headers
        cache = feature_cache(settings, session, headers if settings.label_studio_api_key else dict)
        kept, vectors = cache.vectors(arrays, ids, refs)
    position = {task_id: i for i, task_id in enumerate(ids)}
    return [position[t] for t in kept], list(vectors)


@router.post("/webhook", response_model=WebhookResponse, response_model_exclude_none=True)
async def webhook(request: Request, settings: SettingsDep, lookup: ProjectsDep, jobs: JobsDep) -> dict[str, Any]:
    """Turn a Label Studio event into queued work: a cycle, a counted label, or pool bookkeeping."""
    # The body is parsed by hand, not by a model: Label Studio's payloads vary by action, and any
    # unknown action must still be answered (ignored) rather than refused.
    try:
        body = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "malformed JSON body", "body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "expected a JSON object", "body")
    # Off the event loop: an event costs a few Redis round trips, each a blocking wait that on a
    # busy machine lasts milliseconds, and /health must not queue behind them.
    return await run_in_threadpool(handle_event, body, settings, lookup, jobs)


def handle_event(body: dict[str, Any], settings: Settings, lookup: ProjectLookup, jobs: Jobs | None) -> dict[str, Any]:
    """The answer to one webhook event (a JSON object), after queueing what it asks for."""
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise ApiError(400, "action must be a non-empty string", "action")
    if action not in HANDLED_ACTIONS:
        return {"status": "ignored", "action": action}
    proj = body.get("project")
    if not isinstance(proj, dict) or "id" not in proj:
        raise ApiError(400, "project.id is required", "project.id")
    project = parse_project(proj["id"], "project.id")
    if not projects.is_set_up(settings.model_dir, project):
        # /setup runs when Label Studio connects and on every Data Manager load. A webhook is
        # answered 200 (Label Studio would only log an error), but nothing is queued or stored.
        return {"status": "ignored", "action": action}
    if action in TASK_ACTIONS:
        return tasks_event(project, action, body, settings, jobs)
    queue = require_jobs(jobs)
    if action in CYCLE_ACTIONS:
        return enqueued(action, queue.request_cycle(project, CYCLE_ACTIONS[action]))
    # Which tasks changed, skips included (a skipped task leaves the pool): a hint the next cycle
    # reads from Label Studio (backend/labels.py). Noted before the cycle is requested.
    changed = annotation_task_ids(body, action)
    count = count_annotations(body, action)
    every = lookup.config(project).retrain_every
    enq = queue.note_annotations(project, count, every, changed or (), full=changed is None)
    if count == 0:
        return {"status": "ignored", "action": action}  # a skip: its hint only, nothing counted
    if enq is None:
        return {"status": "counted", "action": action}
    return enqueued(action, enq)


def enqueued(action: str, enq: Enqueued) -> dict[str, Any]:
    """The answer to an event that queued a job (`queued`) or joined one already waiting (`joined`)."""
    return {"status": "queued" if enq.created else "joined", "action": action, "job_id": enq.job_id}


def tasks_event(
    project: int, action: str, body: dict[str, Any], settings: Settings, jobs: Jobs | None
) -> dict[str, Any]:
    """TASKS_CREATED / TASKS_DELETED are hints: only the task ids are kept, and one task job per
    project reads those tasks from Label Studio before anything is stored, scored or written."""
    tasks = body.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and isinstance(t.get("id"), int) for t in tasks):
        raise ApiError(400, "tasks must be a list of objects with an integer id", "tasks")
    if not PoolCache(settings.model_dir, project).snapshot_path.exists():
        return {"status": "ignored", "action": action}  # no pool yet: the first cycle reads it whole
    ids = [int(t["id"]) for t in tasks]
    if action == "TASKS_DELETED":
        require_jobs(jobs).note_label_hints(project, ids)  # a deleted labeled task leaves the labels too
    created, deleted = (ids, []) if action == "TASKS_CREATED" else ([], ids)
    return enqueued(action, require_jobs(jobs).note_tasks(project, created, deleted))


def annotation_task_ids(body: dict[str, Any], action: str) -> list[int] | None:
    """The ids of the tasks an annotation event is about, or None when it does not say (then the
    next cycle reads every label): ``annotation.task`` / ``task.id``, or each item's ``task`` of a
    bulk ANNOTATIONS_CREATED."""
    if action == "ANNOTATIONS_CREATED":
        items = body.get("annotations")
        tasks = [a.get("task") if isinstance(a, dict) else None for a in items] if isinstance(items, list) else []
    else:
        annotation, task = body.get("annotation"), body.get("task")
        tasks = [
            annotation.get("task") if isinstance(annotation, dict) else None,
            task.get("id") if isinstance(task, dict) else None,
        ]
        tasks = [t for t in tasks if t is not None][:1]
    ids = [t for t in tasks if isinstance(t, int) and not isinstance(t, bool)]
    return ids if ids and len(ids) == len(tasks) else None


def count_annotations(body: dict[str, Any], action: str) -> int:
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
