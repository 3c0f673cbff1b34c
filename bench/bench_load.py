"""Sustained mixed load against one `lsal serve` process while the worker runs cycles; prints JSON.

Open-loop: requests are sent on a fixed schedule (RATE per second, half single-task /predict, half
/webhook ANNOTATION_CREATED) whatever the latency, from a thread pool, for DURATION seconds. A real
RQ worker runs cycles against the stand-in Label Studio (tests/faultstand.py) the whole time
(every webhook counts an annotation; AL_RETRAIN_EVERY=1 keeps a cycle queued). Needs a Redis:
REDIS_URL or redis-server on PATH (started on a free port).

    python bench/bench_load.py [--rate 200] [--duration 60]
"""

from __future__ import annotations

import argparse
import json
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

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.config import Settings  # noqa: E402
from tests.conftest import LsalServer, WorkerProcess, wait_for  # noqa: E402
from tests.faultstand import FaultStand  # noqa: E402
from tests.lsharness import free_port  # noqa: E402

SPAM_XML = (REPO / "label_config" / "spam.xml").read_text()
KEY = "bench-legacy-key-0123456789"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--pool", type=int, default=3000, help="tasks in the project (cycle cost)")
    args = ap.parse_args()

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
            result = run_load(server.url, args.rate, args.duration)
            result["cycles_finished_during_load"] = _cycles(worker.log())
        finally:
            worker.stop()
            server.stop()
            redis_proc.terminate()
            redis_proc.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


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


if __name__ == "__main__":
    raise SystemExit(main())
