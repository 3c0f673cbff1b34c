"""The event loop `lsal serve` runs on: uvloop, accepting every waiting connection at once.

libuv (and with it uvloop, since uvloop 0.18 bundles libuv >= 1.45) accepts one connection per
loop iteration (libuv PR #3696: "unix: don't accept() connections in a loop"). While the loop is
busy, an iteration lasts tens of milliseconds, so a burst of connections drains at tens per
second: in bench_load, 2,000 slowloris connections kept ~1,100 connections waiting in the
kernel's accept queue for seconds, and Label Studio's /health check, on a new connection each
time, waited behind them (up to 11.5 s; strace showed one accept4() per epoll_wait()).

Here a listening socket is watched with `add_reader`, and each time it is readable up to
ACCEPT_BATCH waiting connections are accepted and handed to uvloop
(`connect_accepted_socket`): the accept queue drains in one iteration, as asyncio's own loop
does, while requests keep uvloop's speed (asyncio's loop instead doubled /webhook's and
/predict's latency in bench_server).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from typing import Any

import uvloop

log = logging.getLogger(__name__)

#: the bytes to send for a new connection whose pending bytes are these, or None: the app answers
QuickAnswer = Callable[[bytes], "bytes | None"]

#: connections accepted per readiness of the listening socket (asyncio accepts up to its backlog)
ACCEPT_BATCH = 2048
#: bytes of a new connection's pending request shown to the loop's `quick_answer` (a health
#: check's request is ~200)
PEEK_BYTES = 4096
#: seconds the kernel holds a new connection until its first bytes arrive (Linux TCP_DEFER_ACCEPT,
#: nginx's `listen ... deferred`): a connection reaches the loop with its request to look at, and
#: one that sends nothing never takes a place in the loop
DEFER_ACCEPT_SECONDS = 10
#: seconds to stop accepting after the process ran out of file descriptors (asyncio's own delay)
ACCEPT_RETRY_DELAY = 1.0
#: errors of accept() that mean "out of resources": wait, then accept again (as asyncio does)
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class BatchAcceptServer:
    """A listening socket whose waiting connections are all accepted whenever it is readable.

    Stands in for the `asyncio.Server` that `loop.create_server` returns, as far as uvicorn uses
    one: `sockets`, `close()`, `wait_closed()`, `is_serving()`."""

    def __init__(self, loop: BatchAcceptLoop, protocol_factory: Callable[[], Any], sock: socket.socket) -> None:
        self._loop = loop
        self._factory = protocol_factory
        self._sock = sock
        self._serving = False
        self._connecting: set[asyncio.Task[Any]] = set()
        self.sockets: tuple[socket.socket, ...] = (sock,)

    def start(self, backlog: int) -> None:
        """Listen (again: uvicorn's supervisor binds the socket, the worker listens) and accept."""
        self._sock.setblocking(False)
        if hasattr(socket, "TCP_DEFER_ACCEPT"):  # Linux
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_SECONDS)
        self._sock.listen(backlog)
        self._loop.add_reader(self._sock.fileno(), self._accept)
        self._serving = True

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # the queue is empty (or another HTTP process took the rest)
            except ConnectionAbortedError:
                continue  # the client gave up while it waited
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                log.error("cannot accept connections (%s): retrying in %g s", exc.strerror, ACCEPT_RETRY_DELAY)
                self._loop.remove_reader(self._sock.fileno())
                self._loop.call_later(ACCEPT_RETRY_DELAY, self._resume)
                return
            quick = self._loop.quick_answer
            if quick is not None and _answered(conn, quick):
                continue
            task = self._loop.create_task(self._connect(conn))
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)

    def _resume(self) -> None:
        if self._serving:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError:
            conn.close()  # reset before its transport was set up: nothing to answer

    def is_serving(self) -> bool:
        """Whether new connections are still accepted."""
        return self._serving

    def close(self) -> None:
        """Stop accepting; connections already accepted carry on (uvicorn finishes them)."""
        if self._serving:
            self._serving = False
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    async def wait_closed(self) -> None:
        """Wait until the connections being set up have their protocols."""
        if self._connecting:
            await asyncio.wait(self._connecting)


def _answered(conn: socket.socket, quick: QuickAnswer) -> bool:
    """Whether `quick` answered the request pending on the new connection `conn` (then closed)."""
    try:
        head = conn.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except OSError:
        return False  # nothing has arrived yet, or the client is gone: the transport finds out
    try:
        response = quick(head) if head else None
    except Exception:
        log.exception("the quick answer failed; the app answers instead")
        return False
    if response is None:
        return False
    try:
        conn.recv(len(head), socket.MSG_DONTWAIT)  # consumed: a close with unread bytes would reset
        conn.send(response, socket.MSG_DONTWAIT)  # a few hundred bytes into an empty send buffer
    except OSError:
        pass  # the client is gone
    conn.close()
    return True


class BatchAcceptLoop(uvloop.Loop):
    """uvloop, whose plain TCP servers accept every waiting connection per iteration.

    `quick_answer`, when set (the app's lifespan sets it: backend.server.quick), sees each new
    connection's pending bytes and may answer the request there, before any transport exists."""

    quick_answer: QuickAnswer | None = None

    async def create_server(  # type: ignore[override]
        self,
        protocol_factory: Callable[[], Any],
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        **kwargs: Any,
    ) -> Any:
        """`loop.create_server`, batch-accepting when it serves plain TCP (the only kind lsal serves)."""
        if ssl is not None or kwargs:
            create = super().create_server  # its overloads do not admit this signature's Nones
            return await create(protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl, **kwargs)  # type: ignore[arg-type]
        if sock is None:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
            sock = socket.create_server((host or "", port or 0), family=family, backlog=backlog)
        server = BatchAcceptServer(self, protocol_factory, sock)
        server.start(backlog)
        return server
