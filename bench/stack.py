"""The local stack the end-to-end benchmarks share (bench_freshness.py, bench_team.py).

Label Studio from tests/lsharness.py, `lsal serve` and one `lsal worker` as subprocesses, the
machine's Redis (DB 12, a unique queue name ``lsalbench-<hex>``). This module holds what both
benches need to start and to clean up after themselves: Label Studio's environment as
docker-compose.yml sets it, the work dir and processes, waiting with a deadline, and a teardown that
leaves nothing of the bench in Redis (its keys and RQ's global bookkeeping of its queue and worker).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
REDIS_DB = 12
COMPOSE = REPO / "docker-compose.yml"
# Label Studio feature flags are environment variables named fflag_...; compose sets them on the
# label-studio service, as `fflag_name: "true"`.
_COMPOSE_FLAG = re.compile(r'^\s+(fflag_\w+):\s*"?(true|false)"?\s*$', re.MULTILINE)


def err(*a: object) -> None:
    """Progress on stderr, with the time."""
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def compose_ls_flags(path: Path = COMPOSE) -> list[str]:
    """The Label Studio feature flags docker-compose.yml sets, as ``KEY=VALUE`` (the deployed shape)."""
    return [f"{k}={v}" for k, v in _COMPOSE_FLAG.findall(path.read_text())]


def apply_ls_env(items: list[str]) -> None:
    """Put ``KEY=VALUE`` items into this process's environment; tests/lsharness.py passes it on to
    the Label Studio it starts."""
    for item in items:
        key, _, value = item.partition("=")
        if not key:
            raise SystemExit(f"--ls-env {item!r}: expected KEY=VALUE")
        os.environ[key] = value


def forget_rq_entries(conn: Any, prefix: str) -> None:
    """RQ's global bookkeeping of this bench's queues and workers (only names starting with `prefix`)."""
    for member in conn.smembers("rq:queues"):
        if member.decode().startswith(f"rq:queue:{prefix}"):
            conn.srem("rq:queues", member)
    for key in list(conn.scan_iter(match="rq:worker:*")) + list(conn.scan_iter(match="rq:scheduler:*")):
        if conn.type(key) != b"hash":
            continue
        queues = (conn.hget(key, "queues") or b"").decode()
        if queues and all(q.startswith(prefix) for q in queues.split(",")):
            conn.delete(key)
            conn.srem("rq:workers", key)
    for member in conn.smembers("rq:workers"):
        if not conn.exists(member):
            conn.srem("rq:workers", member)


class Stack:
    """Label Studio, `lsal serve` and a worker for one bench run; `close` stops them and cleans Redis."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.queue_name = f"lsalbench-{uuid.uuid4().hex[:12]}"
        self.ls: Any = None
        self.server: Any = None
        self.worker: Any = None
        self.redis: Any = None

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
        """Poll ``predicate`` until it is truthy (returned) or ``timeout`` s pass (TimeoutError); a
        worker that exited meanwhile is an error at once."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.worker is not None and self.worker.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.worker.log()[-3000:]}")
            time.sleep(interval)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def queues_idle(self) -> bool:
        """No job queued or running in the bench's queues (the main one and the low-priority one)."""
        from rq import Queue

        from backend.jobs import low_queue_name

        names = (self.queue_name, low_queue_name(self.queue_name))
        return all(
            q.count == 0 and not q.started_job_registry.get_job_ids()
            for q in (Queue(n, connection=self.redis) for n in names)
        )

    def close(self) -> None:
        """Stop the worker, the server and Label Studio; delete this bench's Redis keys and RQ entries."""
        for proc in (self.worker, self.server):
            if proc is not None:
                try:
                    proc.stop()
                except Exception as exc:  # noqa: BLE001
                    err(f"stop failed: {exc}")
        if self.ls is not None:
            self.ls.stop()
        try:
            import redis

            from tests.conftest import delete_own_keys

            conn = redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}")
            delete_own_keys(conn, self.queue_name)
            forget_rq_entries(conn, self.queue_name)
        except Exception as exc:  # noqa: BLE001
            err(f"redis cleanup failed: {exc}")


def run_main(make: Callable[[argparse.Namespace, Path], Any], args: argparse.Namespace, prefix: str) -> None:
    """Run a bench (``make(args, workdir).run()``) in a fresh work dir, always ``close`` it, print its JSON.

    SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so Label Studio, lsal and the database are
    stopped. ``args.keep`` keeps the work dir (logs, MODEL_DIR)."""
    sys.path.insert(0, str(REPO))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    bench = make(args, workdir)
    try:
        result = bench.run()
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            err(f"work dir kept: {workdir}")
    print(json.dumps(result, indent=1))
