"""Enqueue active-learning cycles on RQ, one project at a time.

Coalescing: per project at most one *queued* cycle. A marker key holds the id of the queued job;
an event that finds the marker joins that job instead of adding one.
The worker clears the marker *before* it reads any label from Label Studio, so an event that
arrives while a cycle runs creates exactly one follow-up, and an event that joined a queued job
is covered by it (the annotation is in Label Studio before its webhook is sent). The marker is set
before its job is enqueued, so for ENQUEUE_GRACE seconds a marker whose job is not queued yet is
joined, not taken for a leftover (a burst of events would otherwise queue several). A per-project
Redis lock keeps two workers from running the same project at once, so at most one cycle runs.

TASKS_CREATED / TASKS_DELETED are hints (a webhook says what changed, never the data): the ids go
into two bounded Redis sets and one task job per project (coalesced the same way) reads those tasks
from Label Studio.

Jobs are stored as JSON (rq's JSONSerializer), never pickled: whoever can write to Redis can at
most name one of the JOB_FUNCS with JSON arguments, which the worker checks before it imports
anything (backend.worker.LsalWorker). Everything that reads a job passes SERIALIZER.

Everything takes an explicit Redis connection; no module-level state.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

log = logging.getLogger(__name__)

JOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
CYCLE_FUNC = "backend.worker.cycle_job"
SCORE_NEW_FUNC = "backend.worker.score_new_tasks_job"
CLEANUP_FUNC = "backend.worker.cleanup_job"
#: per-project marker keys naming the queued cycle / task job (coalescing: at most one queued each)
CYCLE_MARKER = "queued"
TASKS_MARKER = "tasks_queued"
CLEANUP_MARKER = "cleanup_queued"
#: stale versions (written, no longer live) a project may hold before its cleanups go to the main
#: queue instead of the low one: bounds what a team that never pauses leaves in Label Studio
CLEANUP_DUE = 50
#: task ids remembered per project between two task jobs; beyond it they are dropped and the next
#: cycle reads the whole pool from Label Studio (the source of truth) instead
MAX_TASK_HINTS = 100_000
#: the only functions a worker runs; a job naming anything else fails without being imported
JOB_FUNCS = frozenset({CYCLE_FUNC, SCORE_NEW_FUNC, CLEANUP_FUNC})
#: how every job, its meta and its result are stored in Redis: JSON, which cannot execute code on load
SERIALIZER = JSONSerializer

#: seconds a project lock outlives its holder's last keep-alive (a worker killed mid-cycle)
LOCK_TTL = 30

#: seconds a fresh queued marker may name a job that is not in Redis yet: the marker is SET before
#: the job is enqueued, so a concurrent event must join it rather than take it for a dead one
ENQUEUE_GRACE = 10
#: seconds to wait for such a job to reach the queue (an enqueue takes about a millisecond)
ENQUEUE_SETTLE = 0.25

_DONE = {s.value for s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)}

# Compare-and-delete: clear the queued marker only if it still names this job.
_CLEAR_IF_OURS = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""

# The state of the job `id` in one round trip: its RQ status, and whether a "queued" job's id is in
# its queue's list (RQ's layout: a hash rq:job:<id>, a list rq:queue:<origin>). ARGV[1] and ARGV[2]
# are those two key prefixes.
_JOB_STATE = """
local job = redis.call('hmget', ARGV[1] .. id, 'status', 'origin')
if redis.call('hexists', ARGV[1] .. id, 'data') == 0 then
  job[1] = false  -- no such job, as for RQ's Job.fetch
elseif not job[1] then
  job[1] = 'created'  -- saved without a status: RQ reads it as created
end
local listed = 0
if job[1] == 'queued' and job[2] and redis.call('lpos', ARGV[2] .. job[2], id) then listed = 1 end
"""
# Set the marker KEYS[1] to a new job id (ARGV[3], for ARGV[4] seconds), or else name the job it
# holds and that job's state: a webhook that joins a queued cycle costs one round trip here, not four.
_MARK_OR_JOIN = (
    "if redis.call('set', KEYS[1], ARGV[3], 'NX', 'EX', ARGV[4]) then return {1} end\n"
    "local id = redis.call('get', KEYS[1])\n" + _JOB_STATE + "return {0, id, job[1], listed}"
)
_STATE_OF = "local id = ARGV[3]\n" + _JOB_STATE + "return {job[1], listed}"
_KEY_PREFIXES = (Job.redis_job_namespace_prefix, Queue.redis_queue_namespace_prefix)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _live(status: bytes | str | None, listed: int) -> bool:
    """Whether a job with this RQ status (None: no such job) will still run. A "queued" job whose id
    is not in its queue's list (`listed` 0) will not: a worker moved it to RQ's intermediate list
    and lost the reply (Redis restarted mid-dequeue); joining it would drop the event."""
    if status is None:
        return False
    state = _text(status)
    if state == JobStatus.QUEUED.value:
        return bool(listed)
    return state not in _DONE


def low_queue_name(queue_name: str) -> str:
    """The name of a deployment's low-priority queue (stale-version cleanup)."""
    return f"{queue_name}-low"


@dataclass(frozen=True)
class TaskHints:
    """Task ids that webhooks said were created or deleted (hints: Label Studio has the data)."""

    created: frozenset[int]
    deleted: frozenset[int]
    overflow: bool  # more ids than MAX_TASK_HINTS arrived: read the whole pool again instead


@dataclass(frozen=True)
class LabelHints:
    """Tasks whose annotations webhooks said changed since the last cycle took them (hints: the
    cycle reads those tasks from Label Studio), or ``full``: read every label (an event that names
    no task, such as ANNOTATIONS_DELETED, or more ids than MAX_TASK_HINTS)."""

    tasks: frozenset[int]
    full: bool


@dataclass(frozen=True)
class Enqueued:
    """The answer to a cycle request: the job's id, and whether this request created it."""

    job_id: str
    created: bool  # False: the request joined a cycle that was already queued


class Jobs:
    """The job queue of one lsal deployment (one Redis, one queue name)."""

    def __init__(self, connection: redis.Redis, queue_name: str = "lsal", job_timeout: int = 3600) -> None:
        self.redis = connection
        self.queue_name = queue_name
        self.job_timeout = job_timeout
        self.queue = Queue(queue_name, connection=connection, default_timeout=job_timeout, serializer=SERIALIZER)
        # Work no annotator waits for (deleting stale versions): a worker takes from it only when
        # the main queue is empty, so it never delays the next cycle (backend.worker.run_worker).
        self.low_queue = Queue(
            low_queue_name(queue_name), connection=connection, default_timeout=job_timeout, serializer=SERIALIZER
        )
        # A queued marker outlives any job that could still be waiting behind it.
        self.marker_ttl = job_timeout * 4
        self._mark_or_join = connection.register_script(_MARK_OR_JOIN)
        self._state_of = connection.register_script(_STATE_OF)
        self._clear_if_ours = connection.register_script(_CLEAR_IF_OURS)

    def key(self, project: int, name: str) -> str:
        """The Redis key of one of a project's markers, under the queue's prefix."""
        return f"{self.queue_name}:project:{project}:{name}"

    # -- cycles --------------------------------------------------------------------------------

    def request_cycle(self, project: int, reason: str) -> Enqueued:
        """Queue a cycle for `project` unless one is already queued (then join it).

        Any reason but counted ``annotations`` (a training request, deleted annotations: events
        that name no task) makes the cycle read every label (a full label hint)."""
        if reason != "annotations":
            self.note_label_hints(project, (), full=True)
        enq = self._request(
            project,
            CYCLE_MARKER,
            CYCLE_FUNC,
            (project, reason),
            description=f"cycle project={project} reason={reason}",
            meta={"project": project, "kind": "cycle", "reason": reason, "stage": "queued"},
            result_ttl=7 * 86400,
        )
        if enq.created:
            self.redis.delete(self.key(project, "pending"))
        return enq

    def request_cleanup(self, project: int, stale: int) -> Enqueued:
        """Queue the deletion of one of a project's stale versions (backend.worker.cleanup_job).

        Below CLEANUP_DUE stale versions it goes to the low queue, coalesced (one queued per
        project), and runs only when no cycle waits. From CLEANUP_DUE on, each request (one per
        finished cycle) queues one in the main queue: Label Studio deletes a prediction about ten
        times slower than it creates one, so under uninterrupted labeling the deletions are put
        off, up to that bound, rather than paid between every two cycles."""
        if stale >= CLEANUP_DUE:
            return Enqueued(self.enqueue(CLEANUP_FUNC, project, project=project, kind="cleanup"), True)
        return self._request(
            project,
            CLEANUP_MARKER,
            CLEANUP_FUNC,
            (project,),
            description=f"cleanup project={project}",
            meta={"project": project, "kind": "cleanup", "stage": "queued"},
            result_ttl=86400,
            queue=self.low_queue,
        )

    def _request(
        self,
        project: int,
        marker_name: str,
        func: str,
        args: tuple[Any, ...],
        *,
        description: str,
        meta: dict[str, Any],
        result_ttl: int,
        queue: Queue | None = None,
    ) -> Enqueued:
        """Queue `func(*args)` (on ``queue``, default the main one) unless the job named by the
        project's `marker_name` still waits."""
        marker = self.key(project, marker_name)
        for _ in range(3):
            job_id = uuid.uuid4().hex
            reply = self._mark_or_join(keys=[marker], args=[*_KEY_PREFIXES, job_id, self.marker_ttl])
            if reply[0] == 1:
                try:
                    (queue or self.queue).enqueue_call(
                        func,
                        args=args,
                        job_id=job_id,
                        timeout=self.job_timeout,
                        result_ttl=result_ttl,
                        failure_ttl=7 * 86400,
                        description=description,
                        meta=meta,
                        retry=Retry(max=3, interval=[5, 30, 120]),
                    )
                except Exception:
                    self._clear_if_ours(keys=[marker], args=[job_id])
                    raise
                return Enqueued(job_id, True)
            existing_id = _text(reply[1])
            if _live(reply[2], reply[3]) or self._being_enqueued(marker, existing_id):
                return Enqueued(existing_id, False)
            # A marker left behind by a job that no longer waits (its worker died before clearing it).
            self._clear_if_ours(keys=[marker], args=[existing_id])
        raise RuntimeError(f"could not queue a {meta.get('kind')} job for project {project}: the marker kept changing")

    # -- task hints ----------------------------------------------------------------------------

    def note_tasks(self, project: int, created: Iterable[int], deleted: Iterable[int]) -> Enqueued:
        """TASKS_CREATED / TASKS_DELETED as hints: remember which task ids changed (at most
        MAX_TASK_HINTS per project) and queue one task job per project, which reads those tasks
        from Label Studio (backend.worker.score_new_tasks_job). Events coalesce: a burst of them
        costs one job. Past the bound the ids are dropped and the pool is marked for a full read."""
        created, deleted = [int(i) for i in created], [int(i) for i in deleted]
        keys = [self.key(project, n) for n in ("tasks_created", "tasks_deleted", "tasks_overflow")]
        pipe = self.redis.pipeline(transaction=False)
        pipe.scard(keys[0])
        pipe.scard(keys[1])
        held = sum(int(n) for n in pipe.execute())
        pipe = self.redis.pipeline(transaction=True)
        if held + len(created) + len(deleted) > MAX_TASK_HINTS:
            pipe.set(keys[2], 1, ex=self.marker_ttl)
        else:
            for key, ids in ((keys[0], created), (keys[1], deleted)):
                if ids:
                    pipe.sadd(key, *ids)
                    pipe.expire(key, self.marker_ttl)
        pipe.execute()
        return self._request(
            project,
            TASKS_MARKER,
            SCORE_NEW_FUNC,
            (project,),
            description=f"tasks project={project}",
            meta={"project": project, "kind": "tasks", "stage": "queued"},
            result_ttl=86400,
        )

    def take_task_hints(self, project: int) -> TaskHints:
        """Take (read and clear) the task ids hinted since the last task job, atomically."""
        keys = [self.key(project, n) for n in ("tasks_created", "tasks_deleted", "tasks_overflow")]
        pipe = self.redis.pipeline(transaction=True)
        pipe.smembers(keys[0])
        pipe.smembers(keys[1])
        pipe.get(keys[2])
        pipe.delete(*keys)
        created, deleted, overflow, _ = pipe.execute()
        return TaskHints(
            created=frozenset(int(i) for i in created),
            deleted=frozenset(int(i) for i in deleted),
            overflow=overflow is not None,
        )

    def note_label_hints(self, project: int, tasks: Iterable[int], *, full: bool = False) -> None:
        """Remember which tasks' annotations changed (or that every label must be read: ``full``)
        for the project's next cycle. Called before the cycle is requested, so the cycle that runs
        after this event sees the hint (see take_label_hints)."""
        self._note_labels(project, tasks, full, 0)

    def _note_labels(self, project: int, tasks: Iterable[int], full: bool, count: int) -> int:
        """Note label hints and add `count` to the project's pending annotations, in one round trip
        inside the webhook's budget (past MAX_TASK_HINTS, a second one says "read all"); returns
        the pending count (0 when `count` is 0)."""
        ids = [int(i) for i in tasks]
        keys = [self.key(project, n) for n in ("labels_changed", "labels_full")]
        pipe = self.redis.pipeline(transaction=True)
        if full:
            self._read_all(pipe, keys)
        elif ids:
            pipe.sadd(keys[0], *ids)
            pipe.expire(keys[0], self.marker_ttl)
            pipe.scard(keys[0])
        if count:
            pipe.incrby(self.key(project, "pending"), count)
        replies = pipe.execute()
        if not full and ids and int(replies[2]) > MAX_TASK_HINTS:
            pipe = self.redis.pipeline(transaction=True)
            self._read_all(pipe, keys)
            pipe.execute()
        return int(replies[-1]) if count else 0

    def _read_all(self, pipe: Any, keys: list[str]) -> None:
        pipe.set(keys[1], 1, ex=self.marker_ttl)
        pipe.delete(keys[0])  # the ids are no use once everything is read

    def take_label_hints(self, project: int) -> LabelHints:
        """Take (read and clear) the label hints, atomically. The cycle calls it after claiming its
        job: a hint noted later belongs to an event that queues the follow-up cycle, which takes it."""
        keys = [self.key(project, n) for n in ("labels_changed", "labels_full")]
        pipe = self.redis.pipeline(transaction=True)
        pipe.smembers(keys[0])
        pipe.get(keys[1])
        pipe.delete(*keys)
        tasks, full, _ = pipe.execute()
        return LabelHints(tasks=frozenset(int(i) for i in tasks), full=full is not None)

    def restore_task_hints(self, project: int, hints: TaskHints) -> None:
        """Give back hints that a failed task job took, for its retry (or the next task job): ids that
        arrived meanwhile stay, and the bound holds (past it, the pool is marked for a full read)."""
        if not (hints.created or hints.deleted or hints.overflow):
            return
        keys = [self.key(project, n) for n in ("tasks_created", "tasks_deleted", "tasks_overflow")]
        held = sum(int(self.redis.scard(k)) for k in keys[:2])
        pipe = self.redis.pipeline(transaction=True)
        if hints.overflow or held + len(hints.created) + len(hints.deleted) > MAX_TASK_HINTS:
            pipe.set(keys[2], 1, ex=self.marker_ttl)
        else:
            for key, ids in ((keys[0], hints.created), (keys[1], hints.deleted)):
                if ids:
                    pipe.sadd(key, *ids)
                    pipe.expire(key, self.marker_ttl)
        pipe.execute()

    def forget_project(self, project: int) -> int:
        """Remove every per-project key (markers, counters, hints) of a project Label Studio does not
        know: a deleted project leaves nothing behind. The lock is left to expire (its holder may be
        the caller). Returns how many keys were removed."""
        names = (
            CYCLE_MARKER,
            TASKS_MARKER,
            CLEANUP_MARKER,
            "pending",
            "tasks_created",
            "tasks_deleted",
            "tasks_overflow",
            "labels_changed",
            "labels_full",
        )
        return int(self.redis.delete(*(self.key(project, n) for n in names)))

    def note_annotations(
        self, project: int, count: int, every: int, tasks: Iterable[int] = (), *, full: bool = False
    ) -> Enqueued | None:
        """Count `count` new annotations, noting their tasks as label hints first (as
        note_label_hints, in the same round trip); start a cycle once `every` have arrived since
        the last one. A count of 0 (a skip) notes the hints only."""
        pending = self._note_labels(project, tasks, full, count)
        if count and pending >= every:
            return self.request_cycle(project, "annotations")
        return None

    def claim(self, project: int, job_id: str, marker_name: str = "queued") -> None:
        """Called by the worker when a job starts: later events queue a follow-up."""
        self._clear_if_ours(keys=[self.key(project, marker_name)], args=[job_id])

    def project_lock(self, project: int) -> Any:
        """A short-lived lock that its holder keeps alive (backend.worker.held): a SIGKILLed worker's
        lock expires after LOCK_TTL seconds instead of blocking the project for the whole job timeout."""
        # thread_local=False: the keep-alive thread extends a lock the cycle's thread acquired (with
        # redis-py's default thread-local token, reacquire() from that thread raises and the lock lapses).
        return self.redis.lock(
            self.key(project, "lock"), timeout=LOCK_TTL, blocking_timeout=self.job_timeout, thread_local=False
        )

    # -- other jobs ----------------------------------------------------------------------------

    def enqueue(self, func: str, *args: Any, project: int, kind: str) -> str:
        """Queue a call of one of lsal's job functions (by name, JSON-serialized arguments); returns its id."""
        job_id = uuid.uuid4().hex
        self.queue.enqueue_call(
            func,
            args=args,
            job_id=job_id,
            timeout=self.job_timeout,
            result_ttl=86400,
            failure_ttl=7 * 86400,
            description=f"{kind} project={project}",
            meta={"project": project, "kind": kind, "stage": "queued"},
            retry=Retry(max=3, interval=[5, 30, 120]),
        )
        return job_id

    # -- status --------------------------------------------------------------------------------

    def _being_enqueued(self, marker: str, job_id: str) -> bool:
        """Whether another request is between SETting this marker and the end of its enqueue (RQ
        saves the job, then pushes its id): the marker is younger than ENQUEUE_GRACE and its job
        turns up in the queue within ENQUEUE_SETTLE seconds. A job that stays "queued" outside the
        queue list is an orphan of a Redis restart (see _is_live), not a job being enqueued. A
        marker without a TTL was not set by request_cycle."""
        ttl = int(self.redis.ttl(marker))
        if ttl <= 0 or self.marker_ttl - ttl >= ENQUEUE_GRACE:
            return False
        deadline = time.monotonic() + ENQUEUE_SETTLE
        while time.monotonic() < deadline:
            time.sleep(0.005)
            if self._is_live(job_id):
                return True
        return False

    def _is_live(self, job_id: str) -> bool:
        status, listed = self._state_of(keys=[], args=[*_KEY_PREFIXES, job_id])
        return _live(status, listed)

    def status(self, job_id: str) -> dict[str, Any] | None:
        """A job's state, stage, progress and error for `GET /jobs/{id}`; None if there is no such job."""
        if not JOB_ID_RE.match(job_id):
            raise ValueError(f"job id must be 32 hex characters, got {job_id!r}")
        try:
            job = Job.fetch(job_id, connection=self.redis, serializer=SERIALIZER)
        except NoSuchJobError:
            return None
        meta = job.get_meta(refresh=False) or {}
        state = job.get_status(refresh=False)
        error = None
        if state != JobStatus.FINISHED:
            # A job waiting for its retry is "scheduled" or "queued": its last failure is in RQ's
            # results (the worker's own copy of the job overwrites meta saved by the job itself).
            error = meta.get("error")
            if error is None:
                latest = job.latest_result()
                if latest is not None and latest.type == latest.Type.FAILED:
                    error = _last_line(latest.exc_string)
        return {
            "id": job.id,
            "state": str(state.value if hasattr(state, "value") else state),
            "kind": meta.get("kind"),
            "project": meta.get("project"),
            "stage": meta.get("stage"),
            "done": meta.get("done"),
            "total": meta.get("total"),
            "error": error,
            "result": job.return_value() if state == JobStatus.FINISHED else None,
            "enqueued_at": _iso(job.enqueued_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
        }


def progress_reporter(job: Job | None) -> Callable[[str, int, int], None]:
    """A callback that records (stage, done, total) in the job's meta for GET /jobs/{id}."""

    def report(stage: str, done: int = 0, total: int = 0) -> None:
        if job is None:
            return
        job.meta.update({"stage": stage, "done": done, "total": total})
        try:
            job.save_meta()
        except redis.RedisError:
            log.warning("could not save progress of job %s", job.id)

    return report


def _last_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None
