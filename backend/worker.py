"""What runs on the RQ worker: the job entry points and the worker process itself.

Jobs build their dependencies from the environment the worker was started with (the same
variables as the server) and take the Redis connection from RQ: no hidden globals.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

import redis
from rq import Queue, SimpleWorker, get_current_job
from rq.job import Job
from threadpoolctl import threadpool_limits

from backend import projects
from backend.config import Settings
from backend.cycle import CycleDeps, cleanup_stale, run_cycle, score_new_tasks
from backend.jobs import (
    CLEANUP_MARKER,
    JOB_FUNCS,
    LOCK_TTL,
    SERIALIZER,
    TASKS_MARKER,
    Jobs,
    TaskHints,
    low_queue_name,
    progress_reporter,
)
from backend.labelstudio import LabelStudioClient, LabelStudioError
from backend.metrics import forget_metrics, record_cycle, record_cycle_failure
from backend.models import ModelError, ModelRegistry
from backend.pool import PoolCache
from backend.projectdir import ProjectDir
from backend.store import ModelStore

log = logging.getLogger("lsal.worker")

#: niceness a worker process adds to its own: on shared cores the HTTP server's answers to Label
#: Studio and Label Studio itself come before the background cycle (as for the /predict scoring
#: process, backend/server/predict_pool.py)
NICE = 5


@functools.lru_cache(maxsize=4)
def registry(al_models: str) -> ModelRegistry:
    """The registered models (entry points + AL_MODELS), discovered once per worker process."""
    return ModelRegistry.discover(al_models)


def _context(job: Job) -> tuple[Settings, Jobs, CycleDeps]:
    settings = Settings.from_env()
    jobs = Jobs(job.connection, settings.queue_name, settings.job_timeout)
    client = LabelStudioClient(
        settings.label_studio_url,
        settings.label_studio_api_key,
        timeout=settings.ls_timeout,
        retries=settings.ls_retries,
    )
    deps = CycleDeps(
        settings=settings,
        client=client,
        store=ModelStore(settings.model_dir, keep=settings.keep_versions),
        progress=progress_reporter(job),
        models=registry(settings.models),
    )
    return settings, jobs, deps


class LockLost(RuntimeError):
    """The project lock expired or passed to another worker: this job must not write anything more."""


class Fence:
    """Whether this process still holds the project lock, checked before every write.

    `check()` extends the lock (one Redis round trip). If the lock is no longer ours (another owner's
    token, or it expired), or the keep-alive already found so, it raises LockLost: a cycle that lost
    its lock stops at its next stage instead of writing over another worker's pool, model versions
    and predictions. If Redis cannot be reached, the lock is a lease: nobody else can take it for
    LOCK_TTL after our last confirmation, so the cycle goes on until LEASE_MARGIN before that.
    """

    #: seconds before the lease would run out at which an unconfirmable lock counts as lost
    LEASE_MARGIN = 5.0

    def __init__(self, lock: Any, project: int) -> None:
        self.lock = lock
        self.project = project
        self.lost = False
        self.confirmed_at = time.monotonic()  # the lock was acquired just before

    def confirmed(self) -> None:
        """Record that the lock was just confirmed ours (the lease restarts)."""
        self.confirmed_at = time.monotonic()

    def check(self) -> None:
        """Extend the lock, or raise LockLost if it is no longer ours (see the class docstring)."""
        if not self.lost:
            try:
                self.lock.reacquire()
                self.confirmed()
                return
            except redis.exceptions.LockError:  # LockNotOwnedError included: another owner, or expired
                self.lost = True
            except redis.RedisError:
                if time.monotonic() - self.confirmed_at < LOCK_TTL - self.LEASE_MARGIN:
                    return
                self.lost = True
        raise LockLost(f"project {self.project}: the project lock was lost; stopping before any further write")


def fenced(progress: Callable[[str, int, int], None], fence: Fence) -> Callable[[str, int, int], None]:
    """A progress callback that checks the fence first: the cycle reports progress at the start of
    every stage (reading the pool, publish, stability, each written chunk, the switch), so it stops
    before the stage's writes once the lock is gone."""

    def report(stage: str, done: int = 0, total: int = 0) -> None:
        fence.check()
        progress(stage, done, total)

    return report


def acquire_project_lock(jobs: Jobs, project: int) -> Any:
    """The project's lock, acquired: a job waits for another's to end, at most the job timeout
    (then TimeoutError, and RQ's retry)."""
    lock = jobs.project_lock(project)
    if not lock.acquire():
        raise TimeoutError(f"project {project}: the project lock stayed held for the whole job timeout")
    return lock


@contextlib.contextmanager
def held(lock: Any, project: int) -> Iterator[Fence]:
    """Keep an acquired project lock alive while the body runs, then release it; yield its Fence.

    The lock's TTL is short (LOCK_TTL): if this process dies (SIGKILL, OOM, machine loss) the lock
    expires within LOCK_TTL seconds and the project's next cycle can run. A keep-alive that finds
    the lock taken by someone else marks the fence lost.
    """
    stop = threading.Event()
    fence = Fence(lock, project)

    def keep_alive() -> None:
        while not stop.wait(LOCK_TTL / 3):
            try:
                lock.reacquire()
                fence.confirmed()
            except redis.exceptions.LockNotOwnedError:
                fence.lost = True
                log.warning("project=%s the project lock was taken over: this job stops before its next write", project)
                return
            except (redis.RedisError, redis.exceptions.LockError) as exc:
                log.warning("project=%s could not extend the project lock: %s", project, type(exc).__name__)

    thread = threading.Thread(target=keep_alive, name=f"lock-keepalive-{project}", daemon=True)
    thread.start()
    try:
        yield fence
    finally:
        stop.set()
        thread.join()
        try:
            lock.release()
        except (redis.RedisError, redis.exceptions.LockError):
            log.warning("project=%s lock expired or Redis unavailable at release", project)


def forget_unknown_project(deps: CycleDeps, jobs: Jobs, project: int) -> bool:
    """If Label Studio does not know `project` (404), remove what lsal keeps for it and say so.

    Removed: its Redis keys (markers, counters, task hints), its metric series, its setup record
    and its pool cache, so a deleted (or made-up) project costs nothing from here on. Model
    versions stay: they are the admin's to delete (`MODEL_DIR/<project>/`). The caller holds the
    project lock; ``deps.fence`` is checked before anything is removed (LockLost: nothing is)."""
    try:
        deps.client.get_project(project, fields=())
        return False
    except LabelStudioError as exc:
        if exc.status != 404:
            return False
    deps.fence()
    jobs.forget_project(project)
    forget_metrics(jobs.redis, jobs.queue_name, project)
    pdir = ProjectDir(deps.settings.model_dir, project)
    pdir.project_json.unlink(missing_ok=True)
    shutil.rmtree(pdir.pool, ignore_errors=True)
    log.info("project=%s is unknown to Label Studio: its queue state, metrics, setup and pool were removed", project)
    return True


def _fail(job: Job, message: str) -> None:
    job.meta["error"] = message
    with contextlib.suppress(redis.RedisError):
        job.save_meta()


def cycle_job(project: int, reason: str) -> dict[str, Any]:
    """The RQ job of one active-learning cycle for `project`, under the project's lock."""
    job = get_current_job()
    assert job is not None, "cycle_job runs on an RQ worker"
    settings, jobs, deps = _context(job)
    jobs.claim(project, job.id)  # from here on, new events queue a follow-up cycle
    deps.progress("waiting_for_lock", 0, 0)
    lock = acquire_project_lock(jobs, project)
    try:
        # One BLAS/OpenMP thread: k-means and the fits are small, and on a 2-core machine shared
        # with Label Studio a thread team costs far more in contention than it gains (measured:
        # cluster_ids 0.8 s with the default team under load, 0.02 s with one thread).
        with held(lock, project) as fence, threadpool_limits(1):
            # The hints are taken inside the cycle, after claim(): a later event queues a follow-up.
            fenced_deps = replace(
                deps,
                progress=fenced(deps.progress, fence),
                fence=fence.check,
                label_hints=lambda: jobs.take_label_hints(project),
            )
            try:
                report = run_cycle(fenced_deps, project)
            except LabelStudioError as exc:
                # Still under the lock: what is removed is removed by its one writer.
                if exc.status == 404 and forget_unknown_project(fenced_deps, jobs, project):
                    return {"status": "unknown_project", "project": project, "reason": reason}
                raise
    except LabelStudioError as exc:
        _fail(job, f"Label Studio: {exc}")
        record_cycle_failure(job.connection, settings.queue_name, project)
        raise
    except ModelError as exc:
        # A broken model does not mend by waiting: no retry (RQ's retries are for Label Studio or
        # Redis hiccups). Nothing was published, so the previous version keeps serving.
        job.retries_left = 0
        _fail(job, f"model: {exc}")
        record_cycle_failure(job.connection, settings.queue_name, project)
        raise
    except Exception as exc:
        _fail(job, f"{type(exc).__name__}: {exc}")
        record_cycle_failure(job.connection, settings.queue_name, project)
        raise
    deps.progress("done", 1, 1)
    result = report.as_dict()
    result["reason"] = reason
    record_cycle(job.connection, settings.queue_name, result)  # for /metrics on any server
    if report.version is not None:
        stale = len(ProjectDir(settings.model_dir, project).written_versions()) - 1
        result["cleanup_job"] = jobs.request_cleanup(project, stale).job_id
    return result


def cleanup_job(project: int) -> dict[str, int]:
    """Off the critical path: delete stale prediction versions that lsal wrote (from the low queue,
    when no cycle waits; see Jobs.request_cleanup)."""
    job = get_current_job()
    assert job is not None
    _, jobs, deps = _context(job)
    jobs.claim(project, job.id, CLEANUP_MARKER)  # from here on, a finished cycle queues another
    lock = acquire_project_lock(jobs, project)
    try:
        with held(lock, project) as fence:
            # One version per job: the worker is never held up by a long deletion when a cycle arrives.
            deleted = cleanup_stale(replace(deps, fence=fence.check), project, limit=1)
            stale = len(ProjectDir(deps.settings.model_dir, project).written_versions()) - 1
    except Exception as exc:
        _fail(job, f"{type(exc).__name__}: {exc}")
        raise
    if stale > 0:
        jobs.request_cleanup(project, 0)  # the next one, from the low queue
    return deleted


def score_new_tasks_job(project: int) -> dict[str, object]:
    """TASKS_CREATED / TASKS_DELETED: apply the hinted task ids, with data read from Label Studio.

    The webhook only said which ids changed (Jobs.note_tasks). Here the tasks are read from Label
    Studio in bulk by id: those it returns enter the pool with *its* data and new ones are scored
    with the current model (no retrain); an id it does not return is dropped from the pool (never
    written anywhere). Nothing from the webhook's body is stored, scored or written.

    It runs under the project lock, like a cycle (it writes the pool's event log and predictions),
    and checks it before each write; hints taken by a job that fails go back for its retry.
    """
    job = get_current_job()
    assert job is not None
    settings, jobs, deps = _context(job)
    jobs.claim(project, job.id, TASKS_MARKER)  # from here on, new hints queue a follow-up job
    if not projects.is_set_up(settings.model_dir, project):
        jobs.take_task_hints(project)
        return {"status": "not_set_up", "written": 0}
    deps.progress("waiting_for_lock", 0, 0)
    lock = acquire_project_lock(jobs, project)
    with held(lock, project) as fence, threadpool_limits(1):
        hints = jobs.take_task_hints(project)
        try:
            return _apply_task_hints(replace(deps, fence=fence.check), jobs, project, hints)
        except BaseException as exc:
            jobs.restore_task_hints(project, hints)
            if isinstance(exc, Exception):
                _fail(job, f"{type(exc).__name__}: {exc}")
            raise


def _apply_task_hints(deps: CycleDeps, jobs: Jobs, project: int, hints: TaskHints) -> dict[str, object]:
    cache = PoolCache(deps.settings.model_dir, project, fence=deps.fence)
    if hints.overflow:
        # More hints than we keep: the next cycle reads the whole pool from Label Studio instead.
        deps.fence()
        cache.snapshot_path.unlink(missing_ok=True)
        return {"status": "pool_reread", "written": 0}
    asked = hints.created | hints.deleted
    try:
        present = deps.client.tasks_by_id(project, asked)
    except LabelStudioError as exc:
        if exc.status == 404 and forget_unknown_project(deps, jobs, project):
            return {"status": "unknown_project", "written": 0}
        raise
    gone = sorted(asked - present.keys())
    if cache.snapshot_path.exists():  # without a pool the first cycle reads it whole
        cache.delete_tasks(gone)
        cache.add_tasks({"id": i, "data": present[i]} for i in sorted(present))
    fresh = sorted(i for i in hints.created if i in present)
    result: dict[str, object] = {"status": "nothing_to_score", "written": 0}
    if fresh:
        result = dict(score_new_tasks(deps, project, fresh))
    result.update(hinted=len(asked), present=len(present), dropped=len(gone))
    return result


REFUSED_FUNC = "backend.worker.refused_job"


class Interrupted(BaseException):
    """Raised inside a running job by a second stop signal (cold stop). A BaseException, so the job
    does not record it as a failure of its own; RQ's Retry re-queues the job, and the cycle's
    atomic publish and write order make an interrupted cycle harmless (the previous version serves)."""


def refused_job(reason: str) -> None:
    """What a job that is not one of lsal's own runs instead: it fails, saying why."""
    raise PermissionError(f"job refused: {reason}")


def refusal(job: Job) -> str | None:
    """Why `job` must not run, or None for one of lsal's own jobs.

    Only JOB_FUNCS run, and without RQ's callbacks or webhooks (which name more code to import
    and URLs to call): a job written into Redis by anyone else imports and calls nothing.
    """
    try:
        func_name = job.func_name
    except Exception as exc:  # undecodable data, e.g. a pickled job from an older lsal or an attacker
        return f"its data cannot be decoded as JSON ({type(exc).__name__})"
    if func_name not in JOB_FUNCS:
        return f"{str(func_name)[:100]!r} is not an lsal job"
    callbacks = (job._success_callback_name, job._failure_callback_name, job._stopped_callback_name)
    if any(callbacks) or job.webhooks:
        return "lsal jobs carry no callbacks or webhooks"
    return None


class LsalWorker(SimpleWorker):
    """A SimpleWorker whose running job keeps a short heartbeat.

    RQ registers a SimpleWorker's job as started for job_timeout + 60 s, so a worker killed
    mid-cycle (SIGKILL, OOM, a lost machine) would hold its job for about an hour before RQ's
    maintenance declares it abandoned and retries it. Here a thread renews the job's entry every
    HEARTBEAT / 3 seconds with a TTL of HEARTBEAT + 30, and maintenance runs every
    MAINTENANCE seconds: a killed cycle is re-run (through its Retry) within a few minutes.
    The job timeout itself (AL_JOB_TIMEOUT) still applies.
    """

    HEARTBEAT = 60
    MAINTENANCE = 60
    #: whether a job is executing now (a cold stop interrupts only that)
    running_job = False

    def get_heartbeat_ttl(self, job: Job) -> int:
        """How long a job's heartbeat stays valid: a little longer than the beat interval."""
        return self.HEARTBEAT + 30

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second SIGTERM/SIGINT while a job runs (RQ's cold stop): interrupt the job so that it is
        re-queued, instead of RQ's SystemExit, which logs a traceback for the job."""
        requested = getattr(self, "_shutdown_requested_date", None)
        if requested is not None and datetime.now(UTC) - requested < timedelta(seconds=1):
            return  # the same stop delivered twice (RQ's own rule)
        if not self.running_job:
            return  # already on its way out (RQ's teardown): nothing to interrupt
        log.warning("stop requested while a job runs: interrupting it (RQ's retry re-queues it)")
        raise Interrupted()

    def handle_exception(self, job: Job, *exc_info: Any) -> None:
        """RQ's failure handling, except for a job interrupted by a stop (re-queued, not logged as failed)."""
        if len(exc_info) > 1 and isinstance(exc_info[1], Interrupted):
            log.info("job %s interrupted by the stop; re-queued by its retry", job.id)
            return
        super().handle_exception(job, *exc_info)

    def unsubscribe(self) -> None:
        """RQ's own waits a full second for its pubsub thread, which sleeps in a 60 s read: the
        thread is a daemon that dies with the process, so stop it and move on (a fast stop)."""
        if self.pubsub_thread:
            with contextlib.suppress(redis.RedisError):
                self.pubsub.unsubscribe()
            self.pubsub_thread.stop()
            self.pubsub_thread.join(timeout=0.05)
            with contextlib.suppress(redis.RedisError):
                self.pubsub.close()

    def perform_job(self, job: Job, queue: Queue) -> bool:
        """Run the job unless it is not one of lsal's own (then it fails as refused, running nothing)."""
        problem = refusal(job)
        if problem is not None:
            # Run the refusal in the job's place, so RQ records the failure as for any job.
            log.error("job %s refused: %s", job.id, problem)
            job._func_name, job._instance, job._args, job._kwargs = REFUSED_FUNC, None, (problem,), {}
            job._success_callback_name = job._failure_callback_name = job._stopped_callback_name = None
            job.webhooks = []
            job.retries_left = 0
        return super().perform_job(job, queue)

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job with a heartbeat thread that keeps it registered as alive while it runs."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.HEARTBEAT / 3):
                with contextlib.suppress(redis.RedisError):
                    ttl = self.get_heartbeat_ttl(job)
                    job.heartbeat(datetime.now(UTC), ttl)
                    self.heartbeat(ttl)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id}", daemon=True)
        thread.start()
        self.running_job = True
        try:
            super().execute_job(job, queue)
        finally:
            self.running_job = False
            stop.set()
            thread.join()


def run_worker(redis_url: str, queue_name: str, *, burst: bool = False, name: str | None = None) -> bool:
    """Run one RQ worker on `queue_name` until stopped (or until the queue is empty with burst).

    LsalWorker runs jobs in this process instead of forking one per job: loaded libraries stay
    warm and a cycle does not pay scikit-learn's import time. If Redis goes away (RQ's own
    bookkeeping then raises out of the work loop), the process waits for Redis and starts a fresh
    worker loop instead of exiting: a job cut off by the outage is re-run by RQ's maintenance.
    """
    # A cycle can wait a moment; Label Studio's /health (1 s budget), /predict and the annotators'
    # Label Studio on the same cores cannot. Measured with bench/bench_load.py (README, Load).
    with contextlib.suppress(OSError):
        os.nice(NICE)
    connection = redis.Redis.from_url(redis_url)
    queue = Queue(queue_name, connection=connection, serializer=SERIALIZER)
    # RQ takes from the first non-empty queue in this order: a stale-version cleanup never runs
    # while a cycle waits (it would delay that cycle by the whole deletion).
    low = Queue(low_queue_name(queue_name), connection=connection, serializer=SERIALIZER)
    level = logging.getLevelName(logging.getLogger().level) or "INFO"
    restarts = 0
    while True:
        worker_name = name if restarts == 0 or name is None else f"{name}-r{restarts}"
        worker = LsalWorker(
            [queue, low],
            connection=connection,
            name=worker_name,
            maintenance_interval=LsalWorker.MAINTENANCE,
            serializer=SERIALIZER,
        )
        try:
            result = worker.work(burst=burst, with_scheduler=True, logging_level=level)
        except redis.ConnectionError as exc:
            log.warning("Redis unavailable (%s)", type(exc).__name__)
        else:
            # A stop was asked for (SIGTERM/SIGINT): RQ records when, whether it was busy or idle.
            if burst or worker._stop_requested or getattr(worker, "_shutdown_requested_date", None) is not None:
                return result
            # RQ ends its loop on an unhandled error (it logged it): typically Redis went away.
        restarts += 1
        log.warning("the worker loop ended unexpectedly; restarting when Redis answers (restart %d)", restarts)
        time.sleep(1.0)  # never a hot loop, whatever the cause
        _wait_for_redis(connection)


def _wait_for_redis(connection: redis.Redis, max_delay: float = 5.0) -> None:
    delay = 0.2
    while True:
        try:
            connection.ping()
            return
        except redis.RedisError:
            time.sleep(delay)
            delay = min(max_delay, delay * 2)
