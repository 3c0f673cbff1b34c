"""`GET /health` answered where its connection is accepted, before it joins the event loop's queue.

Label Studio checks `/health` on a new connection every time (ml/models.py, 1.23.2: a new
requests.Session per check) and allows it 1 s. Through the app, a new connection's request
passes about five event-loop iterations (accept, transport, connection_made, read, the request's
task); under bench_load's 200 requests/s plus attacks each iteration lasts tens of milliseconds,
and /health took 0.2 s at the median and up to 1.25 s, while the app itself answered it in 1 ms.

`lsal serve`'s loop (backend.http_loop) shows each accepted connection's first bytes to
`QuickHealth` (a peek: nothing is consumed; the kernel hands a connection over only once its
first bytes have arrived, TCP_DEFER_ACCEPT). When they are one whole `GET /health` request and
nothing more, with the credentials the Guard requires, the answer is written at once and the
connection closed; any other request, a partial one, or a refused one goes through the app as
before (which then answers the 401). The body is the route's (`protocol.health_body`), Redis's
state is the probe's latest answer, and the request is counted and logged as the app would.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate
from typing import Any

from backend.config import Settings
from backend.metrics import RequestMetrics
from backend.server.guard import Guard
from backend.server.protocol import health_body, redis_probe
from backend.server.schemas import HealthResponse

_REQUEST_LINES = (b"GET /health HTTP/1.1", b"GET /health HTTP/1.0")
_BODY_HEADERS = (b"content-length", b"transfer-encoding")


class QuickHealth:
    """`answer(head)`: the bytes to send for a connection whose pending bytes are `head`, or None
    when the app must handle it."""

    def __init__(self, app: Any, settings: Settings, guard: Guard, measured: RequestMetrics) -> None:
        self.app = app
        self.settings = settings
        self.guard = guard
        self.measured = measured

    def answer(self, head: bytes) -> bytes | None:
        """The whole HTTP response to `head`, if `head` is exactly one admissible `GET /health`."""
        start = time.perf_counter()
        headers = _request_headers(head)
        if headers is None or not self.guard.admits("/health", headers.get(b"authorization", b"")):
            return None
        connection = self.app.state.redis
        redis_state = "not configured" if connection is None else redis_probe(self.app, connection).latest()
        if redis_state is None:
            return None  # no PING has answered yet: the app waits for the first one
        # Through the route's response model, as FastAPI serializes it: the same bytes either way.
        fields = HealthResponse.model_validate(health_body(self.settings, redis_state)).model_dump(mode="json")
        body = json.dumps(fields, separators=(",", ":")).encode()
        response = b"HTTP/1.1 200 OK\r\ndate: %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
            formatdate(usegmt=True).encode(),
            len(body),
        )
        response += b"connection: close\r\n\r\n" + body
        self.measured.note("/health", "GET", 200, time.perf_counter() - start)
        return response


def _request_headers(head: bytes) -> dict[bytes, bytes] | None:
    """The headers (lower-case names) of `head` if it is exactly one GET /health request without a
    body, else None."""
    end = head.find(b"\r\n\r\n")
    if end < 0 or end + 4 != len(head):  # incomplete, or more follows (a body, a pipelined request)
        return None
    lines = head[:end].split(b"\r\n")
    if lines[0] not in _REQUEST_LINES:
        return None
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return None  # malformed: the app's parser answers it
        name = name.lower()
        if name in headers or name in _BODY_HEADERS:
            return None
        headers[name] = value.strip()
    return headers
