"""The HTTP protocol `lsal serve` speaks: uvicorn's httptools protocol with bounded header reads.

uvicorn closes idle keep-alive connections (`timeout_keep_alive`) but has no deadline for a request
whose headers arrive slowly, and no limit on their size with httptools: a slowloris client can hold
thousands of half-sent requests open. Here every request's headers must arrive within
HEADER_TIMEOUT seconds and HEADER_LIMIT bytes, or the connection is closed. The body's deadline is
the Guard's (backend.server.guard.BODY_TIMEOUT).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

#: seconds from the first byte of a request to the end of its headers
HEADER_TIMEOUT = 10.0
#: bytes of request line and headers accepted before the headers end
HEADER_LIMIT = 64 * 1024


class BoundedHeadersProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that closes a connection whose request headers are slow or oversized."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._in_headers = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """A new connection: its first request's header deadline starts now."""
        super().connection_made(transport)
        self._start_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection ended: cancel the header deadline."""
        self._stop_headers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse the bytes; close the connection once the headers exceed HEADER_LIMIT."""
        counting = self._in_headers
        super().data_received(data)
        # Counted after parsing: a chunk that completes the headers may carry a large body too.
        if counting and self._in_headers:
            self._header_bytes += len(data)
            if self._header_bytes > HEADER_LIMIT:
                self._close()

    def on_message_begin(self) -> None:
        """A request begins: on a kept-alive connection, its header deadline starts now."""
        super().on_message_begin()
        if not self._in_headers:  # the next request on a kept-alive connection
            self._start_headers()

    def on_headers_complete(self) -> None:
        """The headers arrived in time: the deadline no longer applies."""
        self._stop_headers()
        super().on_headers_complete()

    def _start_headers(self) -> None:
        self._in_headers = True
        self._header_bytes = 0
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(HEADER_TIMEOUT, self._close)

    def _stop_headers(self) -> None:
        self._in_headers = False
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _close(self) -> None:
        self._stop_headers()
        if not self.transport.is_closing():
            self.transport.close()
