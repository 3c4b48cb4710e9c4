"""The built-in chat server: ``batchchat serve`` and provider ``sim``.

It speaks every wire format batchchat knows, each at its dialect's path, in that dialect's words
(``providers.base.ServerWire``): ``POST /v1/chat/completions`` the way Together does (JSON with
usage, or an SSE stream with usage on the final chunk and ``data: [DONE]``; OpenAI's extra usage
chunk when the request sets ``stream_options.include_usage``), ``POST /v1/messages`` the way
Anthropic does (content blocks, named stream events, 529 when overloaded). It enforces
requests/min and tokens/min with 429s and rate-limit headers, and injects faults. Its answers are
synthetic: a deterministic function of the request body, so a test can tell which request an
answer belongs to and a rerun gets the same answer.

Faults come two ways. ``fault_rate`` injects them at random, decided by a hash of the body and
how many times that body has arrived, so a run is repeatable. A directive written in a message,
``[sim:fault=500,times=2]`` or ``[sim:delay_ms=300]``, scripts one row: ``times`` limits the
fault to the first N arrivals of that exact request. ``[sim:reply=any text]`` makes the answer
exactly that text.

Like a model asked for them, it answers a ``response_format`` with JSON that fits the schema, and,
given ``labels``, with one of them (in varied case and punctuation). ``invalid_rate`` makes that
share of such answers wrong (broken JSON, a missing field, a label not in the set), decided per
arrival, so asking again can get a valid answer.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web

from ..job.spec import SimConfig
from ..providers import DIALECTS
from ..providers.base import ServerWire
from .answers import STATUS_FAULTS, chance, directive, float_option, invalid_body, request_digest, shaped_reply
from .batches import BatchStore

MODELS = ("sim-chat", "sim-chat-large", "meta-llama/Llama-3.3-70B-Instruct-Turbo")
RANDOM_FAULTS = ("500", "503", "html502", "drop", "truncate", "malformed")
RANDOM_STREAM_FAULTS = ("503", "drop", "stream_cut", "stream_malformed")


class _Bucket:
    """Token bucket holding one second's worth of the per-minute limit (Together enforces per second).

    A request costing more than the bucket holds passes when the bucket is full and leaves it in
    debt, so big requests are slowed, never refused forever.
    """

    def __init__(self, per_minute: int) -> None:
        self.limit = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` would fit; 0 means it fits now."""
        self._refill(now)
        need = min(cost, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def take(self, cost: float) -> None:
        self.level -= cost


# --- the server ---------------------------------------------------------------------------------


class Simulator:
    """One simulated endpoint; ``record=True`` keeps every request body for tests to inspect."""

    def __init__(self, config: SimConfig | None = None, *, record: bool = False) -> None:
        self.config = config or SimConfig()
        self.record = record
        self.requests: list[dict[str, Any]] = []  # {"body": ..., "authorization": ...} when recording
        self.counts: Counter[str] = Counter()
        self._in_flight = 0  # requests being answered now; the most at once is counted
        self.arrivals: Counter[str] = Counter()  # per request digest
        self.answers: Counter[str] = Counter()  # per request digest, complete 200 answers
        self._rpm = _Bucket(self.config.rpm) if self.config.rpm else None
        self._tpm = _Bucket(self.config.tpm) if self.config.tpm else None
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self._first_at: float | None = None  # when the first request arrived (monotonic)
        self._last_at: float | None = None  # when the last answer was complete
        self.batches = BatchStore(self.config, self.counts, self._batch_answer)
        self._slots: asyncio.Semaphore | None = None  # slots (one_at_a_time: one): held while served
        self._serving: list[asyncio.Event] = []  # of the requests served, oldest first: set, a stream ends

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)  # a batch file may hold 200 MB
        for dialect in DIALECTS.values():
            app.router.add_post("/v1" + dialect.path, self._handler(dialect.server))
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/sim/stats", self._stats)
        self.batches.routes(app)
        return app

    def _batch_answer(self, body: dict[str, Any]) -> tuple[str, str, int, int, str]:
        """A batch line answered as the live endpoint answers the same body, counted alike."""
        digest = request_digest(body)
        self.arrivals[digest] += 1
        arrival = self.arrivals[digest]
        if self.record:
            self.requests.append({"body": body, "authorization": None, "batch": True})
        content, finish, prompt, completion = shaped_reply(body, self.config, arrival, digest, directive(body))
        self.counts["answered"] += 1
        self.answers[digest] += 1
        return content, finish, prompt, completion, f"sim-{digest[:12]}-{arrival}"

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen (port 0 picks a free one) and return the base URL, ending in ``/v1``."""
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=1024)
        await site.start()
        sockets = self._runner.addresses
        bound_port = sockets[0][1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{bound_port}/v1"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stats(self) -> dict[str, Any]:
        """Counters for tests and benchmarks; ``answered_twice`` counts answers a client paid for more than once."""
        config = asdict(self.config)
        config["api_key"] = "***" if self.config.api_key else None
        flowing = None
        if self._first_at is not None and self._last_at is not None and self._last_at > self._first_at:
            flowing = self.counts["answered"] / (self._last_at - self._first_at)
        return {
            **self.counts,
            **self.batches.stats(),
            "answered_twice": sum(n - 1 for n in self.answers.values() if n > 1),
            "answered_per_s": flowing,  # while requests flowed: first arrival to last answer
            "config": config,
        }

    # --- handlers ---

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": m, "object": "model", "type": "chat", "owned_by": "batchchat-sim"} for m in MODELS]
        return web.json_response({"object": "list", "data": data})

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    def _handler(self, wire: ServerWire) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def chat(request: web.Request) -> web.StreamResponse:
            return await self._chat(request, wire)

        return chat

    async def _chat(self, request: web.Request, wire: ServerWire) -> web.StreamResponse:
        self._in_flight += 1
        self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self._in_flight)
        try:
            slots = self.config.slots or (1 if self.config.one_at_a_time else 0)
            if not slots:
                return await self._answer(request, wire)
            if self._slots is None:
                self._slots = asyncio.Semaphore(slots)
            served = [cut for cut in self._serving if not cut.is_set()]
            if len(served) >= slots:  # the new request cuts the oldest stream in flight short
                served[0].set()
            async with self._slots:
                cut = asyncio.Event()
                self._serving.append(cut)
                self.counts["max_served"] = max(self.counts["max_served"], len(self._serving))
                try:
                    return await self._answer(request, wire, cut)
                finally:
                    self._serving.remove(cut)
        finally:
            self._in_flight -= 1

    async def _answer(self, request: web.Request, wire: ServerWire,
                      cut: asyncio.Event | None = None) -> web.StreamResponse:  # fmt: skip
        raw = await request.read()
        self.counts["received"] += 1
        if self._first_at is None:
            self._first_at = time.monotonic()
        try:
            sent = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return self._error(wire, 400, "invalid_request_error", "request body is not valid JSON")
        body = wire.neutral(sent)  # the request as a chat-completions body: answers are made from it
        problem = body if isinstance(body, str) else invalid_body(body)
        if problem or isinstance(body, str):
            return self._error(wire, 400, "invalid_request_error", problem or "invalid request")
        if self.record:
            self.requests.append({"body": sent, "authorization": request.headers.get("Authorization"),
                                  "x-api-key": request.headers.get("x-api-key")})  # fmt: skip
        if self.config.api_key and not wire.authorized(request.headers, self.config.api_key):
            return self._error(wire, 401, "authentication_error", "Invalid API key provided", code="invalid_api_key")
        digest = request_digest(body)
        self.arrivals[digest] += 1
        arrival = self.arrivals[digest]
        options = directive(body)
        content, finish, prompt_tokens, completion_tokens = shaped_reply(body, self.config, arrival, digest, options)

        limited = self._check_limits(wire, prompt_tokens + completion_tokens)
        if limited is not None:
            return limited

        streaming = bool(body.get("stream") or body.get("stream_tokens"))
        delay_ms = float_option(options, "delay_ms")
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000.0)
        fault = options.get("fault")
        if fault is not None and "times" in options and arrival > int(float_option(options, "times") or 0):
            fault = None
        if fault is None:  # a provider's 429s and 503s that no rate causes
            config = self.config
            if config.share_429 and chance(config.seed, digest, arrival, "429") < config.share_429:
                fault = "429"
            elif config.share_503 and chance(config.seed, digest, arrival, "503") < config.share_503:
                fault = "503"
        if fault is None and self.config.fault_rate > 0:
            seed = self.config.seed
            if chance(seed, digest, arrival, "fault") < self.config.fault_rate:
                kinds = RANDOM_STREAM_FAULTS if streaming else RANDOM_FAULTS
                fault = kinds[int(chance(seed, digest, arrival, "kind") * len(kinds))]
        if fault is not None:
            self.counts["faults"] += 1
            self.counts[f"fault:{fault}"] += 1
            response = await self._fault(request, wire, fault, streaming)
            if response is not None:
                return response

        latency = self.config.latency_ms / 1000.0
        if self.config.jitter_ms:
            latency += chance(self.config.seed, digest, arrival, "jitter") * self.config.jitter_ms / 1000.0
        # [sim:id=X] answers with id X, as a caching proxy whose ids depend on the prompt alone
        answer_id = options.get("id") or f"sim-{digest[:12]}-{arrival}"
        model = body["model"]
        if streaming:
            answer = _Answer(answer_id, model, content, finish, prompt_tokens, completion_tokens)
            response = await self._stream(request, wire, body, answer, latency, fault, cut)
            if cut is not None and cut.is_set():
                return response  # cut short: not an answer
        else:
            if self.config.tokens_per_s:
                latency += completion_tokens / self.config.tokens_per_s
            if latency > 0:
                await asyncio.sleep(latency)
            payload = wire.answer(answer_id, model, content, finish, prompt_tokens, completion_tokens)
            response = web.json_response(payload, headers=self._limit_headers(wire))
        if fault is None:
            self.counts["answered"] += 1
            self.answers[digest] += 1
            self._last_at = time.monotonic()
        return response

    def _check_limits(self, wire: ServerWire, cost: int) -> web.Response | None:
        now = time.monotonic()
        later = self.config.rpm_later
        moved = later and self._first_at is not None and now - self._first_at >= self.config.rpm_change_s
        if later and moved and (self._rpm is None or self._rpm.limit != later):  # the limit moves, once
            self._rpm = _Bucket(later)
        waits = []
        if self._rpm is not None:
            waits.append(self._rpm.wait_for(1, now))
        if self._tpm is not None:
            waits.append(self._tpm.wait_for(cost, now))
        wait = max(waits, default=0.0)
        if wait > 0:
            self.counts["rate_limited"] += 1
            which = "request" if self._rpm is not None and waits[0] > 0 else "token"
            headers = self._limit_headers(wire, wait)
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            return self._error(
                wire, 429, "rate_limit_exceeded", f"simulated {which} rate limit exceeded",
                code=f"dynamic_{which}_limited", headers=headers,
            )  # fmt: skip
        if self._rpm is not None:
            self._rpm.take(1)
        if self._tpm is not None:
            self._tpm.take(cost)
        return None

    def _limit_headers(self, wire: ServerWire, reset_s: float | None = None) -> dict[str, str]:
        requests = (self._rpm.limit, max(0, int(self._rpm.level))) if self._rpm is not None else None
        tokens = (self._tpm.limit, max(0, int(self._tpm.level))) if self._tpm is not None else None
        return wire.limit_headers(requests, tokens, reset_s)

    def _error(self, wire: ServerWire, status: int, kind: str, message: str, *, code: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:  # fmt: skip
        self.counts[f"status:{status}"] += 1
        return web.json_response(wire.error(status, kind, message, code), status=status, headers=headers)

    async def _fault(self, request: web.Request, wire: ServerWire, fault: str,
                     streaming: bool) -> web.StreamResponse | None:  # fmt: skip
        """An injected failure, or None for faults that happen inside a stream."""
        if fault in STATUS_FAULTS:
            kind, message = STATUS_FAULTS[fault]
            return self._error(wire, wire.busy_status if fault == "503" else int(fault), kind, message)
        if fault == "429":
            return self._error(wire, 429, "rate_limit_exceeded", "simulated rate limit",
                               code="dynamic_request_limited", headers={"retry-after": "1"})  # fmt: skip
        if fault == "insufficient_quota":
            return self._error(wire, 429, "insufficient_quota", "simulated: you exceeded your current quota",
                               code="insufficient_quota")  # fmt: skip
        if fault == "html502":
            page = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center></body></html>"
            return web.Response(status=502, text=page, content_type="text/html")
        if fault == "drop":
            _drop(request)
            return web.Response(status=500)  # never sent: the connection is gone
        if fault == "truncate":
            response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            response.content_length = 400
            await response.prepare(request)
            await response.write(b'{"id": "sim-cut", "object": "chat.completion", "choices": [{"index": 0, "mess')
            _drop(request)
            return response
        if fault == "malformed":
            return web.Response(
                status=200,
                text='{"id": "sim-bad", "choices": [{"message": {"content": "x"',
                content_type="application/json",
            )
        if fault == "no_choices":
            return web.json_response({"id": "sim-empty", "object": "chat.completion", "choices": []})
        if fault in ("stream_cut", "stream_malformed", "stream_error"):
            if streaming:
                return None
            return self._error(wire, 400, "invalid_request_error", f"simulator fault '{fault}' needs a streaming request")
        return self._error(wire, 400, "invalid_request_error", f"unknown simulator fault '{fault}'")

    async def _stream(
        self,
        request: web.Request,
        wire: ServerWire,
        body: dict[str, Any],
        answer: _Answer,
        latency: float,
        fault: str | None,
        cut: asyncio.Event | None = None,
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **self._limit_headers(wire)},
        )
        await response.prepare(request)

        async def send(*events: str) -> None:
            await response.write("".join(events).encode())

        if latency > 0:
            await asyncio.sleep(latency)
        await send(*wire.stream_start(answer.id, answer.model, answer.prompt))
        words = answer.content.split(" ")
        pause = 1.0 / self.config.tokens_per_s if self.config.tokens_per_s else 0.0
        for i, word in enumerate(words):
            if fault is not None and i == len(words) // 2:
                if fault == "stream_cut":
                    _drop(request)
                    return response
                if fault == "stream_malformed":
                    await response.write(b'data: {"id": "sim-bad", "choices": [{"delta": {"content": \n\n')
                    _drop(request)
                    return response
                if fault == "stream_error":
                    await send(wire.stream_error("simulated error mid-stream"))
                    await response.write_eof()
                    return response
            if pause:
                await asyncio.sleep(pause)
            if cut is not None and cut.is_set():  # another request arrived: this stream just ends
                self.counts["streams_cut"] += 1
                await response.write_eof()
                return response
            await send(wire.stream_piece(answer.id, answer.model, i, word if i == 0 else " " + word))
        await send(*wire.stream_end(answer.id, answer.model, answer.finish, answer.prompt, answer.completion, body))
        await response.write_eof()
        return response


@dataclass(frozen=True)
class _Answer:
    id: str
    model: str
    content: str
    finish: str
    prompt: int
    completion: int


def _drop(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


# --- running it ---------------------------------------------------------------------------------


async def serve(
    config: SimConfig, host: str, port: int, on_ready: Callable[[str], None], stop: Awaitable[Any] | None = None
) -> None:
    """Serve until ``stop`` completes (or forever); ``on_ready`` gets the base URL once listening."""
    simulator = Simulator(config)
    url = await simulator.start(host, port)
    on_ready(url)
    try:
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop
    finally:
        await simulator.close()


class BackgroundSimulator:
    """A simulator on its own thread and event loop, for tests, benchmarks and notebooks.

    ``with BackgroundSimulator() as sim: ... sim.url ...``
    """

    def __init__(self, config: SimConfig | None = None, *, record: bool = True, port: int = 0) -> None:
        self.simulator = Simulator(config, record=record)
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="batchchat-sim", daemon=True)
        self.url = ""

    def __enter__(self) -> BackgroundSimulator:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self.simulator.start(port=self.port), self._loop)
        self.url = future.result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.simulator.close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.simulator.requests

    def stats(self) -> dict[str, Any]:
        return self.simulator.stats()
