"""Deployment files: docker-compose.yml, Dockerfile, .dockerignore, .env.example.

No Docker engine runs where these tests run, so the stack is validated by its structure and
invariants, and the two healthcheck commands are executed for real against a real `lsal serve`
and a real RQ worker. Also: a malformed setting stops `lsal` at start-up with one line.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from backend.config import ENV_VARS, Settings
from tests.conftest import REPO, WorkerProcess, settings_env

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
ENV_NAMES = {v.name for v in ENV_VARS}
SECRETS = {v.name for v in ENV_VARS if v.secret}
DEFAULTS = {v.name: v.default for v in ENV_VARS}
LSAL_SERVICES = ("lsal", "worker")
# Where the compose stack deliberately departs from the code's defaults (and why, in the file).
COMPOSE_DEFAULTS_DIFFER = {
    "LABEL_STUDIO_URL": "http://label-studio:8080",
    "REDIS_URL": "redis://redis:6379/0",
    "LOG_FORMAT": "json",
}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolations(value: Any) -> list[tuple[str, str | None, str | None]]:
    """(name, operator, default-or-message) for every ${...} in a compose value."""
    return [(m.group(1), m.group(2), m.group(3)) for m in INTERPOLATION.finditer(str(value))]


def compose_default(value: str) -> str:
    """The value a compose entry takes when .env does not set its variable."""
    return INTERPOLATION.sub(lambda m: m.group(3) if m.group(2) in ("-", ":-") else "", value)


def env_example() -> tuple[dict[str, str], set[str]]:
    """(NAME -> value of uncommented lines, names that appear only as a commented `# NAME=`)."""
    active: dict[str, str] = {}
    commented: set[str] = set()
    for line in (REPO / ".env.example").read_text().splitlines():
        if m := re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(.*)", line):
            active[m.group(1)] = m.group(2)
        elif m := re.fullmatch(r"#\s*([A-Z_][A-Z0-9_]*)=.*", line):
            commented.add(m.group(1))
    return active, commented - set(active)


def named_volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """target path -> named volume."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[target] = source
    return out


# -- docker-compose.yml ------------------------------------------------------------------------


def test_services_images_and_label_studio_ssrf_settings() -> None:
    assert set(SERVICES) == {"label-studio", "postgres", "redis", "lsal", "worker"}
    ls = SERVICES["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    # Both, as strings: with only the first, Label Studio saves the backend but not its webhook.
    assert ls["environment"]["ML_BLOCK_LOCAL_IP"] == "false"
    assert ls["environment"]["SSRF_PROTECTION_ENABLED"] == "false"
    assert named_volume_mounts(ls) == {"/label-studio/data": "label-studio-data"}
    assert SERVICES["redis"]["image"].startswith("redis:7")
    for name in LSAL_SERVICES:
        assert SERVICES[name]["build"] == "."
    assert SERVICES["lsal"]["image"] == SERVICES["worker"]["image"]
    assert SERVICES["lsal"]["command"][:2] == ["lsal", "serve"]
    assert SERVICES["worker"]["command"] == ["lsal", "worker"]
    assert set(COMPOSE["volumes"]) == {"models", "redis-data", "label-studio-data", "postgres-data"}


def test_label_studio_runs_on_the_postgres_service_once_it_is_healthy() -> None:
    ls_env = SERVICES["label-studio"]["environment"]
    pg = SERVICES["postgres"]
    pg_env = pg["environment"]
    assert pg["image"].startswith("postgres:15")
    assert named_volume_mounts(pg) == {"/var/lib/postgresql/data": "postgres-data"}
    assert "ports" not in pg, "only Label Studio talks to its database"
    # Label Studio's documented variables (label-studio.md §6): DJANGO_DB=default selects POSTGRE_*.
    assert ls_env["DJANGO_DB"] == "default"
    assert ls_env["POSTGRE_HOST"] == "postgres"
    assert ls_env["POSTGRE_PORT"] == "5432"
    # The same .env variable (and default) on both sides, so they cannot disagree.
    for ls_name, pg_name in (("NAME", "DB"), ("USER", "USER"), ("PASSWORD", "PASSWORD")):
        assert ls_env[f"POSTGRE_{ls_name}"] == pg_env[f"POSTGRES_{pg_name}"], ls_name
    assert interpolations(pg_env["POSTGRES_PASSWORD"])[0][:2] == ("POSTGRES_PASSWORD", ":?")
    check = pg["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    assert check[check.index("-U") + 1] == pg_env["POSTGRES_USER"]
    assert check[check.index("-d") + 1] == pg_env["POSTGRES_DB"]
    assert SERVICES["label-studio"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_redis_is_persistent_private_and_safe_for_rq() -> None:
    redis_service = SERVICES["redis"]
    command = " ".join(redis_service["command"])
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command  # evicted job keys break RQ
    assert named_volume_mounts(redis_service) == {"/data": "redis-data"}
    assert "ports" not in redis_service
    assert redis_service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_service_has_a_healthcheck_and_dependencies_wait_for_health() -> None:
    for name, service in SERVICES.items():
        check = service.get("healthcheck")
        if name == "lsal":
            assert check is None, "lsal uses the image's HEALTHCHECK; an override would drift from it"
            assert "HEALTHCHECK" in dockerfile_stages()[-1].instructions
            continue
        assert check is not None and check["test"][0] == "CMD", name
        assert not check.get("disable", False), name
    for name in LSAL_SERVICES:
        assert SERVICES[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_worker_is_scalable() -> None:
    worker = SERVICES["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker  # the healthcheck matches the RQ worker by container hostname
    assert worker.get("deploy", {}).get("replicas", 1) == 1  # scaled with --scale, not pinned
    assert all(":" in v and not v.startswith(("/", ".")) for v in worker["volumes"])  # named volumes only
    assert "stop_signal" not in worker  # SIGTERM: RQ's warm shutdown finishes the running cycle


def test_server_and_workers_share_settings_and_the_model_dir() -> None:
    lsal, worker = SERVICES["lsal"], SERVICES["worker"]
    assert lsal["environment"] == worker["environment"]
    model_dir = lsal["environment"]["MODEL_DIR"]
    assert named_volume_mounts(lsal)[model_dir] == "models"
    assert named_volume_mounts(worker)[model_dir] == "models"
    assert f"MODEL_DIR={model_dir}" in " ".join(dockerfile_stages()[-1].instructions["ENV"])
    # REDIS_URL set means `lsal serve` starts no embedded Redis or worker: workers are separate.
    redis_url = compose_default(lsal["environment"]["REDIS_URL"])
    assert redis_url == "redis://redis:6379/0"


def test_lsal_environment_is_exactly_the_settings_the_code_reads() -> None:
    env = SERVICES["lsal"]["environment"]
    assert set(env) == ENV_NAMES
    for name, raw in env.items():
        refs = interpolations(raw)
        if name == "MODEL_DIR":
            assert refs == [], "MODEL_DIR is where the volume is mounted, not a setting"
            continue
        assert [r[0] for r in refs] == [name], f"{name} must read ${{{name}}} from .env"
        expected = COMPOSE_DEFAULTS_DIFFER.get(name, DEFAULTS[name])
        assert compose_default(str(raw)) == expected, name


def test_compose_defaults_are_valid_settings() -> None:
    env = {name: compose_default(str(raw)) for name, raw in SERVICES["lsal"]["environment"].items()}
    settings = Settings.from_env(env)
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.log_format == "json"
    assert str(settings.model_dir) == "/data/models"


def test_env_example_lists_every_setting_and_nothing_unused() -> None:
    active, commented = env_example()
    assert set(active) | commented >= ENV_NAMES
    assert commented == {"MODEL_DIR"}  # fixed by the compose file (the volume's mount point)
    used = {name for service in SERVICES.values() for value in _walk(service) for name, _, _ in interpolations(value)}
    assert set(active) == used, "every .env.example line drives the stack and every ${VAR} has a line"
    # Copying .env.example unchanged gives the compose defaults: no surprise in either file.
    for name, raw in SERVICES["lsal"]["environment"].items():
        if name in active:
            assert active[name] == compose_default(str(raw)), name
    for secret in SECRETS | {"LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN", "POSTGRES_PASSWORD"}:
        assert active[secret] == "", f"{secret} must ship blank in .env.example"
    # The example is itself a valid configuration (blank secrets included).
    Settings.from_env({k: v for k, v in active.items() if k in ENV_NAMES})


def test_only_the_admin_the_database_password_and_lsal_credentials_are_required() -> None:
    """Fault: docker-compose publishes lsal's port; an .env without Basic auth credentials
    Done: every `${VAR:?message}` of docker-compose.yml collected
    Expected: compose refuses to start without BASIC_AUTH_USER/PASS (and the admin, the database password),
        with a message naming .env
    Observed: as expected
    """
    required = {
        name
        for service in SERVICES.values()
        for value in _walk(service)
        for name, op, _ in interpolations(value)
        if op in ("?", ":?")
    }
    assert required == {
        "LABEL_STUDIO_USERNAME",
        "LABEL_STUDIO_PASSWORD",
        "POSTGRES_PASSWORD",
        "BASIC_AUTH_USER",
        "BASIC_AUTH_PASS",
    }
    for name in ("BASIC_AUTH_USER", "BASIC_AUTH_PASS"):
        [(_, op, message)] = interpolations(SERVICES["lsal"]["environment"][name])
        assert op == ":?" and message == f"set {name} in .env (see .env.example)"


def _walk(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
    elif node is not None:
        yield str(node)


# -- Dockerfile and .dockerignore --------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: dict[str, list[str]]


def dockerfile_stages() -> list[Stage]:
    text = (REPO / "Dockerfile").read_text()
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line.strip())
        current = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name, {}))
        elif stages:
            stages[-1].instructions.setdefault(keyword, []).append(rest)
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    stages = dockerfile_stages()
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert build.name == "build"
    assert final.base.endswith("-slim") and build.base.endswith("-slim")
    assert any("--from=build" in copy for copy in final.instructions["COPY"])
    users = final.instructions["USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert shlex.split(final.instructions["CMD"][-1].replace(",", " ").strip("[]")) == [
        "lsal",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "9090",
    ]


def test_final_stage_ships_no_compiler() -> None:
    final = dockerfile_stages()[-1]
    text = " ".join(" ".join(v) for v in final.instructions.values())
    for forbidden in ("build-essential", "gcc", "g++", "clang", "apt-get install", "pip install"):
        assert forbidden not in text, forbidden
    assert "build-essential" in " ".join(dockerfile_stages()[0].instructions["RUN"])  # only in the build stage


def test_dockerignore_keeps_secrets_out_and_the_sources_in() -> None:
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for must in (".env", ".git", "models", ".venv"):
        assert must in patterns, must
    copied = [
        src
        for copy in dockerfile_stages()[0].instructions["COPY"]
        for src in copy.split()[:-1]
        if not src.startswith("--")
    ]
    assert copied == ["pyproject.toml", "README.md", "backend"]
    for src in copied:
        assert src not in patterns and f"/{src}" not in patterns, src


def healthcheck_argv() -> list[str]:
    """The Dockerfile's HEALTHCHECK command (exec form), with this interpreter as `python`."""
    line = dockerfile_stages()[-1].instructions["HEALTHCHECK"][-1]
    exec_form = line[line.index("CMD") + 3 :].strip()
    argv = yaml.safe_load(exec_form)  # a JSON array, which YAML reads too
    assert argv[0] == "python"
    return [sys.executable, *argv[1:]]


# -- the healthchecks, run for real ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(settings: Settings, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = open(log_path, "wb")  # noqa: SIM115 - the process owns it until it exits
    return subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until_up(port: int, auth: tuple[str, str] | None, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text(errors="replace")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", auth=auth, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server on {port} did not come up:\n{log.read_text(errors='replace')}")


def run_check(argv: list[str], env: dict[str, str]) -> int:
    return subprocess.run(argv, env=env, capture_output=True, timeout=30).returncode


@pytest.mark.integration
def test_dockerfile_healthcheck_passes_against_a_real_server_with_basic_auth(
    settings: Settings, redis_conn: Any, tmp_path: Path
) -> None:
    settings = replace(settings, basic_auth_user="probe", basic_auth_pass="probe-pass")
    port = free_port()
    argv = [a.replace("127.0.0.1:9090", f"127.0.0.1:{port}") for a in healthcheck_argv()]
    assert argv != healthcheck_argv(), "the check must target port 9090, which the test moves"
    proc = start_server(settings, port, tmp_path / "server.log")
    try:
        wait_until_up(port, ("probe", "probe-pass"), proc, tmp_path / "server.log")
        base = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
        assert run_check(argv, {**base, "BASIC_AUTH_USER": "probe", "BASIC_AUTH_PASS": "probe-pass"}) == 0
        assert run_check(argv, {**base, "BASIC_AUTH_USER": "probe", "BASIC_AUTH_PASS": "wrong"}) != 0
        assert run_check(argv, base) != 0  # no credentials: 401 is not healthy
    finally:
        stop(proc)
    assert run_check(argv, {**os.environ, "BASIC_AUTH_USER": "probe", "BASIC_AUTH_PASS": "probe-pass"}) != 0


@pytest.mark.integration
def test_worker_healthcheck_sees_this_hosts_rq_worker(settings: Settings, redis_conn: Any, tmp_path: Path) -> None:
    test = SERVICES["worker"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"]
    argv = [sys.executable, *test[2:]]
    env = {**os.environ, "REDIS_URL": settings.redis_url, "RQ_QUEUE": settings.queue_name}
    assert run_check(argv, env) == 1  # no worker on this queue yet
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        deadline = time.monotonic() + 60
        while run_check(argv, env) != 0:
            assert worker.proc.poll() is None, worker.log()
            assert time.monotonic() < deadline, f"worker never registered:\n{worker.log()}"
            time.sleep(0.3)
    finally:
        worker.stop()
    assert run_check(argv, env) == 1  # a stopped worker unregisters


# -- bad configuration fails at start-up, in one line ------------------------------------------


@pytest.mark.parametrize(
    ("command", "env", "line"),
    [
        (
            "serve",
            {"AL_RETRAIN_EVERY": "often"},
            "lsal: configuration error: AL_RETRAIN_EVERY: expected an integer >= 1, got 'often'",
        ),
        (
            "serve",
            {"LABEL_STUDIO_URL": "localhost:8080"},
            "lsal: configuration error: LABEL_STUDIO_URL: expected a URL starting with http:// or https://, "
            "got 'localhost:8080'",
        ),
        (
            "serve",
            {"BASIC_AUTH_USER": "admin"},
            "lsal: configuration error: BASIC_AUTH_PASS: BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together",
        ),
        (
            "worker",
            {"LOG_FORMAT": "xml"},
            "lsal: configuration error: LOG_FORMAT: expected one of text, json, got 'xml'",
        ),
    ],
)
def test_a_malformed_setting_stops_lsal_with_one_line(
    command: str, env: dict[str, str], line: str, tmp_path: Path
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    proc = subprocess.run(
        [sys.executable, "-m", "backend.cli", command],
        env={**clean, "MODEL_DIR": str(tmp_path / "models"), "PYTHONPATH": str(REPO), **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [line]
    assert not (tmp_path / "models").exists()  # nothing was started or written
