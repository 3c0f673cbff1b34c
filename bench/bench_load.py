"""Sustained mixed load against one `lsal serve` process while the worker runs cycles; prints JSON.

Open-loop: requests are sent on a fixed schedule (RATE per second, half single-task /predict, half
/webhook ANNOTATION_CREATED) whatever the latency, from a thread pool, for DURATION seconds. A real
RQ worker runs cycles against the stand-in Label Studio (tests/faultstand.py) the whole time
(every webhook counts an annotation; AL_RETRAIN_EVERY=1 keeps a cycle queued). Needs a Redis:
REDIS_URL or redis-server on PATH (started on a free port).

    python bench/bench_load.py [--rate 200] [--duration 60] [--no-attacks]

Throughout the load, the attacks of issue 12 run too (unless --no-attacks): four concurrent
/predict requests of 60 tasks x 1 MB, over and over; 2,000 slowloris connections (half a request
line each, reopened when the server closes them); 500 made-up projects sent START_TRAINING and
TASKS_DELETED; forged TASKS_CREATED for real and made-up task ids; a 1 MB label config of 40,000
choices to /setup; clients hanging up in the middle of a body. /health is polled every 100 ms,
each poll on a new connection as Label Studio does (Label Studio allows it 1 s): its latency is
reported, with every answer slower than 1 s counted
(and when, `over_1s_at_s`), beside the latency the server itself logged for /health
(`server_side`) and, as the control, the same poller's latency to a trivial HTTP server in a
process of its own (`control_health`: what the machine's load alone costs a round trip).

Each side runs where its counterpart in production would: the /health poller (Label Studio) in a
process of its own, the attacks (remote hosts) in another, at `nice -n 10` (ATTACK_NICE, reported as
`attack_nice`), so on this 2-core machine they take CPU after the server rather than before it; the
load generator and the stand-in Label Studio in this process. Threads sharing one process wait for
each other's GIL, and that wait would be counted as /health latency.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.config import Settings  # noqa: E402
from tests.conftest import LsalServer, WorkerProcess, wait_for  # noqa: E402
from tests.faultstand import FaultStand  # noqa: E402
from tests.lsharness import free_port  # noqa: E402

#: niceness of the attackers' process: remote hosts in production, they should not take this
#: machine's CPU before the server does
ATTACK_NICE = 10


class Target(NamedTuple):
    """The server under attack, as the attackers' process knows it."""

    url: str
    port: int


SPAM_XML = (REPO / "label_config" / "spam.xml").read_text()
KEY = "bench-legacy-key-0123456789"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--pool", type=int, default=3000, help="tasks in the project (cycle cost)")
    ap.add_argument("--no-attacks", action="store_true", help="the mixed load alone")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma-separated subset of {', '.join(ATTACKS)}")
    args = ap.parse_args()
    chosen = [] if args.no_attacks else [name for name in args.attacks.split(",") if name]
    unknown = sorted(set(chosen) - set(ATTACKS))
    if unknown:
        ap.error(f"unknown attacks: {', '.join(unknown)}")

    tmp = Path(tempfile.mkdtemp(prefix="lsal-bench-load-"))
    redis_proc = None
    port = free_port()
    redis_proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{port}/0"
    with FaultStand(KEY) as ls:
        rng = np.random.default_rng(0)
        words = ["win", "free", "prize", "call", "now", "see", "you", "dinner", "tonight", "meeting", "ok", "cash"]
        texts = [" ".join(rng.choice(words, 8)) for _ in range(args.pool)]
        ids = ls.add_project(1, SPAM_XML, texts)
        for i in range(40):
            ls.annotate(1, ids[i], "spam" if "free" in texts[i] or "win" in texts[i] else "no_spam")
        settings = replace(Settings(), redis_url=redis_url, queue_name=f"bench-{uuid.uuid4().hex[:8]}",
                           model_dir=tmp / "models", label_studio_url=ls.url, label_studio_api_key=KEY,
                           min_labels=6, queue_depth=500, ls_retries=1)  # fmt: skip
        wait_for(lambda: _ping(redis_url), 20, 0.1, "redis")
        server = LsalServer(settings, tmp / "server.log")
        worker = WorkerProcess(settings, tmp / "worker.log")
        try:
            s = requests.Session()
            s.post(f"{server.url}/setup", json={"project": "1.1700000000", "schema": SPAM_XML}, timeout=10)
            job = s.post(f"{server.url}/train", json={"project": 1}, timeout=10).json()["job_id"]
            wait_for(lambda: s.get(f"{server.url}/jobs/{job}", timeout=5).json()["state"] == "finished", 180, 0.5,
                     "first model")  # fmt: skip
            # The poller and the attackers in processes of their own (see the module docstring).
            ctx = multiprocessing.get_context("spawn")
            health_out = ctx.Queue()
            stop = ctx.Event()
            control_port = free_port()
            control = ctx.Process(target=_control_server, args=(control_port,), daemon=True)
            control.start()
            wait_for(lambda: _answers(control_port), 30, 0.1, "the control server")
            urls = [f"{server.url}/health", f"http://127.0.0.1:{control_port}/health"]
            poller = ctx.Process(target=_poll_health, args=(urls, stop, health_out), daemon=True)
            poller.start()
            attack_out = ctx.Queue()
            attacker = ctx.Process(target=_run_attacks, args=(server.url, server.port, chosen, stop, attack_out),
                                   daemon=True)  # fmt: skip
            attacker.start()
            result = run_load(server.url, args.rate, args.duration)
            stop.set()
            health, baseline = health_out.get(timeout=60)
            attacks: dict[str, int] = attack_out.get(timeout=60)
            poller.join(timeout=10)
            attacker.join(timeout=10)
            control.kill()
            result["cycles_finished_during_load"] = _cycles(worker.log())
            result["health"] = _poll_stats(health)
            # The same poller's figures for a trivial server in its own process (nice 0): what this
            # machine's load alone does to a request's round trip, lsal aside.
            result["control_health"] = _poll_stats(baseline)
            result["attacks"] = attacks
            result["attack_nice"] = ATTACK_NICE if chosen else None
            log = server.log()
            # The same latencies as the server logged them (from the app's entry to its answer):
            # the difference to the client's figures is queueing outside the app and the client.
            result["server_side"] = _logged_latencies(log)
            result["server_5xx_logged"] = sum(log.count(f"status={c}") for c in (500, 502, 503))
            result["server_tracebacks"] = log.count("Traceback")
        finally:
            worker.stop()
            server.stop()
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 and result["health"]["over_1s"] == 0 else 1


def _poll_health(urls: list[str], stop: Any, out: Any) -> None:
    """GET each of `urls` every 100 ms (a thread each) until `stop` is set; put each url's
    (seconds since the start, latency in ms) list on `out`."""
    start = time.perf_counter()
    polls: list[list[tuple[float, float]]] = [[] for _ in urls]

    def poll(url: str, into: list[tuple[float, float]]) -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                # A new connection per poll, as Label Studio checks: MLBackend.healthcheck builds a
                # new MLApi, and with it a new requests.Session, every time (ml/models.py, 1.23.2).
                with requests.Session() as s:
                    s.get(url, timeout=10)
                ms = (time.perf_counter() - t0) * 1000
            except requests.RequestException:
                ms = 10_000.0
            into.append((round(t0 - start, 1), ms))
            stop.wait(0.1)

    threads = [threading.Thread(target=poll, args=(url, into)) for url, into in zip(urls, polls, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(polls)


def _poll_stats(polls: list[tuple[float, float]]) -> dict[str, Any]:
    h = np.array([ms for _, ms in polls])
    return {"n": len(h), "p50_ms": round(float(np.percentile(h, 50)), 1),
            "p99_ms": round(float(np.percentile(h, 99)), 1), "max_ms": round(float(h.max()), 1),
            "over_1s": int((h > 1000).sum()), "over_1s_at_s": [at for at, ms in polls if ms > 1000]}  # fmt: skip


def _control_server(port: int) -> None:
    """A minimal keep-alive HTTP server answering every request 200 (the control for /health)."""
    import asyncio

    answer = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"status":"UP"}'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(serve, "127.0.0.1", port)
        await server.serve_forever()

    asyncio.run(main())


def _answers(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok
    except requests.RequestException:
        return False


def _run_attacks(url: str, port: int, names: list[str], stop: Any, out: Any) -> None:
    """In the attackers' process, at ATTACK_NICE: run the named attacks until `stop` is set; put
    their counts on `out`."""
    os.nice(ATTACK_NICE)
    target = Target(url, port)
    attacks: dict[str, int] = {}
    done = threading.Event()
    threads = [threading.Thread(target=ATTACKS[name], args=(target, done, attacks), daemon=True) for name in names]
    for t in threads:
        t.start()
    stop.wait()
    done.set()
    for t in threads:
        t.join(timeout=30)
    out.put(attacks)


def _count(attacks: dict[str, int], name: str, n: int = 1) -> None:
    attacks[name] = attacks.get(name, 0) + n


def _big_predicts(server: Target, stop: threading.Event, attacks: dict[str, int]) -> None:
    text = ("win a free prize now " * 50_000)[:1_000_000]
    body = json.dumps({"tasks": [{"id": i, "data": {"text": text}} for i in range(60)], "project": "1.1700000000",
                       "label_config": SPAM_XML}).encode()  # fmt: skip

    def one() -> None:
        s = requests.Session()
        while not stop.is_set():
            try:
                s.post(f"{server.url}/predict", data=body, headers={"Content-Type": "application/json"}, timeout=120)
                _count(attacks, "predict_60x1MB")
            except requests.RequestException:
                _count(attacks, "predict_60x1MB_failed")

    workers = [threading.Thread(target=one, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def _slowloris(server: Target, stop: threading.Event, attacks: dict[str, int]) -> None:
    import socket

    held: list[socket.socket] = []
    while not stop.is_set():
        alive = []
        for sock in held:
            sock.settimeout(0)
            try:
                closed = sock.recv(1) == b""
            except BlockingIOError:
                closed = False
            except OSError:
                closed = True
            if closed:
                sock.close()
                _count(attacks, "slowloris_closed_by_server")
            else:
                alive.append(sock)
        held = alive
        while len(held) < 2000 and not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=2)
                sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                held.append(sock)
                _count(attacks, "slowloris_opened")
            except OSError:
                _count(attacks, "slowloris_refused")
                break
        stop.wait(1.0)
    for sock in held:
        sock.close()


def _made_up_projects(server: Target, stop: threading.Event, attacks: dict[str, int]) -> None:
    s = requests.Session()
    pid = 100_000
    while not stop.is_set():
        pid += 1
        for action, extra in (("START_TRAINING", {}), ("TASKS_DELETED", {"tasks": [{"id": 1}]})):
            r = s.post(f"{server.url}/webhook", json={"action": action, "project": {"id": pid}, **extra}, timeout=10)
            _count(attacks, f"made_up_project_{r.status_code}")
        stop.wait(0.05)


def _forged_tasks(server: Target, stop: threading.Event, attacks: dict[str, int]) -> None:
    s = requests.Session()
    while not stop.is_set():
        tasks = [{"id": 1, "data": {"text": "win free prize cash"}}, {"id": 9_999_999, "data": {"text": "x"}}]
        r = s.post(f"{server.url}/webhook", json={"action": "TASKS_CREATED", "project": {"id": 1}, "tasks": tasks},
                   timeout=10)  # fmt: skip
        _count(attacks, f"forged_tasks_{r.status_code}")
        stop.wait(0.2)


def _huge_config(server: Target, stop: threading.Event, attacks: dict[str, int]) -> None:
    choices = "".join(f'<Choice value="c{i}"/>' for i in range(40_000)) + '<Choice value="c7"/>'
    xml = f'<View><Text name="text" value="$text"/><Choices name="c" toName="text">{choices}</Choices></View>'
    s = requests.Session()
    while not stop.is_set():
        r = s.post(f"{server.url}/setup", json={"project": "2.1700000000", "schema": xml}, timeout=60)
        _count(attacks, f"huge_config_{r.status_code}")
        stop.wait(0.5)


def _hang_ups(server: Target, stop: threading.Event, attacks: dict[str, int]) -> None:
    import socket

    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
                sock.sendall(head + b"{" + b" " * 1000)
            _count(attacks, "hung_up_mid_body")
        except OSError:
            _count(attacks, "hang_up_refused")
        stop.wait(0.2)


def _logged_latencies(log: str) -> dict[str, dict[str, float]]:
    out = {}
    for route in ("/health", "/predict", "/webhook"):
        ms = [float(v) for v in re.findall(rf"route={route} status=200 ms=([0-9.]+)", log)]
        if ms:
            a = np.array(ms)
            p50, p99 = (round(float(np.percentile(a, q)), 1) for q in (50, 99))
            out[route] = {"n": len(a), "p50_ms": p50, "p99_ms": p99, "max_ms": round(float(a.max()), 1)}
    return out


def _ping(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url).ping())
    except redis.RedisError:
        return False


def _cycles(log: str) -> int:
    return log.count("Successfully completed cycle")


def run_load(url: str, rate: float, duration: float) -> dict[str, object]:
    local = threading.local()
    predict = {"tasks": [{"id": 1, "data": {"text": "free prize call now"}}], "project": "1.1700000000",
               "label_config": SPAM_XML}  # fmt: skip
    webhook = {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 1, "result": []}}
    lat: dict[str, list[float]] = {"predict": [], "webhook": []}
    errors: dict[str, list[str]] = {"predict": [], "webhook": []}
    lock = threading.Lock()

    def one(kind: str) -> None:
        sess = getattr(local, "s", None)
        if sess is None:
            sess = local.s = requests.Session()
        t0 = time.perf_counter()
        try:
            r = sess.post(f"{url}/{kind}", json=predict if kind == "predict" else webhook, timeout=10)
            ok = r.status_code == 200
            why = f"{r.status_code}"
        except requests.RequestException as exc:
            ok, why = False, type(exc).__name__
        dt = (time.perf_counter() - t0) * 1000
        with lock:
            lat[kind].append(dt)
            if not ok:
                errors[kind].append(why)

    n = int(rate * duration)
    start = time.perf_counter()
    lag = 0.0
    with ThreadPoolExecutor(64) as pool:
        for i in range(n):
            due = start + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            else:
                lag = max(lag, now - due)
            pool.submit(one, "predict" if i % 2 == 0 else "webhook")
    elapsed = time.perf_counter() - start

    def stats(values: list[float]) -> dict[str, float]:
        a = np.array(values)
        return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 2),
                "p99_ms": round(float(np.percentile(a, 99)), 2), "max_ms": round(float(a.max()), 2)}  # fmt: skip

    return {
        "target_rate_per_s": rate,
        "duration_s": duration,
        "sent": n,
        "achieved_rate_per_s": round(n / elapsed, 1),
        "max_schedule_lag_s": round(lag, 3),
        "errors": len(errors["predict"]) + len(errors["webhook"]),
        "error_kinds": {k: sorted(set(v)) for k, v in errors.items()},
        "predict": stats(lat["predict"]),
        "webhook": stats(lat["webhook"]),
    }


ATTACKS = {
    "big_predicts": _big_predicts,
    "slowloris": _slowloris,
    "made_up_projects": _made_up_projects,
    "forged_tasks": _forged_tasks,
    "huge_config": _huge_config,
    "hang_ups": _hang_ups,
}


if __name__ == "__main__":
    raise SystemExit(main())
