"""The app factory: settings and collaborators on `app.state`, error handlers, routers, the Guard.

`create_app` builds the FastAPI app; `build_app` wraps it as `lsal serve` runs it (behind the
Guard, measured and logged). Every client error is a 4xx JSON body `{"error": "...", "field":
"..."}`; handlers never let client input reach a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.routing import BaseRoute

from backend import __version__
from backend.config import ProjectConfig, Settings
from backend.http_loop import BatchAcceptLoop
from backend.jobs import Jobs
from backend.metrics import Metrics, RequestMetrics
from backend.models import ModelRegistry
from backend.server import metrics, pipelines, protocol
from backend.server.deps import ProjectLookup
from backend.server.guard import Guard
from backend.server.quick import QuickHealth
from backend.server.schemas import ApiError, ErrorBody, validation_error_body
from backend.store import ModelStore

log = logging.getLogger("lsal.server")

ROUTERS = (metrics.router, protocol.router, pipelines.router)

REDIS_DOWN = (
    "redis unavailable: the event was not queued; the next event after Redis returns "
    "brings the project up to date (every cycle reads all labels from Label Studio)"
)


def create_app(settings: Settings, *, redis_url: str | None = None) -> FastAPI:
    """The FastAPI app with every router; `redis_url` overrides `settings.redis_url` (tests)."""
    url = redis_url if redis_url is not None else settings.redis_url
    connection = redis_connection(url) if url else None
    store = ModelStore(settings.model_dir, keep=settings.keep_versions)

    app = FastAPI(
        lifespan=_lifespan,
        title="lsal",
        version=__version__,
        description="Active-learning ML backend for Label Studio",
        responses={400: {"model": ErrorBody}, 401: {"model": ErrorBody}, 413: {"model": ErrorBody}},
    )
    app.state.settings = settings
    app.state.redis = connection
    app.state.jobs = Jobs(connection, settings.queue_name, settings.job_timeout) if connection is not None else None
    app.state.store = store
    app.state.projects = ProjectLookup(settings.model_dir, ProjectConfig.defaults(settings))
    app.state.metrics = Metrics(settings, connection=connection, store=store)
    app.state.models = ModelRegistry.discover(settings.models)

    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    loop = asyncio.get_running_loop()
    if app.state.redis is not None:
        # The first PING before this process serves (at most FIRST_WAIT): every /health it then
        # accepts has Redis's state at hand, and can be answered at accept (backend.server.quick).
        await protocol.redis_probe(app, app.state.redis).state()
    quick: QuickHealth | None = getattr(app.state, "quick_health", None)
    if quick is not None and isinstance(loop, BatchAcceptLoop):  # `lsal serve`'s loop
        loop.quick_answer = quick.answer
    yield
    if isinstance(loop, BatchAcceptLoop):
        loop.quick_answer = None
    pool = getattr(app.state, "predict_pool", None)
    if pool is not None:  # its processes would otherwise outlive a stopping server
        pool.close()


def build_app(settings: Settings | None = None) -> RequestMetrics:
    """The ASGI app as served: the FastAPI app behind the auth/size guard, measured and logged."""
    settings = settings or Settings.from_env()
    app = create_app(settings)
    guard = Guard(app, settings)
    measured = RequestMetrics(guard, app.state.metrics, routes=served_routes(app))
    app.state.quick_health = QuickHealth(app, settings, guard, measured)
    return measured


def served_routes(app: FastAPI) -> list[BaseRoute]:
    """Every route with its path template, to label the requests the Guard answers before routing.

    FastAPI keeps an included router's routes inside one wrapper that has no template of its own,
    so the routers' routes are listed themselves.
    """
    own = [route for route in app.routes if isinstance(getattr(route, "path_format", None), str)]
    return own + [route for router in ROUTERS for route in router.routes]


def add_error_handlers(app: FastAPI) -> None:
    """Answer `ApiError`, validation errors and a Redis outage as `{"error", "field"}` JSON bodies."""
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(redis.RedisError, redis_error)  # type: ignore[arg-type]


def redis_connection(url: str) -> redis.Redis:
    """A Redis client that fails fast: /webhook must answer inside Label Studio's 1 s even when Redis is gone."""
    return redis.Redis.from_url(url, socket_connect_timeout=0.3, socket_timeout=0.5, retry_on_timeout=False)


async def api_error(_: Request, exc: ApiError) -> JSONResponse:
    """An `ApiError` as its JSON body."""
    return JSONResponse({"error": exc.error, "field": exc.field}, status_code=exc.status, headers=exc.headers)


async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """The first validation error as a 400 naming its field (FastAPI's default is a 422 list)."""
    return JSONResponse(validation_error_body(exc.errors()), status_code=400)


async def redis_error(request: Request, exc: redis.RedisError) -> JSONResponse:
    """A 503 that says what was lost (nothing durable) when Redis is down; never the error's text."""
    log.warning("redis unavailable: %s", type(exc).__name__)
    probe = getattr(request.app.state, "redis_probe", None)
    if probe is not None:
        probe.mark_unavailable()  # /health says so now, not at its next PING
    return JSONResponse({"error": REDIS_DOWN, "field": None}, status_code=503)
