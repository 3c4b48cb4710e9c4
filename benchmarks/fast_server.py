"""A chat endpoint that costs next to nothing, so that a benchmark measures the client.

The built-in simulator builds every answer (synthetic text, usage, pacing) through aiohttp's
server, and tops out below what a lean client sends: measured against it, a client's own cost
cannot show. This server is an asyncio protocol that reads a request's head and body and writes
back one of two fixed answers (JSON, or an SSE stream in Together's form with usage on the last
chunk), over keep-alive connections. ``GET /stats`` gives the requests answered, the seconds
from the first request to the last answer, and the server's own CPU seconds, so a run shows
whether the server was the busy one.

    python benchmarks/fast_server.py  # prints "listening on http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

ANSWER = "Fixed answer: the server does no work."
USAGE = {"prompt_tokens": 12, "completion_tokens": 8, "total_tokens": 20}
JSON_BODY = json.dumps({
    "id": "fixed", "object": "chat.completion", "created": 0, "model": "fixed",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
    "usage": USAGE,
}).encode()  # fmt: skip


def _chunk(content: str | None, finish: str | None, usage: dict[str, int] | None) -> bytes:
    delta = {} if content is None else {"content": content}
    data = {"id": "fixed", "object": "chat.completion.chunk", "created": 0, "model": "fixed",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
    if usage:
        data["usage"] = usage
    return b"data: " + json.dumps(data).encode() + b"\n\n"


WORDS = ANSWER.split(" ")
STREAM_BODY = b"".join(
    [_chunk(w if i == 0 else " " + w, None, None) for i, w in enumerate(WORDS)]
    + [_chunk(None, "stop", USAGE), b"data: [DONE]\n\n"]
)


def _response(status: str, content_type: bytes, body: bytes) -> bytes:
    return (f"HTTP/1.1 {status}\r\n".encode() + b"Content-Type: " + content_type
            + f"\r\nContent-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n".encode() + body)  # fmt: skip


JSON_RESPONSE = _response("200 OK", b"application/json", JSON_BODY)
STREAM_RESPONSE = _response("200 OK", b"text/event-stream", STREAM_BODY)
STREAM_MARK = b'"stream": true'
STREAM_MARK_TIGHT = b'"stream":true'


class Counts:
    def __init__(self) -> None:
        self.answered = 0
        self.first: float | None = None
        self.last: float | None = None

    def stats(self) -> bytes:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        span = (self.last - self.first) if self.first is not None and self.last is not None else 0.0
        return json.dumps({"answered": self.answered, "span_s": span, "answered_per_s": self.answered / span if span else 0.0,
                           "cpu_s": usage.ru_utime + usage.ru_stime}).encode()  # fmt: skip


class Chat(asyncio.Protocol):
    """HTTP/1.1 with Content-Length bodies, which is what aiohttp's client sends."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        out = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buffer[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                break
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            out.append(self._answer(head, body))
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _answer(self, head: bytes, body: bytes) -> bytes:
        target = head.split(b" ", 2)[1]
        if target.endswith(b"/stats"):
            return _response("200 OK", b"application/json", self.counts.stats())
        if target.endswith(b"/reset"):
            self.counts.__init__()  # type: ignore[misc]
            return _response("200 OK", b"application/json", b"{}")
        now = time.perf_counter()
        counts = self.counts
        if counts.first is None:
            counts.first = now
        counts.answered += 1
        counts.last = now
        return STREAM_RESPONSE if STREAM_MARK in body or STREAM_MARK_TIGHT in body else JSON_RESPONSE


async def main(port: int) -> None:
    counts = Counts()
    server = await asyncio.get_running_loop().create_server(lambda: Chat(counts), "127.0.0.1", port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{bound}/v1", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
