"""The Guard: every request's authentication and body-size limit, before any handler runs.

The whole auth path lives here: HTTP Basic auth on every endpoint (BASIC_AUTH_USER/PASS) and the
trigger token that pipelines present to `/train` (AL_TRIGGER_TOKEN). Credentials are compared with
`hmac.compare_digest` so the comparison takes the same time however much of a guess is right.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.config import Settings

TRAIN_PATH = "/train"
#: seconds a request's whole body may take to arrive (slow senders hold a connection and a task)
BODY_TIMEOUT = 30.0
#: scope key set when the client disconnected before its body arrived (logged as 499, not 500)
CLIENT_GONE = "lsal.client_gone"
BASIC_REQUIRED = {"error": "authentication required", "field": "authorization"}
TRIGGER_REQUIRED = {"error": "a valid 'Authorization: Bearer <AL_TRIGGER_TOKEN>' is required", "field": "authorization"}
CHALLENGE = [(b"www-authenticate", b'Basic realm="lsal"')]


class Guard:
    """Pure-ASGI middleware: Basic auth, the `/train` trigger token and the request body limit.

    Pure ASGI (not BaseHTTPMiddleware) because /webhook and /predict are on Label Studio's
    latency budget.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limit = settings.max_body_bytes
        auth = settings.basic_auth
        self.expected = b"Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()) if auth is not None else None
        self.trigger = b"Bearer " + settings.trigger_token.encode() if settings.trigger_token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(scope.get("path"), headers.get(b"authorization", b""))
        if refusal is not None:
            body, extra = refusal
            await send_json(send, 401, body, extra=extra)
            return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                too_big = int(length) > self.limit
            except ValueError:
                await send_json(send, 400, {"error": "malformed Content-Length", "field": "content-length"})
                return
            if too_big:
                await send_json(send, 413, _too_big(self.limit))
                return
        # Read the whole body here (bounded by the limit) and replay it to the app: an oversized
        # chunked body is refused before any handler runs, so no handler can half-answer it.
        chunks: list[bytes] = []
        received = 0
        more = True
        deadline = asyncio.get_running_loop().time() + BODY_TIMEOUT
        while more:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                await send_json(
                    send, 408, {"error": f"request body not received within {BODY_TIMEOUT:g} s", "field": "body"}
                )
                return
            if message["type"] != "http.request":
                # The client hung up mid-body: nobody is left to answer, and it is not a server error.
                scope[CLIENT_GONE] = True
                return
            body = message.get("body", b"")
            received += len(body)
            if received > self.limit:
                await send_json(send, 413, _too_big(self.limit))
                return
            chunks.append(body)
            more = message.get("more_body", False)
        replay: list[Message] = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay_receive() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replay_receive, send)

    def admits(self, path: str, header: bytes) -> bool:
        """Whether a request for `path` with this Authorization header may be answered."""
        return self._refusal(path, header) is None

    def _refusal(self, path: str | None, header: bytes) -> tuple[dict[str, str], list] | None:
        """The 401 body and extra headers for a request without the credentials its path needs."""
        train = self.trigger is not None and path == TRAIN_PATH
        # A pipeline calling /train holds the trigger token instead of the Basic credentials.
        bearer_to_train = train and header.startswith(b"Bearer ")
        if self.expected is not None and not bearer_to_train and not hmac.compare_digest(header, self.expected):
            return BASIC_REQUIRED, CHALLENGE
        if train and not hmac.compare_digest(header, self.trigger or b""):
            return TRIGGER_REQUIRED, []
        return None


def _too_big(limit: int) -> dict[str, str]:
    return {"error": f"request body larger than MAX_BODY_BYTES={limit}", "field": "body"}


async def send_json(send: Send, status: int, body: dict, extra: list | None = None) -> None:
    """Answer a request with a JSON body straight from ASGI (the app behind the guard never runs)."""
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": payload})
