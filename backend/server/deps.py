"""What the endpoints need, as FastAPI dependencies read from `app.state`.

`create_app` puts each collaborator on `app.state` once; endpoints declare the ones they use
(`settings: SettingsDep`), so a router can be mounted alone in a test with any of them replaced
through `app.dependency_overrides`. The dependencies are `async` on purpose: FastAPI runs sync
dependencies in its thread pool, a hop that would cost /webhook and /predict more than the work.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache
from pathlib import Path
from typing import Annotated

import redis
from fastapi import Depends, Request

from backend import projects
from backend.config import ConfigError, ProjectConfig, Settings
from backend.jobs import Jobs
from backend.labelconfig import LabelConfigError, TaskSpec, parse_label_config
from backend.metrics import Metrics
from backend.models import ModelRegistry
from backend.server.schemas import ApiError
from backend.store import ModelStore


class ProjectLookup:
    """A project's label config and settings as `/setup` saved them, cached for the request path.

    The parsed label config is cached by its XML; a project's settings are re-read only when its
    project.json changes (one stat per request).
    """

    def __init__(self, model_dir: Path, defaults: ProjectConfig) -> None:
        self.model_dir = model_dir
        self.defaults = defaults
        self._parse = lru_cache(maxsize=64)(parse_label_config)
        self._configs: dict[int, tuple[int, ProjectConfig]] = {}

    def spec(self, project: int, label_config: str | None) -> TaskSpec:
        """The task spec of `label_config`, or of the project's saved one when none is given."""
        if not label_config:
            setup = projects.load(self.model_dir, project)
            if setup is None:
                raise ApiError(400, "no label_config given and the project has not been set up", "label_config")
            label_config = setup.label_config
        try:
            return self._parse(label_config)
        except LabelConfigError as exc:
            raise ApiError(400, str(exc), "label_config") from None

    def config(self, project: int) -> ProjectConfig:
        """The project's settings: the defaults overlaid with its saved extra_params."""
        try:
            mtime = projects.path(self.model_dir, project).stat().st_mtime_ns
        except OSError:
            return self.defaults
        cached = self._configs.get(project)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        setup = projects.load(self.model_dir, project)
        config = self.defaults
        if setup is not None:
            # validated at /setup; a hand-edited file must not break /predict
            with contextlib.suppress(ConfigError):
                config = self.defaults.with_extra_params(setup.extra_params)
        self._configs[project] = (mtime, config)
        return config


async def get_settings(request: Request) -> Settings:
    """The server's settings."""
    value: Settings = request.app.state.settings
    return value


async def get_redis(request: Request) -> redis.Redis | None:
    """The Redis connection, or None when no REDIS_URL is configured."""
    value: redis.Redis | None = request.app.state.redis
    return value


async def get_jobs(request: Request) -> Jobs | None:
    """The job queue, or None without Redis: endpoints that need it call `require_jobs`."""
    value: Jobs | None = request.app.state.jobs
    return value


async def get_store(request: Request) -> ModelStore:
    """The model store (published versions under MODEL_DIR)."""
    value: ModelStore = request.app.state.store
    return value


async def get_projects(request: Request) -> ProjectLookup:
    """Per-project label config and settings."""
    value: ProjectLookup = request.app.state.projects
    return value


async def get_metrics(request: Request) -> Metrics:
    """The Prometheus metrics of this process."""
    value: Metrics = request.app.state.metrics
    return value


def require_jobs(jobs: Jobs | None) -> Jobs:
    """The job queue, or a 503 when the server runs without Redis.

    Checked inside the endpoints rather than by the dependency, so that requests which need no
    queue (an ignored webhook, a bad body) answer the same with or without Redis.
    """
    if jobs is None:
        raise ApiError(503, "no job queue configured (REDIS_URL)", None)
    return jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
RedisDep = Annotated[redis.Redis | None, Depends(get_redis)]
JobsDep = Annotated[Jobs | None, Depends(get_jobs)]
StoreDep = Annotated[ModelStore, Depends(get_store)]
ProjectsDep = Annotated[ProjectLookup, Depends(get_projects)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


async def get_models(request: Request) -> ModelRegistry:
    """The registered models (built-in, entry points, AL_MODELS), discovered once at start-up."""
    value: ModelRegistry = request.app.state.models
    return value


ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
