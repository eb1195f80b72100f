"""bench/loadgen.py: the lean load generator's HTTP/1.1 client against a scripted loopback server.

The server answers each request with fixed bytes, written in pieces cut at every
position, so the parser sees a chunk-size line, a CRLF or an event split across reads.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from bench.loadgen import Connection, HttpError

EVENTS = [{"type": "token", "index": i, "text": "x" * i} for i in range(5)] + [{"type": "finish"}]


def _sse(events: list[dict], newline: bytes = b"\n") -> bytes:
    return b"".join(b"data: " + json.dumps(event).encode() + newline + newline for event in events)


def _chunked(body: bytes, sizes: list[int]) -> bytes:
    out, start = b"", 0
    for size in sizes:
        piece = body[start : start + size]
        start += size
        if piece:
            out += b"%x\r\n%s\r\n" % (len(piece), piece)
    if start < len(body):
        out += b"%x\r\n%s\r\n" % (len(body) - start, body[start:])
    return out + b"0\r\n\r\n"


async def _serve(replies: list[bytes], pieces: int, requests: list[bytes]):
    """A server that reads one request per reply and writes the reply in `pieces` random cuts; `requests`
    collects what it read."""
    rng = random.Random(0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            requests.append(head + await reader.readexactly(length))
            cuts = sorted(rng.sample(range(1, len(reply)), min(pieces, len(reply) - 1)))
            for start, end in zip([0, *cuts], [*cuts, len(reply)], strict=True):
                writer.write(reply[start:end])
                await writer.drain()
                await asyncio.sleep(0)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _run(replies: list[bytes], pieces: int = 40) -> tuple[list[tuple[int, bytes, list[dict]]], list[bytes]]:
    requests: list[bytes] = []

    async def main():
        server = await _serve(replies, pieces, requests)
        port = server.sockets[0].getsockname()[1]
        connection = await Connection.connect(f"http://127.0.0.1:{port}")
        results = []
        for _ in replies:
            events: list[dict] = []

            def collect(data: bytes, now: float, events: list[dict] = events) -> None:
                events.append(json.loads(data))

            status, body = await connection.post("/v1/generate", b'{"prompt": "hi"}', collect, 10)
            results.append((status, body, events))
        connection.close()
        server.close()
        await server.wait_closed()
        return results

    return asyncio.run(main()), requests


@pytest.mark.parametrize("pieces", [1, 7, 200])
def test_a_chunked_event_stream_split_anywhere_yields_every_event_once_in_order(pieces):
    body = _sse(EVENTS)
    reply = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    reply += _chunked(body, [5, 17, 1, 60])
    results, requests = _run([reply, reply], pieces)  # twice on one keep-alive connection
    assert [events for _, _, events in results] == [EVENTS, EVENTS]
    assert all(status == 200 and body == b"" for status, body, _ in results)
    assert len(requests) == 2 and requests[0].startswith(b"POST /v1/generate HTTP/1.1\r\n")
    assert requests[0].endswith(b'\r\n\r\n{"prompt": "hi"}')


def test_crlf_events_and_a_content_length_body_are_read_too():
    body = _sse(EVENTS, newline=b"\r\n")
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
    results, _ = _run([reply])
    assert results[0][2] == EVENTS


def test_an_error_status_returns_its_body_and_no_events():
    error = b'{"error": {"message": "prompt too long"}}'
    reply = b"HTTP/1.1 400 Bad Request\r\ncontent-length: %d\r\n\r\n%s" % (len(error), error)
    results, _ = _run([reply])
    assert results[0] == (400, error, [])


def test_a_connection_closed_mid_response_raises_and_is_no_longer_open():
    async def main():
        async def handle(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\ndata:")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        connection = await Connection.connect(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
        with pytest.raises(HttpError, match="closed mid-response"):
            await connection.post("/v1/generate", b"{}", lambda data, now: None, 10)
        assert not connection.open
        server.close()
        await server.wait_closed()

    asyncio.run(main())
