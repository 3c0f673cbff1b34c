"""Label Studio's ML-backend protocol: `/health`, `/setup`, `/predict` and `/webhook`.

Label Studio calls `/health` (1 s budget), `/setup` (3 s), `/predict` (100 s) and `/webhook` (1 s,
inside the annotator's Submit, never retried). Webhooks therefore do O(1) work: validate, touch
Redis, answer. Training happens in the RQ worker (`backend.worker`).
"""

from __future__ import annotations

import json
from typing import Any

import redis
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from backend import __version__, projects, selection
from backend.config import ConfigError, Settings
from backend.jobs import Enqueued, Jobs
from backend.labelconfig import task_input
from backend.learner import Learner
from backend.pool import PoolCache
from backend.server.deps import JobsDep, ProjectLookup, ProjectsDep, RedisDep, SettingsDep, StoreDep, require_jobs
from backend.server.schemas import (
    ApiError,
    HealthResponse,
    PredictRequest,
    PredictResponse,
    SetupRequest,
    SetupResponse,
    WebhookResponse,
    parse_project,
)
from backend.store import ModelStore

UNTRAINED = "lsal-untrained"
# The events that start a cycle at once, with the reason the cycle records.
CYCLE_ACTIONS = {"START_TRAINING": "start_training", "ANNOTATIONS_DELETED": "annotations_deleted"}
ANNOTATION_ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"}
TASK_ACTIONS = {"TASKS_CREATED", "TASKS_DELETED"}
HANDLED_ACTIONS = set(CYCLE_ACTIONS) | ANNOTATION_ACTIONS | TASK_ACTIONS
# Small requests (the annotator opening a task) run on the event loop: a thread hop costs more
# than the prediction. Anything larger goes to the thread pool so /health stays prompt. Chosen by
# body size as well as task count: 60 tasks of 1 MB each are as slow as 60,000 short ones.
INLINE_PREDICT_TASKS = 64
INLINE_PREDICT_BYTES = 64 * 1024

router = APIRouter()


@router.get("/", include_in_schema=False)
def root() -> dict[str, str]:
    """Name and version, so a browser pointed at the backend sees what it is."""
    return {"name": "lsal", "version": __version__, "docs": "/docs"}


@router.get("/health", response_model=HealthResponse)
def health(settings: SettingsDep, connection: RedisDep) -> dict[str, Any]:
    """Always UP while the process serves; Redis and the model store are reported for operators."""
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


@router.post("/setup", response_model=SetupResponse)
def setup(body: SetupRequest, settings: SettingsDep, store: StoreDep, lookup: ProjectsDep) -> dict[str, str]:
    """Validate and save the project's label config and extra_params; answer its model version."""
    project = parse_project(body.project)
    lookup.spec(project, body.label_config)  # parsed to reject unsupported configs now, not at the first cycle
    try:
        lookup.defaults.with_extra_params(body.extra_params)
    except ConfigError as exc:
        raise ApiError(400, str(exc), exc.field) from None
    try:
        projects.save(settings.model_dir, project, body.label_config, body.extra_params)
    except OSError as exc:
        raise ApiError(507, f"cannot write MODEL_DIR: {exc.strerror}", None) from None
    return {"model_version": store.current(project) or UNTRAINED}


@router.post("/predict", response_model=PredictResponse, response_model_exclude_none=True)
async def predict(
    body: PredictRequest, request: Request, settings: SettingsDep, store: StoreDep, lookup: ProjectsDep
) -> JSONResponse:
    """Pre-annotations from the project's current model, one entry per task, in order."""
    size = len(await request.body())  # already read (and bounded) by the Guard: no I/O here
    if len(body.tasks) <= INLINE_PREDICT_TASKS and size <= INLINE_PREDICT_BYTES:
        return JSONResponse(predict_tasks(body, settings, store, lookup))
    return JSONResponse(await run_in_threadpool(predict_tasks, body, settings, store, lookup))


def predict_tasks(body: PredictRequest, settings: Settings, store: ModelStore, lookup: ProjectLookup) -> dict[str, Any]:
    """The body of `/predict`'s answer; every entry is [] before the project's first model."""
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
    spec = lookup.spec(project, body.label_config)
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
    config = lookup.config(project)
    predictions = selection.predict(learner, spec, inputs, config.strategy, version, params=config.strategy_params)
    results = [p.to_json() for p in predictions]
    return {"results": results, "model_version": version}


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
    action = body.get("action")
    if not isinstance(action, str) or not action:
        raise ApiError(400, "action must be a non-empty string", "action")
    if action not in HANDLED_ACTIONS:
        return {"status": "ignored", "action": action}
    proj = body.get("project")
    if not isinstance(proj, dict) or "id" not in proj:
        raise ApiError(400, "project.id is required", "project.id")
    project = parse_project(proj["id"], "project.id")
    if not projects.path(settings.model_dir, project).is_file():
        # A project Label Studio never set up with lsal (/setup runs when it connects and on every
        # Data Manager load) costs no job, no file and no metric series: one stat, then done.
        return {"status": "ignored", "action": action}
    if action in TASK_ACTIONS:
        return tasks_event(project, action, body, settings, jobs)
    queue = require_jobs(jobs)
    if action in CYCLE_ACTIONS:
        return enqueued(action, queue.request_cycle(project, CYCLE_ACTIONS[action]))
    count = count_annotations(body, action)
    if count == 0:
        return {"status": "ignored", "action": action}
    enq = queue.note_annotations(project, count, lookup.config(project).retrain_every)
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
    created, deleted = (ids, []) if action == "TASKS_CREATED" else ([], ids)
    return enqueued(action, require_jobs(jobs).note_tasks(project, created, deleted))


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
