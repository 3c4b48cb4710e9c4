"""The seam between batchchat and a wire format: what a ``Dialect`` does, and the plain HTTP
facts every dialect reads alike.

A dialect is everything specific to one wire format: the path and the auth headers, a request's
body, an answer's reading (whole or streamed), an error's meaning, the rate-limit headers, and the
built-in simulator's side of the same wire (``ServerWire``). Nothing outside a dialect's module
knows a field name of its format: the client sends bytes and hands back what the dialect made of
them, the throttle and the retry policy read ``RateInfo``, the journal keeps an answer as received
and reads it back through the dialect that claims it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from ..core import jsonio
from ..core.errors import (
    AUTH,
    BAD_REQUEST,
    BAD_RESPONSE,
    CONFLICT,
    FORBIDDEN,
    NO_CREDIT,
    NOT_FOUND,
    RATE_LIMITED,
    TIMEOUT,
    RequestError,
)
from ..core.ratehints import HINT_CAP_S, RateInfo
from ..core.reading import Reading, bounded, needs_bounds, received
from ..core.records import ChatRequest, ChatResult
from ..core.sse import Event


class StreamReader(Protocol):
    """A streamed answer, assembled event by event."""

    @property
    def complete(self) -> bool:
        """Whether the answer is whole (what follows cannot spoil it)."""
        ...

    def add(self, event: Event, elapsed_s: float) -> None: ...

    def result(self, latency_s: float, rate: RateInfo | None) -> ChatResult:
        """The answer the events made; a ``RequestError`` (stream_truncated) if it is not whole."""
        ...


class ServerWire(Protocol):
    """The simulator's side of a wire format: it answers in it, from the same synthetic answers."""

    busy_status: int  # what the provider answers when short of capacity

    def neutral(self, body: Any) -> dict[str, Any] | str:
        """The request as a chat-completions body (what the simulator's answers are made from), or
        why it is refused (a 400)."""
        ...

    def authorized(self, headers: Mapping[str, str], key: str) -> bool: ...

    def answer(self, answer_id: str, model: str, content: str, finish: str, prompt: int, completion: int) -> dict[str, Any]:
        ...

    def stream_start(self, answer_id: str, model: str, prompt: int) -> list[str]:
        """The events before the first piece of text, each as its SSE text."""
        ...

    def stream_piece(self, answer_id: str, model: str, index: int, text: str) -> str: ...

    def stream_end(self, answer_id: str, model: str, finish: str, prompt: int, completion: int,
                   body: dict[str, Any]) -> list[str]: ...  # fmt: skip

    def stream_error(self, message: str) -> str: ...

    def error(self, status: int, kind: str, message: str, code: str | None) -> dict[str, Any]:
        """An error body; ``kind`` is the chat-completions error type, which a wire may restate."""
        ...

    def limit_headers(self, requests: tuple[int, int] | None, tokens: tuple[int, int] | None,
                      reset_s: float | None) -> dict[str, str]:  # fmt: skip
        """Rate-limit headers: (limit per minute, remaining) of requests and of tokens, and when
        the limit that refused resets (for a 429)."""
        ...


class Dialect(Protocol):
    """One wire format, as the client, the journal and the simulator use it."""

    name: str
    path: str  # after the base URL: "/chat/completions", "/messages"
    server: ServerWire
    max_tokens_sent: int | None  # what a request that sets no max_tokens is sent with (None: nothing)
    # How a whole answer is read when it arrives: by the dialect that claims it (the registry sets
    # this), as the journal reads it back, so a server that answers in another format's shape
    # (a proxy) is read, not retried and paid again, and reads the same on both sides.
    reader: Callable[[Any], Reading]

    def auth_headers(self, key: str) -> dict[str, str]: ...

    def body(self, request: ChatRequest, stream: bool, stream_usage: bool) -> dict[str, Any]:
        """What is sent for ``request``: a JSON object."""
        ...

    def answer(self, body: bytes, latency_s: float, rate: RateInfo | None) -> ChatResult:
        """A 2xx body: the answer (kept as received, and read), or a ``RequestError`` for a body
        that is no answer (not JSON, an error object), to be tried again."""
        ...

    def stream(self, on_text: Callable[[str], None] | None) -> StreamReader: ...

    def error(self, status: int, body: bytes, content_type: str, rate: RateInfo | None) -> RequestError: ...

    def rate(self, headers: Mapping[str, str]) -> RateInfo | None:
        """What the response headers say of the limits and of when to ask again; None: nothing."""
        ...

    def claims(self, answer: Any) -> bool:
        """Whether a kept answer is in this format (the journal reads each by its own dialect)."""
        ...

    def read(self, answer: Any) -> Reading:
        """A kept answer read; never raises."""
        ...

    def with_text(self, answer: dict[str, Any], text: str) -> dict[str, Any]:
        """``answer`` with its text replaced (a secret redacted across two parts)."""
        ...

    def refused(self, option: str) -> str | None:
        """Why a request option cannot be sent in this format (None: it can), so a job says so
        before it sends a request every row would have refused."""
        ...


TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass(frozen=True)
class BatchInfo:
    """A provider batch as its provider reports it, in no provider's words."""

    id: str
    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelling, cancelled
    input_file_id: str | None = None  # None where the requests came inline (Anthropic)
    output_file_id: str | None = None
    error_file_id: str | None = None
    total: int | None = None  # requests, where the provider counts them
    done: int | None = None  # answered or failed so far
    failed: int | None = None
    progress: float | None = None  # percent done, where the provider says so (Together)
    results_url: str | None = None  # where the results are read, where not from files (Anthropic)
    created_at: float | None = None  # epoch, where the provider says

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class ResultLine:
    """One line of a batch's results, in no provider's words: the request it answers (its id as
    batchchat asked it), and an answer (``status`` 2xx, ``body``, no ``error``) or an error (a
    status and body, or the provider's ``error`` object)."""

    custom_id: str | None
    status: int | None
    body: Any
    error: Any
    tag: str | None = None  # the mark of the file it was asked in, where the wire's ids carry one


class BatchWire(Protocol):
    """One provider's Batch API, as data: which calls make, follow and read a batch. The client
    makes the calls; the engine sees only ``BatchInfo`` and ``ResultLine``."""

    name: str
    inline: bool  # the requests go in the create call itself, not in an uploaded file
    # A batch object says which file it holds: one found by it is surely that file's. Else the
    # ids in its results do (``tag``), once it has ended.
    names_its_file: bool
    purpose: str  # an uploaded file's purpose (a wire that uploads)
    batches: str  # the batches endpoint, after the base URL: "/batches", "/messages/batches"
    after: str  # the list endpoint's parameter for the page after an id

    def line(self, request: ChatRequest, tag: str) -> bytes:
        """The request as one batch line (JSON and a newline), under its id on this wire; a wire
        whose batches do not say what they hold marks the id with ``tag``, its file's."""
        ...

    def create(self, file_id: str, lines: bytes) -> bytes:
        """The create call's JSON body: over the uploaded ``file_id``, or holding ``lines``."""
        ...

    def batch(self, data: Any) -> BatchInfo:
        """A batch object (a create's answer, a get's, a list's item) read; a ``RequestError``
        (bad_response) for what is no batch."""
        ...

    def results(self, info: BatchInfo) -> list[str]:
        """Where a finished batch's result lines are read: paths after the base URL, or URLs."""
        ...

    def result(self, record: Any) -> ResultLine:
        """One result line's JSON read."""
        ...

    def over(self, info: BatchInfo, file_id: str, count: int, sent: tuple[float, float] | None) -> bool:
        """Whether ``info`` may be the batch a create made over ``file_id`` (``count`` requests,
        its creates sent between the two times of ``sent``; None: never sent)."""
        ...

    def past(self, info: BatchInfo, since: float) -> bool:
        """Whether ``info``, and every batch a list gives after it, was made before a create sent
        at ``since`` could have made it (a list newest first ends there)."""
        ...


# --- plain HTTP, as every dialect reads it ---------------------------------------------------

# status -> (error_type, retryable), as every provider means them; a dialect adds its own.
HTTP_ERRORS: dict[int, tuple[str, bool]] = {
    400: (BAD_REQUEST, False),
    401: (AUTH, False),
    402: (NO_CREDIT, False),
    403: (FORBIDDEN, False),
    404: (NOT_FOUND, False),
    408: (TIMEOUT, True),
    409: (CONFLICT, True),
    422: (BAD_REQUEST, False),
    429: (RATE_LIMITED, True),
}

CUT = "..."  # where a long server text was cut short (redaction looks for it)
_TAG = re.compile(rb"<[^>]*>")
_SPACE = re.compile(rb"\s+")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_answer(body: bytes, latency_s: float, rate: RateInfo | None, read: Callable[[Any], Reading],
                 refusal: Callable[[dict[str, Any]], RequestError | None]) -> ChatResult:  # fmt: skip
    """A 2xx body, in any dialect. A JSON object is an answer, paid for: whatever its fields hold,
    it is kept and read (``read``), never asked again for its shape. A body that is not JSON (cut
    off, an HTML page), or one that ``refusal`` finds carries an error, is a failed attempt,
    retried."""
    try:
        data, fast = jsonio.loads_how(body)
    except RecursionError:  # JSON nested past reading: paid all the same, and kept as its text
        return received(body.decode("utf-8", "replace"), latency_s, rate=rate, read=read)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RequestError(BAD_RESPONSE, f"HTTP 200 with a body that is not JSON: {snippet(body)}", status=200,
                           retryable=True) from None  # fmt: skip
    if needs_bounds(body, fast):
        data = bounded(data)
    if not isinstance(data, dict):
        raise RequestError(BAD_RESPONSE, f"HTTP 200 with unexpected JSON: {snippet(body)}", status=200, retryable=True)
    error = refusal(data)
    if error is not None:
        raise error
    return received(data, latency_s, rate=rate, read=read)


def error_json(body: bytes, content_type: str) -> Any:
    """An error response's JSON; None for an HTML page or a body that is not JSON."""
    if "html" in content_type.lower():
        return None
    try:
        return jsonio.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return None


def kept_headers(headers: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    """The headers whose names start with ``prefixes``, by their lower-case names."""
    kept = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(prefixes):
            kept[lower] = value
    return kept


def cut(text: str, limit: int) -> str:
    """``text``, cut short at ``limit`` with ``CUT``."""
    return text if len(text) <= limit else text[:limit] + CUT


def snippet(body: bytes, html: bool = False, limit: int = 200) -> str:
    """A short, printable piece of a body that was not what we expected (an HTML page, say)."""
    if html or body.lstrip()[:1] == b"<":
        body = _TAG.sub(b" ", body)
    text = _SPACE.sub(b" ", body).strip().decode("utf-8", "replace")
    if not text:
        return "(empty body)"
    return cut(text, limit)


def retry_after_s(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """The wait ``retry-after-ms`` or ``retry-after`` (seconds, or an HTTP date) asks for, capped."""
    if "retry-after-ms" in headers:
        value = number(headers["retry-after-ms"])
        if value is not None:
            return capped(value / 1000.0)
    if "retry-after" in headers:
        raw = headers["retry-after"].strip()
        value = number(raw)
        if value is not None:
            return capped(value)
        try:
            when = parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            return capped(when - (time.time() if now is None else now))
    return None


def reset_seconds(text: str, now: float | None = None) -> float | None:
    """A reset time as seconds from now: a number of seconds, an epoch timestamp, or ``6m0s``."""
    raw = text.strip()
    value = number(raw)
    if value is None:
        return duration_seconds(raw)
    if value > 1e12:  # an epoch timestamp in milliseconds
        value /= 1000.0
    if value > 1e9:  # an epoch timestamp rather than a number of seconds
        value -= time.time() if now is None else now
    return max(value, 0.0)


def duration_seconds(text: str) -> float | None:
    """OpenAI-style durations: ``20ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


def count_header(headers: Mapping[str, str], *names: str) -> float | None:
    """The first of ``names`` holding a count (finite, not negative)."""
    for name in names:
        if name in headers:
            value = number(headers[name])
            if value is not None and value >= 0:
                return value
    return None


def should_retry(headers: Mapping[str, str]) -> bool | None:
    """``x-should-retry``: the server's explicit word, as OpenAI-style SDKs obey it."""
    word = headers.get("x-should-retry", "").strip().lower()
    return word == "true" if word in ("true", "false") else None


def number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def capped(seconds: float) -> float:
    return min(max(seconds, 0.0), HINT_CAP_S)
