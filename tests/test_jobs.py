"""Coalescing and job status against a real Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job

from backend.jobs import (
    CLEANUP_DUE,
    CLEANUP_FUNC,
    CLEANUP_MARKER,
    CYCLE_FUNC,
    ENQUEUE_GRACE,
    SERIALIZER,
    Enqueued,
    Jobs,
    LabelHints,
)


@pytest.fixture
def jobs(redis_conn: redis.Redis, queue_name: str) -> Jobs:
    return Jobs(redis_conn, queue_name, job_timeout=60)


def test_second_request_joins_the_queued_cycle(jobs: Jobs) -> None:
    first = jobs.request_cycle(7, "train")
    second = jobs.request_cycle(7, "annotations")
    assert first.created is True
    assert second.created is False
    assert second.job_id == first.job_id
    queue = Queue(jobs.queue_name, connection=jobs.redis)
    assert queue.job_ids == [first.job_id]
    job = Job.fetch(first.job_id, connection=jobs.redis, serializer=SERIALIZER)
    assert job.func_name == CYCLE_FUNC
    assert job.args == [7, "train"]  # JSON: no tuples
    assert job.meta["project"] == 7


def test_an_annotation_that_joins_a_queued_cycle_costs_two_round_trips(
    jobs: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook's Redis work runs in a thread that, on a busy server, waits for the GIL after every
    reply: the hint with the count is one round trip, the join with the queued job's state another
    (broken once: six, 1.06 ms against 0.48 ms per event on an idle machine)."""
    queued = jobs.note_annotations(12, 1, every=1, tasks=[3])
    assert queued is not None and queued.created
    sent: list[bytes] = []
    connection_class = jobs.redis.connection_pool.connection_class  # TCP or the embedded Redis's socket
    send = connection_class.send_packed_command

    def recording(self: Any, command: Any, check_health: bool = True) -> None:
        sent.append(b"".join(command) if isinstance(command, list) else command)
        send(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", recording)
    joined = jobs.note_annotations(12, 2, every=1, tasks=[4, 5])
    assert joined == Enqueued(queued.job_id, False)
    assert len(sent) == 2, sent
    monkeypatch.undo()
    assert jobs.take_label_hints(12) == LabelHints(frozenset({3, 4, 5}), full=False)
    assert int(jobs.redis.get(jobs.key(12, "pending"))) == 2  # counted since the cycle was queued
    assert jobs.note_annotations(12, 1, every=9, full=True) is None
    assert jobs.take_label_hints(12) == LabelHints(frozenset(), full=True)


def test_a_queued_job_missing_from_its_queue_is_not_joined(jobs: Jobs) -> None:
    """RQ says "queued" but the id is not in the queue's list (a worker moved it to its intermediate
    list and lost the reply when Redis restarted): nobody will run it, so the event queues a new one."""
    lost = jobs.request_cycle(13, "train")
    jobs.redis.lrem(jobs.queue.key, 0, lost.job_id)
    again = jobs.request_cycle(13, "annotations")
    assert again.created and again.job_id != lost.job_id
    assert jobs.queue.job_ids == [again.job_id]
    assert jobs.request_cycle(13, "annotations") == Enqueued(again.job_id, False)


def test_a_marker_naming_a_job_hash_without_its_data_is_replaced(jobs: Jobs) -> None:
    """As RQ's Job.fetch, which finds no job without its data: a stray hash holding only a status
    does not hold the project's cycle back."""
    first = jobs.request_cycle(14, "train")
    jobs.redis.hdel(Job.key_for(first.job_id), "data")
    jobs.redis.hset(Job.key_for(first.job_id), "status", "started")
    jobs.redis.expire(jobs.key(14, "queued"), jobs.marker_ttl - ENQUEUE_GRACE)  # not being enqueued
    replaced = jobs.request_cycle(14, "annotations")
    assert replaced.created and replaced.job_id != first.job_id


def test_projects_do_not_coalesce_with_each_other(jobs: Jobs) -> None:
    a = jobs.request_cycle(1, "train")
    b = jobs.request_cycle(2, "train")
    assert a.created and b.created and a.job_id != b.job_id


def test_claimed_cycle_lets_the_next_event_queue_exactly_one_follow_up(jobs: Jobs) -> None:
    first = jobs.request_cycle(3, "train")
    jobs.claim(3, first.job_id)  # the worker started it
    follow = [jobs.request_cycle(3, "annotations") for _ in range(5)]
    assert follow[0].created is True
    assert {f.job_id for f in follow} == {follow[0].job_id}
    assert follow[0].job_id != first.job_id


def test_claim_by_an_old_job_does_not_clear_a_newer_marker(jobs: Jobs) -> None:
    first = jobs.request_cycle(4, "train")
    jobs.claim(4, first.job_id)
    second = jobs.request_cycle(4, "train")
    jobs.claim(4, first.job_id)  # a retried old job must not release the new marker
    assert jobs.request_cycle(4, "train").job_id == second.job_id


def test_stale_marker_of_a_vanished_job_is_replaced(jobs: Jobs) -> None:
    jobs.redis.set(jobs.key(5, "queued"), "f" * 32)
    enq = jobs.request_cycle(5, "train")
    assert enq.created is True
    assert enq.job_id != "f" * 32


def test_a_fresh_marker_whose_job_is_still_being_enqueued_is_joined(jobs: Jobs) -> None:
    # Another request has SET the marker; its job reaches the queue a moment later.
    marker, pending = jobs.key(8, "queued"), "e" * 32
    jobs.redis.set(marker, pending, ex=jobs.marker_ttl)
    late = threading.Timer(0.05, lambda: jobs.queue.enqueue_call(CYCLE_FUNC, args=(8, "train"), job_id=pending))
    late.start()
    enq = jobs.request_cycle(8, "annotations")
    late.join()
    assert enq == Enqueued(pending, False)
    assert Queue(jobs.queue_name, connection=jobs.redis).job_ids == [pending]


def test_a_fresh_marker_whose_job_never_arrives_is_replaced(jobs: Jobs) -> None:
    # The request that SET it died before enqueueing, or its job is an orphan of a Redis restart.
    marker, pending = jobs.key(10, "queued"), "d" * 32
    jobs.redis.set(marker, pending, ex=jobs.marker_ttl)
    enq = jobs.request_cycle(10, "annotations")
    assert enq.created is True and enq.job_id != pending
    # Past the grace a leftover is replaced at once.
    jobs.redis.set(marker, pending, ex=jobs.marker_ttl - ENQUEUE_GRACE - 1)
    again = jobs.request_cycle(10, "annotations")
    assert again.created is True and again.job_id not in (pending, enq.job_id)


def test_concurrent_requests_queue_exactly_one_cycle(jobs: Jobs) -> None:
    """50 threads, 20 requests each, each thread with its own connection (as HTTP processes have)."""
    pool = jobs.redis.connection_pool  # thread-safe; every request takes its own connection
    barrier = threading.Barrier(50)

    def burst(_: int) -> set[str]:
        mine = Jobs(redis.Redis(connection_pool=pool), jobs.queue_name, job_timeout=jobs.job_timeout)
        barrier.wait()
        return {mine.request_cycle(9, "annotations").job_id for _ in range(20)}

    with ThreadPoolExecutor(50) as ex:
        ids = set().union(*ex.map(burst, range(50)))
    queued = Queue(jobs.queue_name, connection=jobs.redis).job_ids
    assert len(queued) == 1 and ids == set(queued), (len(queued), len(ids))


def test_retrain_every_counts_annotations(jobs: Jobs) -> None:
    assert jobs.note_annotations(9, 1, every=3) is None
    assert jobs.note_annotations(9, 1, every=3) is None
    enq = jobs.note_annotations(9, 1, every=3)
    assert enq is not None and enq.created
    assert jobs.redis.get(jobs.key(9, "pending")) is None  # the counter restarts with the cycle


def test_status_of_a_queued_job(jobs: Jobs) -> None:
    enq = jobs.request_cycle(11, "train")
    status = jobs.status(enq.job_id)
    assert status is not None
    assert status["state"] == "queued"
    assert status["project"] == 11
    assert status["stage"] == "queued"
    assert status["error"] is None


def test_status_rejects_malformed_ids_and_misses_unknown_ones(jobs: Jobs) -> None:
    with pytest.raises(ValueError, match="32 hex characters, got '../x'"):
        jobs.status("../x")
    assert jobs.status("0" * 32) is None


def test_a_held_project_lock_outlives_its_ttl(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keep-alive thread extends the lock the cycle's thread took, so a long cycle keeps it."""
    import backend.jobs
    import backend.worker

    monkeypatch.setattr(backend.jobs, "LOCK_TTL", 0.6)
    monkeypatch.setattr(backend.worker, "LOCK_TTL", 0.6)
    lock = jobs.project_lock(7)
    assert lock.acquire()
    with backend.worker.held(lock, 7):
        threading.Event().wait(1.5)  # the body outlasts the TTL 2.5 times over
        assert lock.owned(), "the project lock lapsed while its cycle ran"
    assert not jobs.project_lock(7).locked()


def test_cleanup_waits_in_the_low_queue_until_a_project_holds_cleanup_due_stale_versions(jobs: Jobs) -> None:
    """Deleting stale versions must not delay the next cycle: it goes to the low queue (a worker
    takes from it only when no cycle waits), coalesced to one per project, until CLEANUP_DUE."""
    main = Queue(jobs.queue_name, connection=jobs.redis)
    first = jobs.request_cleanup(21, stale=1)
    again = jobs.request_cleanup(21, stale=CLEANUP_DUE - 1)
    assert first.created and again == Enqueued(first.job_id, False)
    assert jobs.low_queue.name == f"{jobs.queue_name}-low"
    assert jobs.low_queue.job_ids == [first.job_id]
    assert main.job_ids == []
    job = Job.fetch(first.job_id, connection=jobs.redis, serializer=SERIALIZER)
    assert (job.func_name, job.args, job.meta["kind"]) == (CLEANUP_FUNC, [21], "cleanup")
    assert jobs.status(first.job_id)["state"] == "queued"  # type: ignore[index]
    # From the bound on, every request (one per finished cycle) queues one in the main queue.
    due = [jobs.request_cleanup(21, stale=CLEANUP_DUE + i) for i in range(2)]
    assert all(d.created for d in due) and main.job_ids == [d.job_id for d in due]
    # The worker started the low one: the next request below the bound queues another.
    jobs.claim(21, first.job_id, CLEANUP_MARKER)
    later = jobs.request_cleanup(21, stale=3)
    assert later.created and jobs.low_queue.job_ids == [first.job_id, later.job_id]
    assert jobs.forget_project(21) >= 1
    assert jobs.redis.get(jobs.key(21, CLEANUP_MARKER)) is None


def test_label_hints_are_taken_once_and_overflow_to_a_full_read(jobs: Jobs, monkeypatch: pytest.MonkeyPatch) -> None:
    jobs.note_label_hints(31, [4, 5])
    jobs.note_label_hints(31, [5, 6])
    assert jobs.take_label_hints(31) == LabelHints(frozenset({4, 5, 6}), full=False)
    assert jobs.take_label_hints(31) == LabelHints(frozenset(), full=False)  # taken: cleared
    # A cycle asked for by anything but counted annotations reads every label.
    jobs.request_cycle(31, "train")
    assert jobs.take_label_hints(31) == LabelHints(frozenset(), full=True)
    jobs.note_annotations(31, 1, every=1)  # joins the queued cycle: no full read asked
    assert jobs.take_label_hints(31) == LabelHints(frozenset(), full=False)
    # More ids than kept: the ids are dropped for a full read.
    monkeypatch.setattr("backend.jobs.MAX_TASK_HINTS", 3)
    jobs.note_label_hints(31, [1, 2])
    jobs.note_label_hints(31, [3, 4])
    assert jobs.take_label_hints(31).full is True
    jobs.note_label_hints(31, [1])
    assert jobs.forget_project(31) >= 1
    assert jobs.take_label_hints(31) == LabelHints(frozenset(), full=False)
