"""Pipelines and admins: start a cycle (`/train`), follow a job, read a project's status and curve.

Authentication (Basic auth, and the trigger token on `/train`) is checked by the Guard
(`backend.server.guard`) before any of these run.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from backend import plots, projects, stopping
from backend.cycle_log import cycle_history
from backend.server.deps import JobsDep, ProjectsDep, SettingsDep, StoreDep, require_jobs
from backend.server.schemas import ApiError, ErrorBody, TrainRequest, TrainResponse, parse_project

router = APIRouter()


@router.post("/train", status_code=202, response_model=TrainResponse, responses={404: {"model": ErrorBody}})
def train(body: TrainRequest, jobs: JobsDep, settings: SettingsDep) -> dict[str, Any]:
    """Queue a cycle of the project, or join the one already queued; 404 for a project that Label
    Studio never set up with lsal (the webhook's rule: such a project costs no job)."""
    queue = require_jobs(jobs)
    if not projects.is_set_up(settings.model_dir, body.project):
        message = (
            f"project {body.project} was never set up with lsal (no /setup from Label Studio yet: connect"
            " the backend, or open the project in Label Studio)"
        )
        raise ApiError(404, message, "project")
    enq = queue.request_cycle(body.project, "train")
    return {"job_id": enq.job_id, "created": enq.created}


@router.get("/jobs/{job_id}")
def job_status(job_id: str, jobs: JobsDep) -> dict[str, Any]:
    """A job's state, progress and result as `backend.jobs.Jobs.status` reports it."""
    try:
        status = require_jobs(jobs).status(job_id)
    except ValueError as exc:
        raise ApiError(400, str(exc), "job_id") from None
    if status is None:
        raise ApiError(404, f"no job {job_id}", "job_id")
    return status


@router.get("/projects/{project}/status")
def project_status(project: str, settings: SettingsDep, store: StoreDep, lookup: ProjectsDep) -> dict[str, Any]:
    """The project's model versions, last cycle, learning curve, stopping signals and settings."""
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
        "config": lookup.config(pid).as_dict(),
    }


@router.get(
    "/projects/{project}/learning-curve.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorBody}},
)
def learning_curve(project: str, store: StoreDep) -> Response:
    """The project's learning curve (one point per model version) as a PNG."""
    pid = parse_project(project)
    history = store.history(pid)
    if not history:
        raise ApiError(404, f"project {pid} has no model version yet", "project")
    return Response(plots.learning_curve_png(pid, history), media_type="image/png")
