"""A real Label Studio 1.23.2 for end-to-end tests.

* :func:`ensure_label_studio` installs Label Studio into its own virtualenv (``$LSAL_LS_VENV``, default
  ``~/.cache/lsal/ls-1.23.2``) unless it is there already; a file lock makes concurrent callers wait
  for one install.
* :func:`session_template` builds, once per process and database kind, a migrated data dir with a
  known user and a legacy token: LS's first start migrates its database (~30-45 s).
* :func:`start_label_studio` copies the template (``cp -a``, ~1.5 MB), starts LS on a free port
  (~5-10 s) and creates the user's personal access token (PAT) on that instance; :class:`LabelStudio`
  stops the whole process group.

Two databases (label-studio.md §6): ``sqlite`` (LS's default; the database lives in the data dir) and
``postgresql`` (``DJANGO_DB=default`` + ``POSTGRE_*``; the server is ``$LSAL_TEST_POSTGRES``, default
``postgresql://postgres@127.0.0.1:5432``). On PostgreSQL the template is migrated once into a
database ``lsal_tpl_<pid>_<hex>`` and every instance gets its own ``CREATE DATABASE lsal_ls_<pid>_<hex>
TEMPLATE ...`` (~0.1 s), dropped when it stops; the pid in the name lets a later run drop what a
killed run left behind without touching the databases of runs that are still alive.

How the PAT is obtained: the organisation is created with ``--enable-legacy-api-token`` (so the legacy
``--user-token`` works) and JWT API tokens stay enabled (``JWTSettings.api_tokens_enabled`` defaults
to True), so ``POST /api/token/`` authenticated with the legacy token creates the user's PAT (a
refresh JWT signed with the data dir's SECRET_KEY). Each instance creates its own rather than every
copy reusing one made with the template: a CI run once had every SQLite copy reject the template's
PAT as "Token is invalid" (a bad signature, or PyJWT's ``iat``-in-the-future check after the clock
stepped back; LS verifies with zero leeway), which a token minted by the running instance avoids.

Pytest wiring (one instance per test module and database), in tests/conftest.py::

    from tests.lsharness import label_studio  # noqa: F401 - fixture, parametrized over LS_DATABASES

``LSAL_LS_DATABASES=sqlite`` (comma-separated) narrows the parametrization for a local run; by
default both run, and an unreachable PostgreSQL fails its variants with a message saying so.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

LS_VERSION = "1.23.2"
DEFAULT_VENV = Path.home() / ".cache" / "lsal" / f"ls-{LS_VERSION}"
INSTALL_TIMEOUT_S = 1800.0
FIRST_START_TIMEOUT_S = 300.0
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
_MARKER = ".lsal-installed"
_CREDENTIALS_FILE = "lsal-harness.json"

#: environment for every Label Studio the harness starts (label-studio.md §1)
LS_ENV = {
    "ML_BLOCK_LOCAL_IP": "false",
    "SSRF_PROTECTION_ENABLED": "false",
    "LATEST_VERSION_CHECK": "false",
    "SENTRY_DSN": "",
    "FRONTEND_SENTRY_DSN": "",
    "COLLECT_ANALYTICS": "false",
    "LOG_LEVEL": "INFO",
    "PYTHONUNBUFFERED": "1",
}


#: the databases Label Studio runs on in the e2e suite (and in bench/bench_freshness.py --db)
LS_DATABASES = ("sqlite", "postgresql")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432"
_DB_PREFIX = "lsal_"


def ls_venv() -> Path:
    return Path(os.environ.get("LSAL_LS_VENV") or DEFAULT_VENV).expanduser()


def _installed(venv: Path) -> bool:
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        return False
    if (venv / _MARKER).exists():
        return True
    # a venv installed by other means (e.g. scripts/install-label-studio.sh): check the version once
    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode == 0 and probe.stdout.strip() == LS_VERSION:
        (venv / _MARKER).write_text(LS_VERSION + "\n")
        return True
    return False


def ensure_label_studio() -> Path:
    """Path of the ``label-studio`` executable, installing Label Studio first if needed (minutes)."""
    venv = ls_venv()
    venv.parent.mkdir(parents=True, exist_ok=True)
    lock_path = venv.parent / f"{venv.name}.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process installing: wait for it
        try:
            if not _installed(venv):
                _install(venv)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return venv / "bin" / "label-studio"


def _install(venv: Path) -> None:
    if venv.exists():
        shutil.rmtree(venv)  # a half-finished install
    log_path = venv.parent / f"{venv.name}.install.log"
    with open(log_path, "w") as log:
        for cmd in (
            [sys.executable, "-m", "venv", str(venv)],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--upgrade", "pip"],
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"label-studio=={LS_VERSION}"],
        ):
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S).returncode
            if rc != 0:
                raise RuntimeError(f"installing Label Studio failed: {' '.join(cmd[:4])} -> {rc}; see {log_path}")
    if not (venv / "bin" / "label-studio").exists():
        raise RuntimeError(f"installing Label Studio left no label-studio executable; see {log_path}")
    (venv / _MARKER).write_text(LS_VERSION + "\n")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server for Label Studio cannot be reached or used."""


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server Label Studio can use; administered with ``psql`` (no driver needed here)."""

    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "postgres"
    password: str = ""

    @classmethod
    def from_url(cls, url: str) -> Postgres:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"expected postgresql://user[:password]@host:port, got scheme {parts.scheme!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
        )

    @classmethod
    def from_env(cls) -> Postgres:
        return cls.from_url(os.environ.get("LSAL_TEST_POSTGRES") or DEFAULT_POSTGRES)

    def __str__(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}"  # never the password

    def psql(self, sql: str, *, timeout: float = 60.0) -> str:
        """Run one SQL statement on the ``postgres`` database; its unaligned output."""
        exe = shutil.which("psql")
        if exe is None:
            raise PostgresUnavailable("psql is not installed (apt-get install postgresql-client)")
        env = {**os.environ, "PGPASSWORD": self.password, "PGCONNECT_TIMEOUT": "5"}
        cmd = [exe, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host, "-p", str(self.port)]
        cmd += ["-U", self.user, "-d", "postgres", "-c", sql]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if r.returncode != 0:
            raise PostgresUnavailable(f"psql on {self} failed ({r.returncode}): {r.stderr.strip()[:500]}")
        return r.stdout

    def check(self) -> None:
        """Raise :class:`PostgresUnavailable` with the reason unless the server answers and may create DBs."""
        out = self.psql("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
        if out.strip() != "t":
            raise PostgresUnavailable(f"user {self.user!r} on {self} may not create databases")

    def create_database(self, name: str, *, template: str | None = None) -> None:
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        self.psql(sql)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def drop_orphans(self) -> list[str]:
        """Drop harness databases whose creating process is gone (a run that was killed)."""
        names = self.psql(f"SELECT datname FROM pg_database WHERE datname LIKE '{_DB_PREFIX}%'").split()
        dropped = []
        for name in names:
            pid = _owner_pid(name)
            if pid is not None and not _alive(pid):
                with contextlib.suppress(PostgresUnavailable):
                    self.drop_database(name)
                    dropped.append(name)
        return dropped

    def ls_env(self, database: str) -> dict[str, str]:
        """Label Studio's variables for this server and ``database`` (label-studio.md §6)."""
        return {
            "DJANGO_DB": "default",
            "POSTGRE_HOST": self.host,
            "POSTGRE_PORT": str(self.port),
            "POSTGRE_NAME": database,
            "POSTGRE_USER": self.user,
            "POSTGRE_PASSWORD": self.password,
        }


def new_database_name(kind: str) -> str:
    """``lsal_<kind>_<pid>_<hex>``: unique across concurrent runs, and tells whose it is."""
    return f"{_DB_PREFIX}{kind}_{os.getpid()}_{secrets.token_hex(4)}"


def _owner_pid(name: str) -> int | None:
    parts = name.split("_")
    if len(parts) != 4 or not parts[2].isdigit():
        return None
    return int(parts[2])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Credentials:
    email: str
    password: str
    legacy_token: str
    pat: str | None = None


@dataclass(frozen=True)
class Template:
    """A migrated Label Studio data dir with a user; copy it, never start on it."""

    data_dir: Path
    credentials: Credentials
    first_start_s: float
    database: str = "sqlite"
    #: on PostgreSQL: the server and the migrated template database each instance is copied from
    postgres: Postgres | None = None
    pg_template: str | None = None


class LabelStudio:
    """One running Label Studio: ``url``, ``legacy_token``, ``pat``, ``log_path``; ``stop()`` ends it.

    With ``postgres`` and ``pg_database`` it runs on that PostgreSQL database; ``owns_database``
    makes ``stop()`` drop it.
    """

    def __init__(
        self,
        executable: Path,
        data_dir: Path,
        credentials: Credentials,
        *,
        workdir: Path,
        postgres: Postgres | None = None,
        pg_database: str | None = None,
        owns_database: bool = False,
    ) -> None:
        self.executable = executable
        self.data_dir = data_dir
        self.credentials = credentials
        self.workdir = workdir
        self.postgres = postgres
        self.pg_database = pg_database
        self.owns_database = owns_database
        self.home = workdir / "home"
        self.log_path = workdir / "label-studio.log"
        self.port = 0
        self.url = ""
        self.startup_s = 0.0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def legacy_token(self) -> str:
        return self.credentials.legacy_token

    @property
    def pat(self) -> str | None:
        return self.credentials.pat

    @property
    def email(self) -> str:
        return self.credentials.email

    @property
    def password(self) -> str:
        return self.credentials.password

    @property
    def database(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return "postgresql" if self.postgres is not None else "sqlite"

    def __repr__(self) -> str:
        return f"LabelStudio(url={self.url!r}, database={self.database!r}, data_dir={str(self.data_dir)!r})"

    def env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("LABEL_STUDIO_", "DJANGO_", "POSTGRE_", "HEARTEX_", "PG"))
        }
        env.pop("SECRET_KEY", None)
        env.update(LS_ENV)
        if self.postgres is not None:
            assert self.pg_database, "a PostgreSQL Label Studio needs its database name"
            env.update(self.postgres.ls_env(self.pg_database))
        else:
            env["DJANGO_DB"] = "sqlite"
        env["HOME"] = str(self.home)
        env["LABEL_STUDIO_BASE_DATA_DIR"] = str(self.data_dir)
        env["PATH"] = f"{self.executable.parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("VIRTUAL_ENV", None)
        return env

    def start(self, timeout: float = START_TIMEOUT_S, attempts: int = 3) -> LabelStudio:
        """Start on a free port and wait until ``GET /health`` on exactly that port answers UP."""
        for attempt in range(attempts):
            port = free_port()
            if self._start_on(port, timeout):
                return self
            self.stop()
            if attempt == attempts - 1:
                break
        raise RuntimeError(f"Label Studio did not start on a port of its own; log: {self.log_path}")

    def _start_on(self, port: int, timeout: float) -> bool:
        self.home.mkdir(parents=True, exist_ok=True)
        c = self.credentials
        cmd = [
            str(self.executable), "start", "--no-browser",
            "--internal-host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(self.data_dir),
            # "--opt=value": a random password may start with "-", which argparse takes for an option.
            f"--username={c.email}", f"--password={c.password}",
            "--user-token", c.legacy_token, "--enable-legacy-api-token",
        ]  # fmt: skip
        t0 = time.monotonic()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child process
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                cwd=self.workdir,
                start_new_session=True,  # its own process group: stop() ends LS and its children
            )
        finally:
            log.close()
        _RUNNING.add(self)
        url = f"http://127.0.0.1:{port}"
        banner = f"Starting development server at http://127.0.0.1:{port}/"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"Label Studio exited with {self._proc.returncode} while starting; log: {self.log_path}\n"
                    + self.log_tail()
                )
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            if "Starting development server at" in text and banner not in text:
                return False  # LS moved to another port: port was taken meanwhile
            if banner in text and _health(url):
                self.port = port
                self.url = url
                self.startup_s = time.monotonic() - t0
                return True
            time.sleep(0.25)
        raise TimeoutError(f"Label Studio not healthy on {url} after {timeout:.0f} s; log: {self.log_path}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        tail = "\n".join(text.splitlines()[-lines:])
        for secret in (self.credentials.legacy_token, self.credentials.pat, self.credentials.password):
            if secret:
                tail = tail.replace(secret, "***")
        return tail

    def stop(self) -> None:
        """Terminate the whole process group (SIGTERM, then SIGKILL); drop the database it owns."""
        try:
            self._stop_process()
        finally:
            if self.owns_database and self.postgres is not None and self.pg_database:
                self.owns_database = False
                _RUNNING.discard(self)
                with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
                    self.postgres.drop_database(self.pg_database)

    def _stop_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        _RUNNING.discard(self)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=STOP_TIMEOUT_S)
        # children that outlived the leader
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_RUNNING: set[LabelStudio] = set()


@atexit.register
def _stop_all() -> None:
    for ls in list(_RUNNING):
        ls.stop()


def _health(url: str) -> bool:
    try:
        r = requests.get(url + "/health", timeout=2)
        return r.status_code == 200 and r.json().get("status") == "UP"
    except (requests.RequestException, ValueError):
        return False


def create_pat(url: str, legacy_token: str) -> str:
    """Create the user's personal access token (``POST /api/token/`` with the legacy token)."""
    r = requests.post(url + "/api/token/", headers={"Authorization": f"Token {legacy_token}"}, timeout=30)
    if r.status_code != 201:
        raise RuntimeError(f"POST /api/token/ -> {r.status_code}: could not create a personal access token")
    token = r.json()["token"]
    assert isinstance(token, str)
    return token


def build_template(root: Path, database: str = "sqlite", postgres: Postgres | None = None) -> Template:
    """Migrate a fresh data dir (and database) under ``root``, create user and legacy token.

    LS is stopped after. On PostgreSQL the migrated database is the template each instance copies;
    the caller drops it (``drop_template``) when done.
    """
    if database not in LS_DATABASES:
        raise ValueError(f"database must be one of {LS_DATABASES}, got {database!r}")
    executable = ensure_label_studio()
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "data"
    creds = Credentials(
        email="lsal-test@example.com",
        password=secrets.token_urlsafe(16),
        legacy_token=secrets.token_hex(20),
    )
    pg_template = None
    if database == "postgresql":
        postgres = postgres or Postgres.from_env()
        postgres.check()
        postgres.drop_orphans()
        pg_template = new_database_name("tpl")
        postgres.create_database(pg_template)
    else:
        postgres = None
    ls = LabelStudio(executable, data_dir, creds, workdir=root, postgres=postgres, pg_database=pg_template)
    try:
        ls.start(timeout=FIRST_START_TIMEOUT_S)
    except BaseException:
        ls.stop()
        if postgres is not None and pg_template:
            postgres.drop_database(pg_template)
        raise
    ls.stop()
    (root / _CREDENTIALS_FILE).write_text(json.dumps(asdict(creds)))
    return Template(
        data_dir=data_dir,
        credentials=creds,
        first_start_s=ls.startup_s,
        database=database,
        postgres=postgres,
        pg_template=pg_template,
    )


def drop_template(template: Template) -> None:
    """Drop a PostgreSQL template's database (nothing to do on SQLite: its data dir is a temp dir)."""
    if template.postgres is not None and template.pg_template:
        with contextlib.suppress(PostgresUnavailable, subprocess.TimeoutExpired):
            template.postgres.drop_database(template.pg_template)


def start_label_studio(template: Template, workdir: Path, *, timeout: float = START_TIMEOUT_S) -> LabelStudio:
    """Copy the template (data dir, and database on PostgreSQL) into ``workdir`` and start Label Studio."""
    executable = ensure_label_studio()
    workdir.mkdir(parents=True, exist_ok=True)
    data_dir = workdir / "data"
    if data_dir.exists():
        raise FileExistsError(f"{data_dir} exists: use a fresh workdir per instance")
    subprocess.run(["cp", "-a", str(template.data_dir), str(data_dir)], check=True)
    pg_database = None
    if template.postgres is not None:
        assert template.pg_template
        pg_database = new_database_name("ls")
        template.postgres.create_database(pg_database, template=template.pg_template)
    ls = LabelStudio(
        executable,
        data_dir,
        template.credentials,
        workdir=workdir,
        postgres=template.postgres,
        pg_database=pg_database,
        owns_database=pg_database is not None,
    )
    try:
        ls.start(timeout=timeout)
        ls.credentials = replace(ls.credentials, pat=create_pat(ls.url, ls.legacy_token))
        return ls
    except BaseException:
        ls.stop()  # also drops its database
        raise


_template_lock = threading.Lock()
_templates: dict[str, Template] = {}


def session_template(database: str = "sqlite") -> Template:
    """The process-wide template for ``database`` (built on first use; removed at exit)."""
    with _template_lock:
        if database not in _templates:
            root = Path(tempfile.mkdtemp(prefix=f"lsal-ls-template-{database}-"))
            atexit.register(shutil.rmtree, root, True)
            try:
                template = build_template(root, database)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            atexit.register(drop_template, template)
            _templates[database] = template
        return _templates[database]


def selected_databases() -> tuple[str, ...]:
    """The databases the e2e suite runs on: ``$LSAL_LS_DATABASES`` (comma-separated) or all."""
    raw = os.environ.get("LSAL_LS_DATABASES", "").strip()
    if not raw:
        return LS_DATABASES
    chosen = tuple(d.strip() for d in raw.split(",") if d.strip())
    unknown = [d for d in chosen if d not in LS_DATABASES]
    if unknown or not chosen:
        raise ValueError(f"LSAL_LS_DATABASES: expected a comma-separated subset of {LS_DATABASES}, got {raw!r}")
    return chosen


# ---------------------------------------------------------------------- pytest fixtures


@pytest.fixture(scope="module", params=selected_databases())
def label_studio(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    """One Label Studio per test module and database, started from a copy of the session's template.

    An unreachable PostgreSQL fails (never skips) the ``postgresql`` variants, saying why.
    """
    database: str = request.param
    try:
        template = session_template(database)
    except PostgresUnavailable as exc:
        pytest.fail(
            f"Label Studio on PostgreSQL needs a PostgreSQL server ({exc}); start one on 127.0.0.1:5432, "
            "point LSAL_TEST_POSTGRES=postgresql://user[:password]@host:port at one, "
            "or run only SQLite with LSAL_LS_DATABASES=sqlite",
            pytrace=False,
        )
    with start_label_studio(template, tmp_path_factory.mktemp(f"label-studio-{database}")) as ls:
        yield ls


# ---------------------------------------------------------------------- test data helpers

TEXT_CHOICES_CONFIG = """<View>
  <Text name="text" value="$text"/>
  <Choices name="label" toName="text" choice="single">
    <Choice value="pos"/>
    <Choice value="neg"/>
  </Choices>
</View>"""


def sign_up_annotator(url: str, email: str) -> str:
    """Create a user the way a person joins an open-source Label Studio; their legacy API token.

    ``/user/signup/`` (with its CSRF cookie) adds the user to the organization and makes it their
    active one; ``GET /api/current-user/token`` (session-authenticated) is what the Account page shows.
    (``POST /api/users/`` by an admin creates a user without an active organization: their token then
    finds no project.) The password is random and thrown away.
    """
    s = requests.Session()
    s.get(f"{url}/user/signup/", timeout=30).raise_for_status()
    r = s.post(
        f"{url}/user/signup/",
        data={"email": email, "password": secrets.token_urlsafe(12), "csrfmiddlewaretoken": s.cookies["csrftoken"]},
        headers={"Referer": f"{url}/user/signup/"},
        allow_redirects=False,
        timeout=30,
    )
    if r.status_code != 302:
        raise RuntimeError(f"sign-up of {email} answered {r.status_code}, expected a redirect")
    r = s.get(f"{url}/api/current-user/token", timeout=30)
    r.raise_for_status()
    return str(r.json()["token"])


def choice_result(value: str, *, from_name: str = "label", to_name: str = "text") -> list[dict[str, Any]]:
    return [{"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [value]}}]


def create_project(client: Any, title: str, label_config: str = TEXT_CHOICES_CONFIG, **fields: Any) -> int:
    """Create a project through a :class:`backend.labelstudio.LabelStudioClient`; returns its id."""
    body = client.request("POST", "/api/projects", json={"title": title, "label_config": label_config, **fields})
    return int(body["id"])


def import_tasks(client: Any, project: int, tasks: list[dict[str, Any]]) -> list[int]:
    """Import task data dicts (``[{"text": ...}, ...]``); returns the new task ids in order."""
    body = client.request("POST", f"/api/projects/{project}/import", params={"return_task_ids": "true"}, json=tasks)
    return [int(i) for i in body["task_ids"]]


def create_annotation(
    client: Any, task: int, result: list[dict[str, Any]], *, was_cancelled: bool = False
) -> dict[str, Any]:
    body = client.request(
        "POST", f"/api/tasks/{task}/annotations/", json={"result": result, "was_cancelled": was_cancelled}
    )
    assert isinstance(body, dict)
    return body
