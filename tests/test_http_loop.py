"""backend.http_loop: uvloop that accepts every waiting connection when its listening socket is readable."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop

from backend.http_loop import BatchAcceptLoop, BatchAcceptServer

WAITING = 200


def _run(coro: Any, loop_factory: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(coro)


class Counting(asyncio.Protocol):
    """Counts the connections whose protocol was set up, and echoes what it receives."""

    made: list[Counting] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        Counting.made.append(self)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


async def _accepted_after_iterations(iterations: int) -> tuple[int, Any]:
    """Open WAITING connections while the loop is blocked (they wait in the kernel's accept queue),
    then let the loop run `iterations` iterations; how many had their protocol set up."""
    Counting.made = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Counting, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(WAITING)]  # blocks the loop
    for c in clients:
        c.sendall(b"x")  # the kernel hands a connection over once its first bytes arrive (TCP_DEFER_ACCEPT)
    for _ in range(iterations):
        await asyncio.sleep(0)
    made = len(Counting.made)
    for c in clients:
        c.close()
    server.close()
    await server.wait_closed()
    return made, server


def test_every_waiting_connection_is_accepted_within_three_iterations() -> None:
    # accept (1), the connection's task creates its transport (2), connection_made (3)
    made, server = _run(_accepted_after_iterations(3), BatchAcceptLoop)
    assert isinstance(server, BatchAcceptServer)
    assert made == WAITING


def test_plain_uvloop_accepts_one_connection_per_iteration() -> None:
    """Why BatchAcceptLoop exists (libuv >= 1.45, PR #3696). If this fails, uvloop accepts in
    batches again and BatchAcceptLoop can go."""
    made, _ = _run(_accepted_after_iterations(3), uvloop.Loop)
    assert made <= 3


def test_accepted_connections_carry_data_both_ways() -> None:
    async def scenario() -> bytes:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Counting, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        echoed = await asyncio.wait_for(reader.readexactly(4), 10)
        writer.close()
        server.close()
        await server.wait_closed()
        return echoed

    assert _run(scenario(), BatchAcceptLoop) == b"ping"


def test_a_closed_server_accepts_no_more_connections() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Counting, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        assert server.is_serving()
        server.close()
        assert not server.is_serving()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)

    _run(scenario(), BatchAcceptLoop)


def test_running_out_of_file_descriptors_pauses_accepting_and_then_resumes(monkeypatch: pytest.MonkeyPatch) -> None:
    """accept() failing with EMFILE: the server stops watching the socket for ACCEPT_RETRY_DELAY
    (instead of spinning on a socket that stays readable), then accepts the waiting connection."""
    import errno

    from backend import http_loop

    monkeypatch.setattr(http_loop, "ACCEPT_RETRY_DELAY", 0.2)
    failures = [OSError(errno.EMFILE, "Too many open files")]

    async def scenario() -> tuple[int, int]:
        Counting.made = []
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Counting, "127.0.0.1", 0)
        sock = server._sock
        real_accept = sock.accept

        def accept() -> tuple[socket.socket, Any]:
            if failures:
                raise failures.pop()
            return real_accept()

        monkeypatch.setattr(server, "_sock", _Wrapped(sock, accept))
        client = socket.create_connection(("127.0.0.1", sock.getsockname()[1]))
        client.sendall(b"x")
        for _ in range(5):
            await asyncio.sleep(0)
        during = len(Counting.made)
        await asyncio.sleep(0.5)
        after = len(Counting.made)
        client.close()
        server.close()
        return during, after

    during, after = _run(scenario(), BatchAcceptLoop)
    assert failures == []
    assert (during, after) == (0, 1)


class _Wrapped:
    """A listening socket whose accept() is replaced (socket.socket's own cannot be patched)."""

    def __init__(self, sock: socket.socket, accept: Any) -> None:
        self._sock = sock
        self.accept = accept

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_quick_answer_sees_pending_bytes_and_answers_before_any_transport() -> None:
    """A connection whose pending bytes `quick_answer` answers gets that answer and is closed, with
    no protocol made; one it declines goes to the protocol whole; one that has sent nothing yet is
    held by the kernel until its first bytes arrive (TCP_DEFER_ACCEPT), then shown like the others."""
    seen: list[bytes] = []

    def quick(head: bytes) -> bytes | None:
        seen.append(head)
        return b"pong" if head == b"ping" else None

    async def scenario() -> tuple[bytes, bytes, bytes, int]:
        Counting.made = []
        loop = asyncio.get_running_loop()
        assert isinstance(loop, BatchAcceptLoop)
        loop.quick_answer = quick
        server = await loop.create_server(Counting, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        answered = socket.create_connection(("127.0.0.1", port))
        declined = socket.create_connection(("127.0.0.1", port))
        silent = socket.create_connection(("127.0.0.1", port))
        answered.sendall(b"ping")  # sent while the loop is blocked: pending when it accepts
        declined.sendall(b"echo")
        for c in (answered, declined, silent):
            c.settimeout(10)
        got_answer = await loop.run_in_executor(None, _read_until_closed, answered)
        got_echo = await loop.run_in_executor(None, declined.recv, 4)
        for _ in range(5):
            await asyncio.sleep(0)
        held_by_kernel = len(Counting.made) == 1  # only the declined one so far
        silent.sendall(b"late")
        got_late = await loop.run_in_executor(None, silent.recv, 4)
        made = len(Counting.made) if held_by_kernel else -1
        for c in (answered, declined, silent):
            c.close()
        server.close()
        return got_answer, got_echo, got_late, made

    got_answer, got_echo, got_late, made = _run(scenario(), BatchAcceptLoop)
    assert (got_answer, got_echo, got_late) == (b"pong", b"echo", b"late")
    assert made == 2  # the declined and the silent connection, the silent one only once it spoke
    assert sorted(seen) == [b"echo", b"late", b"ping"]


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(1024):
        data += chunk
    return data
