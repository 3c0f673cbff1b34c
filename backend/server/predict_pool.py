"""Large `/predict` bodies are parsed and scored in a separate process, never in the HTTP process.

Parsing a 60 MB JSON body and featurizing its texts hold the GIL for seconds; in a thread of the
HTTP process that starves the event loop, and `/health` (Label Studio allows it 1 s) with it. A
`PredictPool` hands the raw body to a small process pool instead: the HTTP process only moves
bytes, and the pool's processes run at a lower CPU priority (`NICE`), so the operating system
serves `/health`, the annotators' one-task predictions and webhooks first.

The pool is bounded: at most `QUEUE` large requests per HTTP process are scored or wait; one more
is answered 503 with `Retry-After` at once rather than held (with its body) without limit. Each
pool process builds its own model store, project lookup and model registry from the settings, so
a model loaded once serves every later request in that process, and a version published by a
worker is picked up on the next request as in the HTTP process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import os
import signal
import tempfile
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pydantic import ValidationError

from backend.config import ProjectConfig, Settings
from backend.server.schemas import ApiError, PredictRequest, validation_error_body

#: processes scoring large bodies per HTTP process (2 cores: more would only share them)
PROCESSES = 1
#: large requests scored or waiting per HTTP process; one more is answered 503
QUEUE = 4
#: seconds a client refused with 503 is asked to wait (about one large request's scoring time)
RETRY_AFTER = 10
#: niceness added to the pool's processes: the HTTP process's own requests come first
NICE = 10
BUSY = "too many large /predict requests are waiting; retry later"

_state: dict[str, Any] = {}  # in a pool process: its settings and collaborators (set once)


class PredictPool:
    """A bounded pool of processes that answer large `/predict` bodies: `await score(raw)`."""

    def __init__(self, settings: Settings, processes: int | None = None, queue: int | None = None) -> None:
        self.settings = settings
        self.processes = PROCESSES if processes is None else processes
        self.queue = QUEUE if queue is None else queue
        self.pending = 0
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            # spawn, not fork: the HTTP process has threads (the event loop's pool, the executor's
            # own), and a forked copy of a lock one of them held would never be released.
            self._executor = ProcessPoolExecutor(
                self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start,
                initargs=(self.settings,),
            )
        return self._executor

    async def score(self, raw: bytes) -> tuple[int, bytes]:
        """(HTTP status, JSON body) of the `/predict` request whose body is `raw`.

        Raises ApiError 503 (with Retry-After) when `queue` requests are already in hand or a pool
        process died; the next request starts a fresh pool."""
        if self.pending >= self.queue:
            raise ApiError(503, BUSY, None, headers={"Retry-After": str(RETRY_AFTER)})
        self.pending += 1
        path: str | None = None
        try:
            executor = self._pool()
            # The body reaches the pool process through a file, not the executor's pipe: pickling
            # a 60 MB body holds the GIL, and with it the event loop, for 0.25-0.4 s on a busy
            # machine (bench_load); a file write in a thread releases the GIL while it copies.
            try:
                path = await asyncio.to_thread(_spill, raw)
            except OSError:  # no room in the temporary directory: through the pipe after all
                return await asyncio.wrap_future(executor.submit(_score, raw))
            return await asyncio.wrap_future(executor.submit(_score_file, path))
        except BrokenProcessPool:
            # A pool process was killed (out of memory, an admin): answer this request, start anew.
            self.close()
            raise ApiError(503, "the /predict scoring process stopped; retry", None,
                           headers={"Retry-After": str(RETRY_AFTER)}) from None  # fmt: skip
        finally:
            self.pending -= 1
            if path is not None:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def close(self) -> None:
        """Stop the pool's processes now, abandoning any request they score (the server is stopping)."""
        executor, self._executor = self._executor, None
        if executor is None:
            return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            with contextlib.suppress(ProcessLookupError, ValueError):
                proc.kill()
        for proc in processes:
            with contextlib.suppress(ValueError):
                proc.join(timeout=1)


def _start(settings: Settings) -> None:
    """A pool process's initializer: lower priority, no Ctrl-C of its own, collaborators built once."""
    from backend.models import ModelRegistry
    from backend.server.deps import ProjectLookup
    from backend.store import ModelStore

    # Ctrl-C reaches the whole process group; the HTTP process stops this one (close()), so a
    # KeyboardInterrupt traceback here would only be noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    _state.update(
        settings=settings,
        store=ModelStore(settings.model_dir, keep=settings.keep_versions),
        lookup=ProjectLookup(settings.model_dir, ProjectConfig.defaults(settings)),
        models=ModelRegistry.discover(settings.models),
    )


def _spill(raw: bytes) -> str:
    """Write a request body to a private (0600) file in the system's temporary directory (not
    /dev/shm: Docker gives it 64 MB, less than QUEUE bodies); removed within a second or so, it
    rarely leaves the page cache."""
    fd, path = tempfile.mkstemp(prefix="lsal-predict-")
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    return path


def _score_file(path: str) -> tuple[int, bytes]:
    """In a pool process: `_score` of the body in `path` (removed by the HTTP process)."""
    with open(path, "rb") as f:
        return _score(f.read())


def _score(raw: bytes) -> tuple[int, bytes]:
    """In a pool process: parse and answer one `/predict` body, client errors as their 4xx body."""
    from backend.server.protocol import predict_tasks

    try:
        body = PredictRequest.model_validate_json(raw)
        result = predict_tasks(body, _state["settings"], _state["store"], _state["lookup"], _state["models"])
    except ValidationError as exc:
        # The same answer FastAPI's validation gives a small body (locations under "body").
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        return 400, _json(validation_error_body(errors))
    except ApiError as exc:
        return exc.status, _json({"error": exc.error, "field": exc.field})
    return 200, _json(result)


def _json(content: Any) -> bytes:
    # As Starlette's JSONResponse renders the small bodies' answers.
    return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
