"""The worker's queue order against a real Redis and a real (burst) RQ worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import Job

from backend.config import Settings
from backend.jobs import SERIALIZER, Jobs, low_queue_name
from backend.worker import NICE, run_worker
from tests.conftest import WorkerProcess, wait_for


def test_the_worker_takes_the_low_queue_only_when_the_main_queue_is_empty(
    settings: Settings, redis_conn: redis.Redis
) -> None:
    """A cleanup queued first still runs after a cycle queued later: annotators wait for cycles."""
    low = Queue(low_queue_name(settings.queue_name), connection=redis_conn, serializer=SERIALIZER)
    main = Jobs(redis_conn, settings.queue_name).queue
    # Not lsal jobs: the worker refuses (fails) them without running anything, in the order it takes them.
    first = low.enqueue_call("builtins.len", args=([1],))
    second = main.enqueue_call("builtins.len", args=([1, 2],))
    third = low.enqueue_call("builtins.len", args=([1, 2, 3],))
    run_worker(settings.redis_url, settings.queue_name, burst=True)
    jobs = Job.fetch_many([first.id, second.id, third.id], connection=redis_conn, serializer=SERIALIZER)
    assert all(j is not None and j.get_status() == "failed" for j in jobs)
    order = sorted(jobs, key=lambda j: j.started_at)  # type: ignore[union-attr,arg-type,return-value]
    assert [j.id for j in order] == [second.id, first.id, third.id]  # type: ignore[union-attr]


def _nice(pid: int) -> int:
    # /proc/<pid>/stat: field 19 is the nice value; the command name (field 2) may hold spaces.
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def test_a_worker_process_runs_below_the_http_servers_priority(settings: Settings, tmp_path: Path) -> None:
    """A real `lsal worker` lowers its own CPU priority by NICE (the server keeps the cores first)."""
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    if ours + NICE > 19:
        pytest.skip(f"this test runs at nice {ours}: a child cannot go {NICE} lower")
    proc = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        expected = ours + NICE
        assert wait_for(lambda: _nice(proc.proc.pid) == expected, 30, what=f"worker nice {expected}")
    finally:
        proc.stop()
