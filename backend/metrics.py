"""Prometheus metrics: `GET /metrics`, the per-request middleware, and cycle recording.

Two kinds of numbers, kept apart on purpose:

* **Request latency** is measured in the process that serves `/metrics`, so it is an ordinary
  in-process histogram.
* **Everything about cycles** happens in RQ workers: other processes, often other machines. An
  in-process counter there would never reach the server's `/metrics`. So a worker writes each
  cycle's numbers to Redis (`record_cycle`, a handful of hash increments in one round trip) and
  the server derives the rest at scrape time: jobs by state from RQ's registries, per-project
  version / labels / model quality from `MODEL_DIR`, cycle histograms and prediction counters
  from the Redis hashes. Any number of workers and servers then agree, and a restarted server
  loses nothing.

Each `Metrics` owns its own `CollectorRegistry` (never the global default), so tests and several
apps in one process do not clash.

Redis keys (all under the deployment's queue name, like every other lsal key):
`<queue>:metrics:stage_seconds`, `:cycle_seconds` (histogram buckets), `:counters`,
`:last_cycle` (project -> JSON of its last successful cycle), `:last_failure` (project -> time).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from rq import Queue, Worker

from backend import __version__
from backend.config import Settings
from backend.jobs import SERIALIZER
from backend.store import ModelStore, StoreError, parse_version

if TYPE_CHECKING:  # the web framework is imported lazily: workers import this module for record_cycle
    from starlette.routing import BaseRoute

log = logging.getLogger("lsal.metrics")
http_log = logging.getLogger("lsal.http")

# The same shapes as starlette.types, without importing the web framework into the workers.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The 1 s bucket is Label Studio's webhook/health budget; 100 s its /predict budget.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
CYCLE_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
UNMATCHED = "<unmatched>"
OUTCOMES = ("sent", "created", "dropped")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Label values written by workers become Prometheus label values: keep them short and tame, so a
# malformed report cannot blow up cardinality or break the hash-field encoding ("|").
_LABEL_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")


def _label(value: Any) -> str:
    text = str(value)
    return text if _LABEL_RE.fullmatch(text) else "other"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _count(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None else 0


class RedisKeys:
    """The Redis keys of the metrics shared by server and workers, under the queue's prefix."""

    def __init__(self, queue_name: str) -> None:
        prefix = f"{queue_name}:metrics"
        self.stage_seconds = f"{prefix}:stage_seconds"
        self.cycle_seconds = f"{prefix}:cycle_seconds"
        self.counters = f"{prefix}:counters"
        self.last_cycle = f"{prefix}:last_cycle"
        self.last_failure = f"{prefix}:last_failure"


def _bucket_field(bounds: Sequence[float], value: float) -> str:
    for bound in bounds:
        if value <= bound:
            return repr(float(bound))
    return "+Inf"


def _observe(pipe: Any, key: str, label: str, value: float, bounds: Sequence[float]) -> None:
    # Each observation increments exactly one (non-cumulative) bucket; the scrape accumulates.
    pipe.hincrby(key, f"{label}|{_bucket_field(bounds, value)}", 1)
    pipe.hincrby(key, f"{label}|count", 1)
    pipe.hincrbyfloat(key, f"{label}|sum", value)


# -- worker side -----------------------------------------------------------------------------


def record_cycle(connection: redis.Redis, queue_name: str, report: Mapping[str, Any], now: float | None = None) -> bool:
    """Record a finished cycle (a `CycleReport.as_dict()`) in Redis, for any server's /metrics.

    Never raises for a Redis or report problem: metrics must not fail a cycle that succeeded.
    Returns whether the numbers were recorded.
    """
    try:
        project = int(report["project"])
    except (KeyError, TypeError, ValueError):
        log.warning("cycle report without a valid project id; not recorded in metrics")
        return False
    status = _label(report.get("status"))
    timings: dict[str, float] = {}
    raw_timings = report.get("timings")
    for stage, raw in raw_timings.items() if isinstance(raw_timings, Mapping) else ():
        if (seconds := _number(raw)) is not None:
            timings[_label(stage)] = seconds
    total = sum(timings.values())
    written, created, dropped = (_count(report.get(k)) for k in ("written", "created", "dropped"))
    keys = RedisKeys(queue_name)
    last = {
        "status": status,
        "version": report.get("version") if isinstance(report.get("version"), str) else None,
        "labels": _count(report.get("labels")),
        "pool": _count(report.get("pool")),
        "sent": written,
        "created": created,
        "dropped": dropped,
        "seconds": round(total, 4),
        "ended_at": time.time() if now is None else now,
    }
    try:
        pipe = connection.pipeline(transaction=False)
        for stage, seconds in timings.items():
            _observe(pipe, keys.stage_seconds, stage, seconds, STAGE_BUCKETS)
        _observe(pipe, keys.cycle_seconds, status, total, CYCLE_BUCKETS)
        pipe.hincrby(keys.counters, f"cycles|{status}", 1)
        for outcome, n in zip(OUTCOMES, (written, created, dropped), strict=True):
            pipe.hincrby(keys.counters, f"predictions|{outcome}", n)
        pipe.hset(keys.last_cycle, str(project), json.dumps(last))
        pipe.execute()
    except redis.RedisError as exc:
        log.warning("project=%s cycle metrics not recorded: %s", project, type(exc).__name__)
        return False
    return True


def record_cycle_failure(connection: redis.Redis, queue_name: str, project: int, now: float | None = None) -> bool:
    """Count a failed cycle attempt (RQ may retry it) and remember when the project last failed."""
    keys = RedisKeys(queue_name)
    try:
        pipe = connection.pipeline(transaction=False)
        pipe.hincrby(keys.counters, "cycles|failed", 1)
        pipe.hset(keys.last_failure, str(int(project)), repr(time.time() if now is None else now))
        pipe.execute()
    except (redis.RedisError, TypeError, ValueError) as exc:
        log.warning("project=%s cycle failure not recorded: %s", project, type(exc).__name__)
        return False
    return True


def forget_metrics(connection: redis.Redis, queue_name: str, project: int) -> None:
    """Drop a project's series (last cycle, last failure): a project Label Studio no longer knows
    must not keep a /metrics series forever."""
    keys = RedisKeys(queue_name)
    pipe = connection.pipeline(transaction=False)
    pipe.hdel(keys.last_cycle, str(int(project)))
    pipe.hdel(keys.last_failure, str(int(project)))
    pipe.execute()


# -- server side: the scrape-time collector --------------------------------------------------


def _decode_hash(raw: Mapping[bytes, bytes]) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in raw.items()}


def _histograms(fields: Mapping[str, str], bounds: Sequence[float]) -> dict[str, tuple[list[tuple[str, float]], float]]:
    """Hash fields `<label>|<bucket>`, `<label>|count`, `<label>|sum` -> cumulative buckets per label."""
    per_label: dict[str, dict[str, str]] = {}
    for name, value in fields.items():
        label, _, part = name.rpartition("|")
        if label:
            per_label.setdefault(label, {})[part] = value
    out = {}
    for label, parts in sorted(per_label.items()):
        cumulative = 0.0
        buckets = []
        for bound in [*(repr(float(b)) for b in bounds), "+Inf"]:
            cumulative += float(parts.get(bound, 0))
            buckets.append((bound, cumulative))
        out[label] = (buckets, float(parts.get("sum", 0.0)))
    return out


class _DerivedCollector:
    """Reads Redis and MODEL_DIR at scrape time (see the module docstring)."""

    def __init__(self, owner: Metrics) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("lsal_build_info", "lsal version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info
        last: dict[int, dict[str, Any]] = {}
        failures: dict[int, float] = {}
        if self.owner.connection is not None:
            try:
                families, last, failures = self._from_redis(self.owner.connection)
            except redis.RedisError as exc:
                log.warning("metrics: redis unavailable during scrape: %s", type(exc).__name__)
                families = []
            up = GaugeMetricFamily("lsal_redis_up", "1 if Redis answered during this scrape")
            up.add_metric([], 1.0 if families else 0.0)
            yield up
            yield from families
        yield from self._per_project(last, failures)

    def _from_redis(self, conn: redis.Redis) -> tuple[list[Metric], dict[int, dict[str, Any]], dict[int, float]]:
        queue = Queue(self.owner.queue_name, connection=conn, serializer=SERIALIZER)
        registries = {
            "started": queue.started_job_registry,
            "scheduled": queue.scheduled_job_registry,  # includes jobs waiting for a retry
            "deferred": queue.deferred_job_registry,
            "finished": queue.finished_job_registry,
            "failed": queue.failed_job_registry,
            "canceled": queue.canceled_job_registry,
        }
        keys = RedisKeys(self.owner.queue_name)
        # One round trip, read-only: RQ's registry.count would also run a cleanup (writes) per scrape.
        pipe = conn.pipeline(transaction=False)
        pipe.llen(queue.key)
        for registry in registries.values():
            pipe.zcard(registry.key)
        for key in (keys.stage_seconds, keys.cycle_seconds, keys.counters, keys.last_cycle, keys.last_failure):
            pipe.hgetall(key)
        queued, *rest = pipe.execute()
        counts, (stages, cycles, counters, last_raw, failure_raw) = rest[: len(registries)], rest[len(registries) :]
        workers = Worker.count(connection=conn, queue=queue)

        jobs = GaugeMetricFamily("lsal_jobs", "RQ jobs of this deployment's queue, by state", labels=["state"])
        jobs.add_metric(["queued"], float(queued))
        for state, count in zip(registries, counts, strict=True):
            jobs.add_metric([state], float(count))
        worker_gauge = GaugeMetricFamily("lsal_workers", "RQ workers registered on this deployment's queue")
        worker_gauge.add_metric([], float(workers))

        stage_hist = HistogramMetricFamily(
            "lsal_cycle_stage_duration_seconds", "Duration of each cycle stage (all workers)", labels=["stage"]
        )
        for stage, (buckets, total) in _histograms(_decode_hash(stages), STAGE_BUCKETS).items():
            stage_hist.add_metric([stage], buckets, total)
        cycle_hist = HistogramMetricFamily(
            "lsal_cycle_duration_seconds", "Duration of whole cycles by outcome (all workers)", labels=["status"]
        )
        for status, (buckets, total) in _histograms(_decode_hash(cycles), CYCLE_BUCKETS).items():
            cycle_hist.add_metric([status], buckets, total)

        counter_fields = _decode_hash(counters)
        cycles_total = CounterMetricFamily(
            "lsal_cycles", "Cycles run, by outcome (failed counts attempts)", labels=["status"]
        )
        predictions = CounterMetricFamily(
            "lsal_predictions",
            "Predictions written back to Label Studio: sent, created (accepted) and dropped (sent - created)",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            predictions.add_metric([outcome], float(counter_fields.get(f"predictions|{outcome}", 0)))
        for name, value in sorted(counter_fields.items()):
            kind, _, label = name.partition("|")
            if kind == "cycles":
                cycles_total.add_metric([label], float(value))

        last: dict[int, dict[str, Any]] = {}
        for project, raw in _decode_hash(last_raw).items():
            try:
                last[int(project)] = json.loads(raw)
            except ValueError:
                continue
        failures: dict[int, float] = {}
        for project, raw in _decode_hash(failure_raw).items():
            try:
                failures[int(project)] = float(raw)
            except ValueError:
                continue
        return [jobs, worker_gauge, stage_hist, cycle_hist, cycles_total, predictions], last, failures

    def _per_project(self, last: dict[int, dict[str, Any]], failures: dict[int, float]) -> Iterator[Metric]:
        store = self.owner.store
        version_info = GaugeMetricFamily(
            "lsal_model_version_info", "The model version each project serves (value 1)", labels=["project", "version"]
        )
        version_number = GaugeMetricFamily(
            "lsal_model_version_number", "Number n of the served version v<n>-...", labels=["project"]
        )
        created = GaugeMetricFamily(
            "lsal_model_created_timestamp_seconds", "When the served version was published", labels=["project"]
        )
        accuracy = GaugeMetricFamily(
            "lsal_model_cv_accuracy", "Cross-validated accuracy of the served version", labels=["project"]
        )
        macro_f1 = GaugeMetricFamily(
            "lsal_model_cv_macro_f1", "Cross-validated macro-F1 of the served version", labels=["project"]
        )
        labeled = GaugeMetricFamily(
            "lsal_labeled_tasks", "Usable labels seen by the last cycle (else by the served model)", labels=["project"]
        )
        pool = GaugeMetricFamily("lsal_pool_size", "Unlabeled tasks scored by the last cycle", labels=["project"])
        last_predictions = GaugeMetricFamily(
            "lsal_last_cycle_predictions", "Predictions of the project's last cycle", labels=["project", "outcome"]
        )
        last_end = GaugeMetricFamily(
            "lsal_last_cycle_timestamp_seconds", "When the project's last successful cycle ended", labels=["project"]
        )
        last_seconds = GaugeMetricFamily(
            "lsal_last_cycle_duration_seconds", "Duration of the project's last successful cycle", labels=["project"]
        )
        last_failure = GaugeMetricFamily(
            "lsal_last_cycle_failure_timestamp_seconds", "When a cycle of the project last failed", labels=["project"]
        )
        for project in sorted(set(store.projects()) | set(last) | set(failures)):
            p = str(project)
            n_labels: float | None = None
            try:
                version = store.current(project)
                metadata = store.metadata(project) if version else None
            except (StoreError, OSError):
                version, metadata = None, None  # a half-written or corrupt project must not break the scrape
            if version is not None:
                number, when = parse_version(version)
                version_info.add_metric([p, version], 1.0)
                version_number.add_metric([p], float(number))
                created.add_metric([p], when.timestamp())
            if metadata is not None:
                raw_quality = metadata.get("metrics")
                quality = raw_quality if isinstance(raw_quality, dict) else {}
                for family, key in ((accuracy, "cv_accuracy"), (macro_f1, "cv_macro_f1")):
                    if (value := _number(quality.get(key))) is not None:
                        family.add_metric([p], value)
                n_labels = _number(metadata.get("n_labels"))
            cycle = last.get(project)
            if cycle is not None:
                n_labels = _number(cycle.get("labels"))
                for family, key in ((pool, "pool"), (last_end, "ended_at"), (last_seconds, "seconds")):
                    if (value := _number(cycle.get(key))) is not None:
                        family.add_metric([p], value)
                for outcome in OUTCOMES:
                    last_predictions.add_metric([p, outcome], float(_count(cycle.get(outcome))))
            if n_labels is not None:
                labeled.add_metric([p], n_labels)
            if project in failures:
                last_failure.add_metric([p], failures[project])
        yield from (version_info, version_number, created, accuracy, macro_f1, labeled, pool)
        yield from (last_predictions, last_end, last_seconds, last_failure)


# -- the Metrics object, /metrics and the request middleware ---------------------------------


class Metrics:
    """The metrics of one app: its own registry, request histogram and scrape-time collector."""

    def __init__(
        self, settings: Settings, *, connection: redis.Redis | None = None, store: ModelStore | None = None
    ) -> None:
        self.queue_name = settings.queue_name
        self.connection = connection
        self.store = store if store is not None else ModelStore(settings.model_dir, keep=settings.keep_versions)
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "lsal_http_request_duration_seconds",
            "HTTP request latency by route template (this server process)",
            labelnames=("method", "route", "status"),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_DerivedCollector(self))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one HTTP request in the latency histogram (by method, route template and status)."""
        # Methods are client input: anything unusual becomes one label value, not one per spelling.
        method = method if method in _METHODS else "other"
        self.requests.labels(method, route, str(status)).observe(seconds)

    def record_cycle(self, report: Mapping[str, Any]) -> bool:
        """In-process convenience for `record_cycle(connection, queue, report)`."""
        if self.connection is None:
            return False
        return record_cycle(self.connection, self.queue_name, report)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


def route_template(scope: Scope, routes: Iterable[BaseRoute] = ()) -> str:
    """The route's path template (`/jobs/{job_id}`), never the raw path: ids must not become labels.

    FastAPI leaves the matched route in the scope. Requests answered before routing (401 and 413
    from the guard) are matched against `routes` here; anything else is `<unmatched>`.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None)
    if isinstance(template, str):
        return template
    from starlette.routing import Match

    partial = None
    for candidate in routes:
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return str(getattr(candidate, "path_format", UNMATCHED))
        if match == Match.PARTIAL and partial is None:
            partial = getattr(candidate, "path_format", None)
    return str(partial) if partial else UNMATCHED


STOPPING_BODY = json.dumps({"error": "the server is stopping; retry", "field": None}).encode()
STOPPING_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(STOPPING_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"connection", b"close"),
]


class RequestMetrics:
    """Pure-ASGI middleware: one latency observation and one log line per HTTP request.

    Pure ASGI (not BaseHTTPMiddleware) because /webhook runs inside Label Studio's 1 s budget. The
    log line carries method, route template, status and milliseconds: never headers, query
    strings or bodies, which is where credentials travel.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Iterable[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = list(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client sees if the app raises before starting a response
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = int(message["status"]), True
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except asyncio.CancelledError:
            # Only uvicorn cancels a request's task: the server is stopping and its grace period
            # ended (a large /predict, a slow body). The client gets a 503 it may retry, and the
            # stop stays quiet: re-raised, uvicorn would log the cancellation as a traceback.
            if not started:
                status = 503
                await send({"type": "http.response.start", "status": 503, "headers": STOPPING_HEADERS})
                await send({"type": "http.response.body", "body": STOPPING_BODY})
        finally:
            if scope.get("lsal.client_gone"):
                status = 499  # client closed the request (nginx's code): no answer was possible
            seconds = time.perf_counter() - start
            self.note(route_template(scope, self.routes), scope.get("method", "GET"), status, seconds)

    def note(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count and log one answered request (also those answered before the app: backend.server.quick)."""
        method = method if method in _METHODS else "other"
        self.metrics.observe_request(route, method, status, seconds)
        level = logging.WARNING if status >= 500 else logging.INFO
        http_log.log(level, "method=%s route=%s status=%d ms=%.1f", method, route, status, seconds * 1000)
