"""Latency of the Label Studio protocol against a real `lsal serve` process. Prints JSON.

- /webhook acknowledgement: 1,000 requests from 8 concurrent clients (target p99 <= 20 ms); with
  wrk installed, also 5 s of wrk with 8 connections (`webhook_x8_wrk`: the server's own cost)
- /predict with one task, 16 concurrent clients (target p99 <= 30 ms)
- /predict with 1,000 tasks in one request (target <= 300 ms)

The model is trained on 500 labeled messages of the SMS Spam Collection (Almeida, Gómez Hidalgo &
Yamakami, 2011; UCI ML Repository, CC BY 4.0) and the tasks are its other messages.
Redis: REDIS_URL or 127.0.0.1:6379 (DB 10, a unique queue name, cleaned afterwards); no worker
runs, so webhook jobs only queue. Load comes from `wrk` (Debian package) when it is installed —
a C client, so the clients' own CPU cost stays small on a 2-core machine — else from Python threads.
Usage: python bench/bench_server.py [--runs 3] [--http-workers 1]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import redis
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backend.labelconfig import parse_label_config  # noqa: E402
from backend.learner import Learner  # noqa: E402
from backend.store import ModelStore  # noqa: E402

SMS = REPO.parent / "shared" / "datasets" / "sms_spam" / "sms_spam.csv"


def load_sms() -> tuple[list[str], list[str]]:
    with open(SMS, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    text_col = "text" if "text" in rows[0] else list(rows[0])[1]
    label_col = "label" if "label" in rows[0] else list(rows[0])[0]
    texts = [r[text_col] for r in rows]
    labels = ["spam" if r[label_col].strip().lower() == "spam" else "no_spam" for r in rows]
    return texts, labels


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 3)

    return {"p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": round(1000 * ordered[-1], 3)}


def hammer(url: str, bodies: list[bytes], clients: int) -> list[float]:
    """Send `bodies` from `clients` threads (one keep-alive session each); latency per request."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [bodies[i::clients] for i in range(clients)]
    errors: list[str] = []

    def run(chunk: list[bytes]) -> None:
        session = requests.Session()
        mine = []
        for body in chunk:
            start = time.perf_counter()
            resp = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
            mine.append(time.perf_counter() - start)
            if resp.status_code >= 400:
                errors.append(f"{resp.status_code} {resp.text[:100]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} errors, first: {errors[0]}")
    return latencies


def wrk_latency(url: str, body: bytes, connections: int, seconds: int, workdir: Path) -> dict[str, float]:
    """Closed-loop load with wrk; returns its latency percentiles (ms) and requests/s."""
    script = workdir / f"post-{connections}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
        "done = function(summary, latency, requests)\n"
        "  for _, p in pairs({50, 95, 99}) do\n"
        "    io.write(string.format('p%d %f\\n', p, latency:percentile(p) / 1000))\n"
        "  end\n"
        "  io.write(string.format('max %f\\nrps %f\\nerrors %d\\n', latency.max / 1000,"
        " summary.requests / (summary.duration / 1e6), summary.errors.status + summary.errors.connect"
        " + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
        "  io.write(string.format('kinds status=%d connect=%d read=%d write=%d timeout=%d\\n',"
        " summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,"
        " summary.errors.timeout))\n"
        "end\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=True,
    ).stdout
    values = dict(
        line.split()
        for line in out.splitlines()
        if line.split() and line.split()[0] in ("p50", "p95", "p99", "max", "rps", "errors")
    )
    if float(values["errors"]) > 0:
        kinds = next((line for line in out.splitlines() if line.startswith("kinds ")), "")
        raise SystemExit(f"wrk saw {values['errors']} errors ({kinds.removeprefix('kinds ')})")
    return {
        "p50_ms": round(float(values["p50"]), 3),
        "p95_ms": round(float(values["p95"]), 3),
        "p99_ms": round(float(values["p99"]), 3),
        "max_ms": round(float(values["max"]), 3),
        "requests_per_s": round(float(values["rps"]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--http-workers", type=int, default=2)
    args = parser.parse_args()

    texts, labels = load_sms()
    spec_xml = (REPO / "label_config" / "spam.xml").read_text()
    spec = parse_label_config(spec_xml)
    tmp = Path(tempfile.mkdtemp(prefix="lsal-bench-"))
    model_dir = tmp / "models"
    learner = Learner(spec, seed=0).fit(texts[:500], labels[:500])
    ModelStore(model_dir).publish(1, learner.save, {"n_labels": 500})

    redis_base = (os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379").rsplit("/", 1)[0]
    redis_url = f"{redis_base}/10" if redis_base.count("/") >= 2 else "redis://127.0.0.1:6379/10"
    queue = f"lsalbench-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "RQ_QUEUE": queue, "MODEL_DIR": str(model_dir), "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "backend.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--http-workers",
            str(args.http_workers),
        ],
        env=env,
        cwd=REPO,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        webhook = json.dumps(
            {"action": "ANNOTATION_CREATED", "project": {"id": 1}, "annotation": {"id": 1, "was_cancelled": False}}
        ).encode()
        one = [
            json.dumps(
                {
                    "tasks": [{"id": i, "data": {"text": texts[500 + i % 4000]}}],
                    "project": "1.0",
                    "label_config": spec_xml,
                }
            ).encode()
            for i in range(800)
        ]
        batch = json.dumps(
            {
                "tasks": [{"id": i, "data": {"text": texts[500 + i]}} for i in range(1000)],
                "project": "1.0",
                "label_config": spec_xml,
            }
        ).encode()
        setup = requests.post(f"{base}/setup", json={"project": "1.0", "schema": spec_xml}, timeout=30)
        setup.raise_for_status()
        hammer(f"{base}/predict", one[:50], 4)  # warm-up: model load, code paths
        # ... and the process that scores bodies over 64 KB (started by the first one: imports, model)
        requests.post(f"{base}/predict", data=batch, headers={"Content-Type": "application/json"}, timeout=120)
        hammer(f"{base}/webhook", [webhook] * 50, 4)
        # Label Studio calls /setup when it connects; a project never set up has its events ignored
        # (no Redis work at all), which would measure only the HTTP acknowledgement.
        answer = requests.post(
            base + "/webhook", data=webhook, headers={"Content-Type": "application/json"}, timeout=10
        )
        if answer.json().get("status") not in ("queued", "joined"):
            raise SystemExit(f"the webhook was not queued after /setup: {answer.text[:200]}")

        use_wrk = shutil.which("wrk") is not None
        runs: dict[str, list[dict[str, float]]] = {
            "webhook_1000x8": [],
            "predict_1task_x16": [],
            "predict_1000tasks": [],
        }
        if use_wrk:
            # The same 8 clients from wrk: the Python clients above spend as much CPU per request as
            # the server does on these two cores, so this one shows what the server itself costs.
            runs["webhook_x8_wrk"] = []
        for _ in range(args.runs):
            runs["webhook_1000x8"].append(percentiles(hammer(f"{base}/webhook", [webhook] * 1000, 8)))
            if use_wrk:
                runs["webhook_x8_wrk"].append(wrk_latency(f"{base}/webhook", webhook, 8, 5, tmp))
                runs["predict_1task_x16"].append(wrk_latency(f"{base}/predict", one[0], 16, 10, tmp))
            else:
                runs["predict_1task_x16"].append(percentiles(hammer(f"{base}/predict", one, 16)))
            big = hammer(f"{base}/predict", [batch] * 5, 1)
            runs["predict_1000tasks"].append({"median_ms": round(1000 * statistics.median(big), 3)})
        summary = {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for name, rs in runs.items()}
        print(
            json.dumps(
                {
                    "benchmark": "server",
                    "runs": args.runs,
                    "http_workers": args.http_workers,
                    "predict_client": "wrk -t2 -c16 -d10s" if use_wrk else "16 Python threads",
                    "median_of_runs": summary,
                    "targets": {"webhook_p99_ms": 20, "predict_1task_p99_ms": 30, "predict_1000tasks_ms": 300},
                    "per_run": runs,
                },
                indent=2,
            )
        )
    finally:
        server.terminate()
        server.wait(timeout=20)
        conn = redis.Redis.from_url(redis_url)
        for key in conn.scan_iter(match=f"*{queue}*"):
            conn.delete(key)
        for key in conn.scan_iter(match="rq:job:*"):
            if conn.hget(key, "origin") == queue.encode():
                conn.delete(key)


if __name__ == "__main__":
    main()
