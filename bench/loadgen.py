"""A lean load generator's HTTP/1.1 client: streamed POSTs over keep-alive connections, SSE events out.

What it does: one `Connection` per simulated client, an asyncio Protocol that
writes a POST and parses the response as it arrives (status line, headers, a
chunked or Content-Length body) and hands each server-sent event's `data:`
payload, with the time its bytes arrived, to a callback. Nothing else happens
per event: no per-chunk coroutine, no line iterator, no header objects.

Why it exists: on a 2-core machine the load generator shares the CPUs with the
servers it measures. httpx's streaming path cost 99 to 211 us of CPU per SSE
event against 22 to 56 here, on the same server and events
(`bench/results/2026-12-04-lean-client/`): at 16 clients and 5,000 events a
second httpx alone would take over half a CPU from the server being measured,
and the TTFT the client sees would include its own queueing.

What it does not do: TLS, HTTP/2, redirects, compression, trailers, or more than
one request in flight per connection; it is for measuring servers on loopback,
not a general client. `bench/serve.py --client httpx` keeps the httpx path for
comparison.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit

EventCallback = Callable[[bytes, float], None]  # (an event's data payload, perf_counter of its arrival)


class HttpError(Exception):
    """The connection failed or closed before a response was complete."""


class _Response:
    """Parses one response fed in pieces; `done` resolves when its body is complete."""

    def __init__(self, on_event: EventCallback, done: asyncio.Future) -> None:
        self.on_event = on_event
        self.done = done
        self.status = 0
        self.keep_alive = True
        self.body = bytearray()  # kept only when the status is not 200 (the error's text)
        self._buffer = b""
        self._in_head = True
        self._chunked = False
        self._remaining: int | None = None  # Content-Length body: bytes still to come
        self._chunk_left = -1  # chunked body: -1 at a size line, else the payload's bytes still to come
        self._events = b""

    def feed(self, data: bytes, now: float) -> None:
        buffer = self._buffer + data if self._buffer else data
        if self._in_head:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            self._read_head(buffer[:end])
            buffer = buffer[end + 4 :]
        if self._chunked:
            self._buffer = self._read_chunks(buffer, now)
        else:
            self._buffer = b""
            self._payload(buffer, now)
            if self._remaining is not None:
                self._remaining -= len(buffer)
                if self._remaining <= 0:
                    self._finish()

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split(b" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value:
                self._chunked = True
            elif name == b"content-length":
                self._remaining = int(value)
            elif name == b"connection" and value == b"close":
                self.keep_alive = False
        self._in_head = False
        if not self._chunked and self._remaining == 0:
            self._finish()

    def _read_chunks(self, buffer: bytes, now: float) -> bytes:
        """Consumes every complete piece of a chunked body; returns what is left for the next feed. A chunk's
        payload is passed on as soon as any of it is here: its arrival time is the one to record."""
        while True:
            if self._chunk_left < 0:  # at a size line
                end = buffer.find(b"\r\n")
                if end < 0:
                    return buffer
                size = int(buffer[:end].split(b";", 1)[0], 16)
                buffer = buffer[end + 2 :]
                if size == 0:  # the last chunk; no trailers are expected from these servers
                    self._finish()
                    return b""
                self._chunk_left = size
            if self._chunk_left > 0:  # in a payload
                take = min(len(buffer), self._chunk_left)
                self._payload(buffer[:take], now)
                self._chunk_left -= take
                buffer = buffer[take:]
                if self._chunk_left > 0:
                    return buffer
            if len(buffer) < 2:  # the CRLF after a payload
                return buffer
            buffer = buffer[2:]
            self._chunk_left = -1

    def _payload(self, data: bytes, now: float) -> None:
        if not data:
            return
        if self.status != 200:
            self.body += data
            return
        events = self._events + data if self._events else data
        if b"\r" in events:
            events = events.replace(b"\r\n", b"\n")
        start = 0
        while (end := events.find(b"\n\n", start)) >= 0:
            for line in events[start:end].split(b"\n"):
                if line.startswith(b"data:"):
                    self.on_event(line[5:].strip(), now)
            start = end + 2
        self._events = events[start:]

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to `url`'s host, one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._response: _Response | None = None
        self.host = b""
        self.open = False

    @classmethod
    async def connect(cls, url: str) -> Connection:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(cls, parts.hostname, parts.port or 80)
        connection.host = parts.netloc.encode()
        return connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.open = True

    def data_received(self, data: bytes) -> None:
        if self._response is not None:
            self._response.feed(data, time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        response, self._response = self._response, None
        if response is not None and not response.done.done():
            response.done.set_exception(HttpError(f"connection closed mid-response: {exc or 'by the server'}"))

    async def post(self, path: str, body: bytes, on_event: EventCallback, timeout_s: float) -> tuple[int, bytes]:
        """POSTs `body` (JSON) to `path`, calling `on_event` for each SSE event of a 200 response as it
        arrives. Returns the status and, for any other status, the response body."""
        assert self.transport is not None and self.open
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        response = self._response = _Response(on_event, done)
        self.transport.write(
            b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), self.host, len(body), body)
        )
        try:
            await asyncio.wait_for(done, timeout_s)
        finally:
            self._response = None
        if not response.keep_alive:
            self.close()
        return response.status, bytes(response.body)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.open = False
